"""XEP-0411 Bookmarks Conversion: XEP-0048 bookmarks (in Private XML storage or on the legacy PEP node)
served from XEP-0402 PEP.

This module is in charge of one view: a client that keeps its room bookmarks the XEP-0048 way and a
client using XEP-0402 (``urn:xmpp:bookmarks:1``, one PEP item per room) see the same list. XEP-0048
clients keep ``<storage xmlns='storage:bookmarks'/>`` in one of two places, and both are served:

- ``jabber:iq:private`` (XEP-0049), as profanity and older clients do;
- the PEP node ``storage:bookmarks`` with one item ``current`` (XEP-0048 section 3.3 over XEP-0223),
  as Gajim before XEP-0402, Conversations before 2.8 and slixmpp's ``xep_0048`` with
  ``storage_method='xep_0223'`` do.

The XEP-0402 node is the one copy. A get of the legacy storage (either place) is built from its
items; a set (a private set, or a publish to ``storage:bookmarks``) publishes each conference as an
item (with XEP-0402's publish-options) and retracts the rooms no longer listed. Every change of the
XEP-0402 node, whoever made it, is announced on the legacy node too: the owner's resources whose
caps list ``storage:bookmarks+notify`` get the whole legacy storage as item ``current`` (XEP-0048
section 3.3, one notification per change, not one per room). Prosody's mod_bookmarks does the same
in both directions.

XEP-0048 ``<url/>`` bookmarks have no XEP-0402 form: they are kept in Private XML storage themselves
(``storage:bookmarks`` holding the ``<url/>`` elements only, at most ``MAX_URL_BOOKMARKS``) and
added back to every legacy get, so a XEP-0048 client does not lose them. Retracting ``current``, or
deleting or purging the legacy node, is answered with success and changes nothing: it is what a
client cleaning up after its own move to XEP-0402 does, and the XEP-0402 copy must not go with it
(a XEP-0048 client removes bookmarks by publishing the shorter list). Other private namespaces go on
to ``peerage.xmpp.features.private``; other PEP nodes to ``peerage.xmpp.features.pep``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable
from typing import Any

from peerage.xmpp.features import Feature, IqContext, hook_iq, result
from peerage.xmpp.features.pep import (
    DATA_NS,
    PUBSUB_EVENT_NS,
    PUBSUB_NS,
    PUBSUB_OWNER_NS,
    NodeConfig,
    Pep,
    PubsubError,
)
from peerage.xmpp.jid import JidError, split_jid
from peerage.xmpp.stream import Element, error_reply, parse_stored, serialize

PRIVATE_NS = "jabber:iq:private"
LEGACY_NS = "storage:bookmarks"
BOOKMARKS_NS = "urn:xmpp:bookmarks:1"
CONVERSION_NS = "urn:xmpp:bookmarks-conversion:0"
#: XEP-0402 section 3.2: the node's configuration.
OPTIONS: dict[str, str] = {"pubsub#persist_items": "true", "pubsub#max_items": "max",
                           "pubsub#send_last_published_item": "never", "pubsub#access_model": "whitelist"}
#: XEP-0048 section 3.3 / XEP-0223: the legacy node's one item, readable by the owner alone.
LEGACY_ITEM = "current"
LEGACY_CONFIG = NodeConfig(access_model="whitelist", max_items=1)


#: URL bookmarks kept per account: as many as XEP-0402 items per node (Prosody's pep_max_items).
MAX_URL_BOOKMARKS = 256


def _true(value: str | None) -> bool:
    return value in ("1", "true")


class BookmarksConversion(Feature):
    account_features = (CONVERSION_NS,)

    def setup(self) -> None:
        # Ahead of the private storage and PEP modules, for storage:bookmarks only.
        hook_iq(self.ctx, "query", PRIVATE_NS, self._private, priority=10)
        hook_iq(self.ctx, "pubsub", PUBSUB_NS, self._legacy_pep, priority=10)
        hook_iq(self.ctx, "pubsub", PUBSUB_OWNER_NS, self._legacy_pep_owner, types=("set",), priority=10)
        self.ctx.events.hook("pep-item-published", self._bookmarks_changed)
        self.ctx.events.hook("pep-item-retracted", self._bookmarks_changed)
        self.ctx.events.hook("pep-last-items", self._last_item)
        #: accounts whose XEP-0402 node this module is rewriting: one legacy notification at the end
        self._converting: set[str] = set()

    @property
    def pep(self) -> Pep:
        pep = self.ctx.feature(Pep)
        assert pep is not None
        return pep

    # --- Private XML storage (XEP-0049) ---------------------------------------------------------
    def _private(self, ctx: IqContext) -> Awaitable[Element] | None:
        # Decided synchronously: an event handler's awaitable is its result and ends the chain, so
        # only storage:bookmarks may produce one; None lets the private storage module answer.
        children = list(ctx.payload.elements())
        if not ctx.is_owner or len(children) != 1 or children[0].xmlns != LEGACY_NS or children[0].name != "storage":
            return None
        return self._private_bookmarks(ctx, children[0])

    async def _private_bookmarks(self, ctx: IqContext, storage_in: Element) -> Element:
        owner = ctx.owner
        assert owner is not None
        if ctx.iq.attrs.get("type") == "get":
            return result(ctx, Element("query", PRIVATE_NS, {}, [await self.legacy_storage(owner)]))
        refused = await self._store_legacy(ctx, owner, storage_in)
        return refused if refused is not None else result(ctx)

    # --- the legacy PEP node (XEP-0048 section 3.3) ---------------------------------------------
    def _legacy_pep(self, ctx: IqContext) -> Awaitable[Element] | None:
        first = next(ctx.payload.elements(), None)
        if first is None or first.attrs.get("node") != LEGACY_NS:
            return None
        itype = ctx.iq.attrs.get("type")
        if itype == "get" and first.name == "items":
            return self._legacy_items(ctx)
        if itype == "set" and first.name in ("publish", "retract"):
            return self._legacy_set(ctx, first)
        return None  # subscribe and the rest: PEP's answers fit the legacy node as they are

    def _legacy_pep_owner(self, ctx: IqContext) -> Awaitable[Element] | None:
        first = next(ctx.payload.elements(), None)
        if first is None or first.attrs.get("node") != LEGACY_NS or first.name not in ("delete", "purge"):
            return None
        return self._legacy_cleanup(ctx)

    async def _legacy_cleanup(self, ctx: IqContext) -> Element:
        if not ctx.is_owner:
            return PubsubError("forbidden").reply(ctx.iq)
        return result(ctx)  # see the module's docstring: the XEP-0402 copy stays

    async def _legacy_items(self, ctx: IqContext) -> Element:
        owner = ctx.owner
        assert owner is not None
        if not ctx.is_owner:
            # XEP-0060 section 6.5.9.5: the node is a whitelist of the owner alone.
            return PubsubError("not-allowed", "closed-node").reply(ctx.iq)
        pubsub = Element("pubsub", PUBSUB_NS)
        items = pubsub.add("items", attrs={"node": LEGACY_NS})
        items.add("item", attrs={"id": LEGACY_ITEM}).children.append(await self.legacy_storage(owner))
        return result(ctx, pubsub)

    async def _legacy_set(self, ctx: IqContext, action: Element) -> Element:
        owner = ctx.owner
        assert owner is not None
        if not ctx.is_owner:
            return PubsubError("forbidden").reply(ctx.iq)
        if action.name == "retract":
            return result(ctx)  # see the module's docstring: the XEP-0402 copy stays
        items = action.find_all("item", PUBSUB_NS)
        payloads = list(items[0].elements()) if len(items) == 1 else []
        if len(items) != 1 or len(payloads) != 1:
            return PubsubError("bad-request", "invalid-payload" if items else "item-required").reply(ctx.iq)
        storage = payloads[0]
        if storage.name != "storage" or storage.xmlns != LEGACY_NS:
            return PubsubError("bad-request", "invalid-payload", "the item is a storage:bookmarks <storage/>").reply(
                ctx.iq)
        # XEP-0060 section 7.1.5: publish-options are preconditions. The legacy node is persistent
        # and readable by the owner alone (XEP-0223), whatever else is asked.
        options = ctx.payload.find("publish-options", PUBSUB_NS)
        form = options.find("x", DATA_NS) if options is not None else None
        for field in form.find_all("field", DATA_NS) if form is not None else ():
            value = field.find_text("value", DATA_NS) or ""
            if ((field.attrs.get("var") == "pubsub#access_model" and value != "whitelist")
                    or (field.attrs.get("var") == "pubsub#persist_items" and not _true(value))):
                return PubsubError("conflict", "precondition-not-met").reply(ctx.iq)
        refused = await self._store_legacy(ctx, owner, storage)
        if refused is not None:
            return refused
        pubsub = Element("pubsub", PUBSUB_NS)
        pubsub.add("publish", attrs={"node": LEGACY_NS}).add(
            "item", attrs={"id": items[0].attrs.get("id") or LEGACY_ITEM})
        return result(ctx, pubsub)

    # --- the conversion, both ways ----------------------------------------------------------------
    async def legacy_storage(self, owner: str) -> Element:
        """``owner``'s bookmarks as one XEP-0048 ``<storage/>``: the XEP-0402 items and the URLs."""
        storage = Element("storage", LEGACY_NS)
        for item_id, conference in await self.pep.list_items(owner, BOOKMARKS_NS):
            legacy = storage.add("conference", attrs={"jid": item_id})
            if conference.attrs.get("name"):
                legacy.attrs["name"] = conference.attrs["name"]
            if _true(conference.attrs.get("autojoin")):
                legacy.attrs["autojoin"] = "true"
            for child in ("nick", "password"):
                text = conference.find_text(child, BOOKMARKS_NS)
                if text:
                    legacy.add(child, text=text)
        kept = await self.ctx.storage.get_private(owner, LEGACY_NS)
        if kept:
            with contextlib.suppress(ValueError):  # unreadable: the conferences alone
                storage.children.extend(parse_stored(kept).find_all("url", LEGACY_NS))
        return storage

    async def _store_legacy(self, ctx: IqContext, owner: str, storage_in: Element) -> Element | None:
        """Make ``storage_in`` the account's bookmarks; an error reply if it cannot be."""
        urls = [url for url in storage_in.find_all("url", LEGACY_NS) if url.attrs.get("url")]
        if len(urls) > MAX_URL_BOOKMARKS:
            return error_reply(ctx.iq, "not-acceptable", f"at most {MAX_URL_BOOKMARKS} URL bookmarks are kept")
        wanted: dict[str, Element] = {}
        for legacy in storage_in.find_all("conference", LEGACY_NS):
            try:
                local, domain, resource = split_jid(legacy.attrs.get("jid", ""))
            except JidError:
                return error_reply(ctx.iq, "bad-request", "a bookmark's jid is not a room address")
            if not local or resource:
                return error_reply(ctx.iq, "bad-request", "a bookmark's jid is not a room address")
            conference = Element("conference", BOOKMARKS_NS)
            if legacy.attrs.get("name"):
                conference.attrs["name"] = legacy.attrs["name"]
            conference.attrs["autojoin"] = "true" if _true(legacy.attrs.get("autojoin")) else "false"
            for child in ("nick", "password"):
                text = legacy.find_text(child, LEGACY_NS)
                if text:
                    conference.add(child, text=text)
            wanted[f"{local}@{domain}"] = conference
        self._converting.add(owner)
        try:
            for jid, conference in wanted.items():
                await self.pep.store_item(owner, BOOKMARKS_NS, jid, conference, OPTIONS)
            stale = [item_id for item_id, _ in await self.pep.list_items(owner, BOOKMARKS_NS)
                     if item_id not in wanted]
            await self.pep.retract_items(owner, BOOKMARKS_NS, stale)
            await self.ctx.storage.set_private(owner, LEGACY_NS,
                                               serialize(Element("storage", LEGACY_NS, {}, list(urls))))
        except PubsubError as exc:
            return exc.reply(ctx.iq)
        finally:
            self._converting.discard(owner)
        await self._notify_legacy(owner)
        return None

    def _bookmarks_changed(self, event: tuple[Any, ...]) -> None:
        owner, node = event[0], event[1]
        if node == BOOKMARKS_NS and owner not in self._converting:
            self.pep._spawn(self._notify_legacy(owner))
        return None

    def _last_item(self, event: tuple[str, str, frozenset[str]]) -> None:
        # XEP-0163 section 4.3.2: the last item on presence, to the owner's own resources only.
        owner, full_jid, wanted = event
        if LEGACY_NS in wanted and full_jid.partition("/")[0] == owner:
            self.pep._spawn(self._send_last(owner, full_jid))
        return None

    async def _send_last(self, owner: str, full_jid: str) -> None:
        storage = await self.legacy_storage(owner)
        if not storage.children:
            return  # no bookmarks: the node has no item to send
        event = Element("event", PUBSUB_EVENT_NS)
        event.add("items", attrs={"node": LEGACY_NS}).add("item", attrs={"id": LEGACY_ITEM}).children.append(storage)
        self.pep._send_event(owner, full_jid, event)

    async def _notify_legacy(self, owner: str) -> None:
        """XEP-0048 section 3.3: the whole list, as item ``current``, to the owner's resources that
        asked for ``storage:bookmarks+notify``."""
        event = Element("event", PUBSUB_EVENT_NS)
        item = event.add("items", attrs={"node": LEGACY_NS}).add("item", attrs={"id": LEGACY_ITEM})
        item.children.append(await self.legacy_storage(owner))
        self.pep._notify(owner, LEGACY_NS, LEGACY_CONFIG, event)
