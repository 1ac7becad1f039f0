"""XEP-0280 Message Carbons: enabling and disabling per session.

This module is in charge of the enable/disable IQs; the copies themselves are made by the core when
messages are sent and received (``XmppCore._carbon_copies``), following XEP-0280 section 6 rules.
"""

from __future__ import annotations

from peerage.xmpp.features import Feature, IqContext, IqHandler, result
from peerage.xmpp.stream import Element, error_reply

CARBONS_NS = "urn:xmpp:carbons:2"


class Carbons(Feature):
    server_features = (CARBONS_NS, "urn:xmpp:carbons:rules:0")

    def account_iq(self) -> dict[tuple[str, str], IqHandler]:
        return {("enable", CARBONS_NS): self._toggle, ("disable", CARBONS_NS): self._toggle}

    async def _toggle(self, ctx: IqContext) -> Element | None:
        if not ctx.is_owner or ctx.session is None or ctx.iq.attrs.get("type") != "set":
            return error_reply(ctx.iq, "bad-request")
        ctx.session.carbons = ctx.payload.name == "enable"
        return result(ctx)
