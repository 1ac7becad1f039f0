"""Our own DMARC aggregate reports (RFC 7489 §7.2), sent once per reporting interval to the `rua`
addresses of the domains that ask for them.

This module is in charge of turning what our MX counted (peerage.mail.reports.store) into the
Appendix C XML, of the report mail (§7.2.1.1: gzipped attachment, its file name and Subject), and of
the rules for where it may go:

- only `mailto:` URIs (§6.2); a `!size` suffix is the largest report that address takes: a larger one
  is not sent to it (logged and recorded as the outcome);
- a destination outside the policy domain's organizational domain must authorise it with a
  `<policy-domain>._report._dmarc.<destination>` TXT record starting with "v=DMARC1" (§7.1), else it is
  skipped: this is what stops a record from turning us into a mail cannon aimed at a third party;
- at most `max_destinations` addresses per report (§6.4 lets a receiver limit them; two is the
  figure most receivers use), and at most `max_rows` records (the largest counts are kept).

Claiming, the interval loop and the hourly bound (`[reports] max_per_hour`) are
peerage.mail.reports.interval's.
"""

from __future__ import annotations

import base64
import email.utils
import gzip
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote
from xml.sax.saxutils import escape

from peerage.mail.auth.dmarc import organizational_domain, parse_record
from peerage.mail.reports.interval import IntervalReporter
from peerage.mail.reports.store import DMARC_REPORTS, ReportStore

log = logging.getLogger(__name__)

# RFC 7489 §6.4: a receiver may cap the rua URIs it sends to; Google and Microsoft send to two.
MAX_DESTINATIONS = 2
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


@dataclass(frozen=True, slots=True)
class Destination:
    address: str
    max_size: int | None  # bytes, from the URI's "!size" suffix


def destinations(rua: str) -> list[Destination]:
    """The mailto: destinations of a rua tag (RFC 7489 §6.2, §6.4), in order, without duplicates."""
    found: list[Destination] = []
    for item in rua.split(","):
        uri = item.strip()
        if not uri.lower().startswith("mailto:"):
            continue
        target, _, size = uri[7:].partition("!")
        address = unquote(target.split("?", 1)[0]).strip()
        if "@" not in address or any(d.address.lower() == address.lower() for d in found):
            continue
        limit: int | None = None
        if size:
            digits = size.rstrip("kmgtKMGT")
            unit = size[len(digits):].lower()
            if digits.isdigit() and unit in _SIZE_UNITS:
                limit = int(digits) * _SIZE_UNITS[unit]
        found.append(Destination(address, limit))
    return found


async def authorised(policy_domain: str, destination: str, txt: Callable[[str], Awaitable[list[Any]]]) -> bool:
    """RFC 7489 §7.1: may reports about `policy_domain` go to `destination`?"""
    target = destination.rpartition("@")[2].lower().rstrip(".")
    if organizational_domain(target) == organizational_domain(policy_domain):
        return True
    try:
        records = await txt(f"{policy_domain}._report._dmarc.{target}")
    except Exception:
        return False
    for raw in records or []:
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        if text.strip().startswith("v=DMARC1"):
            return True
    return False


def build_xml(*, org_name: str, email_address: str, report_id: str, begin: float, end: float,
              policy_domain: str, policy: dict[str, str], rows: list[dict[str, Any]]) -> bytes:
    """The aggregate report document of RFC 7489 Appendix C."""
    def element(name: str, value: object) -> str:
        return f"<{name}>{escape(str(value))}</{name}>"

    published = [element("domain", policy_domain), element("adkim", policy.get("adkim", "r")),
                 element("aspf", policy.get("aspf", "r")), element("p", policy.get("p", "none")),
                 element("sp", policy.get("sp", policy.get("p", "none"))), element("pct", policy.get("pct", "100"))]
    if "fo" in policy:
        published.append(element("fo", policy["fo"]))
    records: list[str] = []
    for row in rows:
        auth = json.loads(row["auth"]) if isinstance(row["auth"], str) else row["auth"]
        dkim = "".join(
            f"<dkim>{element('domain', d.get('domain', ''))}{element('selector', d.get('selector', ''))}"
            f"{element('result', d.get('result', 'none'))}</dkim>" for d in auth.get("dkim", [])
        )
        spf_entry = auth.get("spf") or {}
        spf = (f"<spf>{element('domain', spf_entry.get('domain', ''))}{element('scope', spf_entry.get('scope', 'mfrom'))}"
               f"{element('result', spf_entry.get('result', 'none'))}</spf>")
        identifiers = element("header_from", row["from_domain"])
        if auth.get("envelope_from"):
            identifiers += element("envelope_from", auth["envelope_from"])
        records.append(
            "<record><row>" + element("source_ip", row["source_ip"]) + element("count", row["count"])
            + "<policy_evaluated>" + element("disposition", row["disposition"]) + element("dkim", row["dkim"])
            + element("spf", row["spf"]) + "</policy_evaluated></row>"
            + f"<identifiers>{identifiers}</identifiers><auth_results>{dkim}{spf}</auth_results></record>"
        )
    document = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<feedback><version>1.0</version><report_metadata>'
        + element("org_name", org_name) + element("email", email_address) + element("report_id", report_id)
        + f"<date_range>{element('begin', int(begin))}{element('end', int(end))}</date_range></report_metadata>"
        + f"<policy_published>{''.join(published)}</policy_published>" + "".join(records) + "</feedback>\n"
    )
    return document.encode("utf-8")


