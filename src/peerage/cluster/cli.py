"""``peerage cluster status``: the nodes alive, their sessions, SIP flows and leases.

It asks every node over NATS (``peerage.cluster.status``, answers gathered for ``--wait`` seconds)
and reads the leases from PostgreSQL, so it shows the cluster as it is, from any machine with the
configuration. ``--json`` prints the raw answers for scripts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from typing import Any

#: Seconds to gather answers: a node answers within milliseconds unless it is overloaded.
DEFAULT_WAIT = 1.0


def register(commands: Any) -> None:
    cluster = commands.add_parser("cluster", help="a cluster of nodes: who is alive and what each holds")
    actions = cluster.add_subparsers(dest="cluster_command", required=True, metavar="status")
    status = actions.add_parser("status", help="nodes, their sessions, SIP flows and leases")
    status.add_argument("--sessions", action="store_true", help="list every session's full JID")
    status.add_argument("--json", action="store_true", help="print the answers as JSON")
    status.add_argument("--wait", type=float, default=DEFAULT_WAIT, help="seconds to gather answers")
    status.set_defaults(func=cmd_status)


async def gather(urls: list[str], wait: float, registry: bool = False) -> list[dict[str, Any]]:
    import nats

    from peerage.cluster.node import STATUS_SUBJECT

    nc = await nats.connect(servers=urls, allow_reconnect=False, connect_timeout=2)
    answers: list[dict[str, Any]] = []
    try:
        inbox = nc.new_inbox()

        async def collect(msg: Any) -> None:
            with contextlib.suppress(ValueError):
                answers.append(json.loads(msg.data))

        await nc.subscribe(inbox, cb=collect)
        await nc.publish(STATUS_SUBJECT, json.dumps({"registry": registry}).encode(), reply=inbox)
        await nc.flush()
        await asyncio.sleep(wait)
    finally:
        await nc.close()
    return sorted(answers, key=lambda a: str(a.get("node")))


def cmd_status(args: argparse.Namespace) -> int:
    from peerage.config import default_config_path, load_config

    config = load_config(args.config or default_config_path())
    if not config.cluster.enabled:
        print("no [cluster] section: this is a single server")
        return 1
    return asyncio.run(_status(config, args))


async def _status(config: Any, args: argparse.Namespace) -> int:
    from peerage.cluster.leases import list_leases
    from peerage.store import Store

    try:
        nodes = await gather(list(config.cluster.nats_urls), args.wait)
    except Exception as exc:
        print(f"NATS unreachable ({exc}): cannot ask the nodes")
        nodes = []
    store = Store(config.database_url)
    try:
        leases = await list_leases(store)
    finally:
        await store.close()
    if args.json:
        print(json.dumps({"nodes": nodes, "leases": leases}, indent=1))
        return 0 if nodes else 1
    print(f"{len(nodes)} node(s) answering")
    for node in nodes:
        sessions = node.get("sessions", [])
        age = time.time() - float(node.get("started_at", time.time()))
        print(f"node {node.get('node')}: up {age:.0f} s, {len(sessions)} XMPP sessions, "
              f"{node.get('sip_flows', 0)} SIP flows, {node.get('held', 0)} stanzas held for other nodes, "
              f"sees {', '.join(node.get('peers', [])) or 'no other node'}")
        if args.sessions:
            for full in sessions:
                print(f"  {full}")
    now = int(time.time())
    for lease in leases:
        state = "expired" if lease["expires_at"] < now else f"{lease['expires_at'] - now} s left"
        print(f"lease {lease['kind']} {lease['key']}: {lease['node']} ({state})")
    return 0 if nodes else 1
