"""Unit tests of the sans-I/O mail pieces: path policy, smuggling check, enhanced codes, retry
schedule, DSN composition, DKIM sign/verify, DMARC alignment, MTA-STS and DANE matching."""

from __future__ import annotations

import base64
import email
import email.message
import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st

from peerage.mail.auth import dane, dkim, dmarc, mtasts
from peerage.mail.auth.spf import SpfResult
from peerage.mail.smtp import dsn, policy
from peerage.mail.smtp.replies import with_enhanced_code
from peerage.mail.smtp.schedule import Schedule
from tests.harness import TestCA


@pytest.mark.parametrize(
    "path",
    ["a%b@example.org", "b!a@example.org", '"a@b"@example.org', "a@example.org.", "@r:a@example.org",
     "a@[127.0.0.1]", "a@.example.org", "a@exa..mple.org"],
)
def test_routing_tricks_refused(path: str) -> None:
    with pytest.raises(policy.PathRefused) as refused:
        policy.parse_mailbox(path)
    assert refused.value.reply.startswith("55")


def test_plain_mailbox_accepted_and_domain_lowered() -> None:
    assert policy.parse_mailbox("Alice.B@Example.ORG") == policy.Mailbox("Alice.B", "example.org")


@pytest.mark.parametrize("bad", ["", "noat", "@example.org", "a@", "a" * 65 + "@example.org", ".a@example.org"])
def test_malformed_paths_refused(bad: str) -> None:
    with pytest.raises(policy.PathRefused):
        policy.parse_mailbox(bad)


@given(st.text(max_size=300))
def test_parse_mailbox_never_crashes(text: str) -> None:
    try:
        mailbox = policy.parse_mailbox(text)
    except policy.PathRefused:
        return
    assert not policy.ROUTING_CHARACTERS.intersection(mailbox.local)


def test_bare_line_endings_detected() -> None:
    assert not policy.has_bare_line_ending(b"a\r\nb\r\n")
    assert policy.has_bare_line_ending(b"a\nb\r\n")
    assert policy.has_bare_line_ending(b"a\rb\r\n")
    assert policy.has_bare_line_ending(b"a\r\n.\n\r\n")


def test_enhanced_codes_added_only_where_missing() -> None:
    assert with_enhanced_code("250 OK") == "250 2.0.0 OK"
    assert with_enhanced_code("550 5.1.1 No such user") == "550 5.1.1 No such user"
    assert with_enhanced_code("503 Error: need MAIL command") == "503 5.5.1 Error: need MAIL command"
    assert with_enhanced_code("220 ready") == "220 ready"
    assert with_enhanced_code("334 ") == "334 "


def test_schedule_backs_off_exponentially_and_gives_up() -> None:
    schedule = Schedule(first_retry=60, max_retry=3600, lifetime=86400, delay_warning=7200)
    delays = [schedule.next_attempt(0, n, 100) - 100 for n in range(1, 8)]  # type: ignore[operator]
    assert delays == [60, 120, 240, 480, 960, 1920, 3600]
    assert schedule.next_attempt(0, 3, 86400) is None
    assert schedule.next_attempt(0, 50, 86000) == 86400
    assert not schedule.delay_notice_due(0, 7000, False)
    assert schedule.delay_notice_due(0, 7200, False)
    assert not schedule.delay_notice_due(0, 9000, True)


def test_dsn_is_a_delivery_status_report() -> None:
    original = b"From: a@example.org\r\nSubject: lost\r\n\r\nbody\r\n"
    report = dsn.compose_dsn(
        reporting_mta="example.org", postmaster="MAILER-DAEMON@example.org", sender="a@example.org",
        original=original,
        recipients=[dsn.RecipientStatus("x@example.net", "failed", "5.1.1", "550 5.1.1 unknown user", "mx.example.net")],
        arrival=datetime(2026, 1, 1, tzinfo=UTC), now=datetime(2026, 1, 1, 1, tzinfo=UTC),
    )
    message = email.message_from_bytes(report)
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    parts = [p.get_content_type() for p in message.get_payload() if isinstance(p, email.message.Message)]
    assert parts == ["text/plain", "message/delivery-status", "message/rfc822"]
    text = report.decode()
    assert "Final-Recipient: rfc822; x@example.net" in text and "Status: 5.1.1" in text
    assert "Action: failed" in text and "Subject: lost" in text
    assert b"\n" not in report.replace(b"\r\n", b"")


class _FakeLookup:
    """A TXT table in place of DNS: unit tests only."""

    def __init__(self, records: dict[str, list[bytes]]) -> None:
        self.records = records

    def txt(self, name: str) -> list[bytes]:
        return self.records.get(name.rstrip("."), [])

    def dkim_txt(self, name: bytes, timeout: float = 5.0) -> bytes | None:
        found = self.txt(name.decode())
        return found[0] if found else None


