"""What SMTP delivery keeps beside each message: the full-text index entry, written in batches after
the delivery's commit (peerage.mail.mailbox.search, ``defer``), and the list-view facts in
``mail_summaries`` (one row per email id, gone with the last copy). Real SQLite, no network."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from peerage.config import config_from_dict
from peerage.mail.mailbox import mailbox_owner, store_for
from peerage.mail.mailbox.search import TABLE
from peerage.mail.smtp.delivery import LocalDelivery
from peerage.server import Host

USER = "alice@example.org"


@pytest.fixture
async def host(tmp_path: Path) -> AsyncIterator[Any]:
    raw = {"server": {"data_dir": str(tmp_path / "data"), "log_level": "warning"},
           "xmpp": {"enabled": False}, "sip": {"enabled": False}, "smtp": {"enabled": False},
           "imap": {"enabled": False}}
    host = Host(config_from_dict(raw, tmp_path / "peerage.toml"))
    await host.open()
    try:
        yield host
    finally:
        await host.store.close()


def message(n: int, word: str) -> bytes:
    return (f"From: Carol <carol@remote.example>\r\nTo: <{USER}>\r\nSubject: note {n}\r\n"
            f"Message-ID: <n{n}@remote.example>\r\n\r\nThe {word} number {n} is here\r\n").encode()


async def entries(host: Any, where: str = "1 = 1") -> int:
    async with host.store.engine.connect() as conn:
        return int((await conn.execute(text(f"SELECT count(*) FROM {TABLE} WHERE {where}"))).scalar() or 0)


async def summaries(host: Any) -> int:
    async with host.store.engine.connect() as conn:
        return int((await conn.execute(text("SELECT count(*) FROM mail_summaries"))).scalar() or 0)


async def test_every_delivered_message_is_found_by_the_next_search(host: Any) -> None:
    local = LocalDelivery(host)
    local.start()
    try:
        await asyncio.gather(*(local.deliver(USER, message(n, "pomegranate")) for n in range(300)))
        store = store_for(host)
        owner = mailbox_owner(USER)
        box = await store.get_mailbox(owner, "INBOX")
        assert box is not None
        ids = {row.email_id for row in await store.messages(box.id, None)}
        assert len(ids) == 300
        # However many entries the background writer has written by now, a search sees them all.
        assert await store.search.match(owner, "pomegranate") == ids
        assert await entries(host) == 300
        assert await summaries(host) == 300
        # One delivered and expunged before any entry for it was written gets none.
        await local.deliver(USER, message(999, "quince"))
        uid = (await store.uids(box.id))[-1]
        await store.store_flags(box.id, [uid], "add", ["\\Deleted"])
        assert await store.expunge(box.id) == [uid]
        assert await store.search.match(owner, "quince") == set()
        assert await entries(host) == 300
        assert await summaries(host) == 300
        # What is still waiting at stop is written then.
        await local.deliver(USER, message(1000, "medlar"))
    finally:
        await local.stop()
    assert await entries(host) == 301


async def test_list_facts_are_shared_by_copies_and_go_with_the_last(host: Any) -> None:
    store = store_for(host)
    owner = mailbox_owner(USER)
    inbox = await store.get_mailbox(owner, "INBOX")
    assert inbox is not None
    (uid, _), = await store.append_many(inbox.id, [(message(1, "fig"), (), None, 0)])
    archive = await store.create_mailbox(owner, "Archive")
    await store.copy(inbox.id, [uid], archive.id)
    rows = await store.messages(archive.id, None, with_header=True)
    assert rows[0].summary is not None and b"note 1" in rows[0].summary
    # IMAP reads rows without them.
    assert (await store.messages(archive.id, None, with_header=True, with_summary=False))[0].summary is None
    assert await summaries(host) == 1
    await store.store_flags(inbox.id, [uid], "add", ["\\Deleted"])
    await store.expunge(inbox.id)
    assert await summaries(host) == 1  # the copy in Archive still has them
    await store.delete_mailbox(owner, "Archive")
    assert await summaries(host) == 0


@pytest.fixture(params=["sqlite", "postgresql"])
async def mailstore(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    from peerage.mail.jmap.mime import searchable_text
    from peerage.mail.mailbox import MailboxStore
    from peerage.store import Store
    from tests.harness.postgres import empty_database

    async with empty_database(request, tmp_path, "peerage_fts_defer") as url:
        database = Store(url)
        await database.migrate()
        try:
            yield MailboxStore(database.engine, tmp_path, extract=searchable_text)
        finally:
            await database.close()


async def test_deferred_entries_on_both_databases(mailstore: Any) -> None:
    inbox = await mailstore.get_mailbox(USER, "INBOX")
    assert inbox is not None
    placed = await mailstore.append_many(inbox.id, [(message(n, "persimmon"), (), None, 0) for n in range(3)],
                                         index_later=True)
    gone = await mailstore.append_many(inbox.id, [(message(9, "loquat"), (), None, 0)], index_later=True)
    await mailstore.store_flags(inbox.id, [gone[0][0]], "add", ["\\Deleted"])
    await mailstore.expunge(inbox.id)
    ids = {row.email_id for row in await mailstore.messages(inbox.id, [uid for uid, _ in placed])}
    assert await mailstore.search.match(USER, "persimmon") == ids
    assert await mailstore.search.match(USER, "loquat") == set()
    await mailstore.search.close()
