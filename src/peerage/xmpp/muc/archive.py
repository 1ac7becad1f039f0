"""The room archive: XEP-0313 Message Archive Management on the room's JID (XEP-0313 section 6).

This module is in charge of keeping each archived room message (as occupants received it, from
``room/nick``, with its occupant-id and stanza-id) and of answering MAM queries sent to the room. Rows
live in ``xmpp_archive`` with the room's bare JID as owner and ``room/nick`` as ``with``, written
behind in batches (a room of a hundred people must not wait for a disk write per message); a query
first writes what is buffered. Who may query is the room's business (``service``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from peerage.xmpp.storage import XmppStorage
from peerage.xmpp.stream import Element, error_reply, iq_result, parse_stored, serialize

log = logging.getLogger(__name__)

MAM_NS = "urn:xmpp:mam:2"
RSM_NS = "http://jabber.org/protocol/rsm"
FORWARD_NS = "urn:xmpp:forward:0"
DELAY_NS = "urn:xmpp:delay"
DATA_NS = "jabber:x:data"

#: Rows per INSERT, and the delay before a partial batch is written (as features.mam does).
BATCH = 500
FLUSH_DELAY = 0.05
#: Rows held in memory when the database is slow or down; beyond it the oldest unwritten rows are
#: dropped with an error in the log rather than the process growing without bound.
BUFFER_LIMIT = 50000


class RoomArchive:
    def __init__(self, storage: XmppStorage, spawn: Any) -> None:
        self.storage = storage
        self.spawn = spawn
        self.rows: list[dict[str, Any]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._writer: asyncio.Future[None] | None = None

    def add(self, room: str, with_jid: str, message: Element, stamp: float | None = None) -> str:
        archive_id = XmppStorage.new_archive_id()
        self.rows.append({"owner": room, "archive_id": archive_id, "with_jid": with_jid,
                          "stamp": stamp or time.time(), "stanza": serialize(message)})
        if len(self.rows) > BUFFER_LIMIT:
            del self.rows[: len(self.rows) - BUFFER_LIMIT]
            log.error("room archive buffer full: oldest unwritten messages dropped")
        if len(self.rows) >= BATCH:
            self._start()
        elif self._timer is None:
            with contextlib.suppress(RuntimeError):  # no loop: written at the next flush
                self._timer = asyncio.get_running_loop().call_later(FLUSH_DELAY, self._start)
        return archive_id

    def _start(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._writer is None or self._writer.done():
            coroutine = self._write()
            self._writer = self.spawn(coroutine) if self.spawn is not None else asyncio.ensure_future(coroutine)

    async def _write(self) -> None:
        delay = 0.5
        while self.rows:
            batch = self.rows[:BATCH]
            try:
                await self.storage.archive_many(batch)
            except Exception:
                log.exception("could not write %d room archive rows; retrying", len(batch))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            delay = 0.5
            del self.rows[: len(batch)]

    async def flush(self) -> None:
        while self.rows:
            self._start()
            assert self._writer is not None
            await asyncio.shield(self._writer)

    async def delete_room(self, room: str) -> None:
        """A destroyed room's archive goes with it."""
        from sqlalchemy import delete

        from peerage.xmpp.tables import xmpp_archive

        await self.flush()
        async with self.storage.engine.begin() as conn:
            await conn.execute(delete(xmpp_archive).where(xmpp_archive.c.owner == room))

    async def find(self, room: str, archive_id: str) -> str | None:
        """The stored message ``archive_id`` of ``room`` (serialized), or None."""
        from sqlalchemy import and_, select

        from peerage.xmpp.tables import xmpp_archive

        if len(archive_id) > 64:
            return None
        await self.flush()
        async with self.storage.engine.connect() as conn:
            return (await conn.execute(select(xmpp_archive.c.stanza).where(and_(
                xmpp_archive.c.owner == room, xmpp_archive.c.archive_id == archive_id)))).scalar()

    async def replace(self, room: str, archive_id: str, message: Element) -> None:
        """Put ``message`` (a XEP-0425 tombstone) in place of the stored message ``archive_id``."""
        from sqlalchemy import and_, update

        from peerage.xmpp.tables import xmpp_archive

        await self.flush()
        async with self.storage.engine.begin() as conn:
            await conn.execute(update(xmpp_archive).where(and_(
                xmpp_archive.c.owner == room, xmpp_archive.c.archive_id == archive_id)).values(stanza=serialize(message)))

    async def query(self, iq: Element, query: Element, room: str, send: Any, default_page: int,
                    max_page: int) -> Element:
        """Answer a MAM query to ``room``: results as messages from the room, then the IQ result."""
        from peerage.xmpp.features.mam import parse_stamp

        if iq.attrs.get("type") == "get":
            form = Element("x", DATA_NS, {"type": "form"})
            form.add("field", attrs={"var": "FORM_TYPE", "type": "hidden"}).add("value", text=MAM_NS)
            for var, kind in (("with", "jid-single"), ("start", "text-single"), ("end", "text-single"),
                              ("ids", "text-multi")):
                form.add("field", attrs={"var": var, "type": kind})
            answer = Element("query", MAM_NS)
            answer.children.append(form)
            return iq_result(iq, answer)
        fields: dict[str, list[str]] = {}
        submitted = query.find("x", DATA_NS)
        if submitted is not None:
            for field in submitted.find_all("field", DATA_NS):
                fields[field.attrs.get("var", "")] = [v.text for v in field.find_all("value", DATA_NS)]
        try:
            with_jid = fields["with"][0] if fields.get("with") else None
            start = parse_stamp(fields["start"][0]) if fields.get("start") else None
            end = parse_stamp(fields["end"][0]) if fields.get("end") else None
        except ValueError:
            return error_reply(iq, "bad-request", "invalid start or end")
        limit = default_page
        after = before = None
        rsm = query.find("set", RSM_NS)
        if rsm is not None:
            text = rsm.find_text("max")
            if text is not None:
                try:
                    limit = max(0, min(max_page, int(text)))
                except ValueError:
                    return error_reply(iq, "bad-request", "invalid <max/>")
            after = rsm.find_text("after")
            before_el = rsm.find("before")
            if before_el is not None:
                before = before_el.text or ""
        await self.flush()
        try:
            messages, complete = await self.storage.query_archive(
                room, with_jid=with_jid, start=start, end=end, after_id=after or None, before_id=before,
                limit=limit, ids=fields.get("ids") or None)
        except KeyError:
            return error_reply(iq, "item-not-found", "unknown archive id in the result set")
        query_id = query.attrs.get("queryid")
        requester = iq.attrs.get("from", "")
        for message in messages:
            wrapper = Element("message", "", {"from": room, "to": requester, "id": message.archive_id})
            result = wrapper.add("result", MAM_NS, {"id": message.archive_id})
            if query_id:
                result.attrs["queryid"] = query_id
            forwarded = result.add("forwarded", FORWARD_NS)
            forwarded.add("delay", DELAY_NS, {"stamp": _stamp(message.stamp)})
            try:
                forwarded.children.append(client_namespace(parse_stored(message.stanza)))
            except ValueError:
                continue
            pending = send(wrapper)
            if pending is not None:
                await pending
        fin = Element("fin", MAM_NS)
        if complete:
            fin.attrs["complete"] = "true"
        rsm_out = fin.add("set", RSM_NS)
        if messages:
            rsm_out.add("first", attrs={"index": "0"}, text=messages[0].archive_id)
            rsm_out.add("last", text=messages[-1].archive_id)
        return iq_result(iq, fin)

    async def recent(self, room: str, count: int) -> list[tuple[float, str]]:
        """The last ``count`` archived messages of ``room`` (history after a restart)."""
        if count <= 0:
            return []
        messages, _ = await self.storage.query_archive(room, with_jid=None, start=None, end=None, after_id=None,
                                                       before_id="", limit=count)
        return [(m.stamp, m.stanza) for m in messages]


def client_namespace(element: Element) -> Element:
    """``element`` with the stanza content namespace made ``jabber:client`` explicitly: a forwarded
    stanza stays in it even when the wrapper crosses s2s (XEP-0297 section 3)."""
    children: list[Element | str] = [client_namespace(c) if isinstance(c, Element) else c for c in element.children]
    return Element(element.name, element.xmlns or "jabber:client", dict(element.attrs), children)


def _stamp(stamp: float) -> str:
    from peerage.xmpp.features.mam import format_stamp

    return format_stamp(stamp)
