"""DMARC aggregate (RFC 7489 §7.2) and TLS-RPT (RFC 8460) reports with real peers:

- swaks sends a gzipped DMARC aggregate report to postmaster@ and a TLS-RPT report to abuse@ of a
  hosted domain: both are parsed into figures `peerage mail reports` shows (the mail is delivered
  too); the same report sent twice is stored once; a gzip bomb is not read but still delivered;
- Postfix (example.net) sends mail to a hosted user; example.net's DMARC record asks for aggregate
  reports at dmarc@example.net and at a third party that has not authorised them (RFC 7489 §7.1): once
  the interval is over, peerage's report reaches the Maildir at Postfix (and only there), with the
  record of what our MX saw;
- our TLS-RPT reports (RFC 8460): peerage delivers to example.net over STARTTLS and fails DANE at
  dane-bad.example (its TLSA record matches nothing); both domains publish a `_smtp._tls` record
  naming tlsrpt@example.net, and once the interval is over a report for each reaches that Maildir at
  Postfix, with the successful session and the tlsa-invalid failure, each interval's report once.
"""

from __future__ import annotations

import email
import email.policy
import gzip
import json
import smtplib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from peerage.mail.reports import parse
from tests.harness import LocalDNS, PeerageServer, TestCA, require_binary, wait_for
from tests.mail.conftest import PASSWORDS, make_peerage, publish_peerage_domain
from tests.mail.helpers import (
    CLIENT_ADDRESS,
    DNS_ADDRESS,
    PEERAGE_ADDRESS,
    POSTFIX_ADDRESS,
    mailbox_messages,
    queue_rows,
    unverified_context,
)
from tests.mail.postfix import Postfix
from tests.mail.test_reports_unit import DMARC_XML, TLSRPT

pytestmark = pytest.mark.interop

ALICE = "alice@example.org"
TIMEOUT = 60.0
INTERVAL = 4.0  # the reporting interval, shortened from a day


