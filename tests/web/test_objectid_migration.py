"""Migration 0022: messages stored before Email ids were kept get the id JMAP gave them by their place
(``e<UIDVALIDITY>-<UID>``) and the thread id their header gives, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import text

from peerage.mail.mailbox.objectid import thread_id
from peerage.store import Store
from peerage.store.migrations import alembic_config
from tests.harness.postgres import empty_database

HEADER = b"Subject: old\r\nMessage-ID: <child@x>\r\nReferences: <root@x> <mid@x>\r\n\r\n"


@pytest.fixture(params=["sqlite", "postgresql"])
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with empty_database(request, tmp_path, "peerage_oid") as database:
        yield database


async def test_existing_messages_get_their_old_ids(url: str) -> None:
    store = Store(url)
    try:
        async with store.engine.begin() as conn:
            await conn.run_sync(lambda sync: command.upgrade(alembic_config(sync), "0021"))
            await conn.execute(text(
                "INSERT INTO mail_mailboxes (id, owner, name, uidvalidity, uidnext, highestmodseq, subscribed) "
                "VALUES (7, 'alice@old.test', 'INBOX', 1700000000, 5, 9, true)"))
            for uid, header in ((3, HEADER), (4, b"Subject: alone\r\n\r\n")):
                await conn.execute(text(
                    "INSERT INTO mail_messages (mailbox_id, uid, modseq, flags, internal_date, internal_zone, size, "
                    "blob, header, plain) VALUES (7, :uid, 8, '', 0, 0, 10, :blob, :header, false)"),
                    {"uid": uid, "blob": f"db:{uid}", "header": header})
            await conn.execute(text("INSERT INTO mail_expunged (mailbox_id, uid, modseq) VALUES (7, 2, 9)"))
        await store.migrate()
        async with store.engine.connect() as conn:
            rows = (await conn.execute(text(
                "SELECT uid, email_id, thread_id FROM mail_messages ORDER BY uid"))).all()
            expunged = (await conn.execute(text("SELECT email_id, thread_id FROM mail_expunged"))).all()
    finally:
        await store.close()
    assert [tuple(r) for r in rows] == [
        (3, "e1700000000-3", thread_id(HEADER, "e1700000000-3")),
        (4, "e1700000000-4", thread_id(b"Subject: alone\r\n\r\n", "e1700000000-4")),
    ]
    # The thread is the conversation's root, as JMAP named it before; a lone message's is its own.
    assert rows[0][2] == thread_id(b"Message-ID: <root@x>\r\n\r\n", "unused")
    assert [tuple(r) for r in expunged] == [("e1700000000-2", None)]
