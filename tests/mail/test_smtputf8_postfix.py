"""SMTPUTF8 (RFC 6531/6532/6533) with Postfix as the peer, both ways, and the role addresses of
RFC 2142 on the MX:

- peerage → Postfix (smtputf8_enable = yes) with a UTF-8 recipient and UTF-8 header fields;
- peerage → a Postfix that does not offer SMTPUTF8 (legacy.example): a UTF-8 local part is a permanent
  failure, reported to the sender as an RFC 6533 DSN (message/global-delivery-status, Status 5.6.7);
  UTF-8 header fields to an ASCII recipient are downgraded (RFC 6857) and re-signed with DKIM;
- Postfix → peerage to a hosted user with a UTF-8 local part;
- postmaster@ and abuse@ of a hosted domain with no such account reach the first account created,
  through Postfix, never refused; `RCPT TO:<Postmaster>` without a domain too.
"""

from __future__ import annotations

import email
import email.policy
import re
import smtplib
from collections.abc import Iterator

import dkim as dkimpy
import pytest

from peerage.mail.auth.dnsquery import SyncLookup
from tests.harness import LocalDNS, PeerageServer, TestCA, wait_for
from tests.mail.conftest import PASSWORDS
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

pytestmark = pytest.mark.interop

ALICE = "alice@example.org"
JORG = "jörg@example.org"
ZOE = "zoë@example.net"
LEGACY_ADDRESS = "127.0.4.8"
DELIVERY_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def postfix(tmp_path_factory: pytest.TempPathFactory, local_dns: LocalDNS, test_ca: TestCA,
            peerage: PeerageServer) -> Iterator[Postfix]:
    cert = test_ca.issue("mx.example.net")
    server = Postfix(tmp_path_factory.mktemp("postfix"), domain="example.net", hostname="mx.example.net",
                     address=POSTFIX_ADDRESS, dns_address=DNS_ADDRESS, users=["carol", "zoë"], cert=cert)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def legacy(tmp_path_factory: pytest.TempPathFactory, local_dns: LocalDNS, test_ca: TestCA,
           peerage: PeerageServer) -> Iterator[Postfix]:
    """A Postfix for legacy.example that does not offer SMTPUTF8."""
    local_dns.add_mx("legacy.example", 10, "mx.legacy.example")
    local_dns.add_a("mx.legacy.example", LEGACY_ADDRESS)
    cert = test_ca.issue("mx.legacy.example")
    server = Postfix(tmp_path_factory.mktemp("legacy"), domain="legacy.example", hostname="mx.legacy.example",
                     address=LEGACY_ADDRESS, dns_address=DNS_ADDRESS, users=["zoë", "dave"], cert=cert,
                     extra={"smtputf8_enable": "no"})
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def jorg(peerage: PeerageServer) -> str:
    peerage.add_user(JORG, "grüne wiese")
    return JORG


def _submit_utf8(subject: str, recipient: str) -> None:
    message = (f"From: {ALICE}\r\nTo: {recipient}\r\nSubject: {subject}\r\n"
               "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nGrüße aus peerage.\r\n")
    with smtplib.SMTP(PEERAGE_ADDRESS, 587, source_address=(CLIENT_ADDRESS, 0)) as client:
        client.starttls(context=unverified_context())
        client.login(ALICE, PASSWORDS[ALICE])
        client.ehlo()
        assert client.has_extn("smtputf8")
        assert client.sendmail(ALICE, [recipient], message.encode(), mail_options=["SMTPUTF8"]) == {}


def _maildir_with(server: Postfix, user: str, needle: bytes) -> bytes | None:
    return next((m for m in server.maildir_messages(user) if needle in m), None)


def test_peerage_to_postfix_with_a_utf8_recipient(peerage: PeerageServer, postfix: Postfix) -> None:
    _submit_utf8("Grüße an Zoë", ZOE)
    received = wait_for(lambda: _maildir_with(postfix, "zoë", "Subject: Grüße an Zoë".encode()),
                        DELIVERY_TIMEOUT, "mail in zoë's Maildir at postfix")
    assert received is not None
    parsed = email.message_from_bytes(received, policy=email.policy.SMTPUTF8)
    assert parsed["To"] == ZOE
    assert "Grüße aus peerage." in received.decode()
    # Postfix logged the UTF-8 recipient and the SMTPUTF8 transaction (local(8) logs after it has
    # filed the message, through postlogd: wait for the line).
    wait_for(lambda: f"to=<{ZOE}>" in postfix.log_text(), DELIVERY_TIMEOUT, "postfix's delivery log line")


