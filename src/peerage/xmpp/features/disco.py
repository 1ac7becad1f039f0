"""XEP-0030 Service Discovery: disco#info and disco#items of hosted domains and accounts.

This module is in charge of answering disco queries with the identities and features every other
feature module declares.
"""

from __future__ import annotations

from peerage.xmpp.features import Feature, IqContext, hook_iq, result
from peerage.xmpp.stream import Element, error_reply

DISCO_INFO_NS = "http://jabber.org/protocol/disco#info"
DISCO_ITEMS_NS = "http://jabber.org/protocol/disco#items"


class Disco(Feature):
    server_features = (DISCO_INFO_NS, DISCO_ITEMS_NS)
    account_features = (DISCO_INFO_NS, DISCO_ITEMS_NS)

    def setup(self) -> None:
        hook_iq(self.ctx, "query", DISCO_INFO_NS, self._server_info, to=("host",))
        hook_iq(self.ctx, "query", DISCO_INFO_NS, self._account_info)
        hook_iq(self.ctx, "query", DISCO_ITEMS_NS, self._items, to=("bare", "host"))

    def server_info_element(self, node: str | None = None) -> Element:
        query = Element("query", DISCO_INFO_NS)
        if node:
            query.attrs["node"] = node
        query.add("identity", attrs={"category": "server", "type": "im", "name": "peerage"})
        for feature in sorted({f for feat in self.ctx.features for f in feat.server_features}):
            query.add("feature", attrs={"var": feature})
        return query

    def _server_info(self, ctx: IqContext) -> Element | None:
        if ctx.iq.attrs.get("type") != "get":
            return error_reply(ctx.iq, "bad-request")
        return result(ctx, self.server_info_element(ctx.payload.attrs.get("node")))

    async def _account_info(self, ctx: IqContext) -> Element | None:
        if ctx.iq.attrs.get("type") != "get":
            return error_reply(ctx.iq, "bad-request")
        if not ctx.is_owner:
            # RFC 6121 / XEP-0030 section 3.1: only reveal the account to those with a subscription.
            state = ctx.user or await self.ctx.users.load(ctx.owner)  # type: ignore[arg-type]
            sender_bare = ctx.sender.partition("/")[0]
            item = state.roster.get(sender_bare)
            if item is None or item.subscription not in ("from", "both"):
                return error_reply(ctx.iq, "service-unavailable")
        query = Element("query", DISCO_INFO_NS)
        query.add("identity", attrs={"category": "account", "type": "registered"})
        for category, itype in sorted({i for feat in self.ctx.features for i in feat.account_identities}):
            query.add("identity", attrs={"category": category, "type": itype})
        for feature in sorted({f for feat in self.ctx.features for f in feat.account_features}):
            query.add("feature", attrs={"var": feature})
        return result(ctx, query)

    def _items(self, ctx: IqContext) -> Element | None:
        if ctx.iq.attrs.get("type") != "get":
            return error_reply(ctx.iq, "bad-request")
        return result(ctx, Element("query", DISCO_ITEMS_NS))
