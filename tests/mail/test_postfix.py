"""Interop with Postfix (Debian) serving example.net on 127.0.4.2, both directions, over STARTTLS, with
DKIM/SPF/DMARC, queueing while Postfix is down, and a DSN for an unknown remote user. Postfix resolves
example.org through the harness's LocalDNS with a private resolv.conf (mount namespace)."""

from __future__ import annotations

import email
import smtplib
from collections.abc import Iterator
from pathlib import Path

import dkim as dkimpy
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from peerage.mail.auth.dnsquery import SyncLookup
from tests.harness import LocalDNS, PeerageServer, TestCA, wait_for
from tests.mail.conftest import PASSWORDS
from tests.mail.helpers import (
    CLIENT_ADDRESS,
    DNS_ADDRESS,
    PEERAGE_ADDRESS,
    POSTFIX_ADDRESS,
    PolicyServer,
    mailbox_messages,
    queue_rows,
    unverified_context,
)
from tests.mail.postfix import Postfix

pytestmark = pytest.mark.interop

ALICE = "alice@example.org"
CAROL = "carol@example.net"
DELIVERY_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def example_net_key(local_dns: LocalDNS) -> bytes:
    """An RSA key example.net signs with (as a milter in front of Postfix would), published in DNS."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    import base64

    local_dns.add_txt("net1._domainkey.example.net", "v=DKIM1; k=rsa; p=" + base64.b64encode(public).decode())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


POLICY_ADDRESS = "127.0.4.3"
ENFORCE_EXAMPLE_NET = "version: STSv1\nmode: enforce\nmx: mx.example.net\nmax_age: 86400\n"
ENFORCE_ELSEWHERE = "version: STSv1\nmode: enforce\nmx: *.elsewhere.example\nmax_age: 86400\n"


@pytest.fixture(scope="module")
def mta_sts(local_dns: LocalDNS, test_ca: TestCA) -> Iterator[PolicyServer]:
    """example.net enforces MTA-STS naming its real MX; strict.example enforces one naming no MX it has."""
    cert = test_ca.issue("mta-sts", dns_ids=["mta-sts.example.net", "mta-sts.strict.example"])
    server = PolicyServer(POLICY_ADDRESS, cert, {"mta-sts.example.net": ENFORCE_EXAMPLE_NET,
                                                 "mta-sts.strict.example": ENFORCE_ELSEWHERE})
    for domain in ("example.net", "strict.example"):
        local_dns.add_txt(f"_mta-sts.{domain}", "v=STSv1; id=20260101T000000")
        local_dns.add_a(f"mta-sts.{domain}", POLICY_ADDRESS)
    local_dns.add_mx("strict.example", 10, "mx.example.net")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def postfix(tmp_path_factory: pytest.TempPathFactory, local_dns: LocalDNS, test_ca: TestCA,
            peerage: PeerageServer, mta_sts: PolicyServer) -> Iterator[Postfix]:
    cert = test_ca.issue("mx.example.net")
    server = Postfix(tmp_path_factory.mktemp("postfix"), domain="example.net", hostname="mx.example.net",
                     address=POSTFIX_ADDRESS, dns_address=DNS_ADDRESS, users=["carol"], cert=cert,
                     other_domains={"dane.example": ["carol"], "dane-bad.example": ["carol"]})
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _submit(subject: str, recipient: str) -> None:
    message = (f"From: {ALICE}\r\nTo: {recipient}\r\nSubject: {subject}\r\n\r\nHello from peerage.\r\n").encode()
    with smtplib.SMTP(PEERAGE_ADDRESS, 587, source_address=(CLIENT_ADDRESS, 0)) as client:
        client.starttls(context=unverified_context())
        client.login(ALICE, PASSWORDS[ALICE])
        assert client.sendmail(ALICE, [recipient], message) == {}


def _maildir_with(postfix: Postfix, user: str, subject: str) -> bytes | None:
    for message in postfix.maildir_messages(user):
        if f"Subject: {subject}\n".encode() in message:
            return message
    return None


def test_peerage_to_postfix_over_starttls_with_valid_dkim(peerage: PeerageServer, postfix: Postfix) -> None:
    _submit("to postfix", CAROL)
    received = wait_for(lambda: _maildir_with(postfix, "carol", "to postfix"), DELIVERY_TIMEOUT, "mail at postfix")
    assert received is not None
    # Postfix's Received header records the TLS session (smtpd_tls_received_header = yes).
    assert b"(using TLSv1.3" in received or b"(using TLSv1.2" in received
    assert b"from example.org (mail.example.org [127.0.4.1])" in received or b"[127.0.4.1]" in received
    # Postfix has no DKIM milter here: verify what it stored with dkimpy, keys from the same DNS.
    lookup = SyncLookup([DNS_ADDRESS], 53, 2.0)
    message = received.replace(b"\n", b"\r\n")
    verifier = dkimpy.DKIM(message)
    signatures = [v for k, v in verifier.headers if k.lower() == b"dkim-signature"]
    assert len(signatures) == 2
    assert all(verifier.verify(idx=i, dnsfunc=lookup.dkim_txt) for i in range(len(signatures)))
    wait_for(lambda: "TLS connection established from" in postfix.log_text(), DELIVERY_TIMEOUT,
             "postfix's TLS log line")  # written through postlogd, on its own time
    # example.net enforces MTA-STS: the certificate was verified against the policy's MX name.
    # Postfix files the message before peerage reads its 250 and logs the delivery: wait for the line.
    wait_for(lambda: "to carol@example.net" in peerage.log_text(), DELIVERY_TIMEOUT, "the delivery log line")
    assert "tls=mta-sts" in peerage.log_text()


def test_mta_sts_enforce_blocks_an_mx_the_policy_does_not_name(peerage: PeerageServer, postfix: Postfix) -> None:
    _submit("strict policy", "someone@strict.example")
    rows = wait_for(lambda: [r for r in queue_rows(peerage.data_dir) if r[2] == "someone@strict.example" and r[3] >= 1],
                    DELIVERY_TIMEOUT, "a deferred attempt")
    assert "MTA-STS" in rows[0][4]
    assert "strict.example" not in postfix.log_text()  # peerage never connected
    peerage.cli("mail", "queue", "drop", str(rows[0][0]))
    assert not [r for r in queue_rows(peerage.data_dir) if r[2] == "someone@strict.example"]


def test_postfix_to_peerage_gets_authentication_results(peerage: PeerageServer, postfix: Postfix,
                                                        example_net_key: bytes) -> None:
    message = (f"From: Carol <{CAROL}>\r\nTo: {ALICE}\r\nSubject: from postfix\r\n"
               "Message-ID: <from-postfix@example.net>\r\n\r\nHello from Postfix.\r\n").encode()
    signature = dkimpy.sign(message, b"net1", b"example.net", example_net_key,
                            include_headers=[b"from", b"to", b"subject", b"message-id"])
    with smtplib.SMTP(POSTFIX_ADDRESS, 25, source_address=(CLIENT_ADDRESS, 0)) as client:
        client.ehlo("client.example.net")
        assert client.sendmail(CAROL, [ALICE], signature + message) == {}

    def stored() -> bytes | None:
        for item in mailbox_messages(peerage.data_dir, ALICE):
            if b"Subject: from postfix" in item:
                return item
        return None

    item = wait_for(stored, DELIVERY_TIMEOUT, "mail from postfix in alice's inbox")
    assert item is not None
    parsed = email.message_from_bytes(item)
    results = parsed["Authentication-Results"]
    assert results is not None
    flat = " ".join(results.split())
    assert "spf=pass smtp.mailfrom=carol@example.net" in flat
    assert "dkim=pass header.d=example.net header.s=net1" in flat
    assert "dmarc=pass" in flat and "header.from=example.net" in flat
    assert "(Postfix)" in item.decode(errors="replace")  # it really came through Postfix


def test_mail_waits_while_postfix_is_down(peerage: PeerageServer, postfix: Postfix) -> None:
    postfix.stop()
    try:
        _submit("while down", CAROL)
        rows = wait_for(lambda: [r for r in queue_rows(peerage.data_dir) if r[2] == CAROL and r[3] >= 1],
                        DELIVERY_TIMEOUT, "a failed attempt recorded in the queue")
        assert rows[0][4]  # the last error is recorded
        listing = peerage.cli("mail", "queue", "list")
        assert CAROL in listing.stdout
        assert _maildir_with(postfix, "carol", "while down") is None
    finally:
        postfix.start()
    peerage.cli("mail", "queue", "retry")
    wait_for(lambda: _maildir_with(postfix, "carol", "while down"), DELIVERY_TIMEOUT, "delivery after restart")
    wait_for(lambda: not [r for r in queue_rows(peerage.data_dir) if r[2] == CAROL], DELIVERY_TIMEOUT, "queue drained")


def test_unknown_remote_user_bounces_with_dsn(peerage: PeerageServer, postfix: Postfix) -> None:
    _submit("to nobody", "nobody@example.net")

    def bounce() -> bytes | None:
        for item in mailbox_messages(peerage.data_dir, ALICE):
            if b"multipart/report" in item and b"nobody@example.net" in item:
                return item
        return None

    report = wait_for(bounce, DELIVERY_TIMEOUT, "a DSN in alice's inbox")
    assert report is not None
    parsed = email.message_from_bytes(report)
    assert parsed.get_param("report-type") == "delivery-status"
    text = report.decode(errors="replace")
    assert "Action: failed" in text and "Status: 5.1.1" in text and "Subject: to nobody" in text
    assert not [r for r in queue_rows(peerage.data_dir) if r[2] == "nobody@example.net"]


def test_queue_cli_drop(peerage: PeerageServer, tmp_path: Path) -> None:
    # An id that is not queued is named on stderr and fails the command, so an operator's script notices.
    result = peerage.cli("mail", "queue", "drop", "999999", check=False)
    assert "0 entries dropped" in result.stdout
    assert result.returncode == 1
    assert "no queue entry 999999" in result.stderr


def _spki_sha256(cert_pem: bytes) -> bytes:
    import hashlib

    from cryptography import x509

    public = x509.load_pem_x509_certificate(cert_pem).public_key()
    return hashlib.sha256(public.public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)).digest()


def test_dane_tlsa_match_and_mismatch(peerage: PeerageServer, postfix: Postfix, local_dns: LocalDNS) -> None:
    """With DNSSEC-validated TLSA records (the harness plays a validating resolver), the MX certificate
    must match them: a match delivers (tls=dane), a mismatch defers without sending anything."""
    digest = _spki_sha256((postfix.config_dir / "server.crt").read_bytes())
    local_dns.add_mx("dane.example", 10, "mx.dane.example")
    local_dns.add_a("mx.dane.example", POSTFIX_ADDRESS)
    local_dns.add_tlsa("_25._tcp.mx.dane.example", 3, 1, 1, digest)
    local_dns.add_mx("dane-bad.example", 10, "mx.dane-bad.example")
    local_dns.add_a("mx.dane-bad.example", POSTFIX_ADDRESS)
    local_dns.add_tlsa("_25._tcp.mx.dane-bad.example", 3, 1, 1, bytes(32))
    local_dns.secure = True
    try:
        _submit("dane good", "carol@dane.example")
        wait_for(lambda: _maildir_with(postfix, "carol", "dane good"), DELIVERY_TIMEOUT, "delivery under DANE")
        # Postfix files the message before peerage reads its 250 and logs the delivery: wait for the line.
        wait_for(lambda: "to carol@dane.example" in peerage.log_text(), DELIVERY_TIMEOUT, "the delivery log line")
        assert "tls=dane" in peerage.log_text()
        _submit("dane bad", "carol@dane-bad.example")
        rows = wait_for(lambda: [r for r in queue_rows(peerage.data_dir)
                                 if r[2] == "carol@dane-bad.example" and r[3] >= 1], DELIVERY_TIMEOUT, "deferral")
        assert "TLSA" in rows[0][4]
        assert _maildir_with(postfix, "carol", "dane bad") is None
        peerage.cli("mail", "queue", "drop", str(rows[0][0]))
    finally:
        local_dns.secure = False
