"""The SIP peering policy: who may send what through this proxy (the one place SIP trust is decided).

This module is in charge of the mod_sip-style rules:

(a) a request to a local address of record is accepted from anyone, from any domain, without
    authentication;
(b) a request from a local user to a foreign domain needs the user to authenticate (407), then is
    routed by RFC 3263;
(c) a request from a foreign domain to a foreign domain is refused (403): never an open relay;
(d) per-domain allow and deny lists, and per-source-IP flood limits with a temporary ban, as
    Kamailio's pike module does.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

# Decisions for an out-of-dialog request.
DELIVER_LOCAL = "local"  # (a) to a local address of record
AUTHENTICATE_OUTBOUND = "outbound"  # (b) local user to foreign domain, after 407
REFUSE_RELAY = "relay"  # (c) foreign to foreign
REFUSE_DOMAIN = "denied"  # (d) deny list / not on allow list

# Domain names whose answer LocalDomains remembers; past this the memory starts afresh (a caller
# inventing a new From domain per request gets nothing but the normal, uncached check).
MAX_REMEMBERED_DOMAINS = 4096
# Most source addresses tracked by the flood guard; beyond it the least recently seen are forgotten.
# Kamailio's pike keeps a tree sized by shared memory; 65,536 entries cost a few MiB here.
MAX_TRACKED_SOURCES = 65536


class LocalDomains:
    """``accounts.is_local_domain`` with its answers remembered.

    The SIP proxy asks it several times for every request (the Request-URI, each Route, the From and
    the target), mostly about names that are not ours (a caller's domain, a contact's IP address),
    and each such miss costs an IDNA normalisation.  The answers depend only on the set of hosted
    domains, so they are forgotten when that set is replaced (a configuration reload).
    """

    __slots__ = ("_accounts", "_answers", "_domains")

    def __init__(self, accounts: object) -> None:
        self._accounts = accounts
        self._domains = getattr(accounts, "domains", None)
        self._answers: dict[str, bool] = {}

    def __call__(self, domain: str) -> bool:
        domains = getattr(self._accounts, "domains", None)
        answers = self._answers
        if domains is not self._domains:
            self._domains = domains
            answers.clear()
        answer = answers.get(domain)
        if answer is None:
            answer = bool(self._accounts.is_local_domain(domain))  # type: ignore[attr-defined]
            if len(answers) >= MAX_REMEMBERED_DOMAINS:
                answers.clear()
            answers[domain] = answer
        return answer


class PeeringPolicy:
    def __init__(self, is_local_domain: Callable[[str], bool], allow: Iterable[str] = (),
                 deny: Iterable[str] = ()) -> None:
        self.is_local_domain = is_local_domain
        self.allow = {d.lower().rstrip(".") for d in allow}
        self.deny = {d.lower().rstrip(".") for d in deny}

    def domain_permitted(self, domain: str) -> bool:
        """Whether a foreign domain may call in or be called (per-domain lists)."""
        domain = domain.lower()
        if self._listed(domain, self.deny):
            return False
        return not self.allow or self._listed(domain, self.allow)

    @staticmethod
    def _listed(domain: str, names: set[str]) -> bool:
        if not names:
            return False
        if domain in names:
            return True
        # "example.org" in a list covers its subdomains too
        parts = domain.split(".")
        return any(".".join(parts[i:]) in names for i in range(1, len(parts)))

    def decide(self, target_domain: str, from_domain: str) -> str:
        if self.is_local_domain(target_domain):
            if not self.is_local_domain(from_domain) and not self.domain_permitted(from_domain):
                return REFUSE_DOMAIN
            return DELIVER_LOCAL
        if not self.is_local_domain(from_domain):
            return REFUSE_RELAY
        if not self.domain_permitted(target_domain):
            return REFUSE_DOMAIN
        return AUTHENTICATE_OUTBOUND


class FloodGuard:
    """Requests per second per source IP, then a ban (Kamailio pike + a ban list, like its
    ``pike_check_req()`` with ``htable`` ban in the default kamailio.cfg)."""

    def __init__(self, rate: float, ban_seconds: float, clock: Callable[[], float] = time.monotonic,
                 exempt: Iterable[str] = ()) -> None:
        self.rate = float(rate)
        # allow a burst of two seconds' worth before the average applies (pike samples over 2 s)
        self.burst = 2 * self.rate
        self.ban_seconds = ban_seconds
        self.clock = clock
        self.exempt = set(exempt)
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()
        self._banned: dict[str, float] = {}

    def allow(self, ip: str) -> bool:
        if ip in self.exempt:
            return True
        now = self.clock()
        banned_until = self._banned.get(ip)
        if banned_until is not None:
            if now < banned_until:
                return False
            del self._banned[ip]
        bucket = self._buckets.get(ip)
        if bucket is None:
            bucket = [self.burst, now]
            self._buckets[ip] = bucket
            if len(self._buckets) > MAX_TRACKED_SOURCES:
                self._buckets.popitem(last=False)
        else:
            tokens = bucket[0] + (now - bucket[1]) * self.rate
            bucket[0] = tokens if tokens < self.burst else self.burst
            bucket[1] = now
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return True
        self._banned[ip] = now + self.ban_seconds
        return False

    def is_banned(self, ip: str) -> bool:
        if not self._banned:
            return False
        until = self._banned.get(ip)
        return until is not None and self.clock() < until
