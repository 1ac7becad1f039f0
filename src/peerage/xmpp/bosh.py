"""XMPP over BOSH (XEP-0124, XEP-0206) on the web service, for clients that cannot use WebSocket.

This module is in charge of the BOSH connection manager only: ``POST /http-bind`` on the HTTPS service,
session creation, the request ids (``rid``) and their window, holding requests until there is data or
``wait`` passes, answering a retransmitted request from its cached response, the inactivity timer, and
the ``<body/>`` wrapping both ways. As for WebSocket (``peerage.xmpp.websocket``), everything inside is
the client stream of TCP: ``BoshC2S`` is a ``peerage.xmpp.c2s.C2SConnection`` whose input comes from the
children of request bodies and whose output is collected into response bodies, so SASL, bind, XEP-0198,
carbons, MAM and the rest, the idle sweep and the throttle are the same code and the same sessions.

Decisions where the XEPs leave a choice:
- Errors are reported the XEP-0124 §17 way, in an HTTP 200 ``<body type='terminate' condition=.../>``
  (``bad-request`` for a body that is not one, ``item-not-found`` for an unknown sid or a rid outside
  the window, ``policy-violation`` for a body over the size limit or too many requests at once,
  ``host-unknown`` for a domain we do not host, ``remote-stream-error`` carrying the stream error);
  no legacy HTTP error codes (every client in use reads the body).
- ``hold`` is 1 and ``requests`` 2 (XEP-0124 §7's recommendation), ``polling`` 2 s, ``wait`` the client's
  capped at ``[xmpp.bosh] max_wait``.
- ``pause`` (§10): ``maxpause`` is ``[xmpp.bosh] max_pause``. A pause request is answered at once with
  no payload, the held request too; the session then lives for the pause instead of ``inactivity``
  until the next request. A pause above ``maxpause`` is granted as ``maxpause`` (§10 says what to do only
  for one within it; ending the session for asking too much would punish a page change).
- Acknowledgements (§9), for a client that opens the session with ``ack='1'``: the session creation
  response carries ``ack`` (§9.1); a response to a request held while a later one arrived carries
  ``ack``, the highest rid received with none missing below it (§9.1); responses stay cached until the
  client's ``ack`` covers them (at most ``MAX_UNACKED``), so a lost one can be asked for again by its
  rid; and when the client's ``ack`` shows a response lost (it acknowledges less than it must have
  received with only ``requests`` outstanding), the next response carries ``report`` and ``time``
  (§9.2). Without ``ack='1'`` (Strophe.js, converse.js) the last ``requests`` responses are kept.
- A request sent again while its rid is still held (the client gave up on the HTTP connection) gets
  the response of that rid when it is ready, as the first would have (§14.3).
- Several streams in one session (§19) are not offered: the session creation response has no
  ``stream`` attribute, which §19 says forbids the client from asking for more; a request naming a
  ``stream`` gets ``item-not-found`` and ends the session. No client we know of uses them (Strophe.js,
  so converse.js, opens one stream per session); one stream per session keeps a session one client
  connection, as on TCP and WebSocket.
- Same origin only: the page that uses BOSH is served from the same host; no CORS headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from aiohttp import web

from peerage.xmpp.c2s import C2SConnection
from peerage.xmpp.c2s_stream import C2SStream
from peerage.xmpp.stream import (
    CLIENT_NS,
    STREAM_CLOSE,
    STREAM_NS,
    Element,
    StreamOpened,
    XmlStreamParser,
)

if TYPE_CHECKING:
    from peerage.web import WebContext
    from peerage.xmpp.service import XmppService

log = logging.getLogger(__name__)

PATH = "/http-bind"
BOSH_NS = "http://jabber.org/protocol/httpbind"
XBOSH_NS = "urn:xmpp:xbosh"
HOST_META_REL = "urn:xmpp:alt-connections:xbosh"
#: XEP-0124 §7: at most this many requests held at once (1: the recommended value), and the client may
#: have one more outstanding.
HOLD = 1
REQUESTS = HOLD + 1
#: Shortest interval between two empty polls we ask for (XEP-0124 §7 ``polling``), in seconds.
POLLING = 2
#: Bytes a request body may have beyond one stanza of ``[xmpp] max_stanza_size`` (the body element and
#: a few small stanzas around it). Prosody's bosh_max_requests body limit is its stanza limit too.
BODY_SLACK = 4096
#: Responses kept per session for retransmitted requests (XEP-0124 §14.3: the last ``requests``).
CACHED_RESPONSES = REQUESTS
#: With acknowledgements (§9.2), responses kept until the client acknowledges them, at most this many
#: (a client that stops acknowledging cannot grow the cache; ten is five full windows).
MAX_UNACKED = 10
#: rid values are positive integers below 2**53 (XEP-0124 §14.1).
MAX_RID = 2**53
_HEADER_ID = re.compile(rb"\sid='([^']*)'")
_SYNTHETIC_HEADER = f"<stream:stream xmlns='{CLIENT_NS}' xmlns:stream='{STREAM_NS}'>".encode()
_CLIENT_DECL = f" xmlns='{CLIENT_NS}'".encode()
_STANZA_PREFIXES = (b"<message", b"<presence", b"<iq")
_BODY_OPEN = f"<body xmlns='{BOSH_NS}' xmlns:stream='{STREAM_NS}'".encode()


def terminate(condition: str | None = None, payload: bytes = b"") -> bytes:
    """A ``<body type='terminate'/>``, with a condition (XEP-0124 §17.2) when it is an error."""
    attrs = b" type='terminate'" + (f" condition='{condition}'".encode() if condition else b"")
    if payload:
        return _BODY_OPEN + attrs + b">" + payload + b"</body>"
    return _BODY_OPEN + attrs + b"/>"


def _response(web_body: bytes) -> web.Response:
    return web.Response(body=web_body, content_type="text/xml", charset="utf-8",
                        headers={"Cache-Control": "no-store"})


class _Carrier:
    """What C2SConnection needs of a transport: the peer's address; writes are collected by
    ``BoshC2S._flush``; closing ends the BOSH session."""

    __slots__ = ("peer", "session")

    def __init__(self, session: BoshSession, peer: str) -> None:
        self.session = session
        self.peer = peer

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return (self.peer, 0) if name == "peername" else default

    def write(self, data: bytes) -> None:
        return None

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None

    def close(self) -> None:
        self.session.stream_ended()

    def abort(self) -> None:
        self.session.forget()


class BoshC2S(C2SConnection):
    """The client stream of one BOSH session."""

    __slots__ = ("bosh", "restart_pending")

    def __init__(self, service: XmppService, bosh: BoshSession) -> None:
        super().__init__(service, direct_tls=False)
        # HTTPS is the stream's TLS: no STARTTLS, no channel binding (as on WebSocket).
        self.stream = C2SStream(tls=True, tls_available=True, hosted=service.router.is_hosted,
                                features=service.stream_features, default_domain=service.default_domain,
                                pre_auth=service.pre_auth_features)
        self.bosh = bosh
        self.restart_pending = False
        # Each request's <body/> is parsed on its own (BoshEndpoint._parse): the stream parser
        # C2SConnection made is never fed, so its expat parser (about 20 KiB) goes at once.
        self.parser.release()

    def open_stream(self, attrs: dict[str, str]) -> None:
        self.restart_pending = False
        self._run(self.stream.opened(StreamOpened(attrs, CLIENT_NS), {}))

    def elements_received(self, elements: list[Element]) -> None:
        self.last_activity = time.monotonic()
        for element in elements:
            if self.closing:
                return
            if self._busy:
                if self._queue is None:
                    from collections import deque

                    self._queue = deque()
                self._queue.append(element)
            else:
                self._process(element)

    def _restart(self) -> None:
        """After SASL success the client sends a body with xmpp:restart='true' (XEP-0206 §5)."""
        self.restart_pending = True

    def _flush(self) -> None:
        self._flush_scheduled = False
        out = self._out
        if not out:
            return
        payload: list[bytes] = []
        ended: tuple[str, bytes] | None = None  # the terminate body's condition and payload, at the end
        for data in out:
            if data.startswith(b"<?xml"):
                match = _HEADER_ID.search(data)
                if match:
                    self.bosh.authid = match.group(1).decode()
                continue  # the stream header: its attributes are the session response's
            if data.startswith(_STANZA_PREFIXES):
                end = 3 if data[1] == 0x69 else (8 if data[1] == 0x6D else 9)
                payload.append(data if data[end:end + 7] == b" xmlns=" else data[:end] + _CLIENT_DECL + data[end:])
                continue
            closing = data.endswith(STREAM_CLOSE)
            if closing:
                data = data[:-len(STREAM_CLOSE)]
            if data.startswith(b"<stream:error"):
                # XEP-0206 §7: the stream error, inside a terminate body
                ended = ("remote-stream-error", data)
            elif data:
                payload.append(data)
            if closing and ended is None:
                ended = ("", b"")
        out.clear()
        self.bosh.deliver(payload, ended)

    def release_buffers(self) -> bool:
        return False


class BoshSession:
    """One BOSH session: its rid window, held requests, pending output and inactivity timer."""

    def __init__(self, endpoint: BoshEndpoint, sid: str, rid: int, wait: int, domain: str) -> None:
        self.endpoint = endpoint
        self.sid = sid
        self.rid = rid  # the highest rid processed
        self.wait = wait
        self.domain = domain
        self.authid = ""
        self.pending: list[bytes] = []
        # once the stream ended: the terminate body's condition ("" for none) and payload
        self.final: tuple[str, bytes] | None = None
        self.ended = False  # forgotten: every later request gets item-not-found
        self.cache: OrderedDict[int, bytes] = OrderedDict()
        #: when each cached response went out (monotonic), for §9.2 reports
        self.sent_at: dict[int, float] = {}
        #: the responses of rids being processed or held: a retransmission of one waits for it (§14.3)
        self.answering: dict[int, asyncio.Future[bytes]] = {}
        #: the client opened the session with ack='1' (XEP-0124 §9)
        self.acks = False
        #: a response the client's ack shows lost: (its rid, ms since it went out), for the next response
        self.report: tuple[int, int] | None = None
        #: seconds the session may stay idle now: the pause asked for (§10), else the inactivity
        self.pause: int | None = None
        self.held: list[asyncio.Future[None]] = []
        self.in_order = asyncio.Condition()
        self.outstanding = 0
        self._timer: asyncio.TimerHandle | None = None
        self.conn: BoshC2S | None = None

    # -- output from the stream
    def deliver(self, payload: list[bytes], final: tuple[str, bytes] | None) -> None:
        self.pending.extend(payload)
        if final is not None and self.final is None:
            self.final = final
        self.wake()

    def wake(self, count: int | None = None) -> None:
        for waiter in self.held[:count]:
            if not waiter.done():
                waiter.set_result(None)

    def take(self, rid: int) -> bytes:
        """The response body for request ``rid`` now: the pending output, or the terminate body (after
        which the session is forgotten)."""
        payload = b"".join(self.pending)
        self.pending.clear()
        if self.final is not None:
            condition, error = self.final
            self.forget()
            return terminate(condition or None, payload + error)
        head = _BODY_OPEN + self.ack_attrs(rid)
        return head + b">" + payload + b"</body>" if payload else head + b"/>"

    def ack_attrs(self, rid: int) -> bytes:
        """XEP-0124 §9 attributes of the response to ``rid``: ``ack`` when a later request has come in
        (all below it too: requests are processed in rid order), ``report`` and ``time`` once for a
        response the client's ack shows lost."""
        if not self.acks:
            return b""
        attrs = b""
        if self.rid > rid:
            attrs = f" ack='{self.rid}'".encode()
        if self.report is not None:
            lost, elapsed = self.report
            self.report = None
            attrs += f" report='{lost}' time='{elapsed}'".encode()
        return attrs

    def acknowledged(self, rid: int, ack_text: str | None) -> None:
        """The client's ``ack`` on request ``rid``: the responses it covers leave the cache; one it
        must have had by now and does not acknowledge is reported (§9.2)."""
        if not self.acks or ack_text is None or not ack_text.isdigit():
            return
        ack = int(ack_text)
        for answered in [r for r in self.cache if r <= ack]:
            del self.cache[answered]
            self.sent_at.pop(answered, None)
        # With at most ``requests`` outstanding, the client sending ``rid`` has had every response
        # up to rid - requests, unless one was lost on the way.
        lost = ack + 1
        if lost <= rid - REQUESTS and lost in self.cache:
            sent = self.sent_at.get(lost, time.monotonic())
            self.report = (lost, int((time.monotonic() - sent) * 1000))

    def remember(self, rid: int, response: bytes) -> None:
        """Cache ``response`` for a retransmission of ``rid`` (§14.3), and, with acks, until acked."""
        self.cache[rid] = response
        self.sent_at[rid] = time.monotonic()
        limit = MAX_UNACKED if self.acks else CACHED_RESPONSES
        while len(self.cache) > limit:
            old, _ = self.cache.popitem(last=False)
            self.sent_at.pop(old, None)

    # -- lifetime
    def touch(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def idle(self) -> None:
        """No request outstanding: the inactivity period starts (XEP-0124 §7), or the pause (§10)."""
        if self.outstanding == 0 and not self.ended:
            self.touch()
            period = self.pause if self.pause is not None else self.endpoint.inactivity
            self._timer = asyncio.get_running_loop().call_later(period, self._inactive, period)

    def _inactive(self, period: int) -> None:
        self._timer = None
        log.info("BOSH session %s inactive for %d s: ended", self.sid, period)
        self.forget()

    def stream_ended(self) -> None:
        """The stream closed (a stream error, </stream:stream>): the next or held request gets the
        terminate body; the connection is gone for the session layer (XEP-0198 may resume it)."""
        if self.final is None:
            self.final = ("", b"")
        conn = self.conn
        if conn is not None and conn.transport is not None:
            asyncio.get_running_loop().call_soon(conn.connection_lost, None)
        self.wake()

    def forget(self) -> None:
        if self.ended:
            return
        self.ended = True
        self.touch()
        self.endpoint.sessions.pop(self.sid, None)
        self.wake()
        conn = self.conn
        if conn is not None and conn.transport is not None:
            conn.connection_lost(None)  # without a clean close: XEP-0198 may resume the session


class BoshEndpoint:
    def __init__(self, service: XmppService, ctx: WebContext) -> None:
        self.service = service
        self.ctx = ctx
        config = service.host.config.xmpp.bosh
        self.max_wait = max(1, int(config.max_wait))
        self.inactivity = max(5, int(config.inactivity))
        self.max_body = service.max_stanza_size + BODY_SLACK
        self.max_pause = max(0, int(config.max_pause))
        self.sessions: dict[str, BoshSession] = {}

    async def shutdown(self, _app: web.Application) -> None:
        for session in list(self.sessions.values()):
            conn = session.conn
            if conn is not None and not conn.closing:
                if conn.sm is not None:
                    conn.sm.resumable = False
                conn.stream_error("system-shutdown", "the server is shutting down")
            session.forget()

    async def info(self, _request: web.Request) -> web.Response:
        return web.Response(text="this is an XMPP over BOSH endpoint (XEP-0206): POST <body/> elements\n")

    async def handle(self, request: web.Request) -> web.Response:
        data = await self._read(request)
        if len(data) > self.max_body:
            named = re.search(rb"\bsid=['\"]([A-Za-z0-9_-]{1,64})['\"]", data[:2048])
            session = self.sessions.get(named.group(1).decode()) if named else None
            if session is not None:
                self._end_with_error(session, "policy-violation", "the request exceeds the size limit")
            return _response(terminate("policy-violation"))
        body = self._parse(data)
        if body is None:
            return _response(terminate("bad-request"))
        rid_text = body.get("rid") or ""
        if not rid_text.isdigit() or not 0 < int(rid_text) < MAX_RID:
            return _response(terminate("bad-request"))
        rid = int(rid_text)
        sid = body.get("sid")
        if sid is None:
            return await self._create(request, body, rid)
        session = self.sessions.get(sid)
        if session is None:
            return _response(terminate("item-not-found"))
        return await self._request(session, body, rid)

    async def _read(self, request: web.Request) -> bytes:
        """The request body, or its first bytes and then some once it is over the limit (enough to
        know its sid; the rest is not read)."""
        chunks: list[bytes] = []
        size = 0
        while size <= self.max_body:
            chunk = await request.content.read(65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)

    def _parse(self, data: bytes) -> Element | None:
        """The request's <body/> (its stanzas' namespace made jabber:client's), None if it is not one."""
        parser = XmlStreamParser(self.max_body)
        parser.feed(_SYNTHETIC_HEADER)
        events = parser.feed(data)
        depth = parser._depth
        parser.release()  # one request, one use: freed now, not by the cyclic collector
        if len(events) != 1 or not isinstance(events[0], Element) or depth != 1:
            return None
        body = events[0]
        if body.name != "body" or body.xmlns != BOSH_NS:
            return None
        for child in body.children:
            if isinstance(child, Element) and child.xmlns == BOSH_NS:
                _to_client_ns(child)  # a stanza sent without xmlns inherits httpbind's
        return body

    def _end_with_error(self, session: BoshSession, condition: str, text: str) -> None:
        conn = session.conn
        if conn is not None and not conn.closing:
            conn.stream_error(condition, text)
            conn._flush()
        session.forget()

    async def _create(self, request: web.Request, body: Element, rid: int) -> web.Response:
        domain = (body.get("to") or "").lower()
        if not self.service.router.is_hosted(domain):
            return _response(terminate("host-unknown"))
        wait_text = body.get("wait") or str(self.max_wait)
        wait = min(self.max_wait, int(wait_text)) if wait_text.isdigit() else self.max_wait
        sid = secrets.token_urlsafe(18)
        session = BoshSession(self, sid, rid, wait, domain)
        session.acks = body.get("ack") == "1"
        conn = BoshC2S(self.service, session)
        session.conn = conn
        self.sessions[sid] = session
        peer = request.remote or ""
        conn.connection_made(_Carrier(session, peer))  # type: ignore[arg-type]
        if not conn.closing:
            attrs = {"to": domain, "version": body.get(f"{{{XBOSH_NS}}}version") or "1.0"}
            lang = body.get("xml:lang")
            if lang:
                attrs["xml:lang"] = lang
            conn.open_stream(attrs)
        conn._flush()
        if session.final is not None:
            return _response(session.take(rid))  # refused at once (too many connections)
        payload = b"".join(session.pending)
        session.pending.clear()
        # §10: maxpause offers pausing; §9.1: ack (the creation request's rid) agrees to acknowledgements;
        # no 'stream' attribute: one stream per session (§19, module docstring).
        optional = (f" maxpause='{self.max_pause}'" if self.max_pause else "") \
            + (f" ack='{rid}'" if session.acks else "")
        head = _BODY_OPEN + (f" xmlns:xmpp='{XBOSH_NS}' sid='{sid}' wait='{wait}' requests='{REQUESTS}' "
                f"hold='{HOLD}' inactivity='{self.inactivity}' polling='{POLLING}'{optional} ver='1.11' "
                f"from='{domain}' secure='true' authid='{session.authid}' xmpp:version='1.0' "
                f"xmpp:restartlogic='true'>").encode()
        response = head + payload + b"</body>"
        session.remember(rid, response)
        session.idle()
        log.info("BOSH session %s for %s from %s", sid, domain, peer)
        return _response(response)

    async def _request(self, session: BoshSession, body: Element, rid: int) -> web.Response:
        cached = session.cache.get(rid)
        if cached is not None:
            return _response(cached)  # XEP-0124 §14.3: a retransmission of an answered request
        answering = session.answering.get(rid)
        if answering is not None:
            # §14.3: the same request again while the first is still held (the client gave up on that
            # HTTP connection): this one gets the response when it is ready.
            try:
                return _response(await asyncio.shield(answering))
            except asyncio.CancelledError:
                if answering.cancelled():  # the first was cancelled: nothing was taken for it
                    return _response(_BODY_OPEN + b"/>")
                raise
        if body.get("stream") is not None:
            # §19: this server never gives out stream ids (none in the session creation response).
            self._end_with_error(session, "item-not-found", "one stream per session: no such stream")
            return _response(terminate("item-not-found"))
        if not session.rid < rid <= session.rid + REQUESTS:
            self._end_with_error(session, "item-not-found", "the request id is outside the window")
            return _response(terminate("item-not-found"))
        if session.outstanding >= REQUESTS:
            # §12: more simultaneous requests than allowed
            self._end_with_error(session, "policy-violation", "too many simultaneous requests")
            return _response(terminate("policy-violation"))
        session.outstanding += 1
        session.touch()
        answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        session.answering[rid] = answer
        try:
            # Requests are processed in rid order (§14.2): a later one waits for the earlier.
            async with session.in_order:
                ok = await _wait_for(session.in_order, lambda: session.rid == rid - 1 or session.ended,
                                     session.wait)
                if session.ended or not ok:
                    answer.set_result(terminate("item-not-found"))
                    return _response(answer.result())
                session.rid = rid
                session.pause = None  # a request ends a pause (§10)
                session.acknowledged(rid, body.get("ack"))
                session.in_order.notify_all()
            response = await self._process(session, body, rid)
            answer.set_result(response)
            return _response(response)
        finally:
            if not answer.done():
                answer.cancel()
            session.answering.pop(rid, None)
            session.outstanding -= 1
            session.idle()

    async def _process(self, session: BoshSession, body: Element, rid: int) -> bytes:
        conn = session.conn
        assert conn is not None
        if body.get(f"{{{XBOSH_NS}}}restart") == "true" and conn.restart_pending:
            attrs = {"to": session.domain, "version": "1.0"}
            conn.open_stream(attrs)  # XEP-0206 §5: the restarted stream's features follow
        elements = [c for c in body.children if isinstance(c, Element)]
        if elements:
            conn.elements_received(elements)
        pause_text = body.get("pause")
        if pause_text is not None and pause_text.isdigit() and self.max_pause and body.get("type") != "terminate":
            # §10: the held requests are answered now, this one without payload, and the session may
            # stay idle for the pause (capped at maxpause) until the next request.
            conn._flush()
            session.pause = min(int(pause_text), self.max_pause)
            session.wake()
            response = _BODY_OPEN + session.ack_attrs(rid) + b"/>"
            session.remember(rid, response)
            return response
        if body.get("type") == "terminate":
            if not conn.closing:
                conn._peer_closed()
            conn._flush()
            session.pending.clear()
            session.forget()
            response = terminate()
        else:
            conn._flush()
            # The held request is answered now (§11: beyond ``hold`` the oldest goes back, with the
            # data if any), so this one can be held in its place.
            session.wake(max(0, len(session.held) + 1 - HOLD))
            if not session.pending and session.final is None and not session.ended:
                waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                session.held.append(waiter)
                try:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(asyncio.shield(waiter), session.wait)
                finally:
                    session.held.remove(waiter)
                await asyncio.sleep(0)  # the rest of what the stream writes in this loop turn
                if conn._out:
                    conn._flush()
            response = session.take(rid) if not session.ended or session.final is not None else terminate()
        session.remember(rid, response)
        return response


async def _wait_for(condition: asyncio.Condition, predicate: Any, timeout: float) -> bool:
    try:
        await asyncio.wait_for(condition.wait_for(predicate), timeout)
        return True
    except TimeoutError:
        return False


def _to_client_ns(element: Element) -> None:
    element.xmlns = ""
    for child in element.children:
        if isinstance(child, Element) and child.xmlns == BOSH_NS:
            _to_client_ns(child)


def register(service: XmppService) -> None:
    """Add ``/http-bind`` to the web service, and its host-meta link (XEP-0156)."""
    host = service.host
    if not host.config.xmpp.bosh.enabled:
        return
    from peerage.web import routes_for

    routes = routes_for(host)

    def setup(ctx: WebContext) -> None:
        endpoint = BoshEndpoint(service, ctx)
        ctx.app.router.add_post(PATH, endpoint.handle)
        ctx.app.router.add_get(PATH, endpoint.info)
        ctx.app.on_shutdown.append(endpoint.shutdown)

    routes.add("xmpp-bosh", setup)
    link = (HOST_META_REL, "https://{authority}" + PATH)
    if link not in routes.host_meta_links:
        routes.host_meta_links.append(link)
