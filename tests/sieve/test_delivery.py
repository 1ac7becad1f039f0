"""Sieve at local delivery, end to end: a script stored over ManageSieve filters mail submitted over
SMTP, and the results are read back over IMAP: fileinto with imap4flags (RFC 5228 §4.1, RFC 5232),
envelope (RFC 5228 §5.4), redirect with its loop and rate limits, reject (RFC 5429) and vacation
(RFC 5230) with a reply memory that survives a restart."""

from __future__ import annotations

import contextlib
import imaplib
import smtplib
import ssl
from email.message import EmailMessage
from email.parser import BytesParser

import pytest

from tests.harness import PeerageServer, wait_for
from tests.mail.helpers import mailbox_messages, queue_rows
from tests.sieve.client import RawSieve
from tests.sieve.conftest import ADDRESS, PASSWORDS

SCRIPT = r'''require ["fileinto", "imap4flags", "reject", "vacation", "envelope", "copy"];
# Reject what the sender calls spam; file reports, flagged; copy "share" mail to carol and bob's
# friend far away; answer "away" mail; mark everything from bob.
if envelope :is "from" "bob@example.org" { addflag "$FromBob"; }
if header :contains "subject" "spam" { reject "No spam, please."; stop; }
if header :contains "subject" "report" { fileinto :flags "\\Flagged" "Reports"; stop; }
if header :contains "subject" "share" { redirect :copy "carol@example.org"; }
if header :contains "subject" "away" { vacation :days 2 :subject "Out of office" "I am away until Monday."; }
'''


def _context(test_ca) -> ssl.SSLContext:
    # smtplib and imaplib name the server by the address they connect to; the chain is still checked.
    context = ssl.create_default_context(cafile=str(test_ca.cert_path))
    context.check_hostname = False
    return context


def send(test_ca, subject: str, sender: str = "bob@example.org", to: str = "alice@example.org") -> None:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = f"<{subject.replace(' ', '.')}@example.org>"
    message.set_content("Hello.\n")
    with smtplib.SMTP(ADDRESS, 587, timeout=15, source_address=("127.0.17.110", 0)) as smtp:
        smtp.starttls(context=_context(test_ca))
        smtp.login(sender, PASSWORDS[sender])
        smtp.send_message(message)


def imap_flags(test_ca, user: str, folder: str) -> list[tuple[bytes, bytes]]:
    """(subject, flags) of every message in the folder, by IMAP."""
    imap = imaplib.IMAP4(ADDRESS, 143, timeout=15)
    try:
        imap.starttls(_context(test_ca))
        imap.login(user, PASSWORDS[user])
        imap.select(f'"{folder}"', readonly=True)
        _, data = imap.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        out = []
        for item in data:
            if isinstance(item, tuple):
                out.append((item[1].strip(), item[0]))
        return out
    finally:
        imap.logout()


@pytest.fixture(scope="module")
def alice_script(server: PeerageServer, test_ca) -> None:
    raw = RawSieve(source="127.0.17.111", ca=test_ca.cert_path)
    raw.starttls()
    assert raw.login("alice@example.org", PASSWORDS["alice@example.org"])[-1].startswith(b"OK")
    body = SCRIPT.replace("\n", "\r\n").encode()
    raw.send(b'PUTSCRIPT "main" {%d+}\r\n' % len(body) + body + b"\r\n")
    assert raw.response()[-1].startswith(b"OK")
    raw.send(b'SETACTIVE "main"\r\n')
    assert raw.response()[-1].startswith(b"OK")
    raw.close()


def _subjects(server: PeerageServer, user: str, folder: str = "INBOX") -> list[str]:
    parser = BytesParser()
    return [str(parser.parsebytes(raw, headersonly=True)["Subject"]) for raw in
            mailbox_messages(server.data_dir, user, folder)]


def test_fileinto_with_flags_and_the_implicit_keep(server: PeerageServer, test_ca, alice_script: None) -> None:
    send(test_ca, "monthly report")
    send(test_ca, "lunch?")
    wait_for(lambda: "lunch?" in _subjects(server, "alice@example.org"), 15, "lunch? in INBOX")
    assert _subjects(server, "alice@example.org", "Reports") == ["monthly report"]
    assert "monthly report" not in _subjects(server, "alice@example.org")
    reports = imap_flags(test_ca, "alice@example.org", "Reports")
    assert b"\\Flagged" in reports[0][1] and b"$FromBob" not in reports[0][1]  # :flags replaces the list
    inbox = dict(imap_flags(test_ca, "alice@example.org", "INBOX"))
    assert b"$FromBob" in inbox[b"Subject: lunch?"]  # the implicit keep carries addflag's flags


