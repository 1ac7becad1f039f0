"""DMARC (RFC 7489): policy discovery and identifier alignment, given SPF and DKIM results.

This module is in charge of deciding whether a message's From domain is authenticated by an aligned
SPF or DKIM pass, and of reporting the published policy so the MX can act on it.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

from authheaders.dmarc_lookup import get_org_domain

from peerage.mail.auth.dkim import DkimResult
from peerage.mail.auth.dnsquery import SyncLookup, TemporaryDnsError
from peerage.mail.auth.spf import SpfResult


@dataclass(frozen=True, slots=True)
class DmarcResult:
    result: str  # pass, fail, none, temperror, permerror
    from_domain: str
    policy: str = "none"  # p= (or sp= for a subdomain): none, quarantine, reject
    # The published record's tags (for the aggregate report, RFC 7489 §7.2: policy_published, rua).
    tags: tuple[tuple[str, str], ...] = ()
    spf_aligned: bool = False
    dkim_aligned: bool = False
    policy_domain: str = ""  # where the record was found: the From domain or its organizational domain


@functools.lru_cache(maxsize=4096)
def organizational_domain(domain: str) -> str:
    """RFC 7489 §3.2 via the Public Suffix List bundled with authheaders."""
    try:
        found = str(get_org_domain(domain)).lower()
    except Exception:
        found = domain
    if "." not in found.strip("."):
        # A TLD the list does not know: the PSL's default rule "*" makes the last label the public
        # suffix, so the organizational domain has two labels (authheaders returns the bare TLD).
        found = ".".join(domain.lower().rstrip(".").split(".")[-2:])
    return found


def parse_record(text: str) -> dict[str, str] | None:
    """Tags of a DMARC record, or None when it is not one (RFC 7489 §6.3: v=DMARC1 first)."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        name, sep, value = part.partition("=")
        if sep:
            tags[name.strip().lower()] = value.strip()
    if tags.get("v") != "DMARC1" or not text.strip().startswith("v"):
        return None
    return tags


def _aligned(identifier: str, from_domain: str, mode: str) -> bool:
    identifier = identifier.lower()
    if mode == "s":
        return identifier == from_domain
    return organizational_domain(identifier) == organizational_domain(from_domain)


def check(from_domain: str, spf: SpfResult, dkim: list[DkimResult], lookup: SyncLookup) -> DmarcResult:
    """Blocking: run in a worker thread."""
    from_domain = from_domain.lower()
    if not from_domain:
        return DmarcResult("permerror", from_domain)
    org = organizational_domain(from_domain)
    try:
        tags = _find_record(from_domain, lookup)
        is_subdomain = False
        if tags is None and org != from_domain:
            tags = _find_record(org, lookup)
            is_subdomain = True
    except TemporaryDnsError:
        return DmarcResult("temperror", from_domain)
    return dataclasses.replace(evaluate(from_domain, tags, is_subdomain, spf, dkim),
                               policy_domain=org if is_subdomain else from_domain)


async def check_async(from_domain: str, spf: SpfResult, dkim: list[DkimResult], dns: Any) -> DmarcResult:
    """The same as `check`, with the policy looked up through `host.dns` (async, cached)."""
    from_domain = from_domain.lower()
    if not from_domain:
        return DmarcResult("permerror", from_domain)
    org = organizational_domain(from_domain)
    try:
        tags = _only_record(await dns.txt(f"_dmarc.{from_domain}"))
        is_subdomain = False
        if tags is None and org != from_domain:
            tags = _only_record(await dns.txt(f"_dmarc.{org}"))
            is_subdomain = True
    except Exception:
        return DmarcResult("temperror", from_domain)
    return dataclasses.replace(evaluate(from_domain, tags, is_subdomain, spf, dkim),
                               policy_domain=org if is_subdomain else from_domain)


def evaluate(
    from_domain: str, tags: dict[str, str] | None, is_subdomain: bool, spf: SpfResult, dkim: list[DkimResult]
) -> DmarcResult:
    """Sans-I/O: the DMARC result for a From domain given its policy record (or None) and the checks."""
    if tags is None:
        return DmarcResult("none", from_domain)
    policy = tags.get("p", "none").lower()
    if is_subdomain:
        policy = tags.get("sp", policy).lower()
    if policy not in ("none", "quarantine", "reject"):
        policy = "none"
    spf_ok = spf.result == "pass" and _aligned(spf.domain, from_domain, tags.get("aspf", "r").lower())
    dkim_ok = any(
        d.result == "pass" and _aligned(d.domain, from_domain, tags.get("adkim", "r").lower()) for d in dkim
    )
    return DmarcResult("pass" if spf_ok or dkim_ok else "fail", from_domain, policy, tuple(tags.items()),
                       spf_ok, dkim_ok)


def _only_record(texts: list[Any]) -> dict[str, str] | None:
    records = [
        tags
        for raw in texts
        if (tags := parse_record(raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)))
        is not None
    ]
    # RFC 7489 §6.6.3: more than one record means none applies.
    return records[0] if len(records) == 1 else None


def _find_record(domain: str, lookup: SyncLookup) -> dict[str, str] | None:
    return _only_record(list(lookup.txt(f"_dmarc.{domain}")))
