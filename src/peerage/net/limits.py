"""Named limits and the counters that enforce them: connections, rates and authentication failures.

This module is in charge of the in-memory bookkeeping every listener shares: how many connections an
address holds (`ConnectionCounter`), how fast a key may act (`RateLimiter`, a token bucket), and how many
authentication failures an address or account has had (`AuthThrottle`), after which attempts are
delayed and then refused until the window passes. Each table is bounded so a flood of distinct keys
cannot grow memory without limit.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from peerage.config import LimitsConfig

# Upper bound on distinct keys each table tracks; the least recently seen is forgotten first. 100k
# entries of a few dozen bytes is a few MB, enough for a large provider's concurrent client addresses.
MAX_TRACKED_KEYS = 100_000
# After this many failures, every further attempt waits this long before its answer (Dovecot's
# auth_failure_delay is 2 s), and past twice the limit the attempt is refused outright.
AUTH_FAILURE_DELAY = 2.0

Clock = Callable[[], float]


class ConnectionCounter:
    def __init__(self, per_ip: int) -> None:
        self.per_ip = per_ip
        self._counts: dict[str, int] = {}

    def acquire(self, ip: str) -> bool:
        count = self._counts.get(ip, 0)
        if count >= self.per_ip:
            return False
        self._counts[ip] = count + 1
        return True

    def release(self, ip: str) -> None:
        count = self._counts.get(ip, 0) - 1
        if count <= 0:
            self._counts.pop(ip, None)
        else:
            self._counts[ip] = count

    def count(self, ip: str) -> int:
        return self._counts.get(ip, 0)


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """Token bucket per key: `rate` events per second on average, bursts up to `burst`."""

    def __init__(self, rate: float, burst: float, clock: Clock = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def allow(self, key: str, cost: float = 1.0) -> bool:
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(self.burst, now)
            self._buckets[key] = bucket
            if len(self._buckets) > MAX_TRACKED_KEYS:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
            bucket.stamp = now
        if bucket.tokens >= cost:
            bucket.tokens -= cost
            return True
        return False


class AuthThrottle:
    """Authentication failures per IP and per account within a sliding window.

    `check()` before an attempt returns the delay to apply (0 when fine) or None to refuse outright;
    `failure()` and `success()` after it.
    """

    def __init__(self, limits: LimitsConfig, clock: Clock = time.monotonic) -> None:
        self.per_ip = limits.auth_failures_per_ip
        self.per_account = limits.auth_failures_per_account
        self.window = limits.auth_failure_window
        self._clock = clock
        self._failures: OrderedDict[str, list[float]] = OrderedDict()

    def _recent(self, key: str) -> int:
        stamps = self._failures.get(key)
        if not stamps:
            return 0
        cutoff = self._clock() - self.window
        while stamps and stamps[0] < cutoff:
            stamps.pop(0)
        if not stamps:
            del self._failures[key]
        return len(stamps)

    def check(self, ip: str, account: str | None = None) -> float | None:
        ip_failures = self._recent(f"ip:{ip}")
        account_failures = self._recent(f"acct:{account}") if account else 0
        if ip_failures >= 2 * self.per_ip or account_failures >= 2 * self.per_account:
            return None
        if ip_failures >= self.per_ip or account_failures >= self.per_account:
            return AUTH_FAILURE_DELAY
        return 0.0

    def failure(self, ip: str, account: str | None = None) -> None:
        now = self._clock()
        for key in (f"ip:{ip}", f"acct:{account}" if account else None):
            if key is None:
                continue
            stamps = self._failures.setdefault(key, [])
            self._failures.move_to_end(key)
            stamps.append(now)
            del stamps[: -2 * max(self.per_ip, self.per_account)]  # never keep more than we can use
        while len(self._failures) > MAX_TRACKED_KEYS:
            self._failures.popitem(last=False)

    def success(self, ip: str, account: str | None = None) -> None:
        if account:
            self._failures.pop(f"acct:{account}", None)


class Limits:
    """The limits every service shares, built from the [limits] section."""

    def __init__(self, config: LimitsConfig) -> None:
        self.config = config
        self.connections = ConnectionCounter(config.connections_per_ip)
        self.auth = AuthThrottle(config)
