"""XEP-0199 XMPP Ping: answer pings addressed to the server or to an account."""

from __future__ import annotations

from peerage.xmpp.features import Feature, IqContext, IqHandler, result
from peerage.xmpp.stream import Element

PING_NS = "urn:xmpp:ping"


class Ping(Feature):
    server_features = (PING_NS,)

    def server_iq(self) -> dict[tuple[str, str], IqHandler]:
        return {("ping", PING_NS): self._pong}

    def account_iq(self) -> dict[tuple[str, str], IqHandler]:
        return {("ping", PING_NS): self._pong}

    async def _pong(self, ctx: IqContext) -> Element | None:
        return result(ctx)