def test_reject_answers_the_sender_with_an_mdn(server: PeerageServer, test_ca, alice_script: None) -> None:
    send(test_ca, "cheap spam offer")
    wait_for(lambda: any(s.startswith("Rejected:") for s in _subjects(server, "bob@example.org")), 20,
             "the rejection reaches bob")
    assert "cheap spam offer" not in _subjects(server, "alice@example.org")
    mdn = next(raw for raw in mailbox_messages(server.data_dir, "bob@example.org")
               if b"Subject: Rejected: cheap spam offer" in raw)
    assert b"multipart/report" in mdn and b"report-type=\"disposition-notification\"" in mdn
    assert b"Disposition: automatic-action/MDN-sent-automatically; deleted" in mdn
    assert b"No spam, please." in mdn


def test_redirect_copies_with_a_delivered_to_line(server: PeerageServer, test_ca, alice_script: None) -> None:
    send(test_ca, "share this")
    wait_for(lambda: "share this" in _subjects(server, "carol@example.org"), 20, "the copy reaches carol")
    assert "share this" in _subjects(server, "alice@example.org")  # :copy keeps the original
    copy = next(raw for raw in mailbox_messages(server.data_dir, "carol@example.org") if b"share this" in raw)
    assert copy.startswith(b"Delivered-To: alice@example.org\r\n") or b"\r\nDelivered-To: alice@example.org\r\n" in copy
    # The envelope sender of the redirected copy is alice, who set the rule up (no open relay).
    assert not any(row[1] == "bob@example.org" and row[2] == "carol@example.org" for row in queue_rows(server.data_dir))


def test_redirect_rate_limit_keeps_the_message(server: PeerageServer, test_ca, alice_script: None) -> None:
    # [sieve] redirects_per_hour = 3 in this server; one was used above. Past the limit the message is
    # still delivered to alice, and carol does not get it.
    for n in range(4):
        send(test_ca, f"share number {n}")
    wait_for(lambda: "share number 3" in _subjects(server, "alice@example.org"), 20, "all four kept")
    wait_for(lambda: "share number 1" in _subjects(server, "carol@example.org"), 20, "two copies")
    log = server.log_text()
    assert "over [sieve] redirects_per_hour" in log
    assert "share number 3" not in _subjects(server, "carol@example.org")


def test_vacation_answers_once_and_remembers_across_a_restart(server: PeerageServer, test_ca,
                                                               alice_script: None) -> None:
    send(test_ca, "are you away?")

    def replies() -> list[str]:
        return [s for s in _subjects(server, "bob@example.org") if s == "Out of office"]

    wait_for(lambda: len(replies()) == 1, 20, "the vacation reply reaches bob")
    reply = next(raw for raw in mailbox_messages(server.data_dir, "bob@example.org") if b"Out of office" in raw)
    assert b"Auto-Submitted: auto-replied" in reply and b"In-Reply-To: <are.you.away?@example.org>" in reply
    send(test_ca, "still away?")
    wait_for(lambda: "still away?" in _subjects(server, "alice@example.org"), 15, "second message")
    server.stop()
    server.start()
    send(test_ca, "away after the restart?")
    wait_for(lambda: "away after the restart?" in _subjects(server, "alice@example.org"), 15, "third message")
    # Carol has no script: nothing filtered, nothing answered. Bob got exactly one reply.
    send(test_ca, "away, carol?", to="carol@example.org")
    wait_for(lambda: "away, carol?" in _subjects(server, "carol@example.org"), 15, "carol's message")
    assert len(replies()) == 1