@pytest.fixture(scope="module")
def peerage(tmp_path_factory: pytest.TempPathFactory, local_dns: LocalDNS, test_ca: TestCA) -> Iterator[PeerageServer]:
    server = make_peerage(tmp_path_factory.mktemp("peerage"), local_dns, test_ca,
                          {"reports": {"interval_seconds": INTERVAL}})
    for address, password in PASSWORDS.items():
        server.add_user(address, password)
    from peerage.mail.auth.dkim import generate_keys

    generate_keys(server.data_dir, "example.org")
    publish_peerage_domain(local_dns, server)
    local_dns.add_mx("example.net", 10, "mx.example.net")
    local_dns.add_a("mx.example.net", POSTFIX_ADDRESS)
    local_dns.add_txt("example.net", "v=spf1 ip4:127.0.4.2 -all")
    local_dns.add_txt("_dmarc.example.net",
                      "v=DMARC1; p=none; rua=mailto:dmarc@example.net!1m,mailto:dmarc@collector.example")
    for domain in ("example.net", "dane-bad.example"):
        local_dns.add_txt(f"_smtp._tls.{domain}", "v=TLSRPTv1; rua=mailto:tlsrpt@example.net")
    local_dns.add_mx("dane-bad.example", 10, "mx.dane-bad.example")
    local_dns.add_a("mx.dane-bad.example", POSTFIX_ADDRESS)
    local_dns.add_tlsa("_25._tcp.mx.dane-bad.example", 3, 1, 1, bytes(32))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def postfix(tmp_path_factory: pytest.TempPathFactory, local_dns: LocalDNS, test_ca: TestCA,
            peerage: PeerageServer) -> Iterator[Postfix]:
    server = Postfix(tmp_path_factory.mktemp("postfix"), domain="example.net", hostname="mx.example.net",
                     address=POSTFIX_ADDRESS, dns_address=DNS_ADDRESS, users=["carol", "dmarc", "tlsrpt"],
                     cert=test_ca.issue("mx.example.net"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _swaks(to: str, attachment: Path, content_type: str, subject: str) -> None:
    swaks = require_binary("swaks", "/usr/bin/swaks")
    done = subprocess.run(
        [swaks, "--server", PEERAGE_ADDRESS, "--port", "25", "--local-interface", CLIENT_ADDRESS,
         "--ehlo", "reporter.example", "--from", "noreply-dmarc@reporter.example", "--to", to,
         "--header", f"Subject: {subject}", "--body", "This is an aggregate report.",
         "--attach-type", content_type, "--attach-name", attachment.name, "--attach", f"@{attachment}"],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "<-  250 " in done.stdout.split(" -> .\n")[-1]


def _reports(peerage: PeerageServer) -> dict[str, list[dict[str, object]]]:
    done = peerage.cli("mail", "reports", "--json")
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_received_reports_are_parsed_and_shown(peerage: PeerageServer, tmp_path: Path) -> None:
    dmarc = tmp_path / "reporter.example!example.org!1764460800!1764547199.xml.gz"
    dmarc.write_bytes(gzip.compress(DMARC_XML))
    tls = tmp_path / "reporter.example!example.org!1764460800!1764547199.json.gz"
    tls.write_bytes(gzip.compress(json.dumps(TLSRPT).encode()))
    _swaks("postmaster@example.org", dmarc, "application/gzip", "Report Domain: example.org Submitter: google.com")
    _swaks("abuse@example.org", tls, "application/tlsrpt+gzip", "Report Domain: example.org Submitter: Company-X")
    # The same DMARC report again (reporters resend after a temporary failure): stored once.
    _swaks("postmaster@example.org", dmarc, "application/gzip", "Report Domain: example.org Submitter: google.com")

    def both() -> dict[str, list[dict[str, object]]] | None:
        current = _reports(peerage)
        return current if len(current["received"]) >= 2 else None

    found = wait_for(both, TIMEOUT, "both reports in `peerage mail reports`")
    assert found is not None
    kinds = sorted((r["kind"], r["org_name"], r["messages"], r["failed"]) for r in found["received"])
    assert kinds == [("dmarc", "google.com", 44, 3), ("tlsrpt", "Company-X", 5629, 303)]
    assert any(f["source"] == "203.0.113.9" and f["count"] == 3 for f in found["failing_sources"])
    text = peerage.cli("mail", "reports").stdout
    assert "DMARC aggregate reports received: 1" in text and "TLS reports received (RFC 8460): 1" in text
    assert "certificate-expired" in text and "203.0.113.9" in text
    # The reports are mail too: postmaster@ and abuse@ reach the first account.
    wait_for(lambda: len([m for m in mailbox_messages(peerage.data_dir, ALICE) if b"Report Domain:" in m]) >= 3,
             TIMEOUT, "the three report mails in alice's inbox")


def test_a_report_bomb_is_not_read_but_delivered(peerage: PeerageServer, tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.xml.gz"
    bomb.write_bytes(gzip.compress(b"<feedback>" + b" " * (parse.MAX_REPORT_BYTES + 1024)))
    _swaks("postmaster@example.org", bomb, "application/gzip", "Report Domain: example.org Submitter: bomb")
    wait_for(lambda: "was not read: the report expands beyond" in peerage.log_text(), TIMEOUT,
             "the refused report in the log")
    wait_for(lambda: [m for m in mailbox_messages(peerage.data_dir, ALICE) if b"Submitter: bomb" in m], TIMEOUT,
             "the bomb delivered as mail")
    assert not [r for r in _reports(peerage)["received"] if r["org_name"] == "bomb"]


def test_our_aggregate_report_reaches_the_rua_at_postfix(peerage: PeerageServer, postfix: Postfix) -> None:
    message = (b"From: carol@example.net\r\nTo: bob@example.org\r\nSubject: counted for DMARC\r\n"
               b"Message-ID: <dmarc-counted@example.net>\r\n\r\nhello\r\n")
    with smtplib.SMTP(POSTFIX_ADDRESS, 25, source_address=(CLIENT_ADDRESS, 0)) as client:
        client.ehlo("client.example.net")
        assert client.sendmail("carol@example.net", ["bob@example.org"], message) == {}
    wait_for(lambda: [m for m in mailbox_messages(peerage.data_dir, "bob@example.org")
                      if b"counted for DMARC" in m], TIMEOUT, "the mail in bob's inbox")

    def report_at_postfix() -> bytes | None:
        return next((m for m in postfix.maildir_messages("dmarc") if b"Report Domain: example.net" in m), None)

    received = wait_for(report_at_postfix, TIMEOUT, "our aggregate report in dmarc@example.net's Maildir")
    assert received is not None
    parsed = email.message_from_bytes(received, policy=email.policy.default)
    assert parsed["From"] == "postmaster@example.org"
    assert parsed["Subject"].startswith("Report Domain: example.net Submitter: ")
    [report] = parse.reports_in(received)
    assert report.policy_domain == "example.net" and report.policy["p"] == "none"
    row = next(r for r in report.rows if r.source == POSTFIX_ADDRESS)
    assert (row.header_from, row.disposition, row.spf, row.dkim) == ("example.net", "none", "pass", "fail")
    assert row.count >= 1
    wait_for(lambda: "status=sent" in postfix.log_text(), TIMEOUT, "postfix's delivery log line")  # after filing
    # RFC 7489 §7.1: collector.example published no example.net._report._dmarc record, so it got nothing.
    wait_for(lambda: "not sent to dmarc@collector.example" in peerage.log_text(), TIMEOUT, "the refusal logged")

    # The outcome is written once the report is queued (it may reach Postfix first): wait for it.
    def outcomes() -> bool:
        sent = [s for s in _reports(peerage)["sent"] if s["policy_domain"] == "example.net"]
        return bool(sent) and all(s["outcome"] == "queued to dmarc@example.net" for s in sent)

    wait_for(outcomes, TIMEOUT, "the DMARC report's outcome")


def _tls_reports(postfix: Postfix) -> list[tuple[email.message.EmailMessage, dict[str, object]]]:
    found = []
    for raw in postfix.maildir_messages("tlsrpt"):
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, email.message.EmailMessage)
        part = next((p for p in message.walk() if p.get_content_type() == "application/tlsrpt+gzip"), None)
        assert part is not None, raw[:500]
        found.append((message, json.loads(gzip.decompress(part.get_content()))))
    return found


def test_our_tls_reports_reach_the_rua_at_postfix(peerage: PeerageServer, postfix: Postfix,
                                                  local_dns: LocalDNS) -> None:
    def submit(subject: str, recipient: str) -> None:
        message = f"From: {ALICE}\r\nTo: {recipient}\r\nSubject: {subject}\r\n\r\nHello.\r\n".encode()
        with smtplib.SMTP(PEERAGE_ADDRESS, 587, source_address=(CLIENT_ADDRESS, 0)) as client:
            client.starttls(context=unverified_context())
            client.login(ALICE, PASSWORDS[ALICE])
            assert client.sendmail(ALICE, [recipient], message) == {}

    submit("counted for TLS-RPT", "carol@example.net")
    wait_for(lambda: [m for m in postfix.maildir_messages("carol") if b"counted for TLS-RPT" in m], TIMEOUT,
             "the mail at Postfix")
    local_dns.secure = True  # the TLSA record is DNSSEC-validated: DANE applies, and fails
    try:
        submit("refused by DANE", "carol@dane-bad.example")
        rows = wait_for(lambda: [r for r in queue_rows(peerage.data_dir)
                                 if r[2] == "carol@dane-bad.example" and r[3] >= 1], TIMEOUT, "the DANE deferral")
        peerage.cli("mail", "queue", "drop", str(rows[0][0]))
    finally:
        local_dns.secure = False

    def report_for(domain: str, wanted: object) -> dict[str, object] | None:
        for message, document in _tls_reports(postfix):
            if message["TLS-Report-Domain"] == domain and wanted(document):  # type: ignore[operator]
                return document
        return None

    def delivered(document: dict[str, object]) -> bool:
        return any(p["policy"]["policy-type"] == "no-policy-found"  # type: ignore[index]
                   and p["summary"]["total-successful-session-count"] >= 1  # type: ignore[index]
                   for p in document["policies"])  # type: ignore[attr-defined]

    def dane_failed(document: dict[str, object]) -> bool:
        return any(p["policy"]["policy-type"] == "tlsa" and any(  # type: ignore[index]
            d["result-type"] == "tlsa-invalid" and d["receiving-mx-hostname"] == "mx.dane-bad.example"
            and d["receiving-ip"] == POSTFIX_ADDRESS and d["failed-session-count"] >= 1
            for d in p.get("failure-details", [])) for p in document["policies"])  # type: ignore[attr-defined]

    ok = wait_for(lambda: report_for("example.net", delivered), TIMEOUT, "the TLS report for example.net")
    bad = wait_for(lambda: report_for("dane-bad.example", dane_failed), TIMEOUT, "the TLS report for dane-bad")
    assert ok is not None and bad is not None
    assert ok["organization-name"] == bad["organization-name"] and ok["organization-name"]
    tlsa = next(p for p in bad["policies"] if p["policy"]["policy-type"] == "tlsa")  # type: ignore[attr-defined]
    assert tlsa["policy"]["policy-string"] == ["3 1 1 " + "00" * 32]
    assert tlsa["summary"]["total-successful-session-count"] == 0
    messages = [m for m, _ in _tls_reports(postfix)]
    assert all(m["From"] == "postmaster@example.org" and "DKIM-Signature" in m for m in messages)
    assert all(m["Subject"].startswith(f"Report Domain: {m['TLS-Report-Domain']} Submitter: ") for m in messages)
    # Each interval's report for a domain went once.
    periods = [(m["TLS-Report-Domain"], d["date-range"]["start-datetime"])  # type: ignore[index]
               for m, d in _tls_reports(postfix)]
    assert len(periods) == len(set(periods))

    # The outcome is written once the report is queued (it may reach Postfix first): wait for it.
    def outcomes() -> bool:
        sent = [s for s in _reports(peerage)["tls_sent"] if s["policy_domain"] == "dane-bad.example"]
        return bool(sent) and all(s["outcome"] == "queued to tlsrpt@example.net" for s in sent)

    wait_for(outcomes, TIMEOUT, "the TLS report's outcome")
