# imaplib's stubs type every response as a union of bytes, tuples and None; the tests index them.
# mypy: disable-error-code="assignment,operator,attr-defined,index,union-attr,return-value,arg-type"
"""Python's imaplib against the IMAP service: TLS rules, login, folders, APPEND/FETCH/SEARCH/STORE,
MOVE, EXPUNGE and COPY, with the untagged responses a second session must see."""

from __future__ import annotations

import asyncio
import imaplib
import re
from pathlib import Path

from tests.imap.conftest import PASSWORD, USER, ImapHost, start_host, stop_host

MESSAGE = (
    b"From: Bob <bob@example.net>\r\n"
    b"To: Alice <alice@example.org>\r\n"
    b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe_aus_Z=C3=BCrich?=\r\n"
    b"Date: Tue, 24 Nov 2026 10:00:00 +0100\r\n"
    b"Message-ID: <one@example.net>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary=b1\r\n"
    b"\r\n"
    b"--b1\r\n"
    b"Content-Type: text/plain; charset=iso-8859-1\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"K=E4se und Br=F6tchen\r\n"
    b"--b1\r\n"
    b"Content-Type: application/octet-stream; name=data.bin\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"AAECAwQ=\r\n"
    b"--b1\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"U29uZGVyYnJpZWZtYXJrZSDDhHJnZXI=\r\n"
    b"--b1--\r\n"
)


def plain(message_id: int, subject: str = "hello") -> bytes:
    return (
        f"From: carol@example.net\r\nTo: alice@example.org\r\nSubject: {subject} {message_id}\r\n"
        f"Message-ID: <m{message_id}@example.net>\r\n\r\nBody number {message_id}\r\n"
    ).encode()


def connect(imap: ImapHost) -> imaplib.IMAP4_SSL:
    client = imaplib.IMAP4_SSL(imap.address, 993, ssl_context=imap.client_context(), timeout=20)
    client.login(USER, PASSWORD)
    return client


async def test_port_143_requires_starttls_before_login(imap: ImapHost) -> None:
    def run() -> None:
        client = imaplib.IMAP4(imap.address, 143, timeout=20)
        assert "LOGINDISABLED" in client.capabilities
        assert "STARTTLS" in client.capabilities
        typ, data = client._simple_command("LOGIN", USER, PASSWORD)
        assert typ == "NO"
        assert b"PRIVACYREQUIRED" in data[0]
        client.starttls(ssl_context=imap.client_context())
        assert "LOGINDISABLED" not in client.capabilities
        assert "AUTH=SCRAM-SHA-256" in client.capabilities
        typ, _ = client.login(USER, PASSWORD)
        assert typ == "OK"
        client.logout()

    await asyncio.to_thread(run)


async def test_wrong_password_is_refused_then_throttled(tmp_path: Path) -> None:
    imap = await start_host(tmp_path, {"limits": {"auth_failures_per_account": 1, "auth_failures_per_ip": 3}})

    def run() -> list[str]:
        outcomes = []
        for _ in range(3):
            client = imaplib.IMAP4_SSL(imap.address, 993, ssl_context=imap.client_context(), timeout=30)
            try:
                client.login(USER, "wrong password")
                outcomes.append("OK")
            except imaplib.IMAP4.error as exc:
                outcomes.append(str(exc))
            finally:
                client.shutdown()
        return outcomes

    try:
        outcomes = await asyncio.to_thread(run)
    finally:
        await stop_host(imap)
    assert "OK" not in outcomes
    assert all("AUTHENTICATIONFAILED" in o or "UNAVAILABLE" in o for o in outcomes)
    assert any("UNAVAILABLE" in o for o in outcomes), outcomes


async def test_list_shows_special_use_folders(imap: ImapHost) -> None:
    def run() -> list[bytes]:
        client = connect(imap)
        typ, data = client.list()
        assert typ == "OK"
        client.logout()
        return [line for line in data if isinstance(line, bytes)]

    lines = await asyncio.to_thread(run)
    text = b"\n".join(lines).decode()
    for name, use in (("Sent", "\\Sent"), ("Drafts", "\\Drafts"), ("Trash", "\\Trash"), ("Junk", "\\Junk")):
        assert re.search(rf"\([^)]*{re.escape(use)}[^)]*\) \"/\" \"?{name}\"?", text), text
    assert "INBOX" in text


