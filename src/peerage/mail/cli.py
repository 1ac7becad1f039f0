"""`peerage mail ...`: operator commands for mail. `peerage mail queue` lists the outbound queue and
retries or drops entries; it works on the database directly, so it runs beside a live server (which
rescans the queue every few seconds). `peerage mail reports` shows the DMARC aggregate and TLS-RPT
reports received at the report addresses and the DMARC and TLS reports this server sent."""

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
    reports = mail_commands.add_parser(
        "reports", help="DMARC aggregate and TLS-RPT reports received, and our DMARC and TLS-RPT reports sent")
    reports.add_argument("--days", type=float, default=7.0, help="reports received (and ours sent) in the last DAYS days")
    reports.add_argument("--domain", default=None, help="only reports about this domain")
    reports.add_argument("--json", action="store_true", help="machine-readable output")
    reports.set_defaults(func=cmd_reports)


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


def cmd_reports(args: argparse.Namespace) -> int:
    from peerage.config import default_config_path, load_config

    config = load_config(args.config or default_config_path())
    return asyncio.run(_reports(config, args))


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(seconds))


async def _reports(config: Any, args: argparse.Namespace) -> int:
    import json

    from peerage.mail.reports.store import DMARC_REPORTS, TLS_REPORTS, ReportStore
    from peerage.store import Store

    store = Store(config.database_url)
    try:
        await store.migrate()
        reports = ReportStore(store)
        since = time.time() - args.days * 86400.0
        received = await reports.received(since, args.domain)
        failing = await reports.failing_sources([r["id"] for r in received], limit=20)
        sent = await reports.sent(DMARC_REPORTS, since)
        tls_sent = await reports.sent(TLS_REPORTS, since)
        if args.domain:
            sent = [s for s in sent if s["policy_domain"] == args.domain.lower()]
            tls_sent = [s for s in tls_sent if s["policy_domain"] == args.domain.lower()]
        if args.json:
            print(json.dumps({"received": received, "failing_sources": failing, "sent": sent, "tls_sent": tls_sent},
                             indent=1, default=str))
            return 0
        for kind, title, unit in (("dmarc", "DMARC aggregate reports received", "messages"),
                                  ("tlsrpt", "TLS reports received (RFC 8460)", "sessions")):
            rows = [r for r in received if r["kind"] == kind]
            print(f"{title}: {len(rows)}")
            if rows:
                print(f"  {'domain':<24} {'reporter':<20} {'period (UTC)':<35} {unit:>9} {'pass':>9} {'fail':>9}")
            for r in rows:
                period = f"{_when(r['begin'])} - {_when(r['end'])}"
                print(f"  {r['policy_domain']:<24} {r['org_name'][:20]:<20} {period:<35} {r['messages']:>9}"
                      f" {r['passed']:>9} {r['failed']:>9}")
            if rows:
                total = sum(r["messages"] for r in rows)
                failed = sum(r["failed"] for r in rows)
                share = f" ({100.0 * failed / total:.1f} %)" if total else ""
                print(f"  total: {total} {unit}, {failed} failed{share}")
            sources = [f for f in failing if f["kind"] == kind]
            if sources:
                label = "failing DMARC sources" if kind == "dmarc" else "TLS failures"
                print(f"  top {label}:")
                for f in sources:
                    if kind == "dmarc":
                        print(f"    {f['source']:<40} {f['count']:>9}  disposition={f['disposition']}"
                              f" header_from={f['header_from']}")
                    else:
                        print(f"    {f['disposition']:<32} {f['count']:>9}  mx={f['header_from']} from={f['source']}")
        print(f"Our DMARC aggregate reports: {len(sent)}")
        for s in sent:
            print(f"  {_when(s['period'])}  {s['policy_domain']:<24} {s['outcome']}")
        print(f"Our TLS reports (RFC 8460): {len(tls_sent)}")
        for s in tls_sent:
            print(f"  {_when(s['period'])}  {s['policy_domain']:<24} {s['outcome']}")
        return 0
    finally:
        await store.close()
