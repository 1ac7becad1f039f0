"""Unit tests of the report code: reading DMARC aggregate (RFC 7489 Appendix C) and TLS-RPT
(RFC 8460 §4.4) reports within bounds, and our own aggregate reports (RFC 7489 §7.1/§7.2) built from
what the MX counted, with a real SQLite store."""

from __future__ import annotations

import asyncio
import email
import email.policy
import gzip
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest

from peerage.mail.reports import parse
from peerage.mail.reports.outgoing import AggregateReporter, destinations
from peerage.mail.reports.store import DMARC_REPORTS, TLS_REPORTS, ReportStore, Seen
from peerage.store import Store

DMARC_XML = b"""<?xml version="1.0" encoding="UTF-8" ?>
<feedback>
  <report_metadata>
    <org_name>google.com</org_name><email>noreply-dmarc-support@google.com</email>
    <report_id>1234567890123456789</report_id>
    <date_range><begin>1764460800</begin><end>1764547199</end></date_range>
  </report_metadata>
  <policy_published><domain>example.org</domain><adkim>s</adkim><aspf>s</aspf><p>reject</p><sp>reject</sp><pct>100</pct></policy_published>
  <record>
    <row><source_ip>127.0.4.1</source_ip><count>41</count>
      <policy_evaluated><disposition>none</disposition><dkim>pass</dkim><spf>pass</spf></policy_evaluated></row>
    <identifiers><header_from>example.org</header_from></identifiers>
    <auth_results><dkim><domain>example.org</domain><selector>ed</selector><result>pass</result></dkim>
      <spf><domain>example.org</domain><result>pass</result></spf></auth_results>
  </record>
  <record>
    <row><source_ip>203.0.113.9</source_ip><count>3</count>
      <policy_evaluated><disposition>reject</disposition><dkim>fail</dkim><spf>fail</spf></policy_evaluated></row>
    <identifiers><header_from>example.org</header_from></identifiers>
    <auth_results><spf><domain>spoof.example</domain><result>fail</result></spf></auth_results>
  </record>
</feedback>
"""

TLSRPT = {
    "organization-name": "Company-X", "contact-info": "sts-reporting@company-x.example",
    "report-id": "5065427c-23d3-47ca-b6e0-946ea0e8c4be",
    "date-range": {"start-datetime": "2026-11-30T00:00:00Z", "end-datetime": "2026-11-30T23:59:59Z"},
    "policies": [{
        "policy": {"policy-type": "sts", "policy-domain": "example.org", "mx-host": ["mail.example.org"]},
        "summary": {"total-successful-session-count": 5326, "total-failure-session-count": 303},
        "failure-details": [{"result-type": "certificate-expired", "sending-mta-ip": "2001:db8:abcd:0012::1",
                             "receiving-mx-hostname": "mail.example.org", "failed-session-count": 100},
                            {"result-type": "starttls-not-supported", "sending-mta-ip": "2001:db8:abcd:0013::1",
                             "receiving-mx-hostname": "mail.example.org", "failed-session-count": 203}],
    }],
}


def _mail(part_type: str, payload: bytes, filename: str) -> bytes:
    import base64

    body = base64.encodebytes(payload).decode()
    return (f'From: r@reporter.example\r\nSubject: Report Domain: example.org\r\nMIME-Version: 1.0\r\n'
            f'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nreport\r\n'
            f'--b\r\nContent-Type: {part_type}\r\nContent-Disposition: attachment; filename="{filename}"\r\n'
            f'Content-Transfer-Encoding: base64\r\n\r\n{body}\r\n--b--\r\n').encode()


def test_dmarc_report_as_gzip_zip_and_plain_xml() -> None:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("google.com!example.org!1764460800!1764547199.xml", DMARC_XML)
    for part_type, payload in (("application/gzip", gzip.compress(DMARC_XML)), ("application/zip", archive.getvalue()),
                               ("text/xml", DMARC_XML)):
        [report] = parse.reports_in(_mail(part_type, payload, "r.xml"))
        assert (report.kind, report.org_name, report.policy_domain) == ("dmarc", "google.com", "example.org")
        assert (report.messages, report.passed, report.failed) == (44, 41, 3)
        assert report.policy["p"] == "reject" and report.begin == 1764460800
        assert [(r.source, r.count, r.disposition) for r in report.rows] == [("127.0.4.1", 41, "none"),
                                                                           ("203.0.113.9", 3, "reject")]
        assert report.rows[1].detail["spf"] == [{"domain": "spoof.example", "result": "fail"}]


