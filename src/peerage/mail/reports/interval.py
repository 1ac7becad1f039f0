"""The sending loop shared by the reports we send once per reporting interval (DMARC aggregate
reports, RFC 7489 §7.2, and TLS reports, RFC 8460).

This module is in charge of what both have in common: cutting time into intervals, finding the
(interval, domain) pairs that are due once an interval has ended, claiming each in the database before
it is built (so a restart or a second cluster node never sends it twice), recording the outcome, and
the hourly budget (`[reports] max_per_hour`). What a report contains and where it may go is the
subclass's `_send` (peerage.mail.reports.outgoing, peerage.mail.reports.tlsrpt).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

from peerage.mail.reports.store import ReportKind, ReportStore

log = logging.getLogger(__name__)


class IntervalReporter:
    """Sends the reports of finished intervals, at most `max_per_hour` an hour. Every node of a
    cluster may run one: an interval's report is claimed in the database before it is built."""

    kind: ClassVar[ReportKind]

    def __init__(self, store: ReportStore, *, txt: Callable[[str], Awaitable[list[Any]]],
                 enqueue: Callable[[str, list[str], bytes], Awaitable[None]],
                 sign: Callable[[str, bytes], Awaitable[bytes]], org_name: str, from_address: str, hostname: str,
                 interval: float, max_per_hour: int) -> None:
        self.store = store
        self.txt = txt
        self.enqueue = enqueue
        self.sign = sign
        self.org_name = org_name
        self.from_address = from_address
        self.hostname = hostname
        self.interval = max(1.0, interval)
        self.max_per_hour = max(1, max_per_hour)
        self._sent_at: list[float] = []

    def period_of(self, moment: float) -> float:
        return moment - moment % self.interval

    async def run_once(self, now: float | None = None) -> int:
        """Send what is due within this hour's budget; the number of intervals handled."""
        now = time.time() if now is None else now
        self._sent_at = [t for t in self._sent_at if t > now - 3600.0]
        budget = self.max_per_hour - len(self._sent_at)
        if budget <= 0:
            return 0
        handled = 0
        for period, domain in await self.store.due(self.kind, self.period_of(now), budget):
            if not await self.store.claim(self.kind, period, domain, "building", now):
                continue  # another node or an earlier run has it
            try:
                outcome = await self._send(period, domain)
            except Exception as exc:
                log.exception("%s report for %s failed", self.kind.name, domain)
                outcome = f"failed: {exc!r}"
            await self.store.set_outcome(self.kind, period, domain, outcome)
            self._sent_at.append(now)
            handled += 1
        return handled

    async def _send(self, period: float, domain: str) -> str:
        """Build and queue the report of one interval for one domain; the outcome to record."""
        raise NotImplementedError
