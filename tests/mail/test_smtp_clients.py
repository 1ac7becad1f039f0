"""Real SMTP clients against peerage: swaks and smtplib over MX and submission (587 STARTTLS, 465
implicit TLS), AUTH PLAIN and SCRAM-SHA-256, throttling, sender checks, smuggling and relay refusals."""

from __future__ import annotations

import smtplib
import subprocess

import pytest

from tests.harness import LocalDNS, PeerageServer, require_binary, wait_for
from tests.mail.conftest import PASSWORDS
from tests.mail.helpers import (
    CLIENT_ADDRESS,
    PEERAGE_ADDRESS,
    RawSMTP,
    mailbox_messages,
    queue_rows,
    unverified_context,
)

ALICE = "alice@example.org"
BOB = "bob@example.org"


def _message(sender: str, recipient: str, subject: str) -> bytes:
    return (
        f"From: {sender}\r\nTo: {recipient}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '-')}@test>\r\n\r\nBody of {subject}\r\n"
    ).encode()


def _has_subject(server: PeerageServer, address: str, subject: str, folder: str = "INBOX") -> bytes | None:
    for message in mailbox_messages(server.data_dir, address, folder):
        if f"Subject: {subject}\r\n".encode() in message:
            return message
    return None


def _wait_subject(server: PeerageServer, address: str, subject: str, folder: str = "INBOX") -> bytes:
    found = wait_for(lambda: _has_subject(server, address, subject, folder), 10, f"{subject!r} in {address}/{folder}")
    assert found is not None
    return found


def test_smtplib_delivers_over_mx_with_starttls(peerage: PeerageServer) -> None:
    with smtplib.SMTP(PEERAGE_ADDRESS, 25, local_hostname="client.example.net", source_address=(CLIENT_ADDRESS, 0)) as client:
        code, text = client.ehlo()
        assert code == 250
        for extension in (b"STARTTLS", b"SIZE", b"8BITMIME", b"SMTPUTF8", b"PIPELINING", b"ENHANCEDSTATUSCODES"):
            assert extension in text
        client.starttls(context=unverified_context())
        refused = client.sendmail("carol@example.net", [ALICE], _message("carol@example.net", ALICE, "mx smtplib"))
        assert refused == {}
    stored = _wait_subject(peerage, ALICE, "mx smtplib")
    assert b"with ESMTPS" in stored
    assert b"Authentication-Results: example.org;" in stored


