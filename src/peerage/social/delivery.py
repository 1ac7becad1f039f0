"""The durable outbound delivery queue: every activity to every remote inbox, once, with retries.

This module is in charge of getting activities to remote inboxes, in the shape of the SMTP queue
(``peerage.mail.smtp.queue``): ``enqueue`` commits one row per target inbox (followers on the same
server share their shared inbox, ActivityPub §7.1.3) in the caller's transaction, and only then is the
post reported as made; a worker picks due rows, signs each request afresh (its Date must be fresh at
the remote), POSTs it, and deletes the row on a 2xx, in one transaction with nothing else, so a row is
delivered once. A failure (network, 5xx, 429, 408) schedules a retry after ``retry_base`` seconds,
doubling each time, until ``retry_max_age`` has passed; other 4xx answers are final (the remote
refuses the activity and will refuse it again). Rows survive restarts.

Per remote host there are at most ``per_host_concurrency`` requests in flight and ``per_host_rate``
per second (a token bucket), so fanning one post out to many followers on one large server does
not flood it.

Signatures: the first request to a host is signed per RFC 9421; if the host answers 400, 401 or 403
the same request is signed per draft-cavage and sent again at once, and that choice is remembered for
the host (Fedify's "double-knocking", FEP-8b32 era practice). Mastodon and bovine get cavage after
one try; Fedify keeps RFC 9421.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select, update

from peerage.social import signatures
from peerage.social.core import host_of
from peerage.social.fetch import FetchError
from peerage.social.tables import social_deliveries

log = logging.getLogger(__name__)

# Rows picked per scan; the rest wait for the next one.
MAX_ROWS_PER_SCAN = 2000
# The worker looks at the table at least this often, so `peerage social queue retry` from another
# process takes effect without a signal (the same as the SMTP queue's rescan).
RESCAN_SECONDS = 5.0
# How long a host's answer about RFC 9421 is remembered before it is asked again.
SCHEME_MEMORY_SECONDS = 86400.0
# Statuses that mean "try again later" (RFC 9110 §15.5.9 408, §15.6; RFC 6585 429).
RETRYABLE = frozenset({408, 425, 429})


@dataclass(frozen=True, slots=True)
class Delivery:
    id: int
    account: str
    inbox: str
    host: str
    body: str
    queued_at: int
    next_attempt_at: int
    attempts: int
    last_error: str


def _delivery(row: Any) -> Delivery:
    return Delivery(row.id, row.account, row.inbox, row.host, row.body, row.queued_at, row.next_attempt_at,
                    row.attempts, row.last_error)


async def enqueue(conn: Any, account: str, inboxes: Sequence[str], body: str) -> int:
    """Queue `body` to each distinct inbox, in `conn`'s transaction. Returns how many rows."""
    now = int(time.time())
    targets = list(dict.fromkeys(i for i in inboxes if i.startswith("https://")))
    if targets:
        await conn.execute(insert(social_deliveries), [
            {"account": account, "inbox": inbox, "host": host_of(inbox), "body": body, "queued_at": now,
             "next_attempt_at": now, "attempts": 0, "last_error": ""} for inbox in targets])
    return len(targets)


