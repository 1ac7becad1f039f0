"""`peerage backup` while serving, `peerage restore`: the restored state is identical, for every
protocol's data (accounts, XMPP offline/archive/vCard, mail in the mailbox, SIP registrations,
DKIM keys and message files). Server on 127.0.8.50."""

from __future__ import annotations

import asyncio
import hashlib
import smtplib
import sqlite3
from pathlib import Path
from typing import Any

from tests.harness import PeerageServer, wait_for
from tests.harness.postgres import fresh_database
from tests.sip.ua import UdpUA
from tests.xmpp.rawclient import RawClient

ADDRESS = "127.0.8.50"
PASSWORD = "correct horse"
SKIPPED = {"peerage.db", "peerage.db-wal", "peerage.db-shm", "status.json"}


def state(data_dir: Path) -> dict[str, Any]:
    """Every row of every table and every file of the data folder."""
    found: dict[str, Any] = {}
    with sqlite3.connect(data_dir / "peerage.db") as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table' "
                                           "AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        for table in tables:
            found[f"table {table}"] = sorted(map(repr, db.execute(f'SELECT * FROM "{table}"')))
    for path in sorted(data_dir.rglob("*")):
        if path.is_file() and path.relative_to(data_dir).parts[0] not in SKIPPED:
            found[f"file {path.relative_to(data_dir)}"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


async def test_backup_while_serving_restores_identical_state(tmp_path: Path) -> None:
    server = PeerageServer(tmp_path / "site", ["b.test"], ADDRESS, services=("xmpp", "sip", "smtp", "imap"))
    for user in ("alice", "bob"):
        server.add_user(f"{user}@b.test", PASSWORD)
    server.start()
    try:
        alice = RawClient(ADDRESS, "b.test")
        await alice.login("alice", PASSWORD, resource="r")
        await alice.send("<iq type='set' id='v1'><vCard xmlns='vcard-temp'><FN>Alice A.</FN></vCard></iq>")
        await alice.read_until("id='v1'")
        await alice.send("<message to='bob@b.test' type='chat' id='m1'><body>while you were out</body></message>")
        # Stored offline for bob, and archived: the archive is written behind, and an archive query is
        # answered only once what is buffered is written (XEP-0313), so the backup cannot miss it.
        await asyncio.to_thread(server.wait_rows, "SELECT 1 FROM xmpp_offline WHERE owner = ?", ("bob@b.test",))
        await alice.send("<iq type='set' id='q1'><query xmlns='urn:xmpp:mam:2'/></iq>")
        await alice.read_until("id='q1'")
        await asyncio.to_thread(server.wait_rows, "SELECT 1 FROM xmpp_archive WHERE owner = ?", ("alice@b.test",))

        def mail() -> None:
            with smtplib.SMTP(ADDRESS, 25, timeout=10) as smtp:
                smtp.sendmail("someone@elsewhere.test", ["bob@b.test"],
                              b"From: someone@elsewhere.test\r\nTo: bob@b.test\r\nSubject: hello\r\n\r\nbody\r\n")

        await asyncio.to_thread(mail)
        ua = UdpUA("127.0.8.51", (ADDRESS, 5060), "bob", "b.test", PASSWORD)
        try:
            ok = await asyncio.to_thread(ua.request_with_auth, "REGISTER", "sip:b.test", "SHA-256",
                                         extra=[("Expires", "3600")])
            assert ok is not None and ok.status == 200
        finally:
            ua.close()
        await asyncio.to_thread(wait_for, lambda: any((server.data_dir).rglob("*")), 5, "data")
        # Alice logs out before the backup: her last activity (XEP-0012) is written then, not after it.
        await alice.close()
        await asyncio.to_thread(server.wait_rows, "SELECT 1 FROM xmpp_last_activity WHERE owner = ?",
                                ("alice@b.test",))

        result = server.cli("backup", str(tmp_path / "backups"))
        assert "Backed up to" in result.stdout
        folder = next((tmp_path / "backups").iterdir())
    finally:
        assert server.stop() == 0
    before = state(server.data_dir)
    tables = {key for key, rows in before.items() if key.startswith("table ") and rows}
    for table in ("accounts", "xmpp_offline", "xmpp_archive", "xmpp_vcard", "mail_messages", "sip_registrations"):
        assert f"table {table}" in tables, table
    assert any(key.startswith("file ") for key in before)

    # Lose everything, then restore.
    for item in server.data_dir.iterdir():
        if item.is_file():
            item.unlink()
    restored = server.cli("restore", str(folder))
    assert restored.returncode == 0, restored.stderr
    assert state(server.data_dir) == before

    # The restored server works: bob gets the offline message.
    server.start()
    try:
        bob = RawClient(ADDRESS, "b.test")
        await bob.login("bob", PASSWORD, resource="r")
        await bob.send("<presence/>")
        assert "while you were out" in await bob.read_until("while you were out")
        await bob.close()
    finally:
        server.stop()


def test_restore_refuses_a_running_server_and_a_damaged_backup(tmp_path: Path) -> None:
    server = PeerageServer(tmp_path / "site", ["c.test"], "127.0.8.52")
    server.add_user("carol@c.test", PASSWORD)
    folder = Path(server.cli("backup", str(tmp_path / "b")).stdout.split("Backed up to ", 1)[1].split("\n", 1)[0])
    server.start()
    try:
        busy = server.cli("restore", str(folder), check=False)
        assert busy.returncode == 1 and "stop it before restoring" in busy.stderr
    finally:
        server.stop()
    (folder / "peerage.db").write_bytes(b"damaged")
    damaged = server.cli("restore", str(folder), check=False)
    assert damaged.returncode == 1 and "damaged" in damaged.stderr and "Traceback" not in damaged.stderr
    assert server.cli("user", "list").stdout.split() == ["carol@c.test"]  # nothing was touched


async def test_postgresql_backup_and_restore(tmp_path: Path, postgres_url: str) -> None:
    async with fresh_database(postgres_url, "peerage_backup") as url:
        server = PeerageServer(tmp_path / "site", ["pg.test"], "127.0.8.53", config={"database": {"url": url}})
        for user in ("dora", "ed"):
            await asyncio.to_thread(server.add_user, f"{user}@pg.test", PASSWORD)
        made = await asyncio.to_thread(server.cli, "backup", str(tmp_path / "b"))
        folder = Path(made.stdout.split("Backed up to ", 1)[1].split("\n", 1)[0])
        assert (folder / "database.pgdump").exists()
        await asyncio.to_thread(server.cli, "user", "del", "ed@pg.test")
        restored = await asyncio.to_thread(server.cli, "restore", str(folder), check=False)
        assert restored.returncode == 0, restored.stderr
        listed = await asyncio.to_thread(server.cli, "user", "list")
        assert listed.stdout.split() == ["dora@pg.test", "ed@pg.test"]
