"""`peerage mail ...`: operator commands for mail. `peerage mail queue` lists the outbound queue and
retries or drops entries; it works on the database directly, so it runs beside a live server (which
rescans the queue every few seconds)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any


def register(commands: Any) -> None:
    mail = commands.add_parser("mail", help="mail operator tools")
    mail_commands = mail.add_subparsers(dest="mail_command", required=True, metavar="ACTION")
    queue = mail_commands.add_parser("queue", help="list the outbound queue, retry or drop entries")
    actions = queue.add_subparsers(dest="queue_action", metavar="list|retry|drop")
    actions.add_parser("list", help="list queued messages (the default)")
    retry = actions.add_parser("retry", help="try entries again now")
    retry.add_argument("ids", nargs="*", type=int, help="entry ids (default: all)")
    drop = actions.add_parser("drop", help="remove entries without delivering or bouncing them")
    drop.add_argument("ids", nargs="+", type=int)
    queue.set_defaults(func=cmd_queue)


def cmd_queue(args: argparse.Namespace) -> int:
    from peerage.config import default_config_path, load_config

    config = load_config(args.config or default_config_path())
    return asyncio.run(_queue(config, args))


async def _queue(config: Any, args: argparse.Namespace) -> int:
    from peerage.mail.smtp.queue import drop_entries, list_entries, retry_entries
    from peerage.mail.smtp.spool import Spool
    from peerage.store import Store

    store = Store(config.database_url)
    try:
        await store.migrate()
        action = args.queue_action or "list"
        if action == "list":
            entries = await list_entries(store)
            if not entries:
                print("queue is empty")
            now = time.time()
            for e in entries:
                due = max(0, int(e.next_attempt_at - now))
                print(
                    f"{e.id}\t{e.mail_from or '<>'}\t{e.recipient}\t{e.size} bytes\tattempts={e.attempts}"
                    f"\tnext in {due}s\t{e.last_error}"
                )
        elif action == "retry":
            count = await retry_entries(store, list(args.ids) or None)
            print(f"{count} entries will be retried now")
            if args.ids and count < len(set(args.ids)):
                return _unknown_ids(await list_entries(store), args.ids)
        elif action == "drop":
            known = await list_entries(store)
            count = await drop_entries(store, Spool(config.data_dir / "queue"), list(args.ids))
            print(f"{count} entries dropped")
            if count < len(set(args.ids)):
                return _unknown_ids(known, args.ids)
        return 0
    finally:
        await store.close()


def _unknown_ids(entries: list[Any], ids: list[int]) -> int:
    """Name the ids that are not in the queue (one line on stderr) and fail, so scripts notice."""
    missing = sorted(set(ids) - {e.id for e in entries})
    if missing:
        print(f"peerage: no queue entry {', '.join(map(str, missing))}; see `peerage mail queue list`",
              file=sys.stderr)
        return 1
    return 0