async def test_append_fetch_search_store_move_expunge(imap: ImapHost) -> None:
    def run() -> None:
        client = connect(imap)
        typ, data = client.append("INBOX", "(\\Flagged)", None, MESSAGE)
        assert typ == "OK"
        assert b"APPENDUID" in data[0]
        for number in range(1, 6):
            client.append("INBOX", None, None, plain(number))
        typ, data = client.select("INBOX")
        assert data == [b"6"]

        # FETCH: flags, size, envelope, structure, sections, BINARY
        typ, data = client.fetch("1", "(FLAGS RFC822.SIZE ENVELOPE)")
        response = data[0] if isinstance(data[0], bytes) else data[0][0]
        assert b"\\Flagged" in response
        assert b"RFC822.SIZE %d" % len(MESSAGE) in response
        assert b'"bob" "example.net"' in response
        typ, data = client.fetch("1", "(BODYSTRUCTURE)")
        structure = data[0]
        assert b'("TEXT" "PLAIN" ("CHARSET" "iso-8859-1") NIL NIL "QUOTED-PRINTABLE"' in structure
        assert b'"MIXED"' in structure
        typ, data = client.fetch("1", "(BODY.PEEK[1])")
        assert data[0][1] == b"K=E4se und Br=F6tchen"
        typ, data = client.fetch("1", "(BINARY.PEEK[2])")
        assert data[0][1] == b"\x00\x01\x02\x03\x04"
        typ, data = client.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert data[0][1].startswith(b"Subject: =?utf-8?q?Gr")
        typ, data = client.fetch("1", "(FLAGS)")
        assert b"\\Seen" not in data[0]
        typ, data = client.fetch("1", "(BODY[TEXT])")
        assert b"\\Seen" in b"".join(x if isinstance(x, bytes) else x[0] for x in data)

        # SEARCH over decoded MIME: encoded-word subject, QP latin-1 body, base64 utf-8 body
        typ, data = client.uid("SEARCH", "CHARSET", "UTF-8", "SUBJECT", "Zurich")
        assert data == [b""]
        client.literal = "Zürich".encode()
        typ, data = client.search("UTF-8", "SUBJECT")
        assert data == [b"1"]
        client.literal = "käse".encode()
        typ, data = client.search("UTF-8", "BODY")
        assert data == [b"1"]
        client.literal = "ärger".encode()
        typ, data = client.search("UTF-8", "TEXT")
        assert data == [b"1"]
        typ, data = client.search(None, "TEXT", '"body number 3"')
        assert data == [b"4"]
        typ, data = client.search(None, "FROM", "carol", "NOT", "SUBJECT", '"hello 2"')
        assert data == [b"2 4 5 6"]

        # STORE and flag search
        typ, data = client.store("2:3", "+FLAGS", "(\\Deleted $Junk)")
        assert typ == "OK" and len(data) == 2
        typ, data = client.search(None, "DELETED")
        assert data == [b"2 3"]
        typ, data = client.search(None, "KEYWORD", "$Junk")
        assert data == [b"2 3"]

        # MOVE with COPYUID, then EXPUNGE of the \Deleted ones
        typ, data = client._simple_command("MOVE", "4", "Trash")
        assert typ == "OK"
        assert client.untagged_responses.get("EXPUNGE") == [b"4"]
        client.untagged_responses.clear()
        typ, data = client.expunge()
        assert typ == "OK"
        assert data == [b"3", b"2"]
        typ, data = client.select("INBOX")
        assert data == [b"3"]
        typ, data = client.select("Trash")
        assert data == [b"1"]
        typ, data = client.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert b"hello 3" in data[0][1]
        typ, data = client.copy("1", "Drafts")
        assert typ == "OK"
        typ, data = client.status("Drafts", "(MESSAGES UIDNEXT UNSEEN)")
        assert b"MESSAGES 1" in data[0]
        client.logout()

    await asyncio.to_thread(run)


async def test_second_session_sees_flag_changes_and_expunges(imap: ImapHost) -> None:
    def run() -> None:
        first = connect(imap)
        for number in range(1, 4):
            first.append("INBOX", None, None, plain(number))
        first.select("INBOX")
        second = connect(imap)
        second.select("INBOX")
        first.store("1", "+FLAGS", "(\\Seen)")
        first.store("2", "+FLAGS", "(\\Deleted)")
        first.expunge()
        first.append("INBOX", None, None, plain(9))
        typ, _ = second.noop()
        assert typ == "OK"
        fetches = second.untagged_responses.get("FETCH", [])
        assert any(b"\\Seen" in f for f in fetches if isinstance(f, bytes)), fetches
        assert second.untagged_responses.get("EXPUNGE") == [b"2"]
        assert second.untagged_responses.get("EXISTS")[-1] == b"3"
        first.logout()
        second.logout()

    await asyncio.to_thread(run)