def test_tlsrpt_report() -> None:
    [report] = parse.reports_in(_mail("application/tlsrpt+gzip", gzip.compress(json.dumps(TLSRPT).encode()),
                                      "company-x.example!example.org!1764460800!1764547199.json.gz"))
    assert (report.kind, report.org_name, report.policy_domain) == ("tlsrpt", "Company-X", "example.org")
    assert (report.messages, report.passed, report.failed) == (5629, 5326, 303)
    assert [(r.disposition, r.count) for r in report.rows] == [("certificate-expired", 100),
                                                             ("starttls-not-supported", 203)]


def test_reports_that_are_refused() -> None:
    # A gzip bomb: a few KiB that expand beyond the bound.
    bomb = gzip.compress(b"<feedback>" + b" " * (parse.MAX_REPORT_BYTES + 10))
    assert len(bomb) < 64 * 1024
    with pytest.raises(parse.BadReport, match="expands"):
        parse.reports_in(_mail("application/gzip", bomb, "r.xml.gz"))
    entities = b'<?xml version="1.0"?><!DOCTYPE f [<!ENTITY a "aaaa">]><feedback>&a;</feedback>'
    with pytest.raises(parse.BadReport, match="DTD"):
        parse.parse_dmarc(entities)
    with pytest.raises(parse.BadReport, match="well formed"):
        parse.parse_dmarc(b"<feedback><report_metadata>")
    with pytest.raises(parse.BadReport, match="org_name"):
        parse.parse_dmarc(b"<feedback></feedback>")
    with pytest.raises(parse.BadReport, match="count"):
        parse.parse_tlsrpt(json.dumps(TLSRPT | {"policies": [TLSRPT["policies"][0] | {  # type: ignore[operator]
            "summary": {"total-successful-session-count": -1}}]}).encode())
    # Ordinary mail is no report.
    assert parse.reports_in(b"From: a@b\r\nSubject: hi\r\n\r\nhello\r\n") == []


def test_rua_destinations() -> None:
    found = destinations("mailto:dmarc@example.net!10m, https://x.example/r, mailto:Other%40x@third.example,"
                         " mailto:dmarc@example.net")
    assert [(d.address, d.max_size) for d in found] == [("dmarc@example.net", 10 * 1024 * 1024),
                                                        ("Other@x@third.example", None)]


async def _store(path: Path) -> Store:
    db = Store(f"sqlite+aiosqlite:///{path / 'reports.db'}")
    await db.migrate()
    return db


def _seen(domain: str, ip: str, dkim: str = "pass") -> Seen:
    return Seen(from_domain=domain, policy_domain=domain, source_ip=ip, disposition="none", dkim=dkim, spf="pass",
                auth={"envelope_from": domain, "dkim": [{"domain": domain, "selector": "s", "result": dkim}],
                      "spf": {"domain": domain, "scope": "mfrom", "result": "pass"}},
                policy={"p": "none", "adkim": "r"})


