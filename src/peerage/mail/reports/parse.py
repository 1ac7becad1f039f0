"""Reading a report message: DMARC aggregate reports (RFC 7489 §7.2, Appendix C) and SMTP TLS reports
(RFC 8460 §4 and §5.3), sans-I/O.

This module is in charge of finding the report in a message (an XML file as it is, gzipped or in a
ZIP archive, as RFC 7489 §7.2.1.1 allows; a TLS-RPT JSON part, gzipped or not), of unpacking it within
bounds, and of turning it into a `Report` with totals the operator can read. Anything else is not a
report (None); a report that is too large, compressed beyond its bound, or not well formed raises
`BadReport` with the reason, and the message is still delivered as mail.
"""

from __future__ import annotations

import datetime
import email
import email.policy
import io
import json
import zipfile
import zlib
from dataclasses import dataclass, field
from email.message import Message
from typing import Any
from xml.etree import ElementTree

# A decompressed report larger than this is refused. Google's and Microsoft's daily reports for a
# large domain run to a few MiB; rspamd's dmarc_report module caps its own at 10 MiB (`max_size`).
MAX_REPORT_BYTES = 20 * 1024 * 1024
# Records kept per report (one per source IP and outcome): beyond this the report is cut, with the
# totals still counted from every record read.
MAX_RECORDS = 50_000
MAX_TEXT = 255


class BadReport(ValueError):
    pass


@dataclass(slots=True)
class Row:
    source: str
    count: int
    disposition: str
    dkim: str = ""
    spf: str = ""
    header_from: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Report:
    kind: str  # "dmarc" or "tlsrpt"
    org_name: str
    report_id: str
    policy_domain: str
    begin: float
    end: float
    messages: int = 0
    passed: int = 0
    failed: int = 0
    policy: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)


def reports_in(message: bytes) -> list[Report]:
    """Every report a message carries (normally one)."""
    parsed = email.message_from_bytes(message, policy=email.policy.compat32)
    found: list[Report] = []
    for part in parsed.walk():
        if part.is_multipart():
            continue
        kind = _kind(part)
        if kind is None:
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes) or not payload:
            continue
        if kind == "tlsrpt":
            found.append(parse_tlsrpt(_gunzip(payload) if _is_gzip(payload) else payload))
        else:
            found.append(parse_dmarc(_unpack(payload)))
    return found


def _kind(part: Message) -> str | None:
    content_type = part.get_content_type()
    filename = (part.get_filename() or "").lower()
    if content_type in ("application/tlsrpt+gzip", "application/tlsrpt+json"):
        return "tlsrpt"
    if content_type in ("application/gzip", "application/x-gzip", "application/zip", "application/x-zip-compressed",
                        "text/xml", "application/xml", "application/x-zip"):
        return "dmarc"
    if content_type == "application/octet-stream" and filename.endswith((".xml", ".xml.gz", ".zip", ".gz")):
        return "dmarc"
    return None


def _is_gzip(data: bytes) -> bool:
    return data[:2] == b"\x1f\x8b"


def _gunzip(data: bytes) -> bytes:
    # Stream with a bound: a small gzip may expand enormously (RFC 7489 §12.4 warns of such bombs).
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, MAX_REPORT_BYTES + 1)
    except zlib.error as exc:
        raise BadReport(f"the gzip data is corrupt ({exc})") from exc
    if len(out) > MAX_REPORT_BYTES or inflater.unconsumed_tail:
        raise BadReport(f"the report expands beyond {MAX_REPORT_BYTES} bytes")
    return out


def _unpack(data: bytes) -> bytes:
    if _is_gzip(data):
        return _gunzip(data)
    if data[:4] == b"PK\x03\x04":
        try:
            archive = zipfile.ZipFile(io.BytesIO(data))
            members = [m for m in archive.infolist() if not m.is_dir()]
            if len(members) != 1:
                raise BadReport("a ZIP report must hold exactly one file")
            member = members[0]
            if member.file_size > MAX_REPORT_BYTES:
                raise BadReport(f"the report expands beyond {MAX_REPORT_BYTES} bytes")
            with archive.open(member) as handle:
                out = handle.read(MAX_REPORT_BYTES + 1)
        except (zipfile.BadZipFile, zlib.error, OSError, NotImplementedError) as exc:
            raise BadReport(f"the ZIP archive is unreadable ({exc})") from exc
        if len(out) > MAX_REPORT_BYTES:
            raise BadReport(f"the report expands beyond {MAX_REPORT_BYTES} bytes")
        return out
    if len(data) > MAX_REPORT_BYTES:
        raise BadReport(f"the report is larger than {MAX_REPORT_BYTES} bytes")
    return data


def _text(element: ElementTree.Element | None, path: str, default: str = "") -> str:
    if element is None:
        return default
    found = element.find(path)
    if found is None or found.text is None:
        return default
    return found.text.strip()[:MAX_TEXT]


