"""SPF (RFC 7208) over pyspf, with lookups sent to the configured nameservers.

This module is in charge of evaluating the sender's SPF policy for a connecting IP. pyspf looks names
up through a module-level function; we install one that takes its resolver from a context variable,
so each check (run in a worker thread, which copies the context) uses the mail service's nameservers.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Any

import spf

from peerage.mail.auth.dnsquery import CacheMiss, SyncLookup, TemporaryDnsError

# RFC 7208 §4.6.4 suggests at least 20 seconds for the whole evaluation; pyspf's default is 20.
SPF_TOTAL_SECONDS = 20.0

_current_lookup: contextvars.ContextVar[SyncLookup | None] = contextvars.ContextVar(
    "peerage_spf_lookup", default=None
)
_system_lookup = spf.DNSLookup


def _lookup(name: str, qtype: str, strict: Any = True, timeout: float = 20) -> list[tuple[Any, Any]]:
    lookup = _current_lookup.get()
    if lookup is None:
        return list(_system_lookup(name, qtype, strict, timeout))
    try:
        records = lookup.query(name, qtype)
    except TemporaryDnsError as exc:
        raise spf.TempError(f"DNS {exc}") from exc
    answers: list[tuple[Any, Any]] = []
    for rdata in records:
        if qtype in ("A", "AAAA"):
            answers.append(((name, qtype), rdata.address))  # type: ignore[attr-defined]
        elif qtype == "MX":
            answers.append(((name, qtype), (rdata.preference, rdata.exchange)))  # type: ignore[attr-defined]
        elif qtype == "PTR":
            answers.append(((name, qtype), rdata.target.to_text(True)))  # type: ignore[attr-defined]
        elif qtype in ("TXT", "SPF"):
            answers.append(((name, qtype), rdata.strings))  # type: ignore[attr-defined]
    return answers


spf.DNSLookup = _lookup


@dataclass(frozen=True, slots=True)
class SpfResult:
    result: str  # pass fail softfail neutral none temperror permerror
    domain: str  # the domain whose policy was checked (MAIL FROM's, or HELO's for a null sender)
    explanation: str = ""


def check(ip: str, mail_from: str, helo: str, lookup: SyncLookup) -> SpfResult:
    """Evaluate SPF for a message. Blocking: run in a worker thread, or on the event loop inside
    `dnsquery.cache_only()`, where a lookup that would need the network raises CacheMiss instead."""
    sender = mail_from or f"postmaster@{helo}"
    domain = sender.rpartition("@")[2].lower()
    token = _current_lookup.set(lookup)
    try:
        result, explanation = spf.check2(i=ip, s=sender, h=helo, querytime=SPF_TOTAL_SECONDS)
    except CacheMiss:
        raise
    except Exception as exc:  # a malformed record must not take the session down
        return SpfResult("permerror", domain, str(exc))
    finally:
        _current_lookup.reset(token)
    return SpfResult(result or "none", domain, explanation or "")