def test_our_aggregate_reports(tmp_path: Path) -> None:
    async def run() -> None:
        store = await _store(tmp_path)
        reports = ReportStore(store)
        dns = {
            "_dmarc.near.example": ["v=DMARC1; p=none; rua=mailto:agg@near.example"],
            "_dmarc.far.example": ["v=DMARC1; p=none; rua=mailto:agg@collector.example,mailto:x@unauthorised.example"],
            "far.example._report._dmarc.collector.example": ["v=DMARC1"],
            "_dmarc.tiny.example": ["v=DMARC1; p=none; rua=mailto:agg@tiny.example!1k"],
            "_dmarc.quiet.example": ["v=DMARC1; p=none"],
        }
        queued: list[tuple[str, list[str], bytes]] = []

        async def txt(name: str) -> list[Any]:
            return dns.get(name, [])

        async def enqueue(mail_from: str, to: list[str], data: bytes) -> None:
            queued.append((mail_from, to, data))

        async def sign(domain: str, data: bytes) -> bytes:
            return data

        reporter = AggregateReporter(reports, txt=txt, enqueue=enqueue, sign=sign, org_name="mail.example.org",
                                     from_address="postmaster@example.org", hostname="mail.example.org",
                                     interval=86400, max_per_hour=3, max_rows=100)
        period = reporter.period_of(1764460800 + 100)
        for domain in ("near.example", "far.example", "tiny.example", "quiet.example"):
            await reports.record(period, _seen(domain, "127.0.4.2"))
        await reports.record(period, _seen("near.example", "127.0.4.2"))
        await reports.record(period, _seen("near.example", "127.0.4.3", dkim="fail"))
        # Nothing is due while the interval lasts.
        assert await reporter.run_once(now=period + 3600) == 0
        # Three per hour: the fourth waits.
        assert await reporter.run_once(now=period + 86400 + 10) == 3
        assert await reporter.run_once(now=period + 86400 + 20) == 0
        assert await reporter.run_once(now=period + 86400 + 3700) == 1
        outcomes = {s["policy_domain"]: s["outcome"] for s in await reports.sent(DMARC_REPORTS, 0)}
        assert outcomes["near.example"] == "queued to agg@near.example"
        assert outcomes["far.example"] == "queued to agg@collector.example"  # RFC 7489 §7.1
        assert outcomes["tiny.example"].startswith("not sent; too large for agg@tiny.example")
        assert outcomes["quiet.example"].startswith("not sent: the record asks for no aggregate reports")
        assert sorted(to[0] for _, to, _ in queued) == ["agg@collector.example", "agg@near.example"]
        # Claimed once: nothing goes twice.
        assert await reporter.run_once(now=period + 2 * 86400) == 0
        # The report reads back as RFC 7489 says.
        near = next(data for _, to, data in queued if to == ["agg@near.example"])
        message = email.message_from_bytes(near, policy=email.policy.default)
        assert message["Subject"].startswith("Report Domain: near.example Submitter: mail.example.org Report-ID: <")
        [report] = parse.reports_in(near)
        assert (report.org_name, report.policy_domain, report.messages, report.passed) == (
            "mail.example.org", "near.example", 3, 3)
        assert {(r.source, r.count, r.dkim) for r in report.rows} == {("127.0.4.2", 2, "pass"),
                                                                    ("127.0.4.3", 1, "fail")}
        attachment = next(p for p in message.walk() if p.get_content_type() == "application/gzip")
        assert attachment.get_filename() == f"mail.example.org!near.example!{int(period)}!{int(period) + 86399}.xml.gz"
        await store.close()

    asyncio.run(run())


def test_received_reports_are_stored_once(tmp_path: Path) -> None:
    async def run() -> None:
        store = await _store(tmp_path)
        reports = ReportStore(store)
        report = parse.parse_dmarc(DMARC_XML)
        assert await reports.save(report, "r@google.com")
        assert not await reports.save(report, "r@google.com")
        [stored] = await reports.received(0)
        assert (stored["messages"], stored["failed"]) == (44, 3)
        [source] = await reports.failing_sources([stored["id"]])
        assert (source["source"], source["count"]) == ("203.0.113.9", 3)
        await store.close()

    asyncio.run(run())


def _session(policy_type: str, result: str = "", mx: str = "mx.near.example", **more: Any) -> dict[str, Any]:
    strings = {"sts": ["version: STSv1", "mode: enforce", "mx: mx.near.example", "max_age: 86400"],
               "tlsa": ["3 1 1 " + "00" * 32]}.get(policy_type, [])
    return {"policy_type": policy_type, "policy_strings": strings,
            "mx_patterns": ["mx.near.example"] if policy_type == "sts" else [], "result_type": result,
            "mx_host": mx, "receiving_ip": "192.0.2.25", "sending_ip": "198.51.100.1", "info": more.get("info", "")}


