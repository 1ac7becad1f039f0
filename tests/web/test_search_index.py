"""The persistent full-text index behind Email/query's text and body filters: SQLite FTS5 and a
PostgreSQL tsvector, written with the message and removed with its last copy."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text

from peerage.mail.jmap.mime import searchable_text
from peerage.mail.mailbox import MailboxStore, deliver, store_for
from peerage.mail.mailbox.search import TABLE
from peerage.store import Store
from tests.harness.postgres import empty_database
from tests.web.conftest import USER, Jmap, WebHost

PLAIN = b"Subject: plain\r\n\r\nThe quick brown fox jumps over the lazy dog\r\n"
HTML = (b"Subject: html\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        b"<p>Meeting about the <b>quarterly</b> budget</p>\r\n")
ENCODED = (b"Subject: encoded\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           + base64.b64encode("Rendez-vous au café de la gare".encode()) + b"\r\n")


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MailboxStore]:
    async with empty_database(request, tmp_path, "peerage_fts") as url:
        database = Store(url)
        await database.migrate()
        try:
            yield MailboxStore(database.engine, tmp_path, extract=searchable_text)
        finally:
            await database.close()


async def entries(store: MailboxStore) -> int:
    async with store.engine.connect() as conn:
        return int((await conn.execute(text(f"SELECT count(*) FROM {TABLE}"))).scalar() or 0)


async def test_index_follows_delivery_copy_and_expunge(store: MailboxStore) -> None:
    inbox = await store.create_mailbox("alice@example.org", "Work")
    other = await store.get_mailbox("bob@example.org", "INBOX")
    assert other is not None
    placed = await store.append_many(inbox.id, [(PLAIN, (), None, 0), (HTML, (), None, 0), (ENCODED, (), None, 0)])
    await store.append(other.id, PLAIN)
    rows = {row.uid: row for row in await store.messages(inbox.id, None)}
    plain, html, encoded = (rows[uid].email_id for uid, _ in placed)
    search = store.search
    assert await search.match("alice@example.org", "fox") == {plain}
    assert await search.match("alice@example.org", "QUICK jum") == {plain}  # case and word prefixes
    assert await search.match("alice@example.org", "quarterly budget") == {html}  # HTML as text
    assert await search.match("alice@example.org", "cafe") == {encoded}  # decoded, accents folded
    assert await search.match("alice@example.org", "fox budget") == set()  # every word must be there
    assert await search.match("alice@example.org", "!!!") is None
    assert len(await search.match("bob@example.org", "fox") or ()) == 1  # each owner sees their own
    # A copy shares the entry; expunging one copy keeps it, expunging the last removes it.
    archive = await store.create_mailbox("alice@example.org", "Archive")
    await store.copy(inbox.id, [placed[0][0]], archive.id)
    await store.store_flags(inbox.id, [placed[0][0]], "add", ["\\Deleted"])
    await store.expunge(inbox.id)
    assert await search.match("alice@example.org", "fox") == {plain}
    await store.store_flags(archive.id, [1], "add", ["\\Deleted"])
    await store.expunge(archive.id)
    assert await search.match("alice@example.org", "fox") == set()
    assert await entries(store) == 3  # html, encoded, and bob's
    await store.delete_mailbox("alice@example.org", "Work")
    assert await entries(store) == 1


async def test_jmap_body_search_uses_the_index_and_catches_up(mailhost: WebHost) -> None:
    await deliver(mailhost.host, USER, b"Subject: one\r\n\r\nartichoke season is here\r\n")
    store = store_for(mailhost.host)
    # A message stored by a path without the extractor (an import, or before the index existed).
    extract, store.extract = store.extract, None
    try:
        await deliver(mailhost.host, USER, b"Subject: two\r\n\r\nartichokes and more\r\n")
    finally:
        store.extract = extract
    assert await entries(store) == 1
    jmap = Jmap(mailhost)
    found = await jmap.one("Email/query", {"filter": {"body": "artichoke"}})
    assert len(found["ids"]) == 2
    assert await entries(store) == 2  # the first search indexed the missing one
    text_found = await jmap.one("Email/query", {"filter": {"operator": "AND", "conditions": [
        {"text": "season"}, {"operator": "NOT", "conditions": [{"body": "nothing-like-this"}]}]}})
    assert len(text_found["ids"]) == 1
    gone = await jmap.one("Email/set", {"destroy": text_found["ids"]})
    assert gone["destroyed"] == text_found["ids"]
    assert await entries(store) == 1
    assert len((await jmap.one("Email/query", {"filter": {"body": "artichoke"}}))["ids"]) == 1
