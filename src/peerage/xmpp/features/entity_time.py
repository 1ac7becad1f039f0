"""XEP-0202 Entity Time: the server's time, in UTC."""

from __future__ import annotations

from datetime import UTC, datetime

from peerage.xmpp.features import Feature, IqContext, hook_iq, result
from peerage.xmpp.stream import Element, error_reply

TIME_NS = "urn:xmpp:time"


class EntityTime(Feature):
    server_features = (TIME_NS,)

    def setup(self) -> None:
        hook_iq(self.ctx, "time", TIME_NS, self._time, to=("host",))

    def _time(self, ctx: IqContext) -> Element | None:
        if ctx.iq.attrs.get("type") != "get":
            return error_reply(ctx.iq, "bad-request")
        now = datetime.now(UTC)
        time = Element("time", TIME_NS)
        time.add("tzo", text="+00:00")  # the server keeps UTC (XEP-0082 profiles)
        time.add("utc", text=now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z")
        return result(ctx, time)
