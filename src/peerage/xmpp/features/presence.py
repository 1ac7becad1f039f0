"""RFC 6121 sections 3 and 4: presence broadcast, probes, directed presence and subscriptions.

This module is in charge of presence in both directions:

- from the account's own clients (``pre-presence/*``): initial, updated and unavailable presence
  broadcast to subscribers and the account's other resources, directed presence (remembered so
  that it is followed by unavailable, section 4.6), and outbound subscription requests and answers;
- to a local account (``presence/bare``, ``presence/full``): presence from contacts, probes
  (section 4.3) and the inbound half of the subscription state machine (section 3, appendix A);
- the end of a session (``resource-unbind``): unavailable presence on its behalf (section 4.5.3).

Roster changes the subscription states cause go through ``features.roster``. When a resource
becomes able to take messages to the bare JID, ``message/offline/broadcast`` is fired with the
session, for the offline store to empty its queue (XEP-0160).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable
from typing import Any

from peerage.xmpp.events import HANDLED
from peerage.xmpp.features import Feature
from peerage.xmpp.features.blocking import is_blocked
from peerage.xmpp.features.roster import remove_item, save_item
from peerage.xmpp.jid import JidError, split_jid
from peerage.xmpp.stanzas import StanzaEvent
from peerage.xmpp.storage import RosterItem
from peerage.xmpp.stream import Element, error_reply, parse_stored, serialize

#: Directed presences remembered per session (RFC 6121 section 4.6), to send them unavailable.
MAX_DIRECTED_PRESENCES = 1000
SUBSCRIPTION_TYPES = frozenset(("subscribe", "subscribed", "unsubscribe", "unsubscribed"))


def with_to(stanza: Element, to: str, from_: str | None = None) -> Element:
    """Shallow copy with another 'to' (children are shared and must not be mutated)."""
    attrs = dict(stanza.attrs)
    attrs["to"] = to
    if from_ is not None:
        attrs["from"] = from_
    return Element(stanza.name, stanza.xmlns, attrs, stanza.children)


async def _wait(result: Awaitable[None] | None) -> None:
    if result is not None:
        await result


class Presence(Feature):
    def setup(self) -> None:
        events = self.ctx.events
        for to in ("bare", "full", "host"):
            events.hook(f"pre-presence/{to}", self._from_client)
        events.hook("presence/bare", self._inbound)
        events.hook("presence/full", self._inbound)
        events.hook("resource-unbind", self._session_ended)

    # ============================================================================================
    # From a local client
    # ============================================================================================
    def _from_client(self, event: StanzaEvent) -> Awaitable[None]:
        return self._presence_from_client(event.origin, event.stanza)

    async def _presence_from_client(self, session: Any, stanza: Element) -> None:
        ptype = stanza.attrs.get("type")
        to = stanza.attrs.get("to")
        if ptype in SUBSCRIPTION_TYPES:
            if to:
                await self._outbound_subscription(session, stanza, ptype, to)
            return
        if ptype == "probe":
            return  # clients do not probe (RFC 6121 section 4.3)
        if ptype not in (None, "unavailable", "error"):
            session.send(error_reply(stanza, "bad-request"))
            return
        if to:
            if ptype is None:
                if session.directed is None:
                    session.directed = set()  # created on first use: most sessions never need it
                if len(session.directed) < MAX_DIRECTED_PRESENCES:
                    session.directed.add(to)
            elif session.directed:
                session.directed.discard(to)
            await _wait(self.ctx.router.route(stanza))
            return
        await self.broadcast(session, stanza)

    async def broadcast(self, session: Any, stanza: Element) -> None:
        """Broadcast available/unavailable presence of ``session`` (RFC 6121 sections 4.2, 4.4, 4.5)."""
        router = self.ctx.router
        ptype = stanza.attrs.get("type")
        bare = session.bare_jid
        state = await self.ctx.users.load(bare)
        initial = ptype is None and not session.available
        took_bare_messages = session.available and session.priority >= 0
        if ptype is None:
            priority_text = stanza.find_text("priority")
            try:
                session.priority = max(-128, min(127, int(priority_text))) if priority_text else 0
            except ValueError:
                session.priority = 0
            session.available = True
            session.last_presence = stanza
        else:
            if not session.available:
                return
            session.available = False
            session.last_presence = None
        changed = getattr(session, "presence_changed", None)  # a ClientSession's (sessions of other nodes have none)
        if changed is not None:
            changed()
        for contact, item in list(state.roster.items()):
            if item.subscription in ("from", "both") and not (state.blocklist and is_blocked(state.blocklist, contact)):
                await _wait(router.route(with_to(stanza, contact)))
        if ptype == "unavailable":
            for to in list(session.directed or ()):
                await _wait(router.route(with_to(stanza, to)))
            session.directed = None
        for other in list(router.resources(bare).values()):
            if other.available or other is session:
                other.send(with_to(stanza, other.full_jid))
        if not initial:
            if ptype is None and session.priority >= 0 and not took_bare_messages:
                # From a negative priority to a non-negative one: stored messages are now due
                # (RFC 6121 section 8.5.2.1.1, as Prosody's mod_offline does on any such presence).
                await _wait(self.ctx.events.fire("message/offline/broadcast", session))
            return
        # Initial presence: probe contacts we are subscribed to, show our other resources, pending
        # subscription requests, and offline messages.
        for contact, item in list(state.roster.items()):
            if item.subscription in ("to", "both"):
                await _wait(router.route(Element("presence", "", {"from": bare, "to": contact, "type": "probe"})))
        for other in list(router.resources(bare).values()):
            if other is not session and other.available and other.last_presence is not None:
                session.send(with_to(other.last_presence, session.full_jid))
        for item in list(state.roster.values()):
            if item.pending_in and item.pending_stanza:
                with contextlib.suppress(ValueError):
                    session.send(with_to(parse_stored(item.pending_stanza), session.full_jid))
        if session.priority >= 0:
            await _wait(self.ctx.events.fire("message/offline/broadcast", session))

    def _session_ended(self, session: Any) -> Awaitable[None] | None:
        if not session.available:
            return None
        unavailable = Element("presence", "", {"from": session.full_jid, "type": "unavailable"})
        return self.broadcast(session, unavailable)

    async def _outbound_subscription(self, session: Any, stanza: Element, ptype: str, to: str) -> None:
        try:
            local, domain, _ = split_jid(to)
        except JidError:
            session.send(error_reply(stanza, "jid-malformed"))
            return
        contact = f"{local}@{domain}" if local else domain
        bare = session.bare_jid
        if contact == bare:
            return  # one's own presence needs no subscription (RFC 6121 section 4.2.2)
        router = self.ctx.router
        # RFC 6121 section 3.1.2: stamp the user's bare JID and the contact's bare JID.
        outbound = Element("presence", "", {**stanza.attrs, "from": bare, "to": contact}, stanza.children)
        state = await self.ctx.users.load(bare)
        route = True
        async with self.ctx.users.modifying(state):
            item = state.roster.get(contact)
            if ptype == "subscribe":
                if item is None:
                    item = RosterItem(contact)
                item.hidden = False
                if item.subscription not in ("to", "both"):
                    item.ask = True
                await save_item(self.ctx, state, item)
            elif ptype == "subscribed":
                if item is not None and item.pending_in:
                    item.pending_in = False
                    item.pending_stanza = None
                    item.hidden = False
                    item.subscription = {"none": "from", "to": "both"}.get(item.subscription, item.subscription)
                    await save_item(self.ctx, state, item)
                elif item is None or item.subscription in ("none", "to"):
                    # Pre-approval (RFC 6121 section 3.4): remembered, not routed.
                    if item is None:
                        item = RosterItem(contact)
                    item.approved = True
                    await save_item(self.ctx, state, item)
                    route = False
                else:
                    route = item.subscription in ("from", "both")
            elif ptype == "unsubscribe" and item is not None:
                item.ask = False
                item.subscription = {"to": "none", "both": "from"}.get(item.subscription, item.subscription)
                await save_item(self.ctx, state, item)
            elif ptype == "unsubscribed" and item is not None:
                was_from = item.subscription in ("from", "both")
                item.pending_in = False
                item.pending_stanza = None
                item.approved = False
                item.subscription = {"from": "none", "both": "to"}.get(item.subscription, item.subscription)
                if item.hidden:
                    await remove_item(self.ctx, state, contact, push=False)
                else:
                    await save_item(self.ctx, state, item)
                if was_from:
                    for other in list(router.resources(bare).values()):
                        if other.available:
                            await _wait(router.route(Element(
                                "presence", "", {"from": other.full_jid, "to": contact, "type": "unavailable"})))
        if route:
            await _wait(router.route(outbound))
        if ptype == "subscribed" and route:
            await self._send_current_presence(bare, contact)

    async def _send_current_presence(self, bare: str, contact: str) -> None:
        for other in list(self.ctx.router.resources(bare).values()):
            if other.available and other.last_presence is not None:
                await _wait(self.ctx.router.route(with_to(other.last_presence, contact)))

    # ============================================================================================
    # To a local account
    # ============================================================================================
    def _inbound(self, event: StanzaEvent) -> Any:
        stanza = event.stanza
        ptype = stanza.attrs.get("type")
        if event.user is None:
            if ptype == "subscribe" and stanza.attrs.get("from"):
                # RFC 6121 section 3.1.3: a request to a non-existent account is answered unsubscribed.
                refusal = Element("presence", "", {"from": event.bare, "to": stanza.attrs["from"].partition("/")[0],
                                                   "type": "unsubscribed"})
                return self.ctx.router.route(refusal) or HANDLED
            return HANDLED
        if ptype is None or ptype == "unavailable" or ptype == "error":
            if event.resource:
                session = event.resources.get(event.resource)
                if session is not None:
                    session.send(stanza)
            else:
                for session in event.resources.values():
                    if session.available:
                        session.send(with_to(stanza, session.full_jid))
            return HANDLED
        if ptype == "probe":
            return self._answer_probe(stanza, event.bare)
        if ptype in SUBSCRIPTION_TYPES:
            return self._inbound_subscription(stanza, event.bare, ptype)
        return HANDLED

    async def _answer_probe(self, probe: Element, bare: str) -> None:
        router = self.ctx.router
        state = await self.ctx.users.load(bare)
        prober = probe.attrs.get("from", "")
        try:
            local, domain, _ = split_jid(prober)
        except JidError:
            return
        prober_bare = f"{local}@{domain}" if local else domain
        item = state.roster.get(prober_bare)
        if item is None or item.subscription not in ("from", "both"):
            await _wait(router.route(Element("presence", "", {"from": bare, "to": prober_bare, "type": "unsubscribed"})))
            return
        sent = False
        for session in list(router.resources(bare).values()):
            if session.available and session.last_presence is not None:
                await _wait(router.route(with_to(session.last_presence, prober)))
                sent = True
        if not sent:
            await _wait(router.route(Element("presence", "", {"from": bare, "to": prober, "type": "unavailable"})))

    async def _inbound_subscription(self, stanza: Element, bare: str, ptype: str) -> None:
        router = self.ctx.router
        try:
            local, domain, _ = split_jid(stanza.attrs.get("from", ""))
        except JidError:
            return
        if not local and not domain:
            return
        contact = f"{local}@{domain}" if local else domain
        stanza = with_to(stanza, bare, contact)  # RFC 6121 section 3.1.3: stamp bare JIDs
        state = await self.ctx.users.load(bare)
        # An automatic answer leaves after the roster is released: routed to a local contact, it
        # changes the contact's roster, which must not be waited for under this one (two accounts
        # asking each other at once would each hold their own and wait for the other's).
        answer = await self._inbound_subscription_change(state, stanza, contact, ptype)
        if answer:
            await _wait(router.route(Element("presence", "", {"from": bare, "to": contact, "type": "subscribed"})))
            if answer == "subscribed and presence":
                await self._send_current_presence(bare, contact)

    async def _inbound_subscription_change(self, state: Any, stanza: Element, contact: str, ptype: str) -> str:
        """The inbound half of the state machine on ``state``'s roster; returns the automatic answer
        due to the contact ("subscribed", "subscribed and presence" or "")."""
        router = self.ctx.router
        bare = state.bare
        async with self.ctx.users.modifying(state):
            item = state.roster.get(contact)
            if ptype == "subscribe":
                if item is not None and item.subscription in ("from", "both"):
                    return "subscribed"
                if item is not None and item.approved:
                    item.subscription = "both" if item.subscription == "to" else "from"
                    item.approved = False
                    await save_item(self.ctx, state, item)
                    return "subscribed and presence"
                if item is None:
                    item = RosterItem(contact, hidden=True)
                item.pending_in = True
                item.pending_stanza = serialize(stanza)
                await save_item(self.ctx, state, item, push=False)
                for session in router.resources(bare).values():
                    if session.available:
                        session.send(with_to(stanza, session.full_jid))
                return ""
            if item is None or (item.hidden and ptype != "unsubscribe"):
                return ""
            changed = False
            if ptype == "subscribed":
                if not item.ask:
                    return ""
                item.ask = False
                item.subscription = {"none": "to", "from": "both"}.get(item.subscription, item.subscription)
                changed = True
            elif ptype == "unsubscribe":
                if item.pending_in or item.subscription in ("from", "both") or item.approved:
                    item.pending_in = False
                    item.pending_stanza = None
                    item.approved = False
                    item.subscription = {"from": "none", "both": "to"}.get(item.subscription, item.subscription)
                    changed = True
                    # RFC 6121 section 3.3.3: the contact's resources go unavailable for the user.
                    for session in list(router.resources(bare).values()):
                        if session.available:
                            await _wait(router.route(Element(
                                "presence", "", {"from": session.full_jid, "to": contact, "type": "unavailable"})))
            elif ptype == "unsubscribed" and (item.ask or item.subscription in ("to", "both")):
                item.ask = False
                item.subscription = {"to": "none", "both": "from"}.get(item.subscription, item.subscription)
                changed = True
            if not changed:
                return ""
            if item.hidden and not item.pending_in:
                await remove_item(self.ctx, state, contact, push=False)
            else:
                await save_item(self.ctx, state, item)
        for session in router.resources(bare).values():
            if session.available:
                session.send(with_to(stanza, session.full_jid))
        return ""
