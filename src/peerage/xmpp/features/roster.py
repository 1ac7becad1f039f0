"""RFC 6121 section 2 rosters and XEP-0237 roster versioning: the roster IQs and roster pushes.

This module is in charge of ``jabber:iq:roster`` gets and sets from the account's own clients and of
the helpers every roster change goes through (``save_item``, ``remove_item``, ``push_item``), which
the subscription state machine (``features.presence``) uses too. A change is committed before it is
pushed, and a push goes only to sessions that requested the roster (RFC 6121 section 2.1.6).

Versioning: each item carries the roster version of its last change, and removals leave a record
with theirs, so a client that asks with an older version gets an empty result followed by one push
per change since (XEP-0237 section 2.4) instead of the whole roster.
"""

from __future__ import annotations

from typing import Any

from peerage.xmpp.context import XmppContext
from peerage.xmpp.features import Feature, IqContext, hook_iq
from peerage.xmpp.jid import JidError, split_jid
from peerage.xmpp.storage import RosterItem
from peerage.xmpp.stream import Element, error_reply, iq_result
from peerage.xmpp.users import UserState

ROSTER_NS = "jabber:iq:roster"
ROSTERVER_NS = "urn:xmpp:features:rosterver"
PREAPPROVAL_NS = "urn:xmpp:features:pre-approval"


def item_element(item: RosterItem) -> Element:
    el = Element("item", ROSTER_NS, {"jid": item.contact, "subscription": item.subscription})
    if item.name:
        el.attrs["name"] = item.name
    if item.ask:
        el.attrs["ask"] = "subscribe"
    if item.approved:
        el.attrs["approved"] = "true"
    for group in item.groups:
        el.add("group", text=group)
    return el


async def save_item(ctx: XmppContext, state: UserState, item: RosterItem, push: bool = True) -> None:
    """Commit ``item`` and, unless it is hidden (a pending inbound request only), push it."""
    state.version = await ctx.storage.save_roster_item(state.bare, item, item.contact)
    state.roster[item.contact] = item
    if push and not item.hidden:
        push_item(ctx, state, item)


async def remove_item(ctx: XmppContext, state: UserState, contact: str, push: bool = True) -> None:
    state.version = await ctx.storage.save_roster_item(state.bare, None, contact)
    state.roster.pop(contact, None)
    if push:
        push_item(ctx, state, None, contact)


def push_item(ctx: XmppContext, state: UserState, item: RosterItem | None, contact: str = "") -> None:
    """RFC 6121 section 2.1.6: a roster push to every interested resource."""
    for session in list(ctx.router.resources(state.bare).values()):
        if not getattr(session, "roster_requested", False):
            continue
        query = Element("query", ROSTER_NS, {"ver": str(state.version)})
        if item is None:
            query.add("item", attrs={"jid": contact, "subscription": "remove"})
        else:
            query.children.append(item_element(item))
        session.send(Element("iq", "", {"type": "set", "id": f"push{state.version}", "to": session.full_jid}, [query]))


async def resync(ctx: XmppContext) -> int:
    """Roster changes made by another process (``peerage user import``) reach the running server:
    re-read the accounts whose stored version moved and push each change to the interested
    resources (RFC 6121 section 2.1.6). Returns how many accounts were re-read."""
    changed = await ctx.users.resync()
    for state, before, after in changed:
        for contact in sorted(before.keys() - after.keys()):
            if not before[contact].hidden:
                push_item(ctx, state, None, contact)
        for contact, item in sorted(after.items()):
            if item.hidden or before.get(contact) == item:
                continue
            push_item(ctx, state, item)
    return len(changed)


def _to_session(ctx: IqContext, payload: Element | None) -> Element:
    reply = iq_result(ctx.iq, payload)
    reply.attrs.pop("from", None)
    return reply


