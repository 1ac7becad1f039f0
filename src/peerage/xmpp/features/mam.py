"""XEP-0313 Message Archive Management (one-to-one archives), version urn:xmpp:mam:2.

This module is in charge of the archive, both halves:

- archiving: one-to-one messages with a body, sent by the account's clients (``pre-message/*``) or
  delivered to the account (``message/bare``, ``message/full``, stamped with a XEP-0359 stanza-id),
  are buffered and written in batches (write-behind: MAM is not an acknowledgement). The buffer is
  bounded: past ``ARCHIVE_BUFFER_LIMIT`` rows, senders wait for the writer. A failed write keeps its
  rows and is retried with back-off; rows are never dropped silently.
- queries: the form (section 4.1), filtering by with/start/end/ids, paging with XEP-0059 Result Set
  Management, and the result messages followed by <fin/> (the buffer is flushed first).
"""

from __future__ import annotations

import asyncio
import calendar
import logging
import time
from typing import Any

from peerage.xmpp.features import Feature, IqContext, hook_iq, result
from peerage.xmpp.jid import JidError, bare_of, split_jid
from peerage.xmpp.stanzas import StanzaEvent
from peerage.xmpp.storage import XmppStorage
from peerage.xmpp.stream import Element, error_reply, parse_stored, serialize

log = logging.getLogger(__name__)

MAM_NS = "urn:xmpp:mam:2"
RSM_NS = "http://jabber.org/protocol/rsm"
DATA_NS = "jabber:x:data"
FORWARD_NS = "urn:xmpp:forward:0"
DELAY_NS = "urn:xmpp:delay"
#: Messages per page when the client names no <max/>, and the largest page served. Prosody's
#: mod_mam uses max_archive_query_results = 50 for both.
DEFAULT_PAGE = 50
MAX_PAGE = 250
SID_NS = "urn:xmpp:sid:0"
HINTS_NS = "urn:xmpp:hints"
#: Messages archived per database transaction: one insert per message would cost more than the
#: delivery itself.
ARCHIVE_BATCH = 500
#: Longest wait before buffered archive rows are written, in seconds.
ARCHIVE_FLUSH_DELAY = 0.05
#: Archive rows buffered at most (about 1 KiB each); past this, senders wait for the writer
#: (back-pressure) instead of the buffer growing while the database is slow or away.
ARCHIVE_BUFFER_LIMIT = 20000
#: Back-off between attempts of a failed archive write, doubling up to the maximum (seconds).
RETRY_FIRST = 0.1
RETRY_MAX = 5.0
#: Runs before delivery (features.im), after blocking.
PRIORITY = 50


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


def archivable(stanza: Element) -> bool:
    if stanza.attrs.get("type", "normal") not in ("chat", "normal"):
        return False
    for child in stanza.children:
        if child.__class__ is Element and child.name == "body":
            break
    else:
        return False
    return stanza.find("no-store", HINTS_NS) is None and stanza.find("no-permanent-store", HINTS_NS) is None


