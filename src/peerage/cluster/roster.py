"""Roster changes across the nodes of a cluster: one at a time per account, on the stored state.

This module is in charge of the guard the XMPP roster and subscription code runs its
read-modify-writes under (``Users.guard``, entered by ``Users.modifying``) when the node is part of a
cluster.

Why. Each node caches the rosters of accounts online anywhere (xmpp/users.py), and a roster item is
changed by stanzas handled on different nodes: the account's own node decides its outbound requests
and answers (RFC 6121 section 3.1.2, 3.1.5), the contact's node (or the node that took the contact's
server-to-server stream) the inbound ones (sections 3.1.3, 3.1.6). Two clients that approve and ask
back by themselves (slixmpp's defaults, and most clients' "add contact" flows) make both happen at
the same moment. A node deciding on its cached copy may then ignore an answer to a request another
node has just recorded (section 3.1.5: no pending request, so it is taken as a pre-approval), or
write its whole stale item over the newer one (last writer wins): the pair is left at 'from'/'to'
for ever. The cache is refreshed by ``peerage.cluster.user`` announcements, which arrive on another
subject than the stanzas and after an unknown delay, so it cannot be trusted for a decision.

How. Each decision takes a PostgreSQL advisory lock for the account (``pg_advisory_xact_lock``
with this module's key space and a hash of the bare JID; the lock ends with its transaction), then
compares the stored roster version (XEP-0237, bumped by every write in the same transaction as the
item) with the cached one and, when another node moved it, reads the roster again in place before
the decision is taken. The writes the decision makes are committed before the lock is let go.

Chosen over the alternatives:
- running each account's roster changes on one node (the node of its sessions, or a lease as the
  group chat services have) would need stanzas forwarded to that node and a handover when sessions
  move or the node dies, and an account with no session anywhere still gets inbound requests;
- optimistic writes (conditional on the version, reload and retry) would not cover decisions that
  write nothing (an answer dropped because the stale copy shows no request), and the state machine
  routes stanzas between its read and its write, which a retry would send twice.
The lock costs one pooled connection and five round trips (BEGIN, SET LOCAL, the lock, the version,
ROLLBACK; no savepoint: a lock that times out aborts the transaction, which is rolled back and begun
again for the fresh read) per decision (a subscription stanza between two local accounts is two) or
roster set; these are rare next to messages and presence, which read the cache without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import select, text

from peerage.xmpp.tables import xmpp_roster_version

log = logging.getLogger(__name__)

#: First key of the advisory locks taken here ("rost"): the two-key space of pg_advisory_xact_lock,
#: which does not overlap the one-key space the migration lock uses (peerage.store).
ROSTER_LOCK_SPACE = 0x726F7374
#: Seconds a decision waits for another node's; one normally takes milliseconds. Past it the
#: decision is taken on a fresh read without the lock (logged): a stuck peer must not stop
#: subscriptions of the account altogether.
LOCK_TIMEOUT = 10.0
#: Decisions holding a lock at once on one node: each holds a pooled connection while its writes
#: take another, so this stays well under the pool (peerage.store: 10 + 20 overflow).
MAX_HOLDERS = 8


def lock_key(bare: str) -> int:
    """A signed 32-bit key for ``bare`` (the same on every node; a collision only serialises two
    accounts)."""
    return int.from_bytes(hashlib.sha256(bare.encode()).digest()[:4], "big", signed=True)


class RosterGuard:
    """``Users.guard`` for a node of a cluster."""

    def __init__(self, users: Any) -> None:
        self.users = users
        self.storage = users.storage
        self.engine = users.storage.engine
        self._holders = asyncio.Semaphore(MAX_HOLDERS)
        self.reloaded = 0  # decisions that found the cached roster stale (status)
        self.unlocked = 0  # decisions taken without the lock (timeout)

    @contextlib.asynccontextmanager
    async def __call__(self, state: Any) -> AsyncIterator[None]:
        async with self._holders, self.engine.connect() as conn:
            transaction = await conn.begin()
            try:
                await conn.execute(text(f"SET LOCAL lock_timeout = '{int(LOCK_TIMEOUT * 1000)}ms'"))
                try:
                    await conn.execute(text("SELECT pg_advisory_xact_lock(:space, :key)"),
                                       {"space": ROSTER_LOCK_SPACE, "key": lock_key(state.bare)})
                    locked = True
                except Exception as error:  # lock_timeout (55P03): that transaction is aborted
                    log.warning("cluster: the roster of %s stayed locked for %.0f s (%s); deciding on a fresh read",
                                state.bare, LOCK_TIMEOUT, type(error).__name__)
                    await transaction.rollback()
                    transaction = await conn.begin()
                    locked = False
                # A statement of its own, after the lock: its snapshot sees what the last holder committed.
                stored = (await conn.execute(select(xmpp_roster_version.c.version).where(
                    xmpp_roster_version.c.owner == state.bare))).scalar()
                if (stored or 0) != state.version:
                    await self._reload(state)
                if not locked:
                    self.unlocked += 1
                yield
            finally:
                await transaction.rollback()  # ends the transaction, and with it the lock

    async def _reload(self, state: Any) -> None:
        """Another node changed the roster since this copy was read: read it again, in place (the
        state object is the one the caller decides on)."""
        version, roster = await self.storage.load_roster(state.bare)
        state.blocklist = await self.storage.get_blocklist(state.bare)
        state.roster, state.version = roster, version
        self.reloaded += 1
