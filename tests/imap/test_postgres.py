"""The IMAP service on PostgreSQL: two sessions, IDLE seeing another session's flag change and
expunge, and a QRESYNC-style resync, with the same code paths as on SQLite."""

from __future__ import annotations

import asyncio
import secrets
import threading
from pathlib import Path

from imapclient import IMAPClient

from tests.harness import async_wait_for
from tests.imap.conftest import PASSWORD, start_host, stop_host


async def test_two_sessions_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    imap = await start_host(tmp_path, {"database": {"url": postgres_url}})
    user = f"pg{secrets.token_hex(4)}@example.org"
    await imap.host.accounts.add(user, PASSWORD)
    seen: list[tuple[object, ...]] = []
    idling = threading.Event()

    def connect() -> IMAPClient:
        client = IMAPClient(imap.address, port=993, ssl=True, ssl_context=imap.client_context(), timeout=20)
        client.login(user, PASSWORD)
        return client

    def idler() -> None:
        client = connect()
        client.select_folder("INBOX")
        client.idle()
        idling.set()
        for _ in range(40):
            seen.extend(client.idle_check(timeout=0.25))
            if any(r[1] == b"EXPUNGE" for r in seen):
                break
        client.idle_done()
        client.logout()

    def writer() -> int:
        client = connect()
        for number in range(3):
            client.append("INBOX", f"Subject: pg {number}\r\n\r\nbody\r\n".encode())
        client.select_folder("INBOX")
        client.add_flags([2], [b"\\Flagged"])
        client.delete_messages([1])
        client.expunge()
        status = client.folder_status("INBOX", [b"MESSAGES", b"HIGHESTMODSEQ"])
        client.logout()
        return int(status[b"MESSAGES"])

    try:
        client = await asyncio.to_thread(connect)
        await asyncio.to_thread(client.logout)
        thread = threading.Thread(target=idler)
        thread.start()
        await async_wait_for(idling.is_set, timeout=10)
        assert await asyncio.to_thread(writer) == 2
        await asyncio.to_thread(thread.join, 20)
    finally:
        await stop_host(imap)
    kinds = [r[1] for r in seen]
    assert b"EXISTS" in kinds and b"FETCH" in kinds and b"EXPUNGE" in kinds, seen
    assert [r[0] for r in seen if r[1] == b"EXPUNGE"] == [1]
