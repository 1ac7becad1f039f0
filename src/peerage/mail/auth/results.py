"""Inbound message authentication: SPF, DKIM and DMARC together, written as an
Authentication-Results header (RFC 8601).

This module is in charge of running the three checks for one received message (in a worker thread,
since the libraries block) and of rendering their outcome for the stored message.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from peerage.mail.auth import dkim, dmarc, spf
from peerage.mail.auth.dnsquery import SyncLookup
from peerage.mail.smtp.headers import HeaderFields, addresses_of, header_block


@dataclass(frozen=True)
class AuthenticationResults:
    spf: spf.SpfResult
    dkim: list[dkim.DkimResult]
    dmarc: dmarc.DmarcResult
    mail_from: str
    helo: str

    def header(self, authserv_id: str) -> bytes:
        """The `Authentication-Results:` header line(s), CRLF-terminated."""
        parts = [authserv_id]
        if self.mail_from:
            parts.append(f"spf={self.spf.result} smtp.mailfrom={_value(self.mail_from)}")
        else:
            parts.append(f"spf={self.spf.result} smtp.helo={_value(self.helo)}")
        for d in self.dkim:
            if d.result == "none":
                parts.append("dkim=none")
            else:
                parts.append(
                    f"dkim={d.result} header.d={_value(d.domain)} header.s={_value(d.selector)}"
                    f" header.a={_value(d.algorithm)}"
                )
        parts.append(
            f"dmarc={self.dmarc.result} (p={self.dmarc.policy}) header.from={_value(self.dmarc.from_domain)}"
        )
        return ("Authentication-Results: " + ";\r\n\t".join(parts) + "\r\n").encode("utf-8")


def _value(text: str) -> str:
    """A value token, quoted when it holds characters a token may not (RFC 8601 §2.2, RFC 2045)."""
    if text and all(ch.isalnum() or ch in "-._@+=" for ch in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def from_domain(message: bytes) -> str:
    """The domain of the single From address, or '' (RFC 7489 §6.6.1 rejects zero or several)."""
    values = HeaderFields(header_block(message)).get_all("From") or []
    if len(values) != 1:
        return ""
    addresses = addresses_of([str(values[0])])
    if len(addresses) != 1:
        return ""
    return addresses[0][1].rpartition("@")[2].lower()


def authenticate(
    message: bytes, ip: str, mail_from: str, helo: str, lookup: SyncLookup, spf_result: spf.SpfResult | None = None
) -> AuthenticationResults:
    """Blocking: run in a worker thread (asyncio.to_thread copies the context pyspf's lookup needs).
    `spf_result` may be computed earlier (the MX starts SPF at MAIL FROM, while the client sends on)."""
    if spf_result is None:
        spf_result = spf.check(ip, mail_from, helo, lookup)
    dkim_results = dkim.verify(message, lookup)
    dmarc_result = dmarc.check(from_domain(message), spf_result, dkim_results, lookup)
    return AuthenticationResults(spf_result, dkim_results, dmarc_result, mail_from, helo)


def has_dkim_signature(message: bytes) -> bool:
    header_end = message.find(b"\r\n\r\n")
    head = (message[: header_end + 2] if header_end >= 0 else message).lower()
    return head.startswith(b"dkim-signature:") or b"\ndkim-signature:" in head


async def authenticate_async(
    message: bytes,
    ip: str,
    mail_from: str,
    helo: str,
    lookup: SyncLookup,
    dns: Any,
    spf_result: spf.SpfResult | None = None,
) -> AuthenticationResults:
    """SPF and DKIM in a worker thread where they need one (the libraries block); DMARC's policy
    through the async resolver. An unsigned message costs no thread at all once SPF is known."""
    if spf_result is None:
        spf_result = await asyncio.to_thread(spf.check, ip, mail_from, helo, lookup)
    if has_dkim_signature(message):
        dkim_results = await asyncio.to_thread(dkim.verify, message, lookup)
    else:
        dkim_results = [dkim.DkimResult("none")]
    dmarc_result = await dmarc.check_async(from_domain(message), spf_result, dkim_results, dns)
    return AuthenticationResults(spf_result, dkim_results, dmarc_result, mail_from, helo)
