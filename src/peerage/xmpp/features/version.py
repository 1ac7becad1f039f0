"""XEP-0092 Software Version: the server's name and version."""

from __future__ import annotations

from peerage.xmpp.features import Feature, IqContext, hook_iq, result
from peerage.xmpp.stream import Element, error_reply

VERSION_NS = "jabber:iq:version"


def _peerage_version() -> str:
    try:
        from importlib.metadata import version

        return version("peerage")
    except Exception:
        return "0"


class Version(Feature):
    server_features = (VERSION_NS,)

    def setup(self) -> None:
        hook_iq(self.ctx, "query", VERSION_NS, self._version, to=("host",))

    def _version(self, ctx: IqContext) -> Element | None:
        if ctx.iq.attrs.get("type") != "get":
            return error_reply(ctx.iq, "bad-request")
        query = Element("query", VERSION_NS)
        query.add("name", text="peerage")
        query.add("version", text=_peerage_version())
        return result(ctx, query)
