"""Mail across the nodes of a cluster: one shared queue, and IMAP IDLE / JMAP push woken anywhere.

This module is in charge of three things:

- ``DatabaseSpool``: the bytes of each queued message in PostgreSQL (``cluster_spool``) instead of
  a node's own folder, so that the queue worker of any node can deliver what any node accepted. The
  SMTP server still answers 250 only once body and rows are committed.
- ``claim_due``: the queue's scan takes due rows with ``SELECT … FOR UPDATE SKIP LOCKED`` and moves
  their next attempt ``CLAIM_SECONDS`` ahead in the same statement, so the workers of all nodes
  share the rows and each row is attempted by one of them. The attempt then deletes the row or
  reschedules it as on a single node; a node that dies mid-attempt leaves its rows to be tried again
  by another once the claim lapses.
- ``MailboxBridge``: each "mailbox changed" of the local notifier goes to the other nodes on
  ``peerage.mail.mailbox`` (the mailbox id only); each node wakes its IDLE sessions and JMAP push
  listeners for it. The id only says "look again": sessions read the change from PostgreSQL by
  MODSEQ, so a lost wake-up delays a notice (until the IDLE poll) but loses nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from typing import Any

from sqlalchemy import delete, select, text

from peerage.cluster.node import ClusterNode
from peerage.cluster.tables import cluster_spool
from peerage.mail.queue_tables import mail_queue

log = logging.getLogger(__name__)

MAILBOX_SUBJECT = "peerage.mail.mailbox"
#: Seconds a claimed row is not taken by another worker. Above the longest attempt (the SMTP client's
#: timeouts add up to a few minutes per destination, RFC 5321 section 4.5.3.2), so a row is never
#: attempted twice at once; a node dying mid-attempt delays its rows by this much at most.
CLAIM_SECONDS = 900
#: Bodies without a queue row older than this are removed (a node died between body and rows: the
#: message was never acknowledged).
ORPHAN_AFTER = 3600
#: Seconds between orphan sweeps.
ORPHAN_SWEEP = 600.0
#: Seconds a spool operation from a worker thread waits for the database.
SPOOL_TIMEOUT = 60.0


class DatabaseSpool:
    """The queue's ``Spool`` interface over ``cluster_spool``; its methods run in worker threads."""

    def __init__(self, store: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.store = store
        self.loop = loop

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(SPOOL_TIMEOUT)

    def write(self, data: bytes) -> str:
        name = secrets.token_hex(16)
        self._run(self._write(name, data))
        return name

    async def _write(self, name: str, data: bytes) -> None:
        async with self.store.begin() as conn:
            await conn.execute(cluster_spool.insert().values(name=name, data=data, created_at=int(time.time())))

    def read(self, name: str) -> bytes:
        data = self._run(self._read(name))
        if data is None:
            raise FileNotFoundError(name)
        return bytes(data)

    async def _read(self, name: str) -> Any:
        async with self.store.begin() as conn:
            return (await conn.execute(select(cluster_spool.c.data).where(cluster_spool.c.name == name))).scalar()

    def remove(self, name: str) -> None:
        self._run(self._remove(name))

    async def _remove(self, name: str) -> None:
        async with self.store.begin() as conn:
            await conn.execute(delete(cluster_spool).where(cluster_spool.c.name == name))

    def names(self) -> set[str]:
        # Orphans are swept by age (sweep_orphans), never at start-up: another node may be between
        # writing a body and committing its rows right now.
        return set()

    def clear_temporary(self) -> None:
        pass


async def sweep_orphans(store: Any) -> int:
    cutoff = int(time.time()) - ORPHAN_AFTER
    async with store.begin() as conn:
        result = await conn.execute(
            delete(cluster_spool).where(cluster_spool.c.created_at < cutoff,
                                        cluster_spool.c.name.not_in(select(mail_queue.c.message_file))))
        return int(result.rowcount or 0)


_CLAIM = text(
    "UPDATE mail_queue SET next_attempt_at = :until WHERE id IN ("
    " SELECT id FROM mail_queue WHERE next_attempt_at <= :now ORDER BY next_attempt_at LIMIT :limit"
    " FOR UPDATE SKIP LOCKED) RETURNING *"
)


async def claim_due(conn: Any, now: int, limit: int) -> list[Any]:
    """Due rows, claimed for this node's worker (see the module's docstring)."""
    result = await conn.execute(_CLAIM, {"now": now, "until": now + CLAIM_SECONDS, "limit": limit})
    rows = list(result)
    # The claim moved next_attempt_at; the attempt sees the time it was due, as on a single node.
    return [_Due(row, now) for row in rows]


class _Due:
    """A claimed row, read like the table's row (attribute access)."""

    def __init__(self, row: Any, now: int) -> None:
        self._row = row._mapping
        self._now = now

    def __getattr__(self, name: str) -> Any:
        if name == "next_attempt_at":
            return self._now
        try:
            return self._row[name]
        except KeyError:
            raise AttributeError(name) from None


class MailboxBridge:
    """Mailbox change notices between the nodes."""

    def __init__(self, node: ClusterNode, notifier: Any) -> None:
        self.node = node
        self.notifier = notifier
        self._relaying = False
        self.received = 0
        notifier.add_listener(self._changed_here)
        node.subscribe(MAILBOX_SUBJECT, self._changed_elsewhere)

    def _changed_here(self, mailbox_id: int) -> None:
        if self._relaying:
            return
        self.node.publish(MAILBOX_SUBJECT, json.dumps({"node": self.node.name, "id": mailbox_id}).encode())

    async def _changed_elsewhere(self, msg: Any) -> None:
        try:
            data = json.loads(msg.data)
            origin, mailbox_id = str(data["node"]), int(data["id"])
        except (ValueError, KeyError, TypeError):
            return
        if origin == self.node.name:
            return
        self.received += 1
        self._relaying = True
        try:
            self.notifier.publish(mailbox_id)
        finally:
            self._relaying = False