def report_message(*, org_name: str, from_address: str, to: list[str], report_id: str, begin: float, end: float,
                   policy_domain: str, xml: bytes, hostname: str) -> bytes:
    """The report mail of RFC 7489 §7.2.1.1: a gzipped attachment named
    receiver!policy-domain!begin!end.xml.gz, with the Subject the RFC gives."""
    attachment = gzip.compress(xml, mtime=0)
    filename = f"{org_name}!{policy_domain}!{int(begin)}!{int(end)}.xml.gz"
    boundary = "=_report_" + secrets.token_hex(12)
    encoded = base64.encodebytes(attachment).replace(b"\n", b"\r\n").decode("ascii")
    text = (f"This is a DMARC aggregate report (RFC 7489) from {org_name} for {policy_domain},\r\n"
            f"covering {email.utils.formatdate(begin, usegmt=True)} to {email.utils.formatdate(end, usegmt=True)}.\r\n")
    message = (
        f"From: {from_address}\r\nTo: {', '.join(to)}\r\n"
        f"Subject: Report Domain: {policy_domain} Submitter: {org_name} Report-ID: <{report_id}>\r\n"
        f"Date: {email.utils.formatdate(time.time(), usegmt=True)}\r\n"
        f"Message-ID: <{report_id}@{hostname}>\r\nAuto-Submitted: auto-generated\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'
        f"--{boundary}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n{text}\r\n"
        f'--{boundary}\r\nContent-Type: application/gzip; name="{filename}"\r\n'
        f'Content-Disposition: attachment; filename="{filename}"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
        f"{encoded}\r\n--{boundary}--\r\n"
    )
    return message.encode("ascii")


class AggregateReporter(IntervalReporter):
    """Sends the DMARC aggregate reports of finished intervals (see IntervalReporter), each with at
    most `max_rows` records."""

    kind = DMARC_REPORTS

    def __init__(self, store: ReportStore, *, txt: Callable[[str], Awaitable[list[Any]]],
                 enqueue: Callable[[str, list[str], bytes], Awaitable[None]],
                 sign: Callable[[str, bytes], Awaitable[bytes]], org_name: str, from_address: str, hostname: str,
                 interval: float, max_per_hour: int, max_rows: int) -> None:
        super().__init__(store, txt=txt, enqueue=enqueue, sign=sign, org_name=org_name, from_address=from_address,
                         hostname=hostname, interval=interval, max_per_hour=max_per_hour)
        self.max_rows = max(1, max_rows)

    async def _send(self, period: float, domain: str) -> str:
        try:
            texts = await self.txt(f"_dmarc.{domain}")
        except Exception as exc:
            return f"not sent: the DMARC record could not be read ({exc})"
        records = [tags for raw in texts or []
                   if (tags := parse_record(raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)))]
        if len(records) != 1:
            return "not sent: no single DMARC record"
        wanted = destinations(records[0].get("rua", ""))[:MAX_DESTINATIONS]
        if not wanted:
            return "not sent: the record asks for no aggregate reports (no mailto: rua)"
        allowed = [d for d in wanted if await authorised(domain, d.address, self.txt)]
        for refused in (d for d in wanted if d not in allowed):
            log.info("DMARC report for %s not sent to %s: no %s._report._dmarc record (RFC 7489 7.1)",
                     domain, refused.address, domain)
        if not allowed:
            return "not sent: no authorised destination (RFC 7489 7.1)"
        rows, total = await self.store.rows(period, domain, self.max_rows)
        if not rows:
            return "not sent: nothing to report"
        if total > len(rows):
            log.info("DMARC report for %s keeps the %d largest of %d records", domain, len(rows), total)
        policy = json.loads(rows[0]["policy"]) if isinstance(rows[0]["policy"], str) else dict(rows[0]["policy"])
        report_id = f"{int(period)}.{domain}.{secrets.token_hex(4)}"
        end = period + self.interval - 1
        xml = build_xml(org_name=self.org_name, email_address=self.from_address, report_id=report_id, begin=period,
                        end=end, policy_domain=domain, policy=policy, rows=rows)
        sent: list[str] = []
        skipped: list[str] = []
        for destination in allowed:
            message = report_message(org_name=self.org_name, from_address=self.from_address,
                                     to=[destination.address], report_id=report_id, begin=period, end=end,
                                     policy_domain=domain, xml=xml, hostname=self.hostname)
            if destination.max_size is not None and len(message) > destination.max_size:
                # RFC 7489 §6.2: the size limit is the largest report that destination accepts.
                skipped.append(f"{destination.address} (report {len(message)} > {destination.max_size} bytes)")
                continue
            signed = await self.sign(self.from_address.rpartition("@")[2], message)
            await self.enqueue(self.from_address, [destination.address], signed)
            sent.append(destination.address)
        outcome = f"queued to {', '.join(sent)}" if sent else "not sent"
        if skipped:
            outcome += f"; too large for {', '.join(skipped)}"
        log.info("DMARC aggregate report for %s (%d records): %s", domain, len(rows), outcome)
        return outcome