def test_swaks_delivers_over_mx(peerage: PeerageServer) -> None:
    swaks = require_binary("swaks")
    result = subprocess.run(
        [swaks, "--server", PEERAGE_ADDRESS, "--port", "25", "--from", "dave@example.net", "--to", BOB,
         "--ehlo", "client.example.net", "--tls", "--header", "Subject: mx swaks", "--body", "hello",
         "--local-interface", CLIENT_ADDRESS],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "250 2.0.0 Ok" in result.stdout
    _wait_subject(peerage, BOB, "mx swaks")


def test_unknown_user_refused_at_rcpt(peerage: PeerageServer) -> None:
    with smtplib.SMTP(PEERAGE_ADDRESS, 25, source_address=(CLIENT_ADDRESS, 0)) as client:
        client.ehlo("client.example.net")
        client.mail("carol@example.net")
        code, text = client.rcpt("nobody@example.org")
        assert (code, text[:5]) == (550, b"5.1.1")


@pytest.mark.parametrize(
    "recipient",
    [
        "victim@example.net",  # plain foreign domain
        "victim%example.net@example.org",  # percent hack
        "@mail.example.org:victim@example.net",  # source route
        '"victim@example.net"@example.org',  # quoted local part
        "example.net!victim@example.org",  # bang path
        "victim@example.net.",  # trailing dot
        "alice@example.org.",  # trailing dot on a hosted domain
        "victim@[127.0.4.2]",  # address literal
    ],
)
def test_no_open_relay(peerage: PeerageServer, recipient: str) -> None:
    before = len(queue_rows(peerage.data_dir))
    with smtplib.SMTP(PEERAGE_ADDRESS, 25, source_address=(CLIENT_ADDRESS, 0)) as client:
        client.ehlo("client.example.net")
        client.mail("carol@example.net")
        code, _ = client.docmd("RCPT", f"TO:<{recipient}>")
        assert 500 <= code < 600, f"{recipient} was accepted with {code}"
        code, _ = client.docmd("DATA")
        assert code == 503  # no valid recipient, so no DATA
    assert len(queue_rows(peerage.data_dir)) == before


def test_bare_line_feed_refused(peerage: PeerageServer) -> None:
    client = RawSMTP(PEERAGE_ADDRESS, 25, source=CLIENT_ADDRESS)
    try:
        assert client.command("EHLO client.example.net")[0] == 250
        assert client.command("MAIL FROM:<carol@example.net>")[0] == 250
        assert client.command(f"RCPT TO:<{ALICE}>")[0] == 250
        assert client.command("DATA")[0] == 354
        smuggled = (
            b"From: carol@example.net\r\nSubject: smuggle outer\r\n\r\nhello\n.\r\n"
            b"MAIL FROM:<x@example.net>\r\n"
        )
        client.send(smuggled + b"\r\n.\r\n")
        code, text = client.reply()
        assert code == 550 and "Bare" in text
    finally:
        client.close()
    assert _has_subject(peerage, ALICE, "smuggle outer") is None


def test_bare_line_endings_in_commands_refused(peerage: PeerageServer) -> None:
    """RFC 5321 2.3.8: command lines end with CRLF only. A line ending in a bare LF, or holding a bare
    CR, gets a 500 and is not acted upon; the session goes on with well-formed commands."""
    client = RawSMTP(PEERAGE_ADDRESS, 25, source=CLIENT_ADDRESS)
    try:
        client.send(b"EHLO client.example.net\n")
        code, text = client.reply()
        assert (code, text.split(" ", 1)[0]) == (500, "5.5.2") and "Bare" in text
        assert client.command("EHLO client.example.net")[0] == 250
        client.send(b"MAIL FROM:<carol@example.net>\n")
        assert client.reply()[0] == 500
        # The refused MAIL did not open a transaction.
        assert client.command(f"RCPT TO:<{ALICE}>")[0] == 503
        # A bare CR inside a line (one command hiding another) is refused the same way.
        assert client.command(b"MAIL FROM:<carol@example.net>\rRCPT TO:<alice@example.org>")[0] == 500
        assert client.command(f"RCPT TO:<{ALICE}>")[0] == 503
        # Pipelined: a bare-LF line between two good ones is refused alone, and in order.
        client.send(b"MAIL FROM:<carol@example.net>\r\nRCPT TO:<ghost@example.org>\nRCPT TO:<" + ALICE.encode()
                    + b">\r\nDATA\r\n")
        assert [client.reply()[0] for _ in range(4)] == [250, 500, 250, 354]
        code, _ = client.command(_message("carol@example.net", ALICE, "after bare lf commands") + b".")
        assert code == 250
        # Commands pipelined in the same write right after the final dot are command lines again: the
        # bare-LF one is refused there too (RFC 2920 lets a client send MAIL after the dot at once).
        assert client.command("MAIL FROM:<carol@example.net>")[0] == 250
        assert client.command(f"RCPT TO:<{ALICE}>")[0] == 250
        assert client.command("DATA")[0] == 354
        client.send(_message("carol@example.net", ALICE, "dot then pipelined") + b".\r\n"
                    + b"MAIL FROM:<carol@example.net>\nRSET\r\nMAIL FROM:<carol@example.net>\r\n")
        assert [client.reply()[0] for _ in range(4)] == [250, 500, 250, 250]
        assert client.command("RSET")[0] == 250
        # HELP does not reveal the internal name the refusal goes through.
        code, text = client.command("HELP")
        assert code == 250 and "BARE" not in text
    finally:
        client.close()
    _wait_subject(peerage, ALICE, "after bare lf commands")
    # The same on submission over implicit TLS, including a bare-LF AUTH line.
    client = RawSMTP(PEERAGE_ADDRESS, 465, implicit_tls=True, source=CLIENT_ADDRESS)
    try:
        client.send(b"EHLO client.example.net\n")
        assert client.reply()[0] == 500
        assert client.command("EHLO client.example.net")[0] == 250
        client.send(b"AUTH PLAIN\n")
        assert client.reply()[0] == 500
        assert client.command("NOOP")[0] == 250
    finally:
        client.close()


def _submit_smtplib(port: int, implicit: bool, user: str, password: str, sender: str, recipients: list[str],
                    message: bytes) -> dict:
    if implicit:
        client: smtplib.SMTP = smtplib.SMTP_SSL(PEERAGE_ADDRESS, port, context=unverified_context(), source_address=(CLIENT_ADDRESS, 0))
    else:
        client = smtplib.SMTP(PEERAGE_ADDRESS, port, source_address=(CLIENT_ADDRESS, 0))
        client.starttls(context=unverified_context())
    with client:
        client.login(user, password)
        return client.sendmail(sender, recipients, message)


@pytest.mark.parametrize("port,implicit", [(587, False), (465, True)])
def test_submission_with_plain(peerage: PeerageServer, port: int, implicit: bool) -> None:
    subject = f"submitted on {port}"
    refused = _submit_smtplib(port, implicit, ALICE, PASSWORDS[ALICE], ALICE, [BOB], _message(ALICE, BOB, subject))
    assert refused == {}
    stored = _wait_subject(peerage, BOB, subject)
    assert b"with ESMTPSA" in stored


def test_submission_port_587_requires_starttls(peerage: PeerageServer) -> None:
    with smtplib.SMTP(PEERAGE_ADDRESS, 587, source_address=(CLIENT_ADDRESS, 0)) as client:
        code, text = client.ehlo("client.example.net")
        assert b"AUTH" not in text
        code, _ = client.docmd("MAIL", f"FROM:<{ALICE}>")
        assert code == 530


def test_swaks_submission_with_auth(peerage: PeerageServer) -> None:
    swaks = require_binary("swaks")
    for extra in (["--port", "587", "--tls"], ["--port", "465", "--tls-on-connect"]):
        subject = f"swaks submission {extra[1]}"
        result = subprocess.run(
            [swaks, "--server", PEERAGE_ADDRESS, *extra, "--from", ALICE, "--to", BOB,
             "--auth", "PLAIN", "--auth-user", ALICE, "--auth-password", PASSWORDS[ALICE],
             "--header", f"Subject: {subject}", "--header", f"From: {ALICE}", "--body", "hi",
             "--local-interface", CLIENT_ADDRESS],
            capture_output=True, text=True, timeout=30,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "235 2.7.0" in result.stdout
        _wait_subject(peerage, BOB, subject)


@pytest.mark.parametrize("port,implicit", [(587, False), (465, True)])
def test_scram_sha256_submission(peerage: PeerageServer, port: int, implicit: bool) -> None:
    client = RawSMTP(PEERAGE_ADDRESS, port, implicit_tls=implicit, source=CLIENT_ADDRESS)
    try:
        client.command("EHLO client.example.net")
        if not implicit:
            client.starttls()
        code, text = client.command("EHLO client.example.net")
        assert "SCRAM-SHA-256" in text
        code, text = client.scram_sha256(BOB, PASSWORDS[BOB])
        assert code == 235, text
        subject = f"scram on {port}"
        assert client.command(f"MAIL FROM:<{BOB}>")[0] == 250
        assert client.command(f"RCPT TO:<{ALICE}>")[0] == 250
        assert client.command("DATA")[0] == 354
        code, text = client.command(_message(BOB, ALICE, subject) + b".")
        assert code == 250, text
    finally:
        client.close()
    _wait_subject(peerage, ALICE, subject)


def test_scram_wrong_password_refused(peerage: PeerageServer) -> None:
    client = RawSMTP(PEERAGE_ADDRESS, 465, implicit_tls=True, source="127.0.4.101")
    try:
        client.command("EHLO client.example.net")
        code, _ = client.scram_sha256(BOB, "not the password")
        assert code == 535
    finally:
        client.close()


def test_wrong_password_refused_then_throttled(peerage: PeerageServer) -> None:
    target = "target@example.org"
    codes = []
    # The fixture sets 3 failures per IP/account before slowing down and 6 before refusing outright.
    for _ in range(7):
        with smtplib.SMTP_SSL(PEERAGE_ADDRESS, 465, context=unverified_context(), source_address=("127.0.4.102", 0)) as client:
            client.ehlo("client.example.net")
            try:
                client.login(target, "wrong guess")
                codes.append(235)
            except smtplib.SMTPAuthenticationError as exc:
                codes.append(exc.smtp_code)
    assert codes[0] == 535
    assert 235 not in codes
    assert codes[-1] == 454, codes
    # Even the right password is refused while throttled.
    with smtplib.SMTP_SSL(PEERAGE_ADDRESS, 465, context=unverified_context(), source_address=("127.0.4.102", 0)) as client:
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            client.login(target, PASSWORDS[target])
        assert refused.value.smtp_code == 454


def test_forged_from_header_refused(peerage: PeerageServer) -> None:
    with pytest.raises(smtplib.SMTPDataError) as refused:
        _submit_smtplib(587, False, ALICE, PASSWORDS[ALICE], ALICE, [BOB], _message(BOB, BOB, "forged from"))
    assert refused.value.smtp_code == 550
    assert _has_subject(peerage, BOB, "forged from") is None


def test_forged_envelope_sender_refused(peerage: PeerageServer) -> None:
    with pytest.raises(smtplib.SMTPSenderRefused) as refused:
        _submit_smtplib(465, True, ALICE, PASSWORDS[ALICE], BOB, [BOB], _message(ALICE, BOB, "forged envelope"))
    assert refused.value.smtp_code == 553


def test_submission_to_foreign_domain_is_queued_and_signed(peerage: PeerageServer) -> None:
    # Nothing listens for example.net in this module, so the message stays queued.
    subject = "to the outside"
    refused = _submit_smtplib(587, False, ALICE, PASSWORDS[ALICE], ALICE, ["someone@example.net"],
                              _message(ALICE, "someone@example.net", subject))
    assert refused == {}
    rows = wait_for(lambda: [r for r in queue_rows(peerage.data_dir) if r[2] == "someone@example.net"], 10, "queue row")
    assert rows[0][1] == ALICE
    spool = list((peerage.data_dir / "queue").glob("*/*"))
    signed = [p.read_bytes() for p in spool if p.parent.name != "tmp" and subject.encode() in p.read_bytes()]
    assert signed and signed[0].count(b"DKIM-Signature:") == 2
    assert b"a=ed25519-sha256" in signed[0] and b"a=rsa-sha256" in signed[0]


def test_submission_adds_missing_date_and_message_id(peerage: PeerageServer) -> None:
    bare = f"From: {ALICE}\r\nTo: {BOB}\r\nSubject: no date\r\n\r\nhello\r\n".encode()
    assert _submit_smtplib(587, False, ALICE, PASSWORDS[ALICE], ALICE, [BOB], bare) == {}
    stored = _wait_subject(peerage, BOB, "no date")
    assert b"\r\nDate: " in stored and b"\r\nMessage-ID: <" in stored


def _send_mx(sender: str, recipient: str, message: bytes, source: str = CLIENT_ADDRESS) -> None:
    with smtplib.SMTP(PEERAGE_ADDRESS, 25, source_address=(source, 0)) as client:
        client.ehlo("client.example.net")
        client.sendmail(sender, [recipient], message)


def test_dmarc_reject_policy_refuses_spoofed_mail(peerage: PeerageServer, local_dns: LocalDNS) -> None:
    local_dns.add_txt("spoofed.example", "v=spf1 -all")
    local_dns.add_txt("_dmarc.spoofed.example", "v=DMARC1; p=reject")
    with pytest.raises(smtplib.SMTPDataError) as refused:
        _send_mx("ceo@spoofed.example", ALICE, _message("ceo@spoofed.example", ALICE, "spoofed reject"))
    assert refused.value.smtp_code == 550 and b"DMARC" in refused.value.smtp_error
    assert _has_subject(peerage, ALICE, "spoofed reject") is None


def test_dmarc_quarantine_policy_files_into_junk(peerage: PeerageServer, local_dns: LocalDNS) -> None:
    local_dns.add_txt("dubious.example", "v=spf1 -all")
    local_dns.add_txt("_dmarc.dubious.example", "v=DMARC1; p=quarantine")
    _send_mx("ceo@dubious.example", ALICE, _message("ceo@dubious.example", ALICE, "dubious mail"))
    stored = _wait_subject(peerage, ALICE, "dubious mail", "Junk")
    assert b"dmarc=fail (p=quarantine)" in stored
    assert _has_subject(peerage, ALICE, "dubious mail") is None


def test_forged_authentication_results_removed(peerage: PeerageServer) -> None:
    forged = (b"Authentication-Results: example.org; spf=pass smtp.mailfrom=boss@example.org; dmarc=pass\r\n"
              b"Authentication-Results: other.example; dkim=pass\r\n"
              + _message("carol@example.net", ALICE, "forged results"))
    _send_mx("carol@example.net", ALICE, forged)
    stored = _wait_subject(peerage, ALICE, "forged results")
    assert b"smtp.mailfrom=boss@example.org" not in stored
    assert b"Authentication-Results: other.example; dkim=pass" in stored
    assert stored.count(b"Authentication-Results: example.org;") == 1


def test_smtputf8_sender_and_headers(peerage: PeerageServer) -> None:
    sender = "émile@example.net"
    message = f"From: Émile <{sender}>\r\nTo: {ALICE}\r\nSubject: utf8 ünïcode\r\n\r\nçà et là\r\n".encode()
    with smtplib.SMTP(PEERAGE_ADDRESS, 25, source_address=(CLIENT_ADDRESS, 0)) as client:
        client.ehlo("client.example.net")
        assert client.has_extn("smtputf8")
        assert client.sendmail(sender, [ALICE], message, mail_options=["SMTPUTF8", "BODY=8BITMIME"]) == {}
    stored = _wait_subject(peerage, ALICE, "utf8 ünïcode")
    assert "çà et là".encode() in stored


def test_pipelined_transaction(peerage: PeerageServer) -> None:
    client = RawSMTP(PEERAGE_ADDRESS, 25, source=CLIENT_ADDRESS)
    try:
        assert "PIPELINING" in client.command("EHLO client.example.net")[1]
        client.send(f"MAIL FROM:<carol@example.net>\r\nRCPT TO:<{ALICE}>\r\nRCPT TO:<ghost@example.org>\r\nDATA\r\n".encode())
        codes = [client.reply()[0] for _ in range(4)]
        assert codes == [250, 250, 550, 354]
        code, _ = client.command(_message("carol@example.net", ALICE, "pipelined") + b".")
        assert code == 250
    finally:
        client.close()
    _wait_subject(peerage, ALICE, "pipelined")


def test_mail_and_rcpt_lines_plain_and_unusual(peerage: PeerageServer) -> None:
    """MAIL and RCPT: the usual "<local@domain>" lines and the unusual ones the engine parses the slow way
    (the null path of a bounce, a quoted local part, unknown parameters, wrong order) give the
    RFC 5321 replies, and a bounce from another MTA (MAIL FROM:<>, RFC 5321 §4.5.5) is delivered:
    its RCPT was once refused as if no MAIL had come."""
    client = RawSMTP(PEERAGE_ADDRESS, 25, source=CLIENT_ADDRESS)
    try:
        assert client.command("MAIL FROM:<carol@example.net>")[0] == 503  # before EHLO
        client.command("EHLO client.example.net")
        assert client.command(f"RCPT TO:<{ALICE}>")[0] == 503  # before MAIL
        assert client.command("MAIL FROM:<carol@example.net> FROBNICATE=1")[0] == 555
        assert client.command("MAIL FROM:<carol@example.net> BODY=9BIT")[0] == 501
        assert client.command("MAIL FROM:<carol@example.net> SIZE=12 BODY=8BITMIME")[0] == 250
        assert client.command("MAIL FROM:<carol@example.net>")[0] == 503  # nested
        assert client.command(f"RCPT TO:<{ALICE}> NOTIFY=NEVER")[0] == 555
        assert client.command('RCPT TO:<"no such user"@example.org>')[0] == 550
        assert client.command(f"RCPT TO:<{ALICE}>")[0] == 250
        assert client.command("RSET")[0] == 250
        assert client.command("MAIL FROM:<>")[0] == 250  # a bounce
        assert client.command('RCPT TO:<"no such user"@example.org>')[0] == 550
        assert client.command(f"rcpt to: <{ALICE}>")[0] == 250
        assert client.command("DATA")[0] == 354
        bounce = _message("MAILER-DAEMON@mx.example.net", ALICE, "a bounce for alice")
        assert client.command(bounce + b".")[0] == 250
    finally:
        client.close()
    stored = _wait_subject(peerage, ALICE, "a bounce for alice")
    assert b"Body of a bounce for alice" in stored


def test_size_limit_announced_and_enforced(peerage: PeerageServer) -> None:
    with smtplib.SMTP(PEERAGE_ADDRESS, 25, source_address=(CLIENT_ADDRESS, 0)) as client:
        client.ehlo("client.example.net")
        limit = int(client.esmtp_features["size"])
        assert limit > 0
        code, _ = client.docmd("MAIL", f"FROM:<carol@example.net> SIZE={limit + 1}")
        assert code == 552


def test_replies_carry_enhanced_status_codes(peerage: PeerageServer) -> None:
    client = RawSMTP(PEERAGE_ADDRESS, 25, source=CLIENT_ADDRESS)
    try:
        client.command("EHLO client.example.net")
        for command in ("NOOP", "RCPT TO:<alice@example.org>", "MAIL FROM:<carol@example.net>", "RSET", "VRFY alice"):
            code, text = client.command(command)
            assert text.split(" ", 1)[0].count(".") == 2, f"{command}: {code} {text}"
    finally:
        client.close()


def test_scram_sha256_plus_with_tls_exporter(peerage: PeerageServer) -> None:
    client = RawSMTP(PEERAGE_ADDRESS, 465, implicit_tls=True, source=CLIENT_ADDRESS)
    try:
        code, text = client.command("EHLO client.example.net")
        # Not listed by default ([auth] mail_advertise_plus: neomutt picks it and cannot bind), still accepted.
        assert "SCRAM-SHA-256-PLUS" not in text and "SCRAM-SHA-256" in text
        code, text = client.scram_sha256(BOB, PASSWORDS[BOB], plus=True)
        assert code == 235, text
    finally:
        client.close()


def test_null_mx_domain_bounces_at_once(peerage: PeerageServer, local_dns: LocalDNS) -> None:
    local_dns.add_mx("nomail.example", 0, ".")
    subject = "to a null mx"
    assert _submit_smtplib(587, False, ALICE, PASSWORDS[ALICE], ALICE, ["x@nomail.example"],
                           _message(ALICE, "x@nomail.example", subject)) == {}

    def bounce() -> bytes | None:
        for item in mailbox_messages(peerage.data_dir, ALICE):
            if b"multipart/report" in item and b"x@nomail.example" in item:
                return item
        return None

    report = wait_for(bounce, 15, "a DSN for the null MX domain")
    assert report is not None and b"Status: 5.1.10" in report and b"Action: failed" in report


def test_garbage_input_gets_errors_not_crashes(peerage: PeerageServer) -> None:
    client = RawSMTP(PEERAGE_ADDRESS, 25, source=CLIENT_ADDRESS)
    try:
        assert client.command("EHLO client.example.net")[0] == 250
        assert client.command(b"X" * 5000)[0] == 500
        assert client.command(b"MAIL FROM:<\xff\xfe@example.net>")[0] in (250, 501, 553)
        client.command("RSET")
        assert client.command(b"RCPT TO:<alice@example.org>\x00")[0] >= 500
        assert client.command("MAIL FROM:<<<>>>")[0] >= 500
        assert client.command("BDAT 10")[0] >= 500  # CHUNKING is not offered
        assert client.command("MAIL FROM:<carol@example.net>")[0] == 250
        assert client.command(f"RCPT TO:<{ALICE}>")[0] == 250
        assert client.command("DATA")[0] == 354
        client.send(b"Subject: long line\r\n\r\n" + b"y" * 3000 + b"\r\n.\r\n")
        assert client.reply()[0] == 500  # RFC 5321 4.5.3.1.6: 1000 octets per line
        assert client.command("NOOP")[0] == 250  # the session carries on
    finally:
        client.close()


def test_opportunistic_tls_falls_back_to_cleartext(peerage: PeerageServer, local_dns: LocalDNS,
                                                   tmp_path_factory: pytest.TempPathFactory) -> None:
    """A remote MX that offers STARTTLS but cannot complete a TLS 1.2+ handshake, and publishes no
    MTA-STS or DANE policy, still gets the mail in clear (RFC 7435 §3, Postfix's "may" level)."""
    import asyncio
    import ssl
    import threading
    import warnings

    from aiosmtpd.smtp import SMTP

    from peerage.net.tls import generate_self_signed

    folder = tmp_path_factory.mktemp("legacy")
    cert, key = folder / "legacy.crt", folder / "legacy.key"
    generate_self_signed("mx.legacy.example", cert, key)
    legacy_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    legacy_tls.load_cert_chain(str(cert), str(key))
    legacy_tls.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        legacy_tls.maximum_version = ssl.TLSVersion.TLSv1_1  # below what peerage accepts
    received: list[bytes] = []

    class Sink:
        async def handle_DATA(self, server: SMTP, session: object, envelope: object) -> str:
            received.append(envelope.original_content)  # type: ignore[attr-defined]
            return "250 2.0.0 Ok"

    loop = asyncio.new_event_loop()
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(
            loop.create_server(lambda: SMTP(Sink(), tls_context=legacy_tls), "127.0.4.4", 25))
        started.set()
        loop.run_forever()
        server.close()
        loop.run_until_complete(server.wait_closed())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(10)
    local_dns.add_mx("legacy.example", 10, "mx.legacy.example")
    local_dns.add_a("mx.legacy.example", "127.0.4.4")
    try:
        subject = "to a legacy server"
        assert _submit_smtplib(587, False, ALICE, PASSWORDS[ALICE], ALICE, ["old@legacy.example"],
                               _message(ALICE, "old@legacy.example", subject)) == {}
        wait_for(lambda: any(subject.encode() in m for m in received), 20, "delivery to the legacy server")
        # The queue logs the delivery once the peer's 250 is in, a moment after the sink has the data.
        wait_for(lambda: any("delivered" in line and "to old@legacy.example" in line and "tls=none" in line
                             for line in peerage.log_text().splitlines()), 20, "the delivery logged with tls=none")
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def test_looping_message_refused(peerage: PeerageServer) -> None:
    looping = b"".join(b"Received: from hop%d by hop%d; Mon, 1 Jan 2026 00:00:00 +0000\r\n" % (i, i + 1)
                       for i in range(60)) + _message("carol@example.net", ALICE, "looping")
    with pytest.raises(smtplib.SMTPDataError) as refused:
        _send_mx("carol@example.net", ALICE, looping)
    assert refused.value.smtp_code == 554 and "5.4.6" in str(refused.value.smtp_error)
    assert _has_subject(peerage, ALICE, "looping") is None


@pytest.mark.parametrize(("sender", "expected"), [("carol@example.net", b"<carol@example.net>"), ("<>", b"<>")])
def test_final_delivery_puts_return_path_first(peerage: PeerageServer, sender: str, expected: bytes) -> None:
    # RFC 5321 §4.4: the reverse-path, "<>" for the null sender of a bounce, becomes the first field;
    # a Return-Path the client wrote is not kept.
    subject = f"return path {expected.decode()}"
    message = b"Return-Path: <forged@example.com>\r\n" + _message("carol@example.net", ALICE, subject)
    with smtplib.SMTP(PEERAGE_ADDRESS, 25, source_address=(CLIENT_ADDRESS, 0)) as client:
        client.ehlo("client.example.net")
        assert client.mail(sender)[0] == 250  # smtplib writes "<>" for it as it is
        assert client.rcpt(ALICE)[0] == 250
        assert client.data(message)[0] == 250
    stored = _wait_subject(peerage, ALICE, subject)
    assert stored.startswith(b"Return-Path: " + expected + b"\r\nReceived: from client.example.net ")
    assert stored.lower().count(b"return-path:") == 1