def _int(text: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise BadReport(f"{what} is not a number: {text!r}") from None
    if value < 0:
        raise BadReport(f"{what} is negative")
    return value


def parse_dmarc(xml: bytes) -> Report:
    head = xml[:4096].lower()
    # No DTDs: entity expansion is the classic XML bomb, and RFC 7489's schema needs none.
    if b"<!doctype" in head or b"<!entity" in xml.lower():
        raise BadReport("the XML declares a DTD or entities")
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError as exc:
        raise BadReport(f"the XML is not well formed ({exc})") from exc
    if _local(root.tag) != "feedback":
        raise BadReport("the XML root is not <feedback> (RFC 7489 Appendix C)")
    _strip_namespaces(root)
    metadata = root.find("report_metadata")
    published = root.find("policy_published")
    org = _text(metadata, "org_name")
    report_id = _text(metadata, "report_id")
    domain = _text(published, "domain").lower().rstrip(".")
    if not org or not report_id or not domain:
        raise BadReport("the report lacks org_name, report_id or the policy domain")
    begin = _int(_text(metadata, "date_range/begin", "0"), "date_range/begin")
    end = _int(_text(metadata, "date_range/end", "0"), "date_range/end")
    policy = {tag: _text(published, tag) for tag in ("adkim", "aspf", "p", "sp", "pct", "fo", "np")
              if _text(published, tag)}
    report = Report("dmarc", org, report_id, domain, float(begin), float(end), policy=policy)
    for record in root.iterfind("record"):
        row = record.find("row")
        count = _int(_text(row, "count", "0"), "record count")
        dkim = _text(row, "policy_evaluated/dkim").lower()
        spf = _text(row, "policy_evaluated/spf").lower()
        report.messages += count
        if "pass" in (dkim, spf):
            report.passed += count
        else:
            report.failed += count
        if len(report.rows) >= MAX_RECORDS:
            continue
        auth = record.find("auth_results")
        detail: dict[str, Any] = {
            "envelope_from": _text(record, "identifiers/envelope_from"),
            "dkim": [{"domain": _text(d, "domain"), "selector": _text(d, "selector"), "result": _text(d, "result")}
                     for d in (auth.iterfind("dkim") if auth is not None else [])][:16],
            "spf": [{"domain": _text(s, "domain"), "result": _text(s, "result")}
                    for s in (auth.iterfind("spf") if auth is not None else [])][:4],
        }
        reasons = [_text(r, "type") for r in (row.iterfind("policy_evaluated/reason") if row is not None else [])]
        if any(reasons):
            detail["reason"] = [r for r in reasons if r][:8]
        report.rows.append(Row(
            source=_text(row, "source_ip"), count=count,
            disposition=_text(row, "policy_evaluated/disposition").lower(), dkim=dkim, spf=spf,
            header_from=_text(record, "identifiers/header_from").lower(), detail=detail,
        ))
    return report


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _strip_namespaces(root: ElementTree.Element) -> None:
    # DMARCbis reports carry an XML namespace; the RFC 7489 ones do not. Both read the same.
    for element in root.iter():
        element.tag = _local(element.tag)


def _timestamp(text: Any, what: str) -> float:
    if not isinstance(text, str):
        raise BadReport(f"{what} is missing")
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise BadReport(f"{what} is not an RFC 3339 date-time: {text!r}") from None


def _count(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadReport(f"{what} is not a count")
    return value


def parse_tlsrpt(data: bytes) -> Report:
    if len(data) > MAX_REPORT_BYTES:
        raise BadReport(f"the report is larger than {MAX_REPORT_BYTES} bytes")
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadReport(f"the TLS report is not JSON ({exc})") from exc
    if not isinstance(document, dict):
        raise BadReport("the TLS report is not a JSON object (RFC 8460 §4.4)")
    org = str(document.get("organization-name") or "")[:MAX_TEXT]
    report_id = str(document.get("report-id") or "")[:MAX_TEXT]
    dates = document.get("date-range") or {}
    if not org or not report_id or not isinstance(dates, dict):
        raise BadReport("the TLS report lacks organization-name, report-id or date-range")
    begin = _timestamp(dates.get("start-datetime"), "start-datetime")
    end = _timestamp(dates.get("end-datetime"), "end-datetime")
    policies = document.get("policies")
    if not isinstance(policies, list) or not policies:
        raise BadReport("the TLS report has no policies")
    domains: list[str] = []
    report = Report("tlsrpt", org, report_id, "", begin, end)
    for entry in policies:
        if not isinstance(entry, dict):
            raise BadReport("a policy entry is not an object")
        policy = entry.get("policy") or {}
        summary = entry.get("summary") or {}
        if not isinstance(policy, dict) or not isinstance(summary, dict):
            raise BadReport("a policy entry lacks policy or summary")
        domain = str(policy.get("policy-domain") or "").lower().rstrip(".")[:MAX_TEXT]
        policy_type = str(policy.get("policy-type") or "")[:32]
        domains.append(domain)
        successes = _count(summary.get("total-successful-session-count", 0), "total-successful-session-count")
        failures = _count(summary.get("total-failure-session-count", 0), "total-failure-session-count")
        report.messages += successes + failures
        report.passed += successes
        report.failed += failures
        report.policy.setdefault("policies", []).append({"domain": domain, "type": policy_type})
        for failure in entry.get("failure-details") or []:
            if not isinstance(failure, dict) or len(report.rows) >= MAX_RECORDS:
                continue
            report.rows.append(Row(
                source=str(failure.get("sending-mta-ip") or "")[:64],
                count=_count(failure.get("failed-session-count", 0), "failed-session-count"),
                disposition=str(failure.get("result-type") or "")[:64],
                header_from=str(failure.get("receiving-mx-hostname") or "")[:MAX_TEXT],
                detail={k: str(v)[:MAX_TEXT] for k, v in failure.items()
                        if k in ("receiving-ip", "receiving-mx-helo", "additional-information", "failure-reason-code")},
            ))
    report.policy_domain = next((d for d in domains if d), "")
    if not report.policy_domain:
        raise BadReport("the TLS report names no policy-domain")
    return report
