"""Per-user export (Maildir and mbox, roster, archive, vCard) and import into another server."""

from __future__ import annotations

import asyncio
import json
import mailbox
import smtplib
from pathlib import Path

import pytest

from tests.harness import PeerageServer
from tests.xmpp.rawclient import RawClient

ADDRESS = "127.0.8.70"
PASSWORD = "correct horse"


def rows(server: PeerageServer, table: str, owner_column: str = "owner") -> list[tuple]:  # type: ignore[type-arg]
    import sqlite3

    with sqlite3.connect(server.data_dir / "peerage.db") as db:
        columns = [c[1] for c in db.execute(f"PRAGMA table_info({table})") if c[1] not in ("id",)]
        return sorted(db.execute(f"SELECT {', '.join(columns)} FROM {table} WHERE {owner_column} = ?",
                                 ("alice@x.test",)))


def roster_rows(server: PeerageServer) -> list[tuple]:  # type: ignore[type-arg]
    """alice's roster rows with the version column last."""
    import sqlite3

    with sqlite3.connect(server.data_dir / "peerage.db") as db:
        columns = [c[1] for c in db.execute("PRAGMA table_info(xmpp_roster)") if c[1] not in ("id", "version")]
        return sorted(db.execute(f"SELECT {', '.join(columns)}, version FROM xmpp_roster WHERE owner = ?",
                                 ("alice@x.test",)))


def roster_version(server: PeerageServer) -> int | None:
    import sqlite3

    with sqlite3.connect(server.data_dir / "peerage.db") as db:
        row = db.execute("SELECT version FROM xmpp_roster_version WHERE owner = ?", ("alice@x.test",)).fetchone()
        return row[0] if row else None


@pytest.mark.parametrize("fmt", ["maildir", "mbox"])
async def test_export_then_import_into_another_server(tmp_path: Path, fmt: str) -> None:
    source = PeerageServer(tmp_path / "one", ["x.test"], ADDRESS, services=("xmpp", "smtp", "imap"))
    for user in ("alice", "bob"):
        source.add_user(f"{user}@x.test", PASSWORD)
    source.start()
    try:
        alice = RawClient(ADDRESS, "x.test")
        await alice.login("alice", PASSWORD, resource="r")
        await alice.send("<iq type='set' id='v1'><vCard xmlns='vcard-temp'><FN>Alice A.</FN></vCard></iq>")
        await alice.read_until("id='v1'")
        await alice.send("<iq type='set' id='r1'><query xmlns='jabber:iq:roster'><item jid='bob@x.test' "
                         "name='Bob'><group>Friends</group></item></query></iq>")
        await alice.read_until("id='r1'")
        await alice.send("<message to='bob@x.test' type='chat'><body>archived line</body></message>")
        # An archive query is answered once the buffered archive is written (XEP-0313).
        await alice.send("<iq type='set' id='q1'><query xmlns='urn:xmpp:mam:2'/></iq>")
        await alice.read_until("id='q1'")
        await asyncio.to_thread(source.wait_rows, "SELECT 1 FROM xmpp_archive WHERE owner = ?", ("alice@x.test",))
        await alice.close()

        def mail() -> None:
            with smtplib.SMTP(ADDRESS, 25, timeout=10) as smtp:
                for n in range(2):
                    smtp.sendmail("someone@elsewhere.test", ["alice@x.test"],
                                  f"From: someone@elsewhere.test\r\nTo: alice@x.test\r\nSubject: n{n}\r\n\r\nbody {n}\r\n")

        await asyncio.to_thread(mail)
        await asyncio.to_thread(source.wait_rows, "SELECT m.uid FROM mail_messages m JOIN mail_mailboxes b "
                                "ON b.id = m.mailbox_id WHERE b.owner = ?", ("alice@x.test",), 2)
    finally:
        source.stop()
    out = tmp_path / "alice"
    exported = source.cli("user", "export", "alice@x.test", str(out), "--format", fmt)
    assert "2 messages" in exported.stdout and "1 roster items" in exported.stdout, exported.stdout
    if fmt == "maildir":
        inbox = mailbox.Maildir(out / "mail" / "INBOX", create=False)
    else:
        inbox = mailbox.mbox(out / "mail" / "INBOX.mbox", create=False)
    assert sorted(m["Subject"] for m in inbox) == ["n0", "n1"]
    assert json.loads((out / "roster.json").read_text())[0]["contact"] == "bob@x.test"
    assert "Alice A." in (out / "vcard.xml").read_text()

    target = PeerageServer(tmp_path / "two", ["x.test"], "127.0.8.71", services=("xmpp", "smtp", "imap"))
    target.add_user("alice@x.test", "another password")
    imported = target.cli("user", "import", "alice@x.test", str(out))
    assert "2 messages" in imported.stdout, imported.stdout
    for table in ("xmpp_vcard", "xmpp_archive"):
        assert rows(target, table) == rows(source, table), table
    # Roster items arrive at the account's next roster version (XEP-0237), not at the numbers of
    # the server they were exported from: a client that synced before is sent them.
    assert [row[:-1] for row in roster_rows(target)] == [row[:-1] for row in roster_rows(source)]
    assert roster_version(target) == 1 and [row[-1] for row in roster_rows(target)] == [1]
    again = target.cli("user", "import", "alice@x.test", str(out))
    assert "0 archived messages" in again.stdout  # archive entries are not doubled
    assert roster_version(target) == 2 and [row[-1] for row in roster_rows(target)] == [2]
    missing = target.cli("user", "export", "nobody@x.test", str(tmp_path / "n"), check=False)
    assert missing.returncode == 1 and "does not exist" in missing.stderr