class Roster(Feature):
    def setup(self) -> None:
        hook_iq(self.ctx, "query", ROSTER_NS, self._get, types=("get",))
        hook_iq(self.ctx, "query", ROSTER_NS, self._set, types=("set",))

    def stream_features(self, session: Any) -> list[Element]:
        return [Element("ver", ROSTERVER_NS), Element("sub", PREAPPROVAL_NS)]

    async def _get(self, ctx: IqContext) -> Element | None:
        if not ctx.is_owner:
            return error_reply(ctx.iq, "forbidden")
        state = await self.ctx.users.load(ctx.owner)  # type: ignore[arg-type]
        if ctx.session is not None:
            ctx.session.roster_requested = True
        requested = ctx.payload.attrs.get("ver")
        if requested is not None and requested == str(state.version):
            return _to_session(ctx, None)  # XEP-0237: unchanged, pushes follow
        if ctx.session is not None and requested and requested.isdigit() and 0 < int(requested) < state.version:
            since = int(requested)
            removed = await self.ctx.storage.roster_removed_since(state.bare, since)
            if removed is not None:
                self._send_changes(ctx, state, since, removed)
                return None
        query = Element("query", ROSTER_NS, {"ver": str(state.version)})
        for item in state.roster.values():
            if not item.hidden:
                query.children.append(item_element(item))
        return _to_session(ctx, query)

    @staticmethod
    def _send_changes(ctx: IqContext, state: UserState, since: int, removed: list[tuple[int, str]]) -> None:
        """XEP-0237 section 2.4: an empty result, then a push per item changed after ``since``."""
        session = ctx.session
        session.send(_to_session(ctx, None))
        changes: list[tuple[int, str, RosterItem | None]] = [
            (item.version, item.contact, item) for item in state.roster.values()
            if item.version > since and not item.hidden]
        changes += [(version, contact, None) for version, contact in removed]
        for version, contact, item in sorted(changes, key=lambda change: change[0]):
            query = Element("query", ROSTER_NS, {"ver": str(version)})
            if item is None:
                query.add("item", attrs={"jid": contact, "subscription": "remove"})
            else:
                query.children.append(item_element(item))
            session.send(Element("iq", "", {"type": "set", "id": f"push{version}", "to": session.full_jid}, [query]))

    async def _set(self, ctx: IqContext) -> Element | None:
        if not ctx.is_owner:
            return error_reply(ctx.iq, "forbidden")
        owner = ctx.owner
        assert owner is not None
        state = await self.ctx.users.load(owner)
        items = ctx.payload.find_all("item", ROSTER_NS)
        if len(items) != 1:
            return error_reply(ctx.iq, "bad-request", "a roster set carries exactly one item")
        element = items[0]
        try:
            local, domain, resource = split_jid(element.attrs.get("jid", ""))
        except JidError:
            return error_reply(ctx.iq, "jid-malformed")
        if not domain or resource:
            return error_reply(ctx.iq, "bad-request", "roster items are bare JIDs")
        contact = f"{local}@{domain}" if local else domain
        if contact == owner:
            return error_reply(ctx.iq, "not-allowed", "you cannot add yourself")
        cancel: list[str] = []
        async with self.ctx.users.modifying(state):
            existing = state.roster.get(contact)
            if element.attrs.get("subscription") == "remove":
                if existing is None:
                    return error_reply(ctx.iq, "item-not-found")
                # RFC 6121 section 2.5.2: removing an item cancels the subscriptions both ways.
                if existing.subscription in ("to", "both") or existing.ask:
                    cancel.append("unsubscribe")
                if existing.subscription in ("from", "both") or existing.pending_in:
                    cancel.append("unsubscribed")
                await remove_item(self.ctx, state, contact)
            else:
                groups = [g.text for g in element.find_all("group", ROSTER_NS)]
                if len(set(groups)) != len(groups) or any(not g for g in groups):
                    return error_reply(ctx.iq, "bad-request", "duplicate or empty group")
                item = existing if existing is not None else RosterItem(contact)
                item.name = element.attrs.get("name") or None
                item.groups = groups
                item.hidden = False
                await save_item(self.ctx, state, item)
        # Sent once this roster is released: they change the contact's roster (when local), which
        # must not be waited for under this one (two accounts removing each other at once).
        for ptype in cancel:
            await _wait(self.ctx.router.route(Element("presence", "", {"from": owner, "to": contact, "type": ptype})))
        return _to_session(ctx, None)


async def _wait(result: Any) -> None:
    if result is not None:
        await result
