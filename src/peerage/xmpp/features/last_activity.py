"""XEP-0012 Last Activity: the server's uptime, and when an account was last online.

This module is in charge of answering ``jabber:iq:last`` queries: to the domain, the seconds since
the service started (section 5); to an account (section 4), the seconds since its last resource
went offline and the status it gave then (0 while a resource is available), only to the account
itself and to contacts with a presence subscription (``forbidden`` otherwise, as Prosody's
mod_lastactivity does). The time is stored in ``xmpp_last_activity`` when the last session ends.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import delete, insert, select

from peerage.xmpp.features import Feature, IqContext, hook_iq, result
from peerage.xmpp.router import schedule
from peerage.xmpp.stanzas import StanzaEvent
from peerage.xmpp.stream import Element, error_reply
from peerage.xmpp.tables import xmpp_last_activity

LAST_NS = "jabber:iq:last"
#: Longest status text kept (a presence status is free text; 1024 is plenty for a goodbye).
MAX_STATUS_CHARS = 1024


class LastActivity(Feature):
    server_features = (LAST_NS,)
    account_features = (LAST_NS,)

    def setup(self) -> None:
        self.started = time.monotonic()
        #: full JID -> status text of its unavailable presence, until the session ends
        self.statuses: dict[str, str] = {}
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
        async with self.ctx.storage.engine.connect() as conn:
            row = (await conn.execute(select(xmpp_last_activity.c.stamp, xmpp_last_activity.c.status).where(
                xmpp_last_activity.c.owner == owner))).first()
        if row is None:
            return error_reply(ctx.iq, "item-not-found")
        query = Element("query", LAST_NS, {"seconds": str(max(0, int(time.time() - row.stamp)))})
        if row.status:
            query.children.append(row.status)
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
        if self.ctx.spawn is not None:
            self.ctx.spawn(self._store(session.bare_jid, status))
        else:
            schedule(self._store(session.bare_jid, status))
        return None

    async def _store(self, owner: str, status: str) -> None:
        async with self.ctx.storage.engine.begin() as conn:
            await conn.execute(delete(xmpp_last_activity).where(xmpp_last_activity.c.owner == owner))
            await conn.execute(insert(xmpp_last_activity).values(owner=owner, stamp=time.time(), status=status))
