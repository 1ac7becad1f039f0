"""XEP-0199 XMPP Ping: answer pings addressed to the server or to an account."""

from __future__ import annotations

from peerage.xmpp.features import Feature, IqContext, hook_iq, result
from peerage.xmpp.stream import Element

PING_NS = "urn:xmpp:ping"


class Ping(Feature):
    server_features = (PING_NS,)

    def setup(self) -> None:
        hook_iq(self.ctx, "ping", PING_NS, self._pong, to=("bare", "host"))

    def _pong(self, ctx: IqContext) -> Element | None:
        return result(ctx)
