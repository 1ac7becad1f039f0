"""DNS lookups for every protocol, on dnspython, with caching and RFC 2782 SRV ordering.

This module is in charge of the record types peerage needs to find other servers: SRV (XMPP, SIP,
submission/IMAP), MX (mail), NAPTR (SIP, RFC 3263), A/AAAA, TLSA (DANE, RFC 6698) and TXT (SPF, DMARC,
MTA-STS). The nameserver address and port come from the configuration, so tests point it at a local
authoritative server. A name that does not exist is an empty answer, not an exception; a server that
does not answer raises `DnsTimeout` so callers can tell "no such domain" from "try again later".
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.rdatatype
import dns.resolver

from peerage.config import DnsConfig

# dnspython's LRU cache bound; ~100 bytes per answer, so 10k entries is about a megabyte.
DNS_CACHE_ENTRIES = 10000


class DnsTimeout(Exception):
    """No nameserver answered in time; the lookup may succeed later."""


@dataclass(frozen=True, slots=True)
class SrvTarget:
    host: str
    port: int
    priority: int
    weight: int


@dataclass(frozen=True, slots=True)
class MxHost:
    preference: int
    host: str


@dataclass(frozen=True, slots=True)
class Naptr:
    order: int
    preference: int
    flags: str
    service: str
    regexp: str
    replacement: str


@dataclass(frozen=True, slots=True)
class Tlsa:
    usage: int
    selector: int
    mtype: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Answer:
    """Records plus whether the answer was DNSSEC-authenticated (the AD bit), which DANE needs."""

    records: list[object]
    secure: bool


def order_srv(records: list[SrvTarget], rng: random.Random | None = None) -> list[SrvTarget]:
    """RFC 2782 ordering: ascending priority; within one priority, weighted random selection."""
    rng = rng or random.Random()
    if len(records) == 1 and records[0].host in (".", ""):
        return []  # RFC 2782: a single "." target means the service is decidedly not available
    result: list[SrvTarget] = []
    for priority in sorted({r.priority for r in records}):
        group = [r for r in records if r.priority == priority]
        # Zero-weight records first, as RFC 2782 asks, so they get a small chance of being picked.
        group.sort(key=lambda r: r.weight != 0)
        while group:
            total = sum(r.weight for r in group)
            pick = rng.randint(0, total) if total else 0
            running = 0
            for index, record in enumerate(group):
                running += record.weight
                if running >= pick:
                    result.append(group.pop(index))
                    break
    return result


class Resolver:
    def __init__(self, config: DnsConfig) -> None:
        self._resolver = dns.asyncresolver.Resolver(configure=not config.nameservers)
        if config.nameservers:
            self._resolver.nameservers = list(config.nameservers)
        self._resolver.port = config.port
        self._resolver.lifetime = config.timeout
        self._resolver.timeout = min(config.timeout, 2.0)
        self._resolver.cache = dns.resolver.LRUCache(DNS_CACHE_ENTRIES)
        # Ask for DNSSEC validation status (the AD bit) from a validating recursive resolver.
        self._resolver.use_edns(0, dns.flags.DO, 1232)
        self._resolver.flags = dns.flags.RD | dns.flags.AD
        self._max_ttl = config.cache_max_ttl
        # Positive answers by (name, type) until they expire: what dnspython's cache returns too, without
        # its per-query name parsing and resolution set-up (a DMARC policy is asked for every message).
        self._answers: dict[tuple[str, str], tuple[float, Answer]] = {}

    async def _query(self, name: str, rdtype: str) -> Answer:
        key = (name, rdtype)
        kept = self._answers.get(key)
        now = time.time()
        if kept is not None and kept[0] > now:
            return kept[1]
        try:
            answer = await self._resolver.resolve(name, rdtype, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.NoNameservers):
            return Answer([], False)
        except dns.exception.Timeout as exc:
            raise DnsTimeout(f"no DNS answer for {name} {rdtype}: {exc}") from None
        if answer.rrset is not None and answer.rrset.ttl > self._max_ttl:
            answer.rrset.ttl = self._max_ttl
        secure = bool(answer.response.flags & dns.flags.AD)
        result = Answer(list(answer), secure)
        if len(self._answers) >= DNS_CACHE_ENTRIES:
            self._answers.clear()
        self._answers[key] = (min(answer.expiration, now + self._max_ttl), result)
        return result

    async def srv(self, name: str) -> list[SrvTarget]:
        answer = await self._query(name, "SRV")
        records = [
            SrvTarget(r.target.to_text(omit_final_dot=True), r.port, r.priority, r.weight)  # type: ignore[attr-defined]
            for r in answer.records
        ]
        return order_srv(records)

    async def mx(self, domain: str) -> list[MxHost]:
        answer = await self._query(domain, "MX")
        hosts = [MxHost(r.preference, r.exchange.to_text(omit_final_dot=True)) for r in answer.records]  # type: ignore[attr-defined]
        random.shuffle(hosts)  # RFC 5321 §5.1: randomise among equal preferences
        hosts.sort(key=lambda m: m.preference)
        return hosts

    async def a(self, host: str) -> list[str]:
        return [r.address for r in (await self._query(host, "A")).records]  # type: ignore[attr-defined]

    async def aaaa(self, host: str) -> list[str]:
        return [r.address for r in (await self._query(host, "AAAA")).records]  # type: ignore[attr-defined]

    async def addresses(self, host: str) -> list[str]:
        """IPv6 then IPv4 addresses of `host` (RFC 6724 prefers IPv6)."""
        return [*(await self.aaaa(host)), *(await self.a(host))]

    async def naptr(self, domain: str) -> list[Naptr]:
        answer = await self._query(domain, "NAPTR")
        records = [
            Naptr(
                r.order, r.preference, r.flags.decode(), r.service.decode(), r.regexp.decode(),  # type: ignore[attr-defined]
                r.replacement.to_text(omit_final_dot=True),  # type: ignore[attr-defined]
            )
            for r in answer.records
        ]
        records.sort(key=lambda n: (n.order, n.preference))
        return records

    async def tlsa(self, name: str) -> tuple[list[Tlsa], bool]:
        """TLSA records and whether the answer was DNSSEC-secure (DANE requires it, RFC 7672 §2.2)."""
        answer = await self._query(name, "TLSA")
        records = [Tlsa(r.usage, r.selector, r.mtype, r.cert) for r in answer.records]  # type: ignore[attr-defined]
        return records, answer.secure

    async def txt(self, name: str) -> list[str]:
        answer = await self._query(name, "TXT")
        return [b"".join(r.strings).decode("utf-8", "replace") for r in answer.records]  # type: ignore[attr-defined]

    @property
    def dnspython_resolver(self) -> dns.asyncresolver.Resolver:
        """The underlying resolver, for libraries (SPF, DKIM) that take a dnspython resolver."""
        return self._resolver
