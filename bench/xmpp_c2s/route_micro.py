#!/usr/bin/env python3
"""bench/xmpp_c2s/route_micro.py: the cost of routing one chat message in-process, no sockets.

Two accounts on one domain, each with one bound, available session whose transport is a list
(fake sessions). Every message goes the server's real path from the sender's client session to the
receiver's ``send``: the stanza router and the events with the service's feature modules (or, for
a tree before the events, ``XmppCore.from_client``), with an in-memory store. Messages are built
before the clock starts; the clock covers routing only. Rounds alternate between the trees when a
baseline is given, each tree in its own interpreter.

Usage: python3 bench/xmpp_c2s/route_micro.py [--messages 20000] [--rounds 5] [--archive]
       [--baseline-src DIR ...] [--baseline REV] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DOMAIN = "a.test"
ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"


class MemoryStorage:
    """The storage calls the message path can make, kept in memory."""

    def __init__(self) -> None:
        self.archive: list[dict[str, Any]] = []

    async def load_roster(self, owner: str) -> tuple[int, dict[str, Any]]:
        return 0, {}

    async def get_blocklist(self, owner: str) -> set[str]:
        return set()

    async def archive_many(self, rows: list[dict[str, Any]]) -> None:
        self.archive.extend(rows)

    def __getattr__(self, name: str) -> Any:
        async def nothing(*_args: Any, **_kwargs: Any) -> Any:
            return None
        return nothing


class Accounts:
    async def exists(self, bare: str) -> bool:
        return bare in (ALICE, BOB)


class FakeSession:
    def __init__(self, bare: str, resource: str) -> None:
        self.bare_jid = bare
        self.resource = resource
        self.full_jid = f"{bare}/{resource}"
        self.available = True
        self.priority = 0
        self.last_presence = None
        self.directed = None
        self.roster_requested = False
        self.blocklist_requested = False
        self.carbons = False
        self.interested = True
        self.received: list[Any] = []
        self.send = self.received.append


async def _world(archive: bool) -> tuple[Any, FakeSession, FakeSession]:
    """(from_client, alice's session, bob's session) for the tree on sys.path."""
    from peerage.xmpp.router import Router
    storage = MemoryStorage()
    accounts = Accounts()
    router = Router([DOMAIN])
    try:
        from peerage.xmpp.context import XmppContext
    except ImportError:  # the tree before named events
        from peerage.xmpp.core import XmppCore

        from peerage.xmpp.service import FEATURES as OLD_FEATURES
        core = XmppCore(router=router, storage=storage, accounts=accounts,  # type: ignore[arg-type]
                        archive_enabled=archive, feature_classes=OLD_FEATURES)
        alice, bob = FakeSession(ALICE, "a"), FakeSession(BOB, "b")
        for session in (alice, bob):
            await core.user(session.bare_jid)
            router.bind(session)  # type: ignore[arg-type]
        return core.from_client, alice, bob
    from peerage.xmpp.events import Events
    from peerage.xmpp.service import FEATURES
    from peerage.xmpp.stanzas import StanzaRouter
    from peerage.xmpp.users import Users
    users = Users(storage, accounts.exists, lambda bare: bool(router.sessions.get(bare)))  # type: ignore[arg-type]
    ctx = XmppContext(events=Events(), router=router, storage=storage,  # type: ignore[arg-type]
                      users=users, accounts=accounts, archive_enabled=archive)
    ctx.features.extend(feature(ctx) for feature in FEATURES)
    stanzas = StanzaRouter(ctx)
    alice, bob = FakeSession(ALICE, "a"), FakeSession(BOB, "b")
    for session in (alice, bob):
        await users.load(session.bare_jid)
        router.bind(session)  # type: ignore[arg-type]
    return stanzas.from_client, alice, bob


async def _measure(messages: int, archive: bool, passes: int = 5) -> float:
    """Microseconds per message: the best of ``passes`` timed passes of ``messages`` messages alice -> bob/b.

    The best pass is the figure least disturbed by other work on a shared machine.
    """
    from peerage.xmpp.stream import Element
    from_client, alice, bob = await _world(archive)

    def prepare(count: int) -> list[Any]:
        batch = []
        for i in range(count):
            message = Element("message", "", {"to": f"{BOB}/b", "type": "chat", "id": f"m{i}",
                                              "from": alice.full_jid})
            message.add("body", text=f"message {i}")
            batch.append(message)
        return batch

    # Warm-up: the first messages fill caches, as on a running server.
    for message in prepare(200):
        result = from_client(alice, message)
        if result is not None:
            await result
    best = float("inf")
    for _ in range(passes):
        batch = prepare(messages)
        bob.received.clear()
        gc.collect()
        gc.freeze()  # the prepared messages are not the router's garbage
        pending = 0
        start = time.perf_counter_ns()
        for message in batch:
            result = from_client(alice, message)
            if result is not None:
                pending += 1
                await result
        elapsed = time.perf_counter_ns() - start
        gc.unfreeze()
        assert len(bob.received) == messages, (len(bob.received), messages)
        assert pending == 0 or archive, f"{pending} messages needed an await"
        best = min(best, elapsed / 1000 / messages)
    return best


def _child(messages: int, archive: bool, profile: bool) -> None:
    if profile:
        import cProfile
        import pstats
        profiler = cProfile.Profile()
        profiler.enable()
        asyncio.run(_measure(messages, archive))
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        return
    print(json.dumps({"us": asyncio.run(_measure(messages, archive))}))


def _run(src: Path, messages: int, archive: bool) -> float:
    env = dict(os.environ, PYTHONPATH=str(src))
    args = [sys.executable, str(Path(__file__).resolve()), "--child", "--messages", str(messages)]
    if archive:
        args.append("--archive")
    out = subprocess.run(args, env=env, check=True, capture_output=True, text=True, cwd=tempfile.gettempdir())
    return float(json.loads(out.stdout.strip().splitlines()[-1])["us"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--archive", action="store_true", help="with message archiving enabled (XEP-0313)")
    parser.add_argument("--baseline-src", type=Path, action="append", default=[],
                        help="an earlier src/ tree (repeatable)")
    parser.add_argument("--baseline", help="a git revision whose src/ is the baseline")
    parser.add_argument("--src", type=Path, default=ROOT / "src")
    parser.add_argument("--profile", action="store_true", help="cProfile one pass of the current tree")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child or args.profile:
        _child(args.messages, args.archive, args.profile)
        return
    trees = {"current": args.src}
    scratch = None
    if args.baseline:
        scratch = Path(tempfile.mkdtemp(prefix="peerage-baseline-"))
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline, "src"],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(scratch)], input=archive, check=True)
        trees["baseline"] = scratch / "src"
    for i, src in enumerate(args.baseline_src):
        trees[f"baseline{i + 1}" if len(args.baseline_src) > 1 or args.baseline else "baseline"] = src
    try:
        load_before = os.getloadavg()
        figures: dict[str, list[float]] = {name: [] for name in trees}
        for _ in range(args.rounds):
            for name, src in trees.items():
                figures[name].append(_run(src, args.messages, args.archive))
        load_after = os.getloadavg()
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    print(f"{args.messages} chat messages client -> online full JID, {args.rounds} alternating rounds, "
          f"archive {'on' if args.archive else 'off'}, load average {load_before[0]:.2f} -> {load_after[0]:.2f}")
    for name, values in figures.items():
        print(f"  {name:9s} us/message: min {min(values):.2f}  median {statistics.median(values):.2f}  "
              f"max {max(values):.2f}  ({', '.join(f'{v:.2f}' for v in values)})")


if __name__ == "__main__":
    main()