class _Bucket:
    """A token bucket: `rate` requests per second, bursts up to `rate`."""

    def __init__(self, rate: float) -> None:
        self.rate = max(rate, 0.1)
        self.tokens = self.rate
        self.stamp = time.monotonic()

    async def take(self) -> None:
        while True:
            now = time.monotonic()
            self.tokens = min(self.rate, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens >= 1:
                self.tokens -= 1
                return
            await asyncio.sleep((1 - self.tokens) / self.rate)


class DeliveryQueue:
    def __init__(self, social: Any) -> None:
        self.social = social
        self.host = social.host
        self.store = social.host.store
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._inflight: set[int] = set()
        self._semaphores: dict[str, asyncio.Semaphore] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._cavage_hosts: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.delivered = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def kick(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                wait = await self._scan()
            except Exception:
                log.exception("social delivery scan failed")
                wait = RESCAN_SECONDS
            self._wake.clear()
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can lose the cancellation
            # stop() sends if the event is set at that moment (CPython gh-86296, fixed in 3.12).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    async def _scan(self) -> float:
        now = int(time.time())
        async with self.store.begin() as conn:
            rows = (await conn.execute(select(social_deliveries).where(
                social_deliveries.c.next_attempt_at <= now).order_by(
                social_deliveries.c.next_attempt_at, social_deliveries.c.id).limit(MAX_ROWS_PER_SCAN))).all()
            upcoming = (await conn.execute(select(func.min(social_deliveries.c.next_attempt_at)).where(
                social_deliveries.c.next_attempt_at > now))).scalar()
        for row in rows:
            if row.id in self._inflight:
                continue
            self._inflight.add(row.id)
            task = asyncio.get_running_loop().create_task(self._deliver(_delivery(row)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        wait = RESCAN_SECONDS
        if upcoming is not None:
            wait = min(wait, max(0.2, upcoming - time.time()))
        return wait

    def _limits(self, host: str) -> tuple[asyncio.Semaphore, _Bucket]:
        config = self.host.config.social
        if host not in self._semaphores:
            self._semaphores[host] = asyncio.Semaphore(config.per_host_concurrency)
            self._buckets[host] = _Bucket(config.per_host_rate)
        return self._semaphores[host], self._buckets[host]

    async def _deliver(self, item: Delivery) -> None:
        semaphore, bucket = self._limits(item.host)
        try:
            async with semaphore:
                await bucket.take()
                await self._attempt(item)
        except Exception as exc:  # a bug must not stop the queue; the row is retried
            log.exception("social delivery %s to %s failed", item.id, item.inbox)
            await self._defer(item, f"internal error: {exc}")
        finally:
            self._inflight.discard(item.id)

    def _use_cavage(self, host: str) -> bool:
        until = self._cavage_hosts.get(host)
        return until is not None and until > time.monotonic()

    async def _attempt(self, item: Delivery) -> None:
        body = item.body.encode()
        key = await self.social.signing_key(item.account)
        key_id = self.social.key_id(item.account, key.name)
        schemes = ["cavage"] if self._use_cavage(item.host) else ["rfc9421", "cavage"]
        status, text = 0, ""
        try:
            for scheme in schemes:
                sign = signatures.sign_cavage if scheme == "cavage" else signatures.sign_rfc9421
                headers = sign("POST", item.inbox, key.private_key, key_id, body)
                status, text = await self.social.fetcher.post(item.inbox, body, headers)
                if scheme == "rfc9421" and status in (400, 401, 403):
                    self._cavage_hosts[item.host] = time.monotonic() + SCHEME_MEMORY_SECONDS
                    continue
                break
        except FetchError as exc:
            await self._defer(item, str(exc))
            return
        if 200 <= status < 300:
            async with self.store.begin() as conn:
                await conn.execute(delete(social_deliveries).where(social_deliveries.c.id == item.id))
            self.delivered += 1
            log.info("social: delivered %s to %s (HTTP %s)", item.id, item.inbox, status)
        elif status >= 500 or status in RETRYABLE:
            await self._defer(item, f"HTTP {status}: {text[:200]}")
        else:
            log.warning("social: %s refused delivery %s with HTTP %s: %s; dropped", item.inbox, item.id, status,
                        text[:200])
            async with self.store.begin() as conn:
                await conn.execute(delete(social_deliveries).where(social_deliveries.c.id == item.id))

    async def _defer(self, item: Delivery, reason: str) -> None:
        config = self.host.config.social
        now = time.time()
        attempts = item.attempts + 1
        if now - item.queued_at > config.retry_max_age:
            log.warning("social: giving up delivery %s to %s after %d attempts: %s", item.id, item.inbox,
                        attempts, reason)
            async with self.store.begin() as conn:
                await conn.execute(delete(social_deliveries).where(social_deliveries.c.id == item.id))
            return
        delay = min(config.retry_base * (2 ** (attempts - 1)), 86400.0)
        log.info("social: delivery %s to %s deferred %.0fs: %s", item.id, item.inbox, delay, reason)
        async with self.store.begin() as conn:
            await conn.execute(update(social_deliveries).where(social_deliveries.c.id == item.id).values(
                attempts=attempts, next_attempt_at=int(now + delay), last_error=reason[:1000]))


async def list_entries(store: Any) -> list[Delivery]:
    async with store.begin() as conn:
        rows = (await conn.execute(select(social_deliveries).order_by(social_deliveries.c.id))).all()
    return [_delivery(r) for r in rows]


async def retry_entries(store: Any, ids: list[int] | None) -> int:
    query = update(social_deliveries).values(next_attempt_at=0)
    if ids:
        query = query.where(social_deliveries.c.id.in_(ids))
    async with store.begin() as conn:
        result = await conn.execute(query)
    return int(result.rowcount or 0)


async def drop_entries(store: Any, ids: list[int]) -> int:
    async with store.begin() as conn:
        result = await conn.execute(delete(social_deliveries).where(social_deliveries.c.id.in_(ids)))
    return int(result.rowcount or 0)


def by_host(entries: Sequence[Delivery]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for entry in entries:
        counts[entry.host] += 1
    return dict(counts)
