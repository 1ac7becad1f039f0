"""XEP-0054 vcard-temp: store and serve each account's vCard."""

from __future__ import annotations

from peerage.xmpp.features import Feature, IqContext, hook_iq, result
from peerage.xmpp.stream import Element, error_reply, parse_stored, serialize

VCARD_NS = "vcard-temp"
#: Largest vCard stored, in bytes of XML. Avatars go in XEP-0084 today, but vcard-temp PHOTO is
#: still common; Prosody's mod_vcard_legacy limits nothing beyond the stanza size, which bounds it.
MAX_VCARD_BYTES = 256 * 1024


class VCard(Feature):
    server_features = (VCARD_NS,)
    account_features = (VCARD_NS,)

    def setup(self) -> None:
        hook_iq(self.ctx, "vCard", VCARD_NS, self._vcard)

    async def _vcard(self, ctx: IqContext) -> Element | None:
        owner = ctx.owner
        assert owner is not None
        if ctx.iq.attrs.get("type") == "get":
            xml = await self.ctx.storage.get_vcard(owner)
            if xml is None:
                return result(ctx, Element("vCard", VCARD_NS))
            return result(ctx, parse_stored(xml))
        if not ctx.is_owner:
            return error_reply(ctx.iq, "forbidden")
        xml = serialize(ctx.payload)
        if len(xml.encode()) > MAX_VCARD_BYTES:
            return error_reply(ctx.iq, "not-acceptable", "the vCard is too large")
        await self.ctx.storage.set_vcard(owner, xml)
        # XEP-0398: peerage.xmpp.features.avatar publishes a PHOTO as the PEP avatar.
        self.ctx.events.fire("vcard-set", (owner, ctx.payload))
        return result(ctx)
