"""Our own TLS-RPT reports (RFC 8460): what our outbound sessions met, once per reporting interval,
to the `rua` of each recipient domain that publishes a `_smtp._tls` record.

This module is in charge of turning the sessions the SMTP client recorded
(peerage.mail.smtp.client.TlsSession, counted by peerage.mail.reports.store) into the §4.4 JSON
report (one entry per policy met: MTA-STS, a TLSA RRset, or none found, with the successful and failed
session counts and the failure details), and of the §5.3 report mail (multipart/report;
report-type="tlsrpt", the gzipped report as application/tlsrpt+gzip with the §5.3 file name, the
TLS-Report-Domain and TLS-Report-Submitter fields, DKIM-signed by the caller). Rules:

- the record: exactly one TXT record starting "v=TLSRPTv1;" with a rua (§3), else no report;
- only `mailto:` destinations; `https:` ones (§3, an HTTP POST) are skipped and the outcome says so;
- at most ``MAX_DESTINATIONS`` addresses (RFC 8460 has no third-party authorisation like DMARC's
  §7.1: a domain can aim its reports anywhere, so what one record can make us send is bounded);
- at most ``MAX_FAILURE_DETAILS`` failure rows per report (the largest counts kept);
- an interval's report for a domain is claimed in the database before it is built, so a restart or a
  second cluster node never sends it twice (peerage.mail.reports.interval, shared with DMARC's);
  how many go out per hour is bounded by the caller.
"""

from __future__ import annotations

import base64
import email.utils
import gzip
import json
import logging
import secrets
import time
from datetime import UTC, datetime
from typing import Any

from peerage.mail.reports.interval import IntervalReporter
from peerage.mail.reports.outgoing import MAX_DESTINATIONS, destinations
from peerage.mail.reports.store import TLS_REPORTS

log = logging.getLogger(__name__)

# Google's and Microsoft's reports carry tens of failure rows; this bounds one report's size.
MAX_FAILURE_DETAILS = 1000


def parse_record(texts: list[str]) -> dict[str, str] | None:
    """The tags of the domain's single TLSRPT record (RFC 8460 §3), or None."""
    records = [t for t in texts if t.replace(" ", "").startswith("v=TLSRPTv1;")]
    if len(records) != 1:
        return None
    tags: dict[str, str] = {}
    for part in records[0].split(";"):
        name, sep, value = part.strip().partition("=")
        if sep:
            tags[name.strip().lower()] = value.strip()
    return tags if tags.get("rua") else None


