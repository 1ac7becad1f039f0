"""XEP-0049 Private XML Storage: one XML fragment per account and namespace."""

from __future__ import annotations

from peerage.xmpp.features import Feature, IqContext, hook_iq, result
from peerage.xmpp.stream import CONTENT_NAMESPACES, Element, error_reply, parse_stored, serialize

PRIVATE_NS = "jabber:iq:private"
#: Largest fragment stored, in bytes (Prosody bounds it by the stanza size only).
MAX_PRIVATE_BYTES = 256 * 1024


class PrivateStorage(Feature):
    account_features = (PRIVATE_NS,)

    def setup(self) -> None:
        hook_iq(self.ctx, "query", PRIVATE_NS, self._private)

    async def _private(self, ctx: IqContext) -> Element | None:
        if not ctx.is_owner:
            return error_reply(ctx.iq, "forbidden")
        children = list(ctx.payload.elements())
        if len(children) != 1:
            return error_reply(ctx.iq, "bad-request", "exactly one child element is required")
        child = children[0]
        # XEP-0049 section 3: the namespace must not be one of the core XMPP namespaces.
        if child.xmlns in CONTENT_NAMESPACES or child.xmlns == PRIVATE_NS:
            return error_reply(ctx.iq, "not-acceptable")
        owner = ctx.owner
        assert owner is not None
        if ctx.iq.attrs.get("type") == "get":
            xml = await self.ctx.storage.get_private(owner, child.xmlns)
            query = Element("query", PRIVATE_NS)
            query.children.append(parse_stored(xml) if xml else Element(child.name, child.xmlns))
            return result(ctx, query)
        xml = serialize(child)
        if len(xml.encode()) > MAX_PRIVATE_BYTES:
            return error_reply(ctx.iq, "not-acceptable", "the fragment is too large")
        await self.ctx.storage.set_private(owner, child.xmlns, xml)
        return result(ctx)