def test_the_webmail_vacation_response_goes_through_sieve(server: PeerageServer, test_ca) -> None:
    # The JMAP VacationResponse as the webmail stores it (RFC 8621 §8), for carol, who has no script.
    import json
    import sqlite3
    import time

    value = {"isEnabled": True, "fromDate": None, "toDate": None, "subject": "Carol is away",
             "textBody": "Back next week.", "htmlBody": "<p>Back next week.</p>"}
    with sqlite3.connect(server.data_dir / "peerage.db", timeout=10) as conn:
        conn.execute("INSERT INTO jmap_settings (account, kind, value, modseq) VALUES (?, 'vacation', ?, 1)",
                     ("carol@example.org", json.dumps(value)))

    def replies() -> list[bytes]:
        return [raw for raw in mailbox_messages(server.data_dir, "bob@example.org") if b"Carol is away" in raw]

    # Delivery re-reads who is away every few seconds: send until the first answer, then once more.
    deadline = time.monotonic() + 30
    n = 0
    while not replies():
        assert time.monotonic() < deadline, "no vacation reply from carol"
        send(test_ca, f"hello carol {n}", to="carol@example.org")
        n += 1
        wait_for(lambda n=n: f"hello carol {n - 1}" in _subjects(server, "carol@example.org"), 15, "delivery")
        with contextlib.suppress(AssertionError):
            wait_for(lambda: bool(replies()), 3, "reply")
    send(test_ca, "hello again carol", to="carol@example.org")
    wait_for(lambda: "hello again carol" in _subjects(server, "carol@example.org"), 15, "delivery")
    reply = replies()
    assert len(reply) == 1, "one reply per sender per period"
    assert b"Auto-Submitted: auto-replied" in reply[0] and b"text/html" in reply[0]


RULES = r'''require ["variables", "relational", "comparator-i;ascii-numeric", "body", "fileinto", "imap4flags"];
# The kind of rules a mail client's filter editor writes: a folder per list, a spam threshold, a
# flag for newsletters found by their body.
if header :value "ge" :comparator "i;ascii-numeric" "X-Spam-Score" "5" { fileinto "Junk"; stop; }
if header :matches "List-Id" "*<*.lists.example.com>" { set :lower "list" "${2}"; fileinto "list-${list}"; stop; }
if body :text :contains "unsubscribe" { addflag "$Newsletter"; }
'''


def test_variables_relational_and_body_at_delivery(server: PeerageServer, test_ca, monkeypatch) -> None:
    """A script using RFC 5229, 5231 and 5173, stored with a stock ManageSieve client (sievelib)
    that sees them in the capability, files mail sent over SMTP; IMAP reads the result."""
    from sievelib.managesieve import Client

    monkeypatch.setenv("SSL_CERT_FILE", str(test_ca.cert_path))
    dave = "dave@example.org"
    client = Client(ADDRESS, 4190, srvhostname="example.org")
    assert client.connect(dave, PASSWORDS[dave], starttls=True, authmech="PLAIN")
    try:
        extensions = client.get_sieve_capabilities()
        for name in ("variables", "relational", "body", "comparator-i;ascii-numeric"):
            assert name in extensions
        assert client.putscript("rules", RULES)
        assert client.setactive("rules")
    finally:
        client.logout()

    def submit(subject: str, headers: str, body: str) -> None:
        raw = (f"From: bob@example.org\r\nTo: {dave}\r\nSubject: {subject}\r\n"
               f"Message-ID: <{subject.replace(' ', '.')}@example.org>\r\n{headers}"
               f"MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{body}\r\n")
        with smtplib.SMTP(ADDRESS, 587, timeout=15, source_address=("127.0.17.112", 0)) as smtp:
            smtp.starttls(context=_context(test_ca))
            smtp.login("bob@example.org", PASSWORDS["bob@example.org"])
            smtp.sendmail("bob@example.org", [dave], raw.encode())

    submit("cheap pills", "X-Spam-Score: 12\r\n", "<p>buy</p>")
    submit("Build 42 failed", "List-Id: ACME developers <ACME-Dev.lists.example.com>\r\nX-Spam-Score: 2\r\n",
           "<p>step 3</p>")
    submit("weekly news", "", "<p>Read more. <a href='x'>Unsubscribe</a></p>")
    submit("hello dave", "X-Spam-Score: 4\r\n", "<p>lunch?</p>")
    # Each message is waited for where it should land: deliveries need not finish in order.
    wait_for(lambda: "hello dave" in _subjects(server, dave), 20, "the last message in dave's INBOX")
    wait_for(lambda: "weekly news" in _subjects(server, dave), 20, "the newsletter in dave's INBOX")
    wait_for(lambda: _subjects(server, dave, "Junk") == ["cheap pills"], 20, "the spam in Junk")
    wait_for(lambda: _subjects(server, dave, "list-acme-dev") == ["Build 42 failed"], 20, "the list folder")
    assert sorted(_subjects(server, dave)) == ["hello dave", "weekly news"]
    flags = dict(imap_flags(test_ca, dave, "INBOX"))
    assert b"$Newsletter" in flags[b"Subject: weekly news"]
    assert b"$Newsletter" not in flags[b"Subject: hello dave"]