def _datetime(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_report(*, org_name: str, contact: str, report_id: str, begin: float, end: float, policy_domain: str,
                 rows: list[tuple[dict[str, Any], int]]) -> dict[str, Any]:
    """The report document of RFC 8460 §4.4 from (session, count) rows."""
    policies: dict[str, dict[str, Any]] = {}
    details_left = MAX_FAILURE_DETAILS
    for session, count in rows:
        policy_type = str(session.get("policy_type", "no-policy-found"))
        strings = [str(s) for s in session.get("policy_strings", [])]
        mx_hosts = [str(m) for m in session.get("mx_patterns", [])]
        if policy_type == "tlsa" and session.get("mx_host"):
            mx_hosts = [str(session["mx_host"])]
        key = json.dumps([policy_type, strings, mx_hosts])
        entry = policies.get(key)
        if entry is None:
            policy: dict[str, Any] = {"policy-type": policy_type, "policy-domain": policy_domain}
            if strings:
                policy["policy-string"] = strings
            if mx_hosts:
                policy["mx-host"] = mx_hosts
            entry = policies[key] = {
                "policy": policy,
                "summary": {"total-successful-session-count": 0, "total-failure-session-count": 0},
                "failure-details": [],
            }
        result_type = str(session.get("result_type", ""))
        if not result_type:
            entry["summary"]["total-successful-session-count"] += count
            continue
        entry["summary"]["total-failure-session-count"] += count
        if details_left <= 0:
            continue
        details_left -= 1
        detail: dict[str, Any] = {"result-type": result_type, "failed-session-count": count}
        for field, name in (("sending_ip", "sending-mta-ip"), ("mx_host", "receiving-mx-hostname"),
                            ("receiving_ip", "receiving-ip"), ("info", "additional-information")):
            if session.get(field):
                detail[name] = str(session[field])
        entry["failure-details"].append(detail)
    for entry in policies.values():
        if not entry["failure-details"]:
            del entry["failure-details"]
    return {
        "organization-name": org_name,
        "date-range": {"start-datetime": _datetime(begin), "end-datetime": _datetime(end)},
        "contact-info": contact,
        "report-id": report_id,
        "policies": list(policies.values()),
    }


def report_message(*, org_name: str, from_address: str, to: list[str], report_id: str, begin: float, end: float,
                   policy_domain: str, document: dict[str, Any], hostname: str) -> bytes:
    """The report mail of RFC 8460 §5.3."""
    attachment = gzip.compress(json.dumps(document, sort_keys=True).encode("utf-8"), mtime=0)
    filename = f"{org_name}!{policy_domain}!{int(begin)}!{int(end)}.json.gz"
    boundary = "=_tlsrpt_" + secrets.token_hex(12)
    encoded = base64.encodebytes(attachment).replace(b"\n", b"\r\n").decode("ascii")
    text = (f"This is an aggregate TLS report (RFC 8460) from {org_name} for {policy_domain},\r\n"
            f"covering {email.utils.formatdate(begin, usegmt=True)} to {email.utils.formatdate(end, usegmt=True)}.\r\n")
    message = (
        f"From: {from_address}\r\nTo: {', '.join(to)}\r\n"
        f"Subject: Report Domain: {policy_domain} Submitter: {org_name} Report-ID: <{report_id}>\r\n"
        f"TLS-Report-Domain: {policy_domain}\r\nTLS-Report-Submitter: {org_name}\r\n"
        f"Date: {email.utils.formatdate(time.time(), usegmt=True)}\r\n"
        f"Message-ID: <{report_id}@{hostname}>\r\nAuto-Submitted: auto-generated\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type="tlsrpt"; boundary="{boundary}"\r\n\r\n'
        f"--{boundary}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n{text}\r\n"
        f'--{boundary}\r\nContent-Type: application/tlsrpt+gzip\r\n'
        f'Content-Disposition: attachment; filename="{filename}"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
        f"{encoded}\r\n--{boundary}--\r\n"
    )
    return message.encode("ascii")


class TlsReporter(IntervalReporter):
    """Sends the TLS reports of finished intervals (see IntervalReporter)."""

    kind = TLS_REPORTS

    async def _send(self, period: float, domain: str) -> str:
        try:
            texts = await self.txt(f"_smtp._tls.{domain}")
        except Exception as exc:
            return f"not sent: the TLSRPT record could not be read ({exc})"
        tags = parse_record([raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
                             for raw in texts or []])
        if tags is None:
            return "not sent: no single TLSRPT record"
        uris = [u.strip() for u in tags["rua"].split(",") if u.strip()]
        wanted = destinations(tags["rua"])[:MAX_DESTINATIONS]
        skipped = [u for u in uris if u.lower().startswith("https:")]
        if not wanted:
            return "not sent: no mailto: rua" + (" (https: is not supported)" if skipped else "")
        rows = await self.store.tls_rows(period, domain, MAX_FAILURE_DETAILS * 2)
        if not rows:
            return "not sent: nothing to report"
        report_id = f"{int(period)}.{domain}.{secrets.token_hex(4)}"
        end = period + self.interval - 1
        document = build_report(org_name=self.org_name, contact=self.from_address, report_id=report_id,
                                begin=period, end=end, policy_domain=domain, rows=rows)
        addresses = [d.address for d in wanted]
        sent: list[str] = []
        for address in addresses:
            message = report_message(org_name=self.org_name, from_address=self.from_address, to=[address],
                                     report_id=report_id, begin=period, end=end, policy_domain=domain,
                                     document=document, hostname=self.hostname)
            # RFC 8460 §5.3: the report mail is DKIM-signed.
            signed = await self.sign(self.from_address.rpartition("@")[2], message)
            await self.enqueue(self.from_address, [address], signed)
            sent.append(address)
        outcome = f"queued to {', '.join(sent)}"
        if skipped:
            outcome += f"; https: not supported ({', '.join(skipped)})"
        sessions = sum(count for _, count in rows)
        log.info("TLS report for %s (%d sessions): %s", domain, sessions, outcome)
        return outcome
