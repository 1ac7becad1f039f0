"""Blocking DNS lookups for the authentication libraries (pyspf, dkimpy), aimed at the configured
nameservers.

This module is in charge of giving pyspf and dkimpy, which expect synchronous lookup functions, a
resolver that asks the same nameservers (and port) as `host.dns`, never the system default. The checks
that use it run in a worker thread, so the event loop is not blocked.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import dns.exception
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.resolver

# Same bound as peerage.net.dns: about a megabyte of cached answers.
DNS_CACHE_ENTRIES = 10000


class CacheMiss(Exception):
    """A lookup in cache-only mode needed the network; the caller retries in a worker thread."""


# While set, lookups answer from the cache or raise CacheMiss: a check can then run on the event
# loop without ever blocking it, and moves to a thread only when it needs the network.
_cache_only: contextvars.ContextVar[bool] = contextvars.ContextVar("peerage_dns_cache_only", default=False)


@contextlib.contextmanager
def cache_only() -> Iterator[None]:
    token = _cache_only.set(True)
    try:
        yield
    finally:
        _cache_only.reset(token)


class TemporaryDnsError(Exception):
    """The nameserver did not answer; callers map this to a `temperror` result."""


class SyncLookup:
    """A dnspython resolver bound to explicit nameservers; one per mail service."""

    def __init__(self, nameservers: list[str], port: int = 53, timeout: float = 5.0) -> None:
        if nameservers:
            self.resolver = dns.resolver.Resolver(configure=False)
            self.resolver.nameservers = list(nameservers)
            self.resolver.port = port
        else:
            self.resolver = dns.resolver.Resolver()
        self.resolver.lifetime = timeout
        self.resolver.timeout = timeout
        # Answers are cached up to their TTL (dnspython honours it), as host.dns does.
        self.resolver.cache = dns.resolver.LRUCache(DNS_CACHE_ENTRIES)

    def query(self, name: str, rdtype: str) -> list[dns.rdata.Rdata]:
        if _cache_only.get():
            key = (dns.name.from_text(name), dns.rdatatype.from_text(rdtype), dns.rdataclass.IN)
            cached = self.resolver.cache.get(key)
            if cached is None:
                raise CacheMiss(f"{name} {rdtype}")
            return list(cached.rrset or [])
        try:
            answer = self.resolver.resolve(name, rdtype, raise_on_no_answer=False, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
            raise TemporaryDnsError(f"{name} {rdtype}: {exc}") from exc
        return list(answer.rrset or [])

    def txt(self, name: str) -> list[bytes]:
        """Each TXT record's strings joined (RFC 7208 §3.3, RFC 6376 §3.6.2.2)."""
        return [b"".join(r.strings) for r in self.query(name, "TXT")]  # type: ignore[attr-defined]

    def dkim_txt(self, name: bytes, timeout: float = 5.0) -> bytes | None:
        """The dnsfunc signature dkimpy expects: a bytes name in, the first TXT record out."""
        records = self.txt(name.decode("ascii", "replace"))
        return records[0] if records else None
