"""The offline queue known to be empty (``XmppStorage.empty_offline``): a login's first presence reads
the queue without a query once it was read empty, and never misses a message stored since, even one
committed while that read was running. In-process, on SQLite."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from peerage.store import Store
from peerage.xmpp.storage import XmppStorage

OWNER = "alice@a.test"


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[tuple[XmppStorage, list[str]]]:
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'p.db'}")
    await store.migrate()
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "xmpp_offline" in statement:
            statements.append(statement.split()[0])

    event.listen(store.engine.sync_engine, "before_cursor_execute", count)
    try:
        yield XmppStorage(store.engine), statements
    finally:
        await store.close()


async def test_an_empty_queue_is_read_once_and_a_stored_message_is_never_missed(
        storage: tuple[XmppStorage, list[str]]) -> None:
    offline, statements = storage
    assert await offline.take_offline(OWNER) == []
    assert statements == ["SELECT"]
    assert await offline.take_offline(OWNER) == []
    assert await offline.offline_count(OWNER) == 0
    assert statements == ["SELECT"]  # known empty: no query
    await offline.store_offline(OWNER, "<message/>")
    assert await offline.offline_count(OWNER) == 1
    rows = await offline.take_offline(OWNER)
    assert [xml for _, xml in rows] == ["<message/>"]
    await offline.delete_offline(OWNER, rows[-1][0])
    assert await offline.take_offline(OWNER) == []  # read again, empty again
    assert statements.count("SELECT") == 4


async def test_a_read_that_overlaps_a_store_does_not_mark_the_queue_empty(
        storage: tuple[XmppStorage, list[str]]) -> None:
    offline, _ = storage
    original = offline.engine.connect
    read_started = asyncio.Event()
    release = asyncio.Event()

    class SlowRead:
        """The read's connection: its query has run (empty), then it waits until the store below
        has committed before the read goes on."""

        def __init__(self) -> None:
            self.inner = original()

        async def __aenter__(self) -> Any:
            return await self.inner.__aenter__()

        async def __aexit__(self, *exc: Any) -> Any:
            read_started.set()
            await release.wait()
            return await self.inner.__aexit__(*exc)

    offline.engine = type("Engine", (), {"connect": lambda _self: SlowRead(), "begin": original.__self__.begin})()  # type: ignore[assignment]
    reading = asyncio.ensure_future(offline.take_offline(OWNER))
    await asyncio.wait_for(read_started.wait(), 30)
    offline.engine = original.__self__  # the store goes straight through
    await offline.store_offline(OWNER, "<message/>")
    release.set()
    assert await asyncio.wait_for(reading, 30) == []  # it read before the row was there
    # Whatever that read saw, the queue is not taken as empty: the next login finds the message.
    rows = await offline.take_offline(OWNER)
    assert [xml for _, xml in rows] == ["<message/>"]


async def test_off_when_another_writer_may_exist(storage: tuple[XmppStorage, list[str]]) -> None:
    offline, statements = storage
    offline.empty_offline = None  # what the XMPP service sets on a cluster
    assert await offline.take_offline(OWNER) == []
    assert await offline.take_offline(OWNER) == []
    assert statements == ["SELECT", "SELECT"]