def test_peerage_to_a_peer_without_smtputf8_bounces_with_an_rfc6533_dsn(peerage: PeerageServer,
                                                                       legacy: Postfix) -> None:
    recipient = "zoë@legacy.example"
    _submit_utf8("Grüße nach gestern", recipient)

    def report() -> bytes | None:
        return next((m for m in mailbox_messages(peerage.data_dir, ALICE)
                     if b"multipart/report" in m and "Grüße nach gestern".encode() in m), None)

    dsn = wait_for(report, DELIVERY_TIMEOUT, "a DSN in alice's inbox")
    assert dsn is not None
    text = dsn.decode()
    assert "Content-Type: message/global-delivery-status" in text
    assert f"Final-Recipient: utf-8; {recipient}" in text
    assert "Action: failed" in text and "Status: 5.6.7" in text
    assert "Content-Type: message/global" in text
    assert not [r for r in queue_rows(peerage.data_dir) if r[2] == recipient]
    assert _maildir_with(legacy, "zoë", "Grüße nach gestern".encode()) is None
    # The legacy peer was contacted (EHLO) but never given the message.
    assert "mx.legacy.example" in peerage.log_text()


def test_utf8_headers_to_a_peer_without_smtputf8_are_downgraded(peerage: PeerageServer,
                                                                legacy: Postfix) -> None:
    """One submission to an ASCII and a UTF-8 recipient at the legacy peer: dave gets the RFC 6857
    form (ASCII headers, encoded-words, the UTF-8 Cc as an empty group) with valid DKIM signatures,
    and only zoë's copy comes back in a DSN (5.6.7)."""
    message = (f"From: Jörg Müller <{ALICE}>\r\nTo: dave@legacy.example, zoë@legacy.example\r\n"
               f"Cc: Zoë <{ZOE}>\r\nSubject: Grüße für Dave\r\nMIME-Version: 1.0\r\n"
               "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
               "Schöne Grüße.\r\n").encode()
    with smtplib.SMTP(PEERAGE_ADDRESS, 587, source_address=(CLIENT_ADDRESS, 0)) as client:
        client.starttls(context=unverified_context())
        client.login(ALICE, PASSWORDS[ALICE])
        assert client.sendmail(ALICE, ["dave@legacy.example", "zoë@legacy.example"], message,
                               mail_options=["SMTPUTF8"]) == {}
    received = wait_for(lambda: _maildir_with(legacy, "dave", b"Subject: =?utf-8?"), DELIVERY_TIMEOUT,
                        "the downgraded mail at the legacy peer")
    assert received is not None
    head = received.split(b"\n\n", 1)[0]
    assert head.isascii()
    parsed = email.message_from_bytes(received, policy=email.policy.default)
    assert parsed["Subject"] == "Grüße für Dave"
    assert str(parsed["From"]) == f"Jörg Müller <{ALICE}>"
    # RFC 6857 §3.1.10: the mailbox with a UTF-8 local part is an empty group carrying its text.
    assert f"Zoë <{ZOE}>" in str(parsed["Cc"]) and parsed["Cc"].groups[0].addresses == ()
    assert "Schöne Grüße." in received.decode()  # the 8-bit body went as it was (8BITMIME)
    lookup = SyncLookup([DNS_ADDRESS], 53, 2.0)
    verifier = dkimpy.DKIM(received.replace(b"\n", b"\r\n"))
    signatures = [v for k, v in verifier.headers if k.lower() == b"dkim-signature"]
    assert len(signatures) == 2
    assert all(verifier.verify(idx=i, dnsfunc=lookup.dkim_txt) for i in range(len(signatures)))

    def report() -> bytes | None:
        return next((m for m in mailbox_messages(peerage.data_dir, ALICE)
                     if b"multipart/report" in m and "Grüße für Dave".encode() in m), None)

    dsn = wait_for(report, DELIVERY_TIMEOUT, "a DSN for zoë in alice's inbox")
    assert dsn is not None
    text = dsn.decode()
    assert "Final-Recipient: utf-8; zoë@legacy.example" in text and "Status: 5.6.7" in text
    assert "dave@legacy.example" not in text.split("Content-Type: message/global\r\n")[0].split(
        "message/global-delivery-status")[1]
    assert "does not offer SMTPUTF8" in text
    # local(8) logs after it has filed the message, through postlogd: wait for the line.
    wait_for(lambda: re.search(r"to=<dave@legacy\.example>.*status=sent", legacy.log_text()), DELIVERY_TIMEOUT,
             "the legacy peer's delivery log line")


