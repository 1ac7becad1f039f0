"""XEP-0191 Blocking Command: the blocklist, its pushes, and the stanzas it stops.

This module is in charge of the blocklist IQs and of applying the list: it hooks every stanza event
to a local account at a high priority, so that a blocked sender's presence is dropped and its
messages and IQ requests bounce (section 3.4) before any other feature sees them, and the
``pre-message``/``pre-iq`` events of the account's own clients, which may not write to a JID they
block (section 3.5).
"""

from __future__ import annotations

from typing import Any

from peerage.xmpp.events import HANDLED
from peerage.xmpp.features import Feature, IqContext, hook_iq, result
from peerage.xmpp.jid import JidError, normalize_jid, split_jid
from peerage.xmpp.stanzas import StanzaEvent
from peerage.xmpp.stream import Element, error_reply

BLOCKING_NS = "urn:xmpp:blocking"
#: Entries per blocklist. ejabberd's privacy lists have no cap; a bound keeps the per-account
#: cache (kept in memory while the account is online) small.
MAX_BLOCKLIST_ENTRIES = 10000
BLOCKING_ERRORS_NS = "urn:xmpp:blocking:errors"
#: Runs before the features that deliver, store or archive (they must not see blocked stanzas).
PRIORITY = 100


def is_blocked(blocklist: set[str], jid: str) -> bool:
    """XEP-0191 section 3.2 matching: full JID, bare JID, domain/resource or domain."""
    try:
        local, domain, resource = split_jid(jid)
    except JidError:
        return False
    bare = f"{local}@{domain}" if local else domain
    if bare in blocklist or domain in blocklist:
        return True
    return bool(resource and (f"{bare}/{resource}" in blocklist or f"{domain}/{resource}" in blocklist))


class Blocking(Feature):
    account_features = (BLOCKING_NS,)
    server_features = (BLOCKING_NS,)

    def setup(self) -> None:
        hook_iq(self.ctx, "blocklist", BLOCKING_NS, self._blocklist)
        hook_iq(self.ctx, "block", BLOCKING_NS, self._block)
        hook_iq(self.ctx, "unblock", BLOCKING_NS, self._unblock)
        events = self.ctx.events
        for kind in ("message", "presence", "iq"):
            for to in ("bare", "full"):
                events.hook(f"{kind}/{to}", self._inbound, PRIORITY)
        for to in ("bare", "full", "host"):
            events.hook(f"pre-message/{to}", self._outbound_message, PRIORITY)
            events.hook(f"pre-iq/{to}", self._outbound_iq, PRIORITY)

    # --- applying the list ----------------------------------------------------------------------
    def _inbound(self, event: StanzaEvent) -> Any:
        user = event.user
        if user is None or not user.blocklist:
            return None
        stanza = event.stanza
        if not is_blocked(user.blocklist, stanza.attrs.get("from", "")):
            return None
        # Section 3.4: presence is dropped; messages and IQ get/set bounce unavailable.
        if stanza.name == "presence" or stanza.attrs.get("type") in ("error", "result"):
            return HANDLED
        return self.ctx.router.bounce(stanza, "service-unavailable")

    def _outbound_message(self, event: StanzaEvent) -> Any:
        user = event.user
        if user is None or not user.blocklist:
            return None
        stanza = event.stanza
        if not is_blocked(user.blocklist, stanza.attrs.get("to", "")):
            return None
        reply = error_reply(stanza, "not-acceptable", "you have blocked this contact")
        reply.find("error").add("blocked", BLOCKING_ERRORS_NS)  # type: ignore[union-attr]
        event.origin.send(reply)
        return HANDLED

    def _outbound_iq(self, event: StanzaEvent) -> Any:
        user = event.user
        stanza = event.stanza
        if user is None or not user.blocklist or stanza.attrs.get("type") not in ("get", "set"):
            return None
        if not is_blocked(user.blocklist, stanza.attrs.get("to", "")):
            return None
        event.origin.send(error_reply(stanza, "not-acceptable"))
        return HANDLED

    # --- the IQs --------------------------------------------------------------------------------

    async def _blocklist(self, ctx: IqContext) -> Element | None:
        if not ctx.is_owner or ctx.iq.attrs.get("type") != "get":
            return error_reply(ctx.iq, "forbidden" if not ctx.is_owner else "bad-request")
        state = await self.ctx.users.load(ctx.owner)  # type: ignore[arg-type]
        if ctx.session is not None:
            ctx.session.blocklist_requested = True
        blocklist = Element("blocklist", BLOCKING_NS)
        for jid in sorted(state.blocklist):
            blocklist.add("item", attrs={"jid": jid})
        return result(ctx, blocklist)

    def _jids(self, ctx: IqContext) -> list[str] | None:
        jids = []
        for item in ctx.payload.find_all("item", BLOCKING_NS):
            try:
                jids.append(normalize_jid(item.attrs.get("jid", "")))
            except JidError:
                return None
        return jids

    async def _block(self, ctx: IqContext) -> Element | None:
        if not ctx.is_owner or ctx.iq.attrs.get("type") != "set":
            return error_reply(ctx.iq, "forbidden" if not ctx.is_owner else "bad-request")
        jids = self._jids(ctx)
        if jids is None:
            return error_reply(ctx.iq, "jid-malformed")
        if not jids:
            return error_reply(ctx.iq, "bad-request", "block needs at least one item")
        owner = ctx.owner
        assert owner is not None
        state = await self.ctx.users.load(owner)
        if len(state.blocklist | set(jids)) > MAX_BLOCKLIST_ENTRIES:
            return error_reply(ctx.iq, "resource-constraint", "the blocklist is full")
        await self.ctx.storage.block(owner, jids)
        state.blocklist.update(jids)
        # XEP-0191 section 3.3: blocked contacts see the user go unavailable.
        for session in list(self.ctx.router.resources(owner).values()):
            if session.available:
                for jid in jids:
                    item = state.roster.get(jid)
                    if item is not None and item.subscription in ("from", "both"):
                        unavailable = Element("presence", "", {"from": session.full_jid, "to": jid,
                                                               "type": "unavailable"})
                        result_ = self.ctx.router.route(unavailable)
                        if result_ is not None:
                            await result_
        self._push(owner, "block", jids)
        return result(ctx)

    async def _unblock(self, ctx: IqContext) -> Element | None:
        if not ctx.is_owner or ctx.iq.attrs.get("type") != "set":
            return error_reply(ctx.iq, "forbidden" if not ctx.is_owner else "bad-request")
        jids = self._jids(ctx)
        if jids is None:
            return error_reply(ctx.iq, "jid-malformed")
        owner = ctx.owner
        assert owner is not None
        state = await self.ctx.users.load(owner)
        await self.ctx.storage.unblock(owner, jids or None)
        if jids:
            state.blocklist.difference_update(jids)
        else:
            state.blocklist.clear()
        self._push(owner, "unblock", jids)
        return result(ctx)

    def _push(self, owner: str, kind: str, jids: list[str]) -> None:
        for session in list(self.ctx.router.resources(owner).values()):
            if not getattr(session, "blocklist_requested", False):
                continue
            payload = Element(kind, BLOCKING_NS)
            for jid in jids:
                payload.add("item", attrs={"jid": jid})
            session.send(Element("iq", "", {"type": "set", "id": f"block-push-{id(payload)}",
                                            "to": session.full_jid}, [payload]))
