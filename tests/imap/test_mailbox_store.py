"""The mailbox store: default folders, UIDs, UIDVALIDITY, MODSEQ, flags, copy/move/expunge, change
reads for QRESYNC, notifications, on SQLite and PostgreSQL; and atomic delivery across a kill -9."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from peerage.mail.mailbox import MailboxExists, MailboxStore, deliver, mailbox_owner, store_for
from peerage.mail.tables import INLINE_BODY_LIMIT, mail_bodies, mail_messages
from peerage.store.schema import load_all_tables
from tests.harness import async_wait_for
from tests.harness.postgres import own_database
from tests.imap.conftest import USER, ImapHost

OWNER = "alice@example.org"


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MailboxStore]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'mail.db'}"
    else:
        # Tables made by hand here, so in a database of their own (tests/harness/postgres.py).
        url = await own_database(request.getfixturevalue("postgres_url"), "peerage_mailbox_store")
    engine = create_async_engine(url)
    metadata = load_all_tables()
    mine = {"mail_mailboxes", "mail_messages", "mail_bodies", "mail_expunged", "mail_uidvalidity", "mail_subscriptions",
            "mail_deleted_mailboxes", "mail_summaries"}
    tables = [t for t in metadata.sorted_tables if t.name in mine]
    async with engine.begin() as conn:
        await conn.run_sync(lambda sync: metadata.drop_all(sync, tables=list(reversed(tables))))
        await conn.run_sync(lambda sync: metadata.create_all(sync, tables=tables))
    try:
        yield MailboxStore(engine, tmp_path)
    finally:
        await engine.dispose()


async def test_default_folders_uids_and_modseq(store: MailboxStore) -> None:
    boxes = {box.name: box for box in await store.list_mailboxes(OWNER)}
    assert {name: box.special_use for name, box in boxes.items()} == {
        "INBOX": None, "Sent": "\\Sent", "Drafts": "\\Drafts", "Trash": "\\Trash", "Junk": "\\Junk",
    }
    inbox = boxes["INBOX"]
    assert len({box.uidvalidity for box in boxes.values()}) == 5
    uid1, validity = await store.append(inbox.id, b"Subject: a\n\nbare LF body\n", ["\\seen", "$Work"])
    uid2, _ = await store.append(inbox.id, b"Subject: b\r\n\r\nbody\r\n")
    assert (uid1, uid2) == (1, 2) and validity == inbox.uidvalidity
    rows = await store.messages(inbox.id, None, with_header=True)
    assert rows[0].flags == ("\\Seen", "$Work")
    assert rows[0].inline, "a small body lives in the database"
    await store.load_bodies(rows)
    assert store.read_body(rows[0]) == b"Subject: a\r\n\r\nbare LF body\r\n"
    assert rows[0].header == b"Subject: a\r\n\r\n" and rows[0].size == 28
    before = (await store.mailbox_by_id(inbox.id)).highestmodseq  # type: ignore[union-attr]

    result, failed, modseq = await store.store_flags(inbox.id, [1, 2], "add", ["\\Flagged"])
    assert not failed and modseq == before + 1
    assert [(uid, flags) for uid, flags, _ in result] == [
        (1, ("\\Seen", "$Work", "\\Flagged")), (2, ("\\Flagged",))
    ]
    result, failed, _ = await store.store_flags(inbox.id, [1, 2], "remove", ["\\Seen"], unchanged_since=before)
    assert failed == [1, 2]

    trash = await store.get_mailbox(OWNER, "Trash")
    assert trash is not None
    _, mapping = await store.move(inbox.id, [2], trash.id)
    assert mapping == [(2, 1)]
    _, mapping = await store.copy(inbox.id, [1], trash.id)
    assert mapping == [(1, 2)]
    await store.store_flags(inbox.id, [1], "add", ["\\Deleted"])
    assert await store.expunge(inbox.id) == [1]
    changes = await store.changes_since(inbox.id, before)
    assert changes.expunged == [1, 2] and changes.changed == []
    assert (await store.status(trash.id))["MESSAGES"] == 2
    copied = await store.messages(trash.id, [2])
    assert (await store.read_bodies(copied))[2].startswith(b"Subject: a")
    moved = await store.messages(trash.id, [1])
    assert (await store.read_bodies(moved)) == {1: b"Subject: b\r\n\r\nbody\r\n"}

    with pytest.raises(MailboxExists):
        await store.create_mailbox(OWNER, "Sent")
    await store.create_mailbox(OWNER, "Lists/python")
    await store.rename_mailbox(OWNER, "Lists", "Archive")
    names = {box.name for box in await store.list_mailboxes(OWNER)}
    assert {"Archive", "Archive/python"} <= names and "Lists" not in names
    old = await store.get_mailbox(OWNER, "Archive/python")
    await store.delete_mailbox(OWNER, "Archive/python")
    again = await store.create_mailbox(OWNER, "Archive/python")
    assert old is not None and again.uidvalidity > old.uidvalidity


async def test_rename_inbox_moves_its_messages(store: MailboxStore) -> None:
    inbox = await store.get_mailbox(OWNER, "inbox")
    assert inbox is not None
    await store.append(inbox.id, b"Subject: 1\r\n\r\nx\r\n")
    await store.rename_mailbox(OWNER, "INBOX", "Old")
    old = await store.get_mailbox(OWNER, "Old")
    assert old is not None and await store.uids(old.id) == [1]
    assert await store.uids(inbox.id) == []
    assert (await store.get_mailbox(OWNER, "INBOX")) is not None


async def test_orphaned_files_are_swept_only_when_old(store: MailboxStore) -> None:
    inbox = await store.get_mailbox(OWNER, "INBOX")
    assert inbox is not None
    await store.append(inbox.id, b"Subject: kept\r\n\r\nx\r\n")
    old_orphan = store.blobs.path(store.blobs.write(b"crashed before commit"))
    young_orphan = store.blobs.path(store.blobs.write(b"commit in flight"))
    an_hour_ago = time.time() - 7200
    os.utime(old_orphan, (an_hour_ago, an_hour_ago))
    assert await store.collect_orphans() == 1
    assert not old_orphan.exists() and young_orphan.exists()
    rows = await store.messages(inbox.id, None)
    assert (await store.read_bodies(rows))[1].startswith(b"Subject: kept")


async def test_large_bodies_are_files_small_ones_rows(store: MailboxStore) -> None:
    inbox = await store.get_mailbox(OWNER, "INBOX")
    trash = await store.get_mailbox(OWNER, "Trash")
    assert inbox is not None and trash is not None
    small = b"Subject: small\r\n\r\n" + b"s" * (INLINE_BODY_LIMIT - 100)
    large = b"Subject: large\r\n\r\n" + b"L" * INLINE_BODY_LIMIT
    result = await store.append_many(inbox.id, [(small, (), None, 0), (large, (), None, 0)])
    assert [uid for uid, _ in result] == [1, 2]
    rows = await store.messages(inbox.id, None)
    assert rows[0].inline and not rows[1].inline
    file = store.blobs.path(rows[1].blob)
    assert file.read_bytes() == large
    assert len(list(store.blobs.root.rglob("*"))) == 2, "only the large body has a file (and its directory)"
    assert await store.read_bodies(rows) == {1: small, 2: large}

    # COPY hard-links the file and copies the inline body; both copies read back whole.
    _, mapping = await store.copy(inbox.id, [1, 2], trash.id)
    assert mapping == [(1, 1), (2, 2)]
    copies = await store.messages(trash.id, None)
    assert copies[0].inline and copies[0].blob != rows[0].blob and copies[1].blob != rows[1].blob
    assert os.stat(file).st_nlink == 2
    assert await store.read_bodies(copies) == {1: small, 2: large}

    # Expunging removes the file of a large body and leaves the other copy's link.
    await store.store_flags(inbox.id, [1, 2], "add", ["\\Deleted"])
    assert await store.expunge(inbox.id) == [1, 2]
    assert os.stat(store.blobs.path(copies[1].blob)).st_nlink == 1
    assert not file.exists()
    async with store.engine.connect() as conn:
        names = {row[0] for row in await conn.execute(select(mail_bodies.c.name))}
    assert names == {copies[0].blob}, "an expunged message's inline body is deleted with it"
    # MOVE renumbers the rows and leaves the bodies where they are.
    _, mapping = await store.move(trash.id, [1, 2], inbox.id)
    assert mapping == [(1, 3), (2, 4)]
    moved = await store.messages(inbox.id, None)
    assert await store.read_bodies(moved) == {3: small, 4: large}
    # The sweep keeps the referenced file however old it is.
    an_hour_ago = time.time() - 7200
    os.utime(store.blobs.path(moved[1].blob), (an_hour_ago, an_hour_ago))
    assert await store.collect_orphans() == 0
    await store.delete_mailbox(OWNER, "Trash")
    await store.store_flags(inbox.id, [3, 4], "add", ["\\Deleted"])
    await store.expunge(inbox.id)
    assert [p for p in store.blobs.root.rglob("*") if p.is_file()] == []
    async with store.engine.connect() as conn:
        assert (await conn.execute(select(mail_bodies.c.name))).all() == []


async def test_notifier_wakes_watchers_after_commit(store: MailboxStore) -> None:
    inbox = await store.get_mailbox(OWNER, "INBOX")
    assert inbox is not None
    with store.notifier.watch(inbox.id) as watch:
        await store.append(inbox.id, b"Subject: x\r\n\r\ny\r\n")
        assert watch.event.is_set()
        changes = await store.changes_since(inbox.id, 0)
        assert [uid for uid, _, _ in changes.changed] == [1]


async def test_deliver_creates_folder_and_notifies(imap: ImapHost) -> None:
    store = store_for(imap.host)
    uid = await deliver(imap.host, "Alice@Example.org", b"Subject: hi\r\n\r\nx\r\n", folder="Lists/ietf")
    assert uid == 1
    box = await store.get_mailbox(mailbox_owner(USER), "Lists/ietf")
    assert box is not None and await store.uids(box.id) == [1]
    # BODYSTRUCTURE is parsed once at delivery and kept with the row.
    (row,) = await store.messages(box.id, None, with_header=True, with_structure=True)
    assert row.structure == b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 3 1 NIL NIL NIL NIL)'
    assert row.basic_structure == b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 3 1)'
    assert row.header == b"Subject: hi\r\n\r\n"


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from sqlalchemy.ext.asyncio import create_async_engine
    from peerage.mail.mailbox import MailboxStore
    from peerage.store.schema import load_all_tables

    async def main():
        engine = create_async_engine(sys.argv[1])
        async with engine.begin() as conn:
            await conn.run_sync(load_all_tables().create_all)
        store = MailboxStore(engine, sys.argv[2])
        inbox = await store.get_mailbox("alice@example.org", "INBOX")
        number = 0
        while True:
            number += 1
            # Alternately below and above the inline limit (64 KiB): rows and files both.
            size = 20000 if number % 2 else 70000
            uid, _ = await store.append(inbox.id, b"Subject: %d\\r\\n\\r\\n" % number + b"x" * size)
            print(uid, flush=True)

    asyncio.run(main())
    """
)


