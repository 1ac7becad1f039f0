"""The outbound queue's tables on PostgreSQL: enqueue (spool file fsynced, one row per recipient),
claim (the worker picks the due rows, delivers each once), complete (delivered rows and their file go;
a temporary failure stays with its attempt counted and a later retry time), as on SQLite.

The database is a real private PostgreSQL cluster (the `postgres_url` fixture); this test gets its own
database in it, so rows left by other areas' tests cannot be picked up by this queue."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

from sqlalchemy import select

from peerage.mail.queue_tables import mail_queue
from peerage.mail.smtp.client import TEMPORARY, Outcome
from peerage.mail.smtp.queue import OutboundQueue, list_entries
from peerage.mail.smtp.schedule import Schedule
from peerage.store import Store
from tests.harness import async_wait_for
from tests.harness.postgres import own_database

LOCAL_DOMAIN = "pg.example"
REMOTE_DOMAIN = "far.example"


async def _rows(store: Store) -> list[dict[str, object]]:
    async with store.begin() as conn:
        result = await conn.execute(select(mail_queue).order_by(mail_queue.c.id))
        return [dict(row._mapping) for row in result]


async def test_enqueue_claim_complete_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    store = Store(await own_database(postgres_url, "peerage_mail_queue"))
    await store.migrate()
    delivered: list[tuple[str, bytes]] = []
    remote_attempts: list[list[str]] = []

    async def deliver_local(address: str, data: bytes, mail_from: str | None = None) -> None:
        delivered.append((address, data))

    async def deliver_remote(
        domain: str, mail_from: str, recipients: list[str], data: bytes, smtputf8: bool
    ) -> dict[str, Outcome]:
        remote_attempts.append(list(recipients))
        return {r: Outcome(TEMPORARY, "421 4.4.2 try later", "4.4.2") for r in recipients}

    queue = OutboundQueue(
        store=store,
        spool_dir=tmp_path / "queue",
        schedule=Schedule(first_retry=3600.0, lifetime=86400.0, delay_warning=0.0),
        is_local=lambda domain: domain == LOCAL_DOMAIN,
        deliver_local=deliver_local,
        deliver_remote=deliver_remote,
        reporting_mta=f"mx.{LOCAL_DOMAIN}",
    )
    token = secrets.token_hex(6)
    message = f"From: s@{REMOTE_DOMAIN}\r\nSubject: {token}\r\n\r\nbody\r\n".encode()
    local = [f"a{token}@{LOCAL_DOMAIN}", f"b{token}@{LOCAL_DOMAIN}"]
    remote = f"c{token}@{REMOTE_DOMAIN}"
    try:
        # Enqueue: the file is on disk and one row per recipient is committed when enqueue returns.
        await queue.enqueue(f"s@{REMOTE_DOMAIN}", [*local, remote], message, smtputf8=True)
        rows = [r for r in await _rows(store) if token in str(r["recipient"])]
        assert sorted(str(r["recipient"]) for r in rows) == sorted([*local, remote])
        assert len({r["message_file"] for r in rows}) == 1
        assert all(r["attempts"] == 0 and r["smtputf8"] is True and r["size"] == len(message) for r in rows)
        assert {r["recipient_domain"] for r in rows} == {LOCAL_DOMAIN, REMOTE_DOMAIN}
        spool_name = str(rows[0]["message_file"])
        assert queue.spool.read(spool_name) == message
        await queue.recover()  # the file is referenced by committed rows: it must survive recovery
        assert spool_name in queue.spool.names()

        # Claim and complete: the worker takes the due rows, delivers the local ones once each and
        # deletes their rows; the remote one fails temporarily and is rescheduled.
        queue.start()
        await async_wait_for(lambda: len(delivered) == 2 and len(remote_attempts) == 1, 20,
                             "the due rows being claimed and attempted")

        async def settled() -> bool:
            left = [r for r in await _rows(store) if token in str(r["recipient"])]
            return len(left) == 1 and left[0]["attempts"] == 1

        await async_wait_for(settled, 20, "the attempts being recorded")
        assert sorted(a for a, _ in delivered) == sorted(local)
        assert all(data == message for _, data in delivered)
        (left,) = [r for r in await _rows(store) if token in str(r["recipient"])]
        assert left["recipient"] == remote
        assert "try later" in str(left["last_error"])
        assert int(str(left["next_attempt_at"])) >= int(time.time()) + 3000
        # The file stays while a row needs it.
        assert spool_name in queue.spool.names()
        # Not due again: another scan must not claim it a second time.
        await queue._scan()
        assert len(remote_attempts) == 1 and len(delivered) == 2

        # Completing the last row removes the file too.
        left_entry = [e for e in await list_entries(store) if e.recipient == remote]
        await queue._remove(left_entry)
        assert not [r for r in await _rows(store) if token in str(r["recipient"])]
        assert spool_name not in queue.spool.names()
    finally:
        await queue.stop()
        await store.engine.dispose()

