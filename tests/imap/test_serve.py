# imaplib's stubs type every response as a union of bytes, tuples and None; the tests index them.
# mypy: disable-error-code="assignment,operator,attr-defined,index,union-attr,return-value,arg-type"
"""`peerage serve` with IMAP enabled: listeners are logged, a user added with the CLI logs in, and an
APPEND acknowledged before a kill -9 is still there after the restart."""

from __future__ import annotations

import imaplib
import ssl
from pathlib import Path

from tests.harness import PeerageServer
from tests.imap.conftest import PASSWORD, USER, next_address


def test_serve_imap_survives_kill(tmp_path: Path, peerage_servers: list[PeerageServer]) -> None:
    address = next_address()
    server = PeerageServer(tmp_path, "example.org", address, services=("imap",))
    peerage_servers.append(server)
    server.add_user(USER, PASSWORD)
    server.start()
    log = server.log_text()
    assert f"listening imap on {address}:143" in log
    assert f"listening imaps on {address}:993" in log
    context = ssl.create_default_context(cafile=str(tmp_path / "example.org.crt"))
    context.check_hostname = False

    client = imaplib.IMAP4_SSL(address, 993, ssl_context=context, timeout=20)
    client.login(USER, PASSWORD)
    typ, data = client.append("Drafts", "(\\Draft)", None, b"Subject: keep me\r\n\r\nsaved\r\n")
    assert typ == "OK" and b"APPENDUID" in data[0]
    server.kill()

    server.start()
    client = imaplib.IMAP4_SSL(address, 993, ssl_context=context, timeout=20)
    client.login(USER, PASSWORD)
    typ, data = client.select("Drafts")
    assert data == [b"1"]
    typ, data = client.fetch("1", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert b"\\Draft" in data[0][0] and data[0][1].startswith(b"Subject: keep me")
    client.logout()
    server.stop()
