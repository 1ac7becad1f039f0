"""Named limits and the counters that enforce them: connections, rates and authentication failures.

This module is in charge of the in-memory bookkeeping every listener shares: how many connections an
address holds (`ConnectionCounter`), how fast a key may act (`RateLimiter`, a token bucket), and how many
authentication failures an address or account has had (`AuthThrottle`), after which attempts are
delayed and then refused until the window passes. Each table is bounded so a flood of distinct keys
cannot grow memory without limit.
"""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from peerage.config import LimitsConfig

# Upper bound on distinct keys each table tracks; the least recently seen is forgotten first. 100k
# entries of a few dozen bytes is a few MB, enough for a large provider's concurrent client addresses.
MAX_TRACKED_KEYS = 100_000
# After the threshold, an attempt waits this long before its answer (Dovecot's auth_failure_delay is
# 2 s), doubling per further failure up to AUTH_FAILURE_MAX_DELAY. Dovecot's auth_penalty doubles from
# 2 s up to 15 s (AUTH_PENALTY_MAX_SECS); we stop at 8 s, below the 10 s many clients wait for an
# answer, because past twice the threshold the (account, address) pair or the address is refused
# outright until the window passes anyway.
AUTH_FAILURE_DELAY = 2.0
AUTH_FAILURE_MAX_DELAY = 8.0
# An account alone (failures from many addresses) is only ever delayed, from this many times its
# per-account threshold: more than one address can reach before being refused (2x the threshold).
ACCOUNT_SPREAD = 4
# Longest account name written to the failure log line.
MAX_LOGGED_NAME = 100

auth_log = logging.getLogger("peerage.auth")

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
    """Authentication failures keyed on (account, source address), on the source address, and on the
    account, within a sliding window of ``auth_failure_window`` seconds.

    The policy (Dovecot's auth_penalty and Prosody's mod_limit_auth do the same; fail2ban bans on top):

    - (account, address): from ``auth_failures_per_account`` failures on, each attempt waits
      ``AUTH_FAILURE_DELAY`` doubled per further failure, at most ``AUTH_FAILURE_MAX_DELAY``; at twice
      that count the pair is refused until the window passes. Only that address is slowed for that
      account: the same account from a clean address is not.
    - address: from ``auth_failures_per_ip`` failures (any accounts) the same growing delay; at twice
      that count the address is refused. This stops one address guessing across many accounts.
    - account, from any address: from ``auth_failures_per_account`` * ``ACCOUNT_SPREAD`` failures
      (a distributed attack, many addresses), a fixed delay of ``AUTH_FAILURE_DELAY``, and never a
      refusal: the right password from a clean address always gets in, a little later.

    A success clears that (account, address) pair's count (Dovecot forgets the penalty on success).

    `check()` before an attempt returns the delay to apply (0 when fine) or None to refuse outright;
    `failure()` and `success()` after it.
    """

    def __init__(self, limits: LimitsConfig, clock: Clock = time.monotonic) -> None:
        self.per_ip = limits.auth_failures_per_ip
        self.per_account = limits.auth_failures_per_account
        self.window = limits.auth_failure_window
        self._clock = clock
        self._failures: OrderedDict[str, list[float]] = OrderedDict()
        self._keep = 2 * max(self.per_ip, self.per_account * ACCOUNT_SPREAD)

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

    @staticmethod
    def _growing(failures: int, threshold: int) -> float:
        return min(AUTH_FAILURE_MAX_DELAY, AUTH_FAILURE_DELAY * 2 ** (failures - threshold))

    def check(self, ip: str, account: str | None = None) -> float | None:
        ip_failures = self._recent(f"ip:{ip}")
        pair_failures = self._recent(f"pair:{account}|{ip}") if account else 0
        account_failures = self._recent(f"acct:{account}") if account else 0
        if ip_failures >= 2 * self.per_ip or pair_failures >= 2 * self.per_account:
            return None
        delay = 0.0
        if ip_failures >= self.per_ip:
            delay = self._growing(ip_failures, self.per_ip)
        if pair_failures >= self.per_account:
            delay = max(delay, self._growing(pair_failures, self.per_account))
        if account_failures >= self.per_account * ACCOUNT_SPREAD:
            # One address can add at most 2 * per_account failures before it is refused, so this many
            # means several addresses: a distributed attack slows the account, and never locks it.
            delay = max(delay, AUTH_FAILURE_DELAY)
        return delay

    def failure(self, ip: str, account: str | None = None, *, protocol: str = "-", mechanism: str = "-") -> None:
        log_failure(protocol, account, ip, mechanism)
        now = self._clock()
        keys = [f"ip:{ip}"]
        if account:
            keys += [f"pair:{account}|{ip}", f"acct:{account}"]
        for key in keys:
            stamps = self._failures.setdefault(key, [])
            self._failures.move_to_end(key)
            stamps.append(now)
            del stamps[: -self._keep]  # never keep more than we can use
        while len(self._failures) > MAX_TRACKED_KEYS:
            self._failures.popitem(last=False)

    def success(self, ip: str, account: str | None = None) -> None:
        if account:
            self._failures.pop(f"pair:{account}|{ip}", None)


_LOG_UNSAFE = re.compile(r"[^\x21-\x7e]")


def log_failure(protocol: str, account: str | None, ip: str, mechanism: str = "-") -> None:
    """The one log line per failed authentication, in a fixed format (contrib/fail2ban matches it):

        authentication failed: address=<ip> protocol=<name> mechanism=<name> account=<name or ->

    The address comes first and the client-chosen account last, with anything but printable ASCII
    replaced, so no account name can forge another field.
    """
    name = _LOG_UNSAFE.sub("?", account)[:MAX_LOGGED_NAME] if account else "-"
    auth_log.warning("authentication failed: address=%s protocol=%s mechanism=%s account=%s",
                     _LOG_UNSAFE.sub("?", ip)[:64], protocol, mechanism, name)


class UnauthenticatedGate:
    """A global cap on connections that have not authenticated yet, shared by every protocol.

    `enter()` when a client connection opens (False: refuse it), `leave()` once it authenticates or
    closes; `leave()` is idempotent per token.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0

    def enter(self) -> bool:
        if self.count >= self.limit:
            return False
        self.count += 1
        return True

    def leave(self) -> None:
        self.count = max(0, self.count - 1)


class PreAuthSlot:
    """One connection's place in the `UnauthenticatedGate`, released once (on login or close)."""

    __slots__ = ("_gate",)

    def __init__(self, gate: UnauthenticatedGate) -> None:
        self._gate: UnauthenticatedGate | None = gate

    def release(self) -> None:
        if self._gate is not None:
            self._gate.leave()
            self._gate = None


class Limits:
    """The limits every service shares, built from the [limits] section."""

    def __init__(self, config: LimitsConfig) -> None:
        self.config = config
        self.connections = ConnectionCounter(config.connections_per_ip)
        self.auth = AuthThrottle(config)
        self.unauthenticated = UnauthenticatedGate(config.max_unauthenticated)

    def preauth(self) -> PreAuthSlot | None:
        """A slot for a new client connection that has yet to authenticate, or None when the global
        cap (`max_unauthenticated`) is reached and the connection should be refused."""
        if not self.unauthenticated.enter():
            return None
        return PreAuthSlot(self.unauthenticated)