class Mam(Feature):
    account_features = (MAM_NS, SID_NS)

    def setup(self) -> None:
        hook_iq(self.ctx, "query", MAM_NS, self._query)
        hook_iq(self.ctx, "prefs", MAM_NS, self._prefs)
        self._rows: list[dict[str, Any]] = []
        self._flush_timer: asyncio.TimerHandle | None = None
        self._writer: asyncio.Task[None] | None = None
        self._space: asyncio.Event | None = None
        #: Failed write attempts since start (each is logged; its rows stay buffered).
        self.failed_writes = 0
        #: Rows buffered and rows written since start, and who waits for rows to be written
        #: (``durable``): (rows appended when it asked, future).
        self._appended = 0
        self._written = 0
        self._durable_waiters: list[tuple[int, asyncio.Future[None]]] = []
        if not self.ctx.archive_enabled:
            return
        events = self.ctx.events
        events.hook("message/full", self._inbound, PRIORITY)
        events.hook("message/bare", self._inbound, PRIORITY)
        for to in ("bare", "full", "host"):
            events.hook(f"pre-message/{to}", self._outbound, PRIORITY)

    # ============================================================================================
    # Archiving
    # ============================================================================================
    def _inbound(self, event: StanzaEvent) -> None:
        stanza = event.stanza
        if event.user is None or not archivable(stanza) or id(stanza) in self.ctx.redelivering:
            return
        bare = event.bare
        # XEP-0359 section 4: remove stanza-ids claiming to be by this account, then add ours.
        for child in stanza.find_all("stanza-id", SID_NS):
            if child.attrs.get("by") == bare:
                stanza.children.remove(child)
        archive_id = XmppStorage.new_archive_id()
        self.archive(bare, stanza.attrs.get("from", ""), stanza, archive_id, event)
        stanza.add("stanza-id", SID_NS, {"by": bare, "id": archive_id})

    def _outbound(self, event: StanzaEvent) -> None:
        stanza = event.stanza
        if archivable(stanza):
            self.archive(event.origin.bare_jid, stanza.attrs.get("to", ""), stanza, None, event)

    def archive(self, owner: str, with_jid: str, stanza: Element, archive_id: str | None = None,
                event: StanzaEvent | None = None) -> str:
        """Buffer ``stanza`` for ``owner``'s archive; return its archive id.

        With the buffer full, the stanza's ``event`` is made to wait for room (the sender's next
        stanza is read only after that).
        """
        archive_id = archive_id or XmppStorage.new_archive_id()
        try:
            local, domain, _ = split_jid(with_jid)
            with_bare = f"{local}@{domain}" if local else domain
        except JidError:
            with_bare = with_jid
        rows = self._rows
        rows.append({"owner": owner, "archive_id": archive_id, "with_jid": with_bare, "stamp": time.time(),
                     "stanza": serialize(stanza)})
        self._appended += 1
        if len(rows) >= ARCHIVE_BATCH:
            self._start_writer()
        elif self._flush_timer is None and (self._writer is None or self._writer.done()):
            self._flush_timer = asyncio.get_running_loop().call_later(ARCHIVE_FLUSH_DELAY, self._start_writer)
        if len(rows) >= ARCHIVE_BUFFER_LIMIT and event is not None:
            event.wait_for(self.wait_for_room())
        return archive_id

    @property
    def buffered(self) -> int:
        return len(self._rows)

    async def wait_for_room(self) -> None:
        while len(self._rows) >= ARCHIVE_BUFFER_LIMIT:
            self._start_writer()
            if self._space is None:
                self._space = asyncio.Event()
            await self._space.wait()

    def _start_writer(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write())

    async def _write(self) -> None:
        delay = RETRY_FIRST
        rows = self._rows
        while rows:
            batch = rows[:ARCHIVE_BATCH]
            try:
                await self.ctx.storage.archive_many(batch)
            except Exception:
                self.failed_writes += 1
                log.exception("could not write %d archive rows (%d buffered); retrying in %.1f s",
                              len(batch), len(rows), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            delay = RETRY_FIRST
            del rows[:len(batch)]  # new rows are only ever appended, so the batch is still first
            self._written += len(batch)
            if self._durable_waiters:
                self._wake_durable()
            if self._space is not None and len(rows) < ARCHIVE_BUFFER_LIMIT:
                self._space.set()
                self._space = None

    def durable(self) -> asyncio.Future[None] | None:
        """None when every row buffered so far is written; otherwise a future done once they are
        (the writer starts now, without the batching delay). A cluster node acknowledges a
        client's message (XEP-0198) only after this, so a node killed after its <a/> has archived
        what it acknowledged (peerage.cluster.xmpp)."""
        if self._written >= self._appended:
            return None
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._durable_waiters.append((self._appended, future))
        self._start_writer()
        return future

    def _wake_durable(self) -> None:
        waiting = []
        for target, future in self._durable_waiters:
            if target <= self._written:
                if not future.done():
                    future.set_result(None)
            else:
                waiting.append((target, future))
        self._durable_waiters = waiting

    async def flush(self) -> None:
        """Write every buffered archive row (before a MAM query and at shutdown)."""
        while self._rows:
            self._start_writer()
            assert self._writer is not None
            await asyncio.shield(self._writer)

    # ============================================================================================
    # Queries
    # ============================================================================================

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
        if not self.ctx.archive_enabled:
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
        await self.flush()
        owner = ctx.owner
        assert owner is not None
        try:
            messages, complete = await self.ctx.storage.query_archive(
                owner, with_jid=with_jid, start=start, end=end, after_id=after or None,
                before_id=before, limit=limit, ids=ids,
            )
        except KeyError:
            return error_reply(ctx.iq, "item-not-found", "unknown archive id in the result set")
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