async def test_delivery_is_atomic_across_kill_9(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'mail.db'}"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, url, str(tmp_path), stdout=asyncio.subprocess.PIPE, env=env
    )
    acknowledged: list[int] = []

    async def read_some() -> bool:
        assert child.stdout is not None
        line = await child.stdout.readline()
        if line:
            acknowledged.append(int(line))
        return len(acknowledged) >= 40

    try:
        await async_wait_for(read_some, timeout=60)
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(
                select(mail_messages.c.uid, mail_messages.c.blob, mail_messages.c.size, mail_bodies.c.body)
                .outerjoin(mail_bodies, mail_bodies.c.name == mail_messages.c.blob)
            )).all()
    finally:
        await engine.dispose()
    store = MailboxStore(engine, tmp_path)
    uids = [row[0] for row in rows]
    assert set(acknowledged) <= set(uids), "an acknowledged delivery was lost"
    assert uids == list(range(1, len(uids) + 1))
    assert any(body is None for *_, body in rows) and any(body is not None for *_, body in rows)
    for _, blob, size, body in rows:
        stored = store.read_blob(blob) if body is None else body
        assert len(stored) == size, "a stored row points at a partial message"
    # Files that no row refers to are the only trace a crash can leave.
    files = {path.name for path in (tmp_path / "mail" / "blobs").rglob("*") if path.is_file()}
    referenced = {row[1] for row in rows if row[3] is None}
    assert referenced <= files
    assert len(files - referenced) <= 2