def test_dkim_signs_with_both_keys_and_verifies(tmp_path: Path) -> None:
    dkim.generate_keys(tmp_path, "example.org")
    keys = dkim.load_keys(tmp_path, "example.org")
    assert keys is not None
    lookup = _FakeLookup({name: [value.encode()] for name, value in keys.dns_records()})
    message = b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: signed\r\n\r\nhello\r\n"
    signed = dkim.sign(message, keys)
    results = dkim.verify(signed, lookup)  # type: ignore[arg-type]
    assert sorted((r.result, r.algorithm) for r in results) == [("pass", "ed25519-sha256"), ("pass", "rsa-sha256")]
    tampered = signed.replace(b"hello", b"hellO")
    assert {r.result for r in dkim.verify(tampered, lookup)} == {"fail"}  # type: ignore[arg-type]
    assert dkim.verify(message, lookup) == [dkim.DkimResult("none")]  # type: ignore[arg-type]
    # generate_keys keeps existing keys.
    dkim.generate_keys(tmp_path, "example.org")
    assert dkim.load_keys(tmp_path, "example.org") == keys


def test_dmarc_alignment() -> None:
    lookup = _FakeLookup({"_dmarc.example.org": [b"v=DMARC1; p=reject"]})
    spf_pass = SpfResult("pass", "example.org")
    spf_sub = SpfResult("pass", "bounces.example.org")
    dkim_other = [dkim.DkimResult("pass", "example.net")]
    assert dmarc.check("example.org", spf_pass, [], lookup).result == "pass"  # type: ignore[arg-type]
    assert dmarc.check("example.org", spf_sub, [], lookup).result == "pass"  # type: ignore[arg-type]
    failed = dmarc.check("example.org", SpfResult("fail", "example.org"), dkim_other, lookup)  # type: ignore[arg-type]
    assert (failed.result, failed.policy) == ("fail", "reject")
    strict = _FakeLookup({"_dmarc.example.org": [b"v=DMARC1; p=quarantine; aspf=s"]})
    assert dmarc.check("example.org", spf_sub, [], strict).result == "fail"  # type: ignore[arg-type]
    assert dmarc.check("example.com", spf_pass, [], lookup).result == "none"  # type: ignore[arg-type]


def test_mta_sts_policy_parsing_and_matching() -> None:
    assert mtasts.parse_txt("v=STSv1; id=20260101") == "20260101"
    assert mtasts.parse_txt("v=spf1 -all") is None
    policy_ = mtasts.parse_policy("version: STSv1\r\nmode: enforce\r\nmx: mail.example.net\r\nmx: *.backup.example.net\r\nmax_age: 86400\r\n")
    assert policy_.mode == "enforce" and policy_.max_age == 86400
    assert policy_.matches("mail.example.net") and policy_.matches("mx1.backup.example.net.")
    assert not policy_.matches("a.b.backup.example.net") and not policy_.matches("evil.example.net")
    with pytest.raises(mtasts.PolicyError):
        mtasts.parse_policy("version: STSv1\nmode: enforce\nmax_age: 1\n")
    with pytest.raises(mtasts.PolicyError):
        mtasts.parse_policy("version: STSv2\nmode: none\nmax_age: 1\n")


def test_dane_matching(tmp_path: Path) -> None:
    ca = TestCA(tmp_path)
    cert_path, _ = ca.issue("mx.example.net")
    other_path, _ = ca.issue("other.example.net")
    der = x509.load_pem_x509_certificate(cert_path.read_bytes()).public_bytes(serialization.Encoding.DER)
    spki = x509.load_der_x509_certificate(der).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    other = x509.load_pem_x509_certificate(other_path.read_bytes()).public_bytes(serialization.Encoding.DER)
    ee_spki = dane.Tlsa(3, 1, 1, hashlib.sha256(spki).digest())
    assert dane.matches(der, [ee_spki])
    assert dane.matches(der, [dane.Tlsa(3, 0, 2, hashlib.sha512(der).digest())])
    assert not dane.matches(other, [ee_spki])
    # PKIX usages are unusable for SMTP (RFC 7672 §3.1.3).
    assert dane.usable([dane.Tlsa(1, 1, 1, b"x")]) == []
    assert base64.b64encode(spki)  # sanity: the key serialises


def test_header_helpers_unfold_and_remove() -> None:
    from peerage.mail.smtp.headers import header_values, remove_headers

    message = (b"Authentication-Results:\r\n example.org; spf=pass\r\nFrom: a@example.org\r\n"
               b"Authentication-Results: other.example;\r\n\tdkim=pass\r\nSubject: s\r\n\r\n"
               b"Authentication-Results: example.org; in the body\r\n")
    assert header_values(message, "authentication-results") == ["example.org; spf=pass", "other.example; dkim=pass"]
    cleaned = remove_headers(message, {b"authentication-results"},
                             keep=lambda value: not value.startswith(b"example.org;"))
    assert cleaned == (b"From: a@example.org\r\nAuthentication-Results: other.example;\r\n\tdkim=pass\r\n"
                       b"Subject: s\r\n\r\nAuthentication-Results: example.org; in the body\r\n")


def test_received_fields_counted_for_loop_detection() -> None:
    message = b"Received: from a\r\n\tby b\r\nRECEIVED: x\r\nSubject: s\r\n\r\nReceived: in body\r\n"
    assert policy.count_received(message) == 2
    assert policy.count_received(b"Received: x\r\n" * (policy.MAX_HOPS + 1) + b"\r\n") == policy.MAX_HOPS + 1
