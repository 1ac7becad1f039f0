"""XEP-0012 Last Activity: the server's uptime, and when an account was last online.

This module is in charge of answering ``jabber:iq:last`` queries: to the domain, the seconds since
the service started (section 5); to an account (section 4), the seconds since its last resource
went offline and the status it gave then (0 while a resource is available), only to the account
itself and to contacts with a presence subscription (``forbidden`` otherwise, as Prosody's
mod_lastactivity does). The time is stored in ``xmpp_last_activity`` when the last session ends.

Logouts are written together, one transaction per ``WRITE_DELAY``, not one commit each (the
commit was a measurable share of a login-logout cycle, and logouts come in bursts: a network blip,
a client fleet restarting). Until its row is written, a logout is answered from memory; a failed
write is retried (a newer logout of the same account wins); the server writes what is pending
before it stops.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from typing import Any

from sqlalchemy import delete, insert, select

from peerage.xmpp.features import Feature, IqContext, hook_iq, result
from peerage.xmpp.stanzas import StanzaEvent
from peerage.xmpp.stream import Element, error_reply
from peerage.xmpp.tables import xmpp_last_activity

LAST_NS = "jabber:iq:last"
#: Longest status text kept (a presence status is free text; 1024 is plenty for a goodbye).
MAX_STATUS_CHARS = 1024
#: Seconds a logout waits to be written with the others of that moment. A query in the meantime
#: is answered from memory, so the delay is invisible to clients; on a cluster another node sees the
#: row that much later (it answers "0 seconds" while any resource is online anyway).
WRITE_DELAY = 0.5
#: Accounts written per transaction (well under SQLite's bound on parameters per statement).
WRITE_BATCH = 500
#: Retry delays of a failed write (seconds; doubling up to the maximum), as the MAM buffer does.
RETRY_FIRST, RETRY_MAX = 0.5, 30.0

log = logging.getLogger(__name__)


class LastActivity(Feature):
    server_features = (LAST_NS,)
    account_features = (LAST_NS,)

    def setup(self) -> None:
        self.started = time.monotonic()
        #: full JID -> status text of its unavailable presence, until the session ends
        self.statuses: dict[str, str] = {}
        #: bare JID -> (time, status) of logouts not yet written; ``_writing`` holds the batch
        #: being written (both answer queries until their rows are in the table).
        self._pending: dict[str, tuple[float, str]] = {}
        self._writing: dict[str, tuple[float, str]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._writer: asyncio.Task[None] | None = None
        hook_iq(self.ctx, "query", LAST_NS, self._server, to=("host",))
        hook_iq(self.ctx, "query", LAST_NS, self._account)
        self.ctx.events.hook("pre-presence/bare", self._presence, 15)
        self.ctx.events.hook("resource-unbind", self._unbound, 15)

    def _server(self, ctx: IqContext) -> Element | None:
        if ctx.iq.attrs.get("type") != "get":
            return error_reply(ctx.iq, "bad-request")
        return result(ctx, Element("query", LAST_NS, {"seconds": str(int(time.monotonic() - self.started))}))

    async def _account(self, ctx: IqContext) -> Element | None:
        if ctx.iq.attrs.get("type") != "get":
            return error_reply(ctx.iq, "bad-request")
        owner = ctx.owner
        assert owner is not None
        if not ctx.is_owner:
            state = ctx.user or await self.ctx.users.load(owner)
            item = state.roster.get(ctx.sender.partition("/")[0])
            if item is None or item.subscription not in ("from", "both"):
                return error_reply(ctx.iq, "forbidden")
        if any(session.available for session in self.ctx.router.resources(owner).values()):
            return result(ctx, Element("query", LAST_NS, {"seconds": "0"}))
        last = self._pending.get(owner) or self._writing.get(owner)
        if last is None:
            async with self.ctx.storage.engine.connect() as conn:
                row = (await conn.execute(select(xmpp_last_activity.c.stamp, xmpp_last_activity.c.status).where(
                    xmpp_last_activity.c.owner == owner))).first()
            if row is None:
                return error_reply(ctx.iq, "item-not-found")
            last = (row.stamp, row.status)
        stamp, status = last
        query = Element("query", LAST_NS, {"seconds": str(max(0, int(time.time() - stamp)))})
        if status:
            query.children.append(status)
        return result(ctx, query)

    def _presence(self, event: StanzaEvent) -> None:
        stanza = event.stanza
        if stanza.attrs.get("to") or stanza.attrs.get("type") != "unavailable":
            return None
        status = stanza.find_text("status") or ""
        if status:
            self.statuses[event.origin.full_jid] = status[:MAX_STATUS_CHARS]
        return None

    def _unbound(self, session: Any) -> None:
        # Returns None: the other features' resource-unbind handlers (presence) must run too.
        status = self.statuses.pop(session.full_jid, "")
        if any(other is not session for other in self.ctx.router.resources(session.bare_jid).values()):
            return None
        self._pending.pop(session.bare_jid, None)  # re-inserted last: batches go oldest first
        self._pending[session.bare_jid] = (time.time(), status)
        if self._timer is None and (self._writer is None or self._writer.done()):
            self._timer = asyncio.get_running_loop().call_later(WRITE_DELAY, self._start_writer)
        return None

    @property
    def unwritten(self) -> int:
        return len(self._pending) + len(self._writing)

    def _start_writer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write())

    async def _write(self) -> None:
        delay = RETRY_FIRST
        pending = self._pending
        while pending:
            batch = dict(itertools.islice(pending.items(), WRITE_BATCH))
            for owner in batch:
                del pending[owner]
            self._writing = batch
            try:
                async with self.ctx.storage.engine.begin() as conn:
                    await conn.execute(delete(xmpp_last_activity).where(
                        xmpp_last_activity.c.owner.in_(list(batch))))
                    await conn.execute(insert(xmpp_last_activity), [
                        {"owner": owner, "stamp": stamp, "status": status}
                        for owner, (stamp, status) in batch.items()])
            except Exception:
                log.exception("could not write the last activity of %d accounts; retrying in %.1f s",
                              len(batch), delay)
                for owner, value in batch.items():
                    pending.setdefault(owner, value)  # a newer logout, if any, wins
                self._writing = {}
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            self._writing = {}
            delay = RETRY_FIRST

    async def flush(self) -> None:
        """Write every pending logout (at shutdown)."""
        while self._pending or (self._writer is not None and not self._writer.done()):
            self._start_writer()
            assert self._writer is not None
            await asyncio.shield(self._writer)
