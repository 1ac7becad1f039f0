"""Operator commands for federation: ``peerage s2s status`` and ``peerage check federation DOMAIN``.

``s2s status`` prints what the running server published in its status file (``[server] status_file``
in the data folder): the open s2s connections with their direction, domains, the level reached
(U/P/V/E/T) and why, TLS and authentication, and the stanzas waiting per remote domain; for a domain
pair with nothing open, its latest failure (TLS version included when the handshake completed).
``--all`` shows the whole recent history.
``check federation`` runs a real negotiation (see ``peerage.xmpp.s2s_check``).
"""

from __future__ import annotations

import argparse
import datetime
from typing import Any


def register(commands: Any) -> None:
    s2s = commands.add_parser("s2s", help="XMPP federation: connections and their levels")
    actions = s2s.add_subparsers(dest="s2s_command", required=True, metavar="status")
    status = actions.add_parser("status", help="show s2s connections, the level each reached, and why")
    status.add_argument("--all", action="store_true", help="include closed and failed connections")
    status.set_defaults(func=cmd_status)

    check = commands.add_parser("check", help="check interoperability with a remote domain")
    # Without a kind, `peerage check` checks the whole installation (peerage.ops.check).
    kinds = check.add_subparsers(dest="check_command", required=False, metavar="federation")
    federation = kinds.add_parser("federation", help="negotiate with DOMAIN step by step and explain")
    federation.add_argument("domain")
    federation.add_argument("--from", dest="local", help="the local domain to federate as "
                                                          "(default: the first configured one)")
    federation.set_defaults(func=cmd_check_federation)


def _time(stamp: float | None) -> str:
    if not stamp:
        return "-"
    return datetime.datetime.fromtimestamp(stamp).strftime("%H:%M:%S")


def _rows(connections: list[dict[str, Any]], everything: bool) -> list[dict[str, Any]]:
    """The rows to print: all of them with --all; else the open and negotiating ones, plus, for a
    direction and domain pair with nothing open, its latest failure (so a pair that cannot connect
    shows why without --all). ``connections`` is most recent first."""
    if everything:
        return list(connections)
    live = {(r["direction"], r["local"], r["remote"]) for r in connections
            if r.get("state") in ("open", "negotiating")}
    shown: set[tuple[str, str, str]] = set()
    rows = []
    for r in connections:
        key = (r["direction"], r["local"], r["remote"])
        if r.get("state") in ("open", "negotiating"):
            rows.append(r)
        elif r.get("state") == "failed" and key not in live and key not in shown:
            shown.add(key)
            rows.append(r)
    return rows


def cmd_status(args: argparse.Namespace) -> int:
    from peerage.config import default_config_path, load_config
    from peerage.server import read_status

    config = load_config(args.config or default_config_path())
    status = read_status(config).get("s2s")
    if not status:
        print("no s2s status: is `peerage serve` running with this configuration?")
        return 1
    if status_time := read_status(config).get("updated_at"):
        print(f"status of the running server as of {_time(status_time)}")
    policy = status.get("policy", {})
    print(f"policy: default level {policy.get('default')}"
          + (", legacy pre-1.0 dialback only" if policy.get("legacy") else "")
          + (f", allow {policy['allow']}" if policy.get("allow") else "")
          + (f", deny {policy['deny']}" if policy.get("deny") else ""))
    for domain, kind in status.get("certificates", {}).items():
        print(f"certificate for {domain}: {kind}")
    queues = status.get("queues", {})
    for route, count in queues.items():
        print(f"queued: {count} stanzas for {route}")
    rows = _rows(status.get("connections", []), args.all)
    if not rows:
        print("no open connections" + ("" if args.all else " (use --all for recent history)"))
        return 0
    print(f"{'dir':3} {'local':24} {'remote':24} {'lvl':3} {'state':7} {'tls':8} {'auth':13} "
          f"{'since':8} {'stanzas':>7}  why")
    for r in rows:
        print(f"{r['direction']:3} {r['local']:24} {r['remote']:24} {r['level']:3} {r['state']:7} "
              f"{r.get('tls') or 'clear':8} {r.get('authentication') or '-':13} {_time(r.get('started')):8} "
              f"{r.get('stanzas', 0):>7}  {r.get('reason', '')}")
    return 0


def cmd_check_federation(args: argparse.Namespace) -> int:
    from peerage.config import default_config_path, load_config
    from peerage.xmpp.s2s_check import run_check

    return run_check(load_config(args.config or default_config_path()), args.domain, args.local)
