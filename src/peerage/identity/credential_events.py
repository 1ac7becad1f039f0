"""Credential events: telling the running servers that an account's credentials ended.

This module is in charge of one thing: when a password changes, an account is deleted, or a web session
logs out or is revoked, everything already running on the ended credentials must end too (live XMPP
streams, SIP registrations made with a web session's token), in every process that holds such things,
not only in the one that made the change.

How the news travels, and why this way: the change writes a row to ``identity_credential_events`` in
the same transaction that ends the credentials, and every running server polls the table (one indexed
query a second, ``POLL_INTERVAL``) and tells its listeners. The alternative, the CLI sending SIGHUP as
``peerage user import`` does, reaches only a server on the same machine that wrote a status file, and is
lost if the CLI dies between its commit and its signal; the row cannot be lost (it commits with the
change), reaches every cluster node sharing the database, and needs no permission to signal the server.
The process that made the change tells its own listeners at once (``dispatch``; its poller skips that
row), so an in-process logout or XEP-0077 change has ended the sessions before it answers.

Listeners get a ``CredentialEvent`` and may return an awaitable, which ``dispatch`` awaits.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, func, insert, select

from peerage.identity.tables import identity_credential_events as events_table

log = logging.getLogger(__name__)

#: The account's password changed (RFC 6120 section 4.9.3.19 <reset/>).
RESET = "reset"
#: The account was deleted (section 4.9.3.17 <not-authorized/>).
DELETED = "not-authorized"
#: One web session ended (logout, or revoked from another browser): what it issued ends with it.
WEB_SESSION = "web-session"
#: Seconds between two looks at the table. A password changed from the command line ends the live
#: sessions within this; one query on the primary key, so a second costs nothing measurable.
POLL_INTERVAL = 1.0
#: Rows kept this long: a server that was not running when the change was made has no session to end.
KEEP_SECONDS = 3600.0
#: Rows read per poll at most (a mass `user del` is read over several polls, not in one query).
BATCH = 500


@dataclass(frozen=True, slots=True)
class CredentialEvent:
    account: str
    reason: str  # RESET, DELETED or WEB_SESSION
    web_session: str | None = None  # WEB_SESSION: the ended session's token hash
    # the connection that made a password change, which keeps its stream (XEP-0077 section 3.3);
    # only in the process that made it
    keep: object | None = field(default=None, compare=False)


CredentialListener = Callable[[CredentialEvent], Awaitable[None] | None]


class CredentialEvents:
    def __init__(self, store: Any, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        self.listeners: list[CredentialListener] = []
        self._own: set[int] = set()  # rows this process wrote and already dispatched
        self._task: asyncio.Task[None] | None = None
        self._last = 0

    async def record(self, conn: Any, account: str, reason: str, web_session: str | None = None,
                     keep: object | None = None) -> CredentialEvent:
        """Write the event in the caller's transaction; ``dispatch`` it once that commits."""
        now = self.clock()
        await conn.execute(delete(events_table).where(events_table.c.at < now - KEEP_SECONDS))
        result = await conn.execute(insert(events_table).values(
            account=account, reason=reason, web_session=web_session, at=now))
        # Noted before the commit, so this process's poller cannot read the row before it is marked.
        self._own.add(int(result.inserted_primary_key[0]))
        return CredentialEvent(account, reason, web_session, keep)

    async def dispatch(self, events: Iterable[CredentialEvent]) -> None:
        for event in events:
            for listener in list(self.listeners):
                try:
                    outcome = listener(event)
                    if inspect.isawaitable(outcome):
                        await outcome
                except Exception:
                    log.exception("ending what ran on the credentials of %s failed", event.account)

    # -- the poller: events written by other processes
    async def listen(self, listener: CredentialListener) -> None:
        """Add a listener; the first one starts watching the table."""
        self.listeners.append(listener)
        if self._task is None:
            async with self.store.begin() as conn:
                self._last = int((await conn.execute(select(func.max(events_table.c.id)))).scalar() or 0)
            self._task = asyncio.ensure_future(self._watch())

    async def unlisten(self, listener: CredentialListener) -> None:
        with contextlib.suppress(ValueError):
            self.listeners.remove(listener)
        if not self.listeners and self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            try:
                await self.poll()
            except Exception:
                log.exception("reading credential events failed")

    async def poll(self) -> int:
        """Dispatch the events other processes wrote since the last look; how many."""
        async with self.store.begin() as conn:
            rows = (await conn.execute(select(events_table).where(events_table.c.id > self._last)
                                       .order_by(events_table.c.id).limit(BATCH))).all()
        fresh = []
        for row in rows:
            self._last = max(self._last, int(row.id))
            if row.id in self._own:
                self._own.discard(row.id)
                continue
            fresh.append(CredentialEvent(row.account, row.reason, row.web_session))
        self._own = {i for i in self._own if i > self._last}
        if fresh:
            log.info("credentials ended elsewhere: %s",
                     ", ".join(f"{e.account} ({e.reason})" for e in fresh[:10]))
            await self.dispatch(fresh)
        return len(fresh)
