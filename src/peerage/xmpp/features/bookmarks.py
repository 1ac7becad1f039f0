"""XEP-0411 Bookmarks Conversion: XEP-0048 bookmarks in Private XML storage served from XEP-0402 PEP.

This module is in charge of one view: a client that still keeps its room bookmarks in
``jabber:iq:private`` (``<storage xmlns='storage:bookmarks'/>``, XEP-0048 over XEP-0049) and a client
using XEP-0402 (``urn:xmpp:bookmarks:1``, one PEP item per room) see the same list. The PEP node is
the one copy: a private get of ``storage:bookmarks`` is built from its items, a private set publishes
each conference as an item (with XEP-0402's publish-options) and retracts the rooms no longer listed.
XEP-0048 ``<url/>`` bookmarks have no XEP-0402 form: they are kept in Private XML storage themselves
(``storage:bookmarks`` holding the ``<url/>`` elements only, at most ``MAX_URL_BOOKMARKS``) and
added back to every get, so a XEP-0048 client does not lose them. Other private namespaces go on to
``peerage.xmpp.features.private``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable

from peerage.xmpp.features import Feature, IqContext, hook_iq, result
from peerage.xmpp.features.pep import Pep, PubsubError
from peerage.xmpp.jid import JidError, split_jid
from peerage.xmpp.stream import Element, error_reply, parse_stored, serialize

PRIVATE_NS = "jabber:iq:private"
LEGACY_NS = "storage:bookmarks"
BOOKMARKS_NS = "urn:xmpp:bookmarks:1"
CONVERSION_NS = "urn:xmpp:bookmarks-conversion:0"
#: XEP-0402 section 3.2: the node's configuration.
OPTIONS: dict[str, str] = {"pubsub#persist_items": "true", "pubsub#max_items": "max",
                           "pubsub#send_last_published_item": "never", "pubsub#access_model": "whitelist"}


#: URL bookmarks kept per account: as many as XEP-0402 items per node (Prosody's pep_max_items).
MAX_URL_BOOKMARKS = 256


def _true(value: str | None) -> bool:
    return value in ("1", "true")


class BookmarksConversion(Feature):
    account_features = (CONVERSION_NS,)

    def setup(self) -> None:
        # Ahead of the private storage module, for storage:bookmarks only.
        hook_iq(self.ctx, "query", PRIVATE_NS, self._private, priority=10)

    @property
    def pep(self) -> Pep:
        pep = self.ctx.feature(Pep)
        assert pep is not None
        return pep

    def _private(self, ctx: IqContext) -> Awaitable[Element] | None:
        # Decided synchronously: an event handler's awaitable is its result and ends the chain, so
        # only storage:bookmarks may produce one; None lets the private storage module answer.
        children = list(ctx.payload.elements())
        if not ctx.is_owner or len(children) != 1 or children[0].xmlns != LEGACY_NS or children[0].name != "storage":
            return None
        return self._bookmarks(ctx, children[0])

    async def _bookmarks(self, ctx: IqContext, storage_in: Element) -> Element:
        owner = ctx.owner
        assert owner is not None
        if ctx.iq.attrs.get("type") == "get":
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
            return result(ctx, Element("query", PRIVATE_NS, {}, [storage]))
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
        try:
            for jid, conference in wanted.items():
                await self.pep.store_item(owner, BOOKMARKS_NS, jid, conference, OPTIONS)
        except PubsubError as exc:
            return exc.reply(ctx.iq)
        stale = [item_id for item_id, _ in await self.pep.list_items(owner, BOOKMARKS_NS) if item_id not in wanted]
        await self.pep.retract_items(owner, BOOKMARKS_NS, stale)
        await self.ctx.storage.set_private(owner, LEGACY_NS, serialize(Element("storage", LEGACY_NS, {}, list(urls))))
        return result(ctx)
