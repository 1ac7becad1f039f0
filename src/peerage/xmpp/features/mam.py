"""XEP-0313 Message Archive Management (one-to-one archives), version urn:xmpp:mam:2.

This module is in charge of archive queries: the form (XEP-0313 section 4.1), filtering by
with/start/end/ids, paging with XEP-0059 Result Set Management, and the result messages followed by
<fin/>. Archiving itself is done by the core (write-behind, flushed before each query).
"""

from __future__ import annotations

import calendar
import time

from peerage.xmpp.features import Feature, IqContext, IqHandler, result
from peerage.xmpp.jid import JidError, bare_of
from peerage.xmpp.stream import Element, error_reply

MAM_NS = "urn:xmpp:mam:2"
RSM_NS = "http://jabber.org/protocol/rsm"
DATA_NS = "jabber:x:data"
FORWARD_NS = "urn:xmpp:forward:0"
DELAY_NS = "urn:xmpp:delay"
#: Messages per page when the client names no <max/>, and the largest page served. Prosody's
#: mod_mam uses max_archive_query_results = 50 for both.
DEFAULT_PAGE = 50
MAX_PAGE = 250


def parse_stamp(text: str) -> float:
    """XEP-0082 DateTime to a POSIX timestamp (UTC; fractional seconds and offsets accepted)."""
    value = text.strip()
    offset = 0
    if value.endswith("Z"):
        value = value[:-1]
    elif len(value) > 6 and value[-6] in "+-" and value[-3] == ":":
        sign = 1 if value[-6] == "+" else -1
        offset = sign * (int(value[-5:-3]) * 3600 + int(value[-2:]) * 60)
        value = value[:-6]
    fraction = 0.0
    if "." in value:
        value, frac = value.split(".", 1)
        fraction = float("0." + frac) if frac.isdigit() else 0.0
    parsed = time.strptime(value, "%Y-%m-%dT%H:%M:%S")
    return calendar.timegm(parsed) + fraction - offset


def format_stamp(stamp: float) -> str:
    millis = int((stamp - int(stamp)) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(stamp)) + f".{millis:03d}Z"


class Mam(Feature):
    account_features = (MAM_NS, "urn:xmpp:sid:0")

    def account_iq(self) -> dict[tuple[str, str], IqHandler]:
        return {("query", MAM_NS): self._query, ("prefs", MAM_NS): self._prefs}

    async def _prefs(self, ctx: IqContext) -> Element | None:
        if not ctx.is_owner:
            return error_reply(ctx.iq, "forbidden")
        # Every one-to-one message is archived; preferences are reported, not configurable.
        return result(ctx, Element("prefs", MAM_NS, {"default": "always"}))

    async def _query(self, ctx: IqContext) -> Element | None:
        if not ctx.is_owner or ctx.session is None:
            return error_reply(ctx.iq, "forbidden")
        if ctx.iq.attrs.get("type") == "get":
            form = Element("x", DATA_NS, {"type": "form"})
            form.add("field", attrs={"var": "FORM_TYPE", "type": "hidden"}).add("value", text=MAM_NS)
            for var, kind in (("with", "jid-single"), ("start", "text-single"), ("end", "text-single"),
                              ("ids", "text-multi")):
                form.add("field", attrs={"var": var, "type": kind})
            query = Element("query", MAM_NS)
            query.children.append(form)
            return result(ctx, query)
        if not self.core.archive_enabled:
            return error_reply(ctx.iq, "service-unavailable", "archiving is disabled on this server")
        fields: dict[str, list[str]] = {}
        submitted = ctx.payload.find("x", DATA_NS)
        if submitted is not None:
            for field in submitted.find_all("field", DATA_NS):
                fields[field.attrs.get("var", "")] = [v.text for v in field.find_all("value", DATA_NS)]
        try:
            with_jid = bare_of(fields["with"][0]) if fields.get("with") else None
            start = parse_stamp(fields["start"][0]) if fields.get("start") else None
            end = parse_stamp(fields["end"][0]) if fields.get("end") else None
        except (JidError, ValueError):
            return error_reply(ctx.iq, "bad-request", "invalid with, start or end")
        ids = fields.get("ids") or None
        limit = DEFAULT_PAGE
        after = before = None
        rsm = ctx.payload.find("set", RSM_NS)
        if rsm is not None:
            max_text = rsm.find_text("max")
            if max_text is not None:
                try:
                    limit = max(0, min(MAX_PAGE, int(max_text)))
                except ValueError:
                    return error_reply(ctx.iq, "bad-request", "invalid <max/>")
            after = rsm.find_text("after")
            before_el = rsm.find("before")
            if before_el is not None:
                before = before_el.text or ""  # empty <before/> means the last page
        await self.core.flush_archive()
        owner = ctx.owner
        assert owner is not None
        try:
            messages, complete = await self.core.storage.query_archive(
                owner, with_jid=with_jid, start=start, end=end, after_id=after or None,
                before_id=before, limit=limit, ids=ids,
            )
        except KeyError:
            return error_reply(ctx.iq, "item-not-found", "unknown archive id in the result set")
        from peerage.xmpp.core import parse_stored

        query_id = ctx.payload.attrs.get("queryid")
        for message in messages:
            wrapper = Element("message", "", {"to": ctx.session.full_jid, "id": message.archive_id})
            result_el = wrapper.add("result", MAM_NS, {"id": message.archive_id})
            if query_id:
                result_el.attrs["queryid"] = query_id
            forwarded = result_el.add("forwarded", FORWARD_NS)
            forwarded.add("delay", DELAY_NS, {"stamp": format_stamp(message.stamp)})
            try:
                forwarded.children.append(parse_stored(message.stanza))
            except ValueError:
                continue
            ctx.session.send(wrapper)
        fin = Element("fin", MAM_NS)
        if complete:
            fin.attrs["complete"] = "true"
        rsm_out = fin.add("set", RSM_NS)
        if messages:
            rsm_out.add("first", attrs={"index": "0"}, text=messages[0].archive_id)
            rsm_out.add("last", text=messages[-1].archive_id)
        return result(ctx, fin)
