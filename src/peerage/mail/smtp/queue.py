"""The durable outbound queue: accepted mail waits here until it is delivered or bounced.

This module is in charge of the queue's life cycle, after Mox's queue package: a message is written to
a spool file and fsynced, then one row per recipient is committed, and only then does the SMTP server
answer 250. A worker picks due rows, groups them by message and destination domain, delivers (locally
through the mailbox store, remotely through `client.Deliverer`), and then deletes the rows, schedules a
retry with exponential back-off, sends a delay notice, or bounces with a DSN (RFC 3464). A crash at any
point loses nothing that was acknowledged: on restart, half-written files (never acknowledged) are
removed and every committed row is tried again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, insert, select, update

from peerage.mail.queue_tables import mail_queue
from peerage.mail.smtp import dsn
from peerage.mail.smtp.client import DELIVERED, PERMANENT, Outcome
from peerage.mail.smtp.schedule import Schedule
from peerage.mail.smtp.spool import Spool
from peerage.ops import metrics

log = logging.getLogger(__name__)

# Deliveries in flight at once (Postfix's default_destination_concurrency_limit is 20 per domain and
# default_process_limit 100 overall; one process here, so a modest figure).
MAX_CONCURRENT_DELIVERIES = 16
# Rows picked per scan; the rest wait for the next scan.
MAX_ROWS_PER_SCAN = 500
# The worker looks at the table at least this often, so `peerage mail queue retry` run by an operator
# in another process takes effect without a signal.
RESCAN_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class QueueEntry:
    id: int
    message_file: str
    mail_from: str
    recipient: str
    recipient_domain: str
    size: int
    smtputf8: bool
    queued_at: int
    next_attempt_at: int
    attempts: int
    last_error: str
    delay_notice_sent: bool


def _entry(row: Any) -> QueueEntry:
    return QueueEntry(**{name: getattr(row, name) for name in QueueEntry.__slots__})


# (recipient, message, mail_from=envelope sender): the envelope sender is what Sieve sees (RFC 5228 §5.4).
LocalDeliver = Callable[..., Awaitable[None]]
RemoteDeliver = Callable[[str, str, list[str], bytes, bool], Awaitable[dict[str, Outcome]]]


class OutboundQueue:
    def __init__(
        self,
        *,
        store: Any,
        spool_dir: Path,
        schedule: Schedule,
        is_local: Callable[[str], bool],
        deliver_local: LocalDeliver,
        deliver_remote: RemoteDeliver,
        reporting_mta: str,
        sign: Callable[[str, bytes], Awaitable[bytes]] | None = None,
    ) -> None:
        self.store = store
        self.spool = Spool(spool_dir)
        self.schedule = schedule
        self.is_local = is_local
        self.deliver_local = deliver_local
        self.deliver_remote = deliver_remote
        self.reporting_mta = reporting_mta
        self.sign = sign
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._in_flight: set[int] = set()
        # Rows whose attempt failed in a way the table may not record (the database itself failing):
        # not tried again before this time, whatever the table says, so nothing is retried at once.
        self._held: dict[int, float] = {}
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_DELIVERIES)
        self._workers: set[asyncio.Task[None]] = set()
        #: In a cluster (peerage.cluster.mail.claim_due): ``await claim_due(conn, now, limit)`` returns
        #: the due rows, claimed for this node with SELECT ... FOR UPDATE SKIP LOCKED. None: read them.
        self.claim_due: Callable[[Any, int, int], Awaitable[list[Any]]] | None = None

    # --- accepting ---------------------------------------------------------------------------------

    async def enqueue(self, mail_from: str, recipients: list[str], data: bytes, *, smtputf8: bool = False) -> None:
        """Make the message durable for every recipient. Returns only once file and rows are on disk."""
        if not recipients:
            return
        name = await asyncio.to_thread(self.spool.write, data)
        now = int(time.time())
        rows = [
            {
                "message_file": name,
                "mail_from": mail_from,
                "recipient": rcpt,
                "recipient_domain": rcpt.rpartition("@")[2].lower(),
                "size": len(data),
                "smtputf8": smtputf8,
                "queued_at": now,
                "next_attempt_at": now,
                "attempts": 0,
                "last_error": "",
                "delay_notice_sent": False,
            }
            for rcpt in recipients
        ]
        try:
            async with self.store.begin() as conn:
                await conn.execute(insert(mail_queue), rows)
        except BaseException:
            await asyncio.to_thread(self.spool.remove, name)
            raise
        self._wake.set()

    # --- running -----------------------------------------------------------------------------------

    async def recover(self) -> None:
        """Before listening: drop half-written and orphaned spool files (none was acknowledged)."""
        await asyncio.to_thread(self.spool.clear_temporary)
        async with self.store.begin() as conn:
            referenced = {r[0] for r in await conn.execute(select(mail_queue.c.message_file).distinct())}
        on_disk = await asyncio.to_thread(self.spool.names)
        for orphan in on_disk - referenced:
            await asyncio.to_thread(self.spool.remove, orphan)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="smtp-queue")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for worker in list(self._workers):
            worker.cancel()
        for worker in list(self._workers):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await worker

    def kick(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                next_due = await self._scan()
            except Exception:
                log.exception("queue scan failed")
                next_due = time.time() + RESCAN_SECONDS
            wait = max(0.0, min(next_due - time.time(), RESCAN_SECONDS))
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a cancellation that
            # arrives as the event is set (a worker finishing while stop() cancels), and this loop
            # would then run on and stop() wait for it for ever (CPython gh-86296, fixed in 3.12).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    async def _scan(self) -> float:
        now = int(time.time())
        # Attempts in flight when the rows are read: one may finish while we wait for the database and
        # leave it stale, so these stay skipped until the next scan reads them afresh.
        busy = set(self._in_flight)
        async with self.store.begin() as conn:
            rows = [
                _entry(r)
                for r in (await self.claim_due(conn, now, MAX_ROWS_PER_SCAN) if self.claim_due is not None
                          else await conn.execute(
                              select(mail_queue)
                              .where(mail_queue.c.next_attempt_at <= now)
                              .order_by(mail_queue.c.next_attempt_at)
                              .limit(MAX_ROWS_PER_SCAN)))
            ]
            upcoming = (await conn.execute(select(func.min(mail_queue.c.next_attempt_at)))).scalar()
        groups: dict[tuple[str, str], list[QueueEntry]] = defaultdict(list)
        held_until = min(self._held.values(), default=None)
        if self._held:
            self._held = {i: t for i, t in self._held.items() if t > now}
        for entry in rows:
            if entry.id in self._held:
                continue
            if entry.id not in self._in_flight and entry.id not in busy:
                groups[(entry.message_file, entry.recipient_domain)].append(entry)
        for group in groups.values():
            self._in_flight.update(e.id for e in group)
            worker = asyncio.create_task(self._attempt(group))
            self._workers.add(worker)
            worker.add_done_callback(self._workers.discard)
        if upcoming is None or upcoming <= now:
            upcoming = now + RESCAN_SECONDS
        if held_until is not None and held_until > now:
            upcoming = min(upcoming, held_until)
        return float(upcoming)

    async def _attempt(self, group: list[QueueEntry]) -> None:
        try:
            async with self._slots:
                await self._attempt_group(group)
        except Exception as exc:
            # Any failure of an attempt is a temporary failure with the usual back-off, never an
            # immediate retry: the rows are held in memory for the first delay and, when the table can
            # still be written, rescheduled there like any other deferral.
            log.exception("delivery attempt failed")
            hold = time.time() + self.schedule.first_retry
            for entry in group:
                self._held[entry.id] = hold
            try:
                await self._defer(group, f"delivery attempt failed: {exc!r}")
            except Exception:
                log.exception("recording the failed attempt failed; retrying after %.0f s", self.schedule.first_retry)
        finally:
            self._in_flight.difference_update(e.id for e in group)
            self._wake.set()

    async def _attempt_group(self, group: list[QueueEntry]) -> None:
        first = group[0]
        try:
            data = await asyncio.to_thread(self.spool.read, first.message_file)
        except FileNotFoundError:
            log.error("queue file %s is missing; dropping %d rows", first.message_file, len(group))
            await self._remove(group)
            return
        outcomes: dict[str, Outcome] = {}
        if self.is_local(first.recipient_domain):
            for entry in group:
                try:
                    await self.deliver_local(entry.recipient, data, mail_from=entry.mail_from)
                    outcomes[entry.recipient] = Outcome(DELIVERED, "delivered to mailbox", "2.0.0")
                except Exception as exc:
                    outcomes[entry.recipient] = Outcome("temporary", f"local delivery failed: {exc}", "4.3.0")
        else:
            try:
                outcomes = await self.deliver_remote(
                    first.recipient_domain, first.mail_from, [e.recipient for e in group], data, first.smtputf8
                )
            except Exception as exc:
                log.exception("delivery to %s failed", first.recipient_domain)
                outcomes = dict.fromkeys(
                    (e.recipient for e in group), Outcome("temporary", f"delivery failed: {exc!r}", "4.3.0")
                )
        await self._settle(group, outcomes, data)

    async def _defer(self, group: list[QueueEntry], reason: str) -> None:
        """Reschedule rows after a failed attempt, without notices (the message may be unreadable)."""
        now = time.time()
        async with self.store.begin() as conn:
            for entry in group:
                next_at = self.schedule.next_attempt(entry.queued_at, entry.attempts + 1, now)
                await conn.execute(
                    update(mail_queue)
                    .where(mail_queue.c.id == entry.id)
                    .values(
                        attempts=entry.attempts + 1,
                        next_attempt_at=math.ceil(next_at if next_at is not None else now),
                        last_error=reason[:2000],
                    )
                )

    async def _settle(self, group: list[QueueEntry], outcomes: dict[str, Outcome], data: bytes) -> None:
        now = time.time()
        done: list[QueueEntry] = []
        failed: list[tuple[QueueEntry, Outcome]] = []
        delayed: list[tuple[QueueEntry, Outcome]] = []
        retry: list[tuple[QueueEntry, Outcome, float, bool]] = []
        for entry in group:
            outcome = outcomes.get(entry.recipient) or Outcome("temporary", "no answer for this recipient", "4.4.0")
            metrics.delivery(outcome.kind)
            if outcome.kind == DELIVERED:
                log.info("delivered %s to %s (%s) tls=%s", entry.message_file, entry.recipient, outcome.reply, outcome.tls)
                done.append(entry)
                continue
            if outcome.kind == PERMANENT:
                log.info("bouncing %s to %s: %s", entry.message_file, entry.recipient, outcome.reply)
                failed.append((entry, outcome))
                done.append(entry)
                continue
            next_at = self.schedule.next_attempt(entry.queued_at, entry.attempts + 1, now)
            if next_at is None:
                failed.append((entry, Outcome(PERMANENT, f"gave up after {entry.attempts + 1} attempts: {outcome.reply}", "4.4.7", outcome.remote_mta)))
                done.append(entry)
                continue
            notice = self.schedule.delay_notice_due(entry.queued_at, now, entry.delay_notice_sent)
            if notice:
                delayed.append((entry, outcome))
            log.info("deferred %s to %s: %s", entry.message_file, entry.recipient, outcome.reply)
            retry.append((entry, outcome, next_at, notice))
        # Notices first: if sending one fails, the rows stay and it is tried again next time.
        if failed:
            await self._notify(failed, "failed", data)
        if delayed:
            await self._notify(delayed, "delayed", data)
        async with self.store.begin() as conn:
            for entry, outcome, next_at, notice in retry:
                await conn.execute(
                    update(mail_queue)
                    .where(mail_queue.c.id == entry.id)
                    .values(
                        attempts=entry.attempts + 1,
                        next_attempt_at=math.ceil(next_at),
                        last_error=outcome.reply[:2000],
                        delay_notice_sent=entry.delay_notice_sent or notice,
                    )
                )
        await self._remove(done)

    async def _remove(self, entries: list[QueueEntry]) -> None:
        if not entries:
            return
        files = {e.message_file for e in entries}
        async with self.store.begin() as conn:
            await conn.execute(delete(mail_queue).where(mail_queue.c.id.in_([e.id for e in entries])))
            still_used = {
                r[0]
                for r in await conn.execute(
                    select(mail_queue.c.message_file).where(mail_queue.c.message_file.in_(files)).distinct()
                )
            }
        for name in files - still_used:
            await asyncio.to_thread(self.spool.remove, name)

    async def _notify(self, items: list[tuple[QueueEntry, Outcome]], action: str, data: bytes) -> None:
        sender = items[0][0].mail_from
        if not sender:
            return  # RFC 5321 §6.1: never send a notification about a notification
        first = items[0][0]
        retry_until = datetime.fromtimestamp(first.queued_at + self.schedule.lifetime, UTC)
        report = dsn.compose_dsn(
            reporting_mta=self.reporting_mta,
            postmaster=f"MAILER-DAEMON@{self.reporting_mta}",
            sender=sender,
            original=data,
            recipients=[
                dsn.RecipientStatus(e.recipient, action, o.status, o.reply, o.remote_mta) for e, o in items
            ],
            arrival=datetime.fromtimestamp(first.queued_at, UTC),
            now=datetime.now(UTC),
            retry_until=retry_until if action == "delayed" else None,
        )
        await self.enqueue("", [sender], report, smtputf8=not sender.isascii() or any(e.smtputf8 for e, _ in items))


# --- operator commands, used by `peerage mail queue` beside a running server ----------------------


async def list_entries(store: Any) -> list[QueueEntry]:
    async with store.begin() as conn:
        return [_entry(r) for r in await conn.execute(select(mail_queue).order_by(mail_queue.c.id))]


async def retry_entries(store: Any, ids: list[int] | None) -> int:
    """Make entries due now; all of them when `ids` is None. Returns how many rows changed."""
    statement = update(mail_queue).values(next_attempt_at=0)
    if ids is not None:
        statement = statement.where(mail_queue.c.id.in_(ids))
    async with store.begin() as conn:
        result = await conn.execute(statement)
    return int(result.rowcount or 0)


async def drop_entries(store: Any, spool: Spool, ids: list[int]) -> int:
    """Remove entries without delivering or bouncing them; their files go when no row needs them."""
    async with store.begin() as conn:
        files = {
            r[0] for r in await conn.execute(select(mail_queue.c.message_file).where(mail_queue.c.id.in_(ids)))
        }
        result = await conn.execute(delete(mail_queue).where(mail_queue.c.id.in_(ids)))
        still_used = {
            r[0]
            for r in await conn.execute(
                select(mail_queue.c.message_file).where(mail_queue.c.message_file.in_(files)).distinct()
            )
        }
    for name in files - still_used:
        spool.remove(name)
    return int(result.rowcount or 0)