def test_ascii_mail_to_a_peer_without_smtputf8_still_goes(peerage: PeerageServer, legacy: Postfix) -> None:
    message = f"From: {ALICE}\r\nTo: dave@legacy.example\r\nSubject: plain old mail\r\n\r\nhi\r\n".encode()
    with smtplib.SMTP(PEERAGE_ADDRESS, 587, source_address=(CLIENT_ADDRESS, 0)) as client:
        client.starttls(context=unverified_context())
        client.login(ALICE, PASSWORDS[ALICE])
        # The client asks for SMTPUTF8 although nothing in this message needs it.
        assert client.sendmail(ALICE, ["dave@legacy.example"], message, mail_options=["SMTPUTF8"]) == {}
    wait_for(lambda: _maildir_with(legacy, "dave", b"Subject: plain old mail"), DELIVERY_TIMEOUT,
             "mail at the legacy peer")


def test_postfix_to_peerage_for_a_utf8_local_part(peerage: PeerageServer, postfix: Postfix, jorg: str) -> None:
    message = (f"From: Zoë <{ZOE}>\r\nTo: {jorg}\r\nSubject: Hallo Jörg\r\n"
               "Message-ID: <utf8-inbound@example.net>\r\nMIME-Version: 1.0\r\n"
               "Content-Type: text/plain; charset=utf-8\r\n\r\nSchöne Grüße.\r\n").encode()
    with smtplib.SMTP(POSTFIX_ADDRESS, 25, source_address=(CLIENT_ADDRESS, 0)) as client:
        client.ehlo("client.example.net")
        assert client.has_extn("smtputf8")
        assert client.sendmail(ZOE, [jorg], message, mail_options=["SMTPUTF8"]) == {}

    def stored() -> bytes | None:
        return next((m for m in mailbox_messages(peerage.data_dir, jorg) if "Hallo Jörg".encode() in m), None)

    item = wait_for(stored, DELIVERY_TIMEOUT, "mail from postfix in jörg's inbox")
    assert item is not None
    assert b"(Postfix)" in item  # it really came through Postfix
    assert f"for <{jorg}>".encode() in item


def test_postmaster_and_abuse_reach_the_first_account_through_postfix(peerage: PeerageServer,
                                                                      postfix: Postfix) -> None:
    for role in ("postmaster", "Abuse"):
        message = (f"From: carol@example.net\r\nTo: {role}@example.org\r\nSubject: report for {role}\r\n"
                   f"Message-ID: <{role}@example.net>\r\n\r\nAn aggregate report.\r\n").encode()
        with smtplib.SMTP(POSTFIX_ADDRESS, 25, source_address=(CLIENT_ADDRESS, 0)) as client:
            client.ehlo("client.example.net")
            assert client.sendmail("carol@example.net", [f"{role}@example.org"], message) == {}
    for role in ("postmaster", "Abuse"):
        wait_for(lambda role=role: [m for m in mailbox_messages(peerage.data_dir, ALICE)
                                    if f"Subject: report for {role}".encode() in m],
                 DELIVERY_TIMEOUT, f"the {role} report in alice's inbox")
    assert "status=bounced" not in postfix.log_text()


def test_bare_postmaster_is_accepted(peerage: PeerageServer) -> None:
    with smtplib.SMTP(PEERAGE_ADDRESS, 25, source_address=(CLIENT_ADDRESS, 0)) as client:
        client.ehlo("client.example.net")
        assert client.mail("carol@example.net")[0] == 250
        code, text = client.rcpt("<Postmaster>")
        assert code == 250, text
        code, text = client.rcpt("nobody@example.org")
        assert code == 550, text