def test_our_tls_reports(tmp_path: Path) -> None:
    """RFC 8460: one report per domain and interval, only to a single valid record's mailto: rua,
    grouped per policy with success and failure counts, claimed once, readable by a receiver."""
    from peerage.mail.reports.tlsrpt import TlsReporter, parse_record

    assert parse_record(["v=TLSRPTv1; rua=mailto:a@x.example"]) == {"v": "TLSRPTv1", "rua": "mailto:a@x.example"}
    assert parse_record(["v=TLSRPTv1; rua=mailto:a@x.example", "v=TLSRPTv1; rua=mailto:b@x.example"]) is None
    assert parse_record(["v=spf1 -all", "v=TLSRPTv1;rua=mailto:a@x.example"]) is not None
    assert parse_record(["v=TLSRPTv1;"]) is None

    async def run() -> None:
        store = await _store(tmp_path)
        reports = ReportStore(store)
        dns = {
            "_smtp._tls.near.example": ["v=TLSRPTv1; rua=mailto:tls@near.example,https://reports.near.example/v1"],
            "_smtp._tls.web.example": ["v=TLSRPTv1; rua=https://reports.web.example/v1"],
            "_smtp._tls.far.example": ["v=TLSRPTv1; rua=mailto:a@c1.example,mailto:b@c2.example,mailto:c@c3.example"],
        }
        queued: list[tuple[str, list[str], bytes]] = []

        async def txt(name: str) -> list[Any]:
            return dns.get(name, [])

        async def enqueue(mail_from: str, to: list[str], data: bytes) -> None:
            queued.append((mail_from, to, data))

        async def sign(domain: str, data: bytes) -> bytes:
            return data

        reporter = TlsReporter(reports, txt=txt, enqueue=enqueue, sign=sign, org_name="mail.example.org",
                               from_address="postmaster@example.org", hostname="mail.example.org",
                               interval=86400, max_per_hour=10)
        period = reporter.period_of(1764460800 + 100)
        await reports.record_tls(period, "near.example", _session("sts"), 40)
        await reports.record_tls(period, "near.example", _session("sts"), 2)
        await reports.record_tls(period, "near.example", _session("sts", "certificate-expired", info="expired"), 3)
        await reports.record_tls(period, "near.example", _session("tlsa", "tlsa-invalid", mx="mx2.near.example"), 1)
        await reports.record_tls(period, "web.example", _session("no-policy-found"), 5)
        await reports.record_tls(period, "far.example", _session("no-policy-found"), 1)
        await reports.record_tls(period, "none.example", _session("no-policy-found"), 7)
        assert await reporter.run_once(now=period + 3600) == 0
        assert await reporter.run_once(now=period + 86400 + 10) == 4
        assert await reporter.run_once(now=period + 2 * 86400) == 0  # claimed once
        outcomes = {s["policy_domain"]: s["outcome"] for s in await reports.sent(TLS_REPORTS, 0)}
        assert outcomes["near.example"] == ("queued to tls@near.example; https: not supported "
                                            "(https://reports.near.example/v1)")
        assert outcomes["web.example"] == "not sent: no mailto: rua (https: is not supported)"
        assert outcomes["far.example"] == "queued to a@c1.example, b@c2.example"  # at most two
        assert outcomes["none.example"] == "not sent: no single TLSRPT record"
        near = next(data for _, to, data in queued if to == ["tls@near.example"])
        message = email.message_from_bytes(near, policy=email.policy.default)
        assert message["TLS-Report-Domain"] == "near.example"
        assert message["TLS-Report-Submitter"] == "mail.example.org"
        assert message.get_content_type() == "multipart/report" and message.get_param("report-type") == "tlsrpt"
        attachment = next(p for p in message.walk() if p.get_content_type() == "application/tlsrpt+gzip")
        assert attachment.get_filename() == f"mail.example.org!near.example!{int(period)}!{int(period) + 86399}.json.gz"
        document = json.loads(gzip.decompress(attachment.get_content()))
        assert document["date-range"] == {"start-datetime": "2025-11-30T00:00:00Z",
                                          "end-datetime": "2025-11-30T23:59:59Z"}
        by_type = {p["policy"]["policy-type"]: p for p in document["policies"]}
        sts = by_type["sts"]
        assert sts["policy"]["mx-host"] == ["mx.near.example"] and "mode: enforce" in sts["policy"]["policy-string"]
        assert sts["summary"] == {"total-successful-session-count": 42, "total-failure-session-count": 3}
        assert sts["failure-details"] == [{"result-type": "certificate-expired", "failed-session-count": 3,
                                           "sending-mta-ip": "198.51.100.1", "receiving-mx-hostname": "mx.near.example",
                                           "receiving-ip": "192.0.2.25", "additional-information": "expired"}]
        assert by_type["tlsa"]["policy"]["mx-host"] == ["mx2.near.example"]
        assert by_type["tlsa"]["summary"]["total-failure-session-count"] == 1
        # Our own receiving side reads it as any TLS-RPT report.
        [report] = parse.reports_in(near)
        assert (report.kind, report.org_name, report.messages, report.failed) == ("tlsrpt", "mail.example.org", 46, 4)
        await store.close()

    asyncio.run(run())
