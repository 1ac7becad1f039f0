"""XMPP over WebSocket (RFC 7395) on the web service, and the web session's XMPP credential.

This module is in charge of the framing only: ``/xmpp-websocket`` on the HTTPS service (subprotocol
``xmpp``, the Origin check, one text message per top-level element, ``<open/>`` and ``<close/>`` in the
``urn:ietf:params:xml:ns:xmpp-framing`` namespace instead of the stream tags). Everything else is the
client stream of TCP: ``WebSocketC2S`` is a ``peerage.xmpp.c2s.C2SConnection`` whose bytes come from and
go to WebSocket messages, so negotiation (the sans-I/O ``c2s_stream``: SASL, bind), XEP-0198 (resumption
across TCP and WebSocket alike), carbons, MAM, PEP and CSI, the authentication deadline, the idle sweep
and the throttle are the same code. It also lists the endpoint in host-meta (XEP-0156,
``urn:xmpp:alt-connections:websocket``) and serves ``GET /auth/xmpp-credentials``: for a logged-in
browser, ``{"jid", "password"}`` with a short-lived XMPP-only token (``peerage.identity.tokens``), the
shape converse.js's ``credentials_url`` reads.

Decisions where RFC 7395 is silent:
- Browsers must connect from the same origin as the endpoint (``Origin: https://<Host>``) or one listed
  in ``[xmpp.websocket] allowed_origins``; a client without Origin (not a browser) is let through,
  since Origin only protects browser users (RFC 6455 §10.2). Prosody 0.12 allows any origin.
- No channel binding (no SCRAM-*-PLUS) on WebSocket streams: browsers cannot read TLS exporters, and a
  reverse proxy in front would make the binding the proxy's.
- Close codes: 1000 after every XMPP-level end (``<close/>``, a stream error, the idle timeout), 1003 for
  a binary frame (after ``<bad-format/>``), 1009 for a message over ``[xmpp] max_stanza_size`` (after
  ``<policy-violation/>``), the same as Prosody's mod_websocket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import struct
import time
from typing import TYPE_CHECKING, Any

from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp._websocket.reader import WebSocketDataQueue, WebSocketReader

from peerage.xmpp.c2s import MAX_QUEUED_STANZAS, MAX_WRITE_BUFFER, C2SConnection
from peerage.xmpp.c2s_stream import C2SStream
from peerage.xmpp.stream import (
    CLIENT_NS,
    STREAM_CLOSE,
    STREAM_NS,
    Element,
    StreamFailure,
    StreamOpened,
    XmlStreamParser,
)

if TYPE_CHECKING:
    from peerage.web import WebContext
    from peerage.xmpp.service import XmppService

log = logging.getLogger(__name__)

PATH = "/xmpp-websocket"
CREDENTIALS_PATH = "/auth/xmpp-credentials"
SUBPROTOCOL = "xmpp"
FRAMING_NS = "urn:ietf:params:xml:ns:xmpp-framing"
HOST_META_REL = "urn:xmpp:alt-connections:websocket"
#: Bytes a message may carry beyond one stanza of ``[xmpp] max_stanza_size`` (the surrounding
#: whitespace a client may add). Prosody buffers at most twice the stanza limit per frame.
FRAME_SLACK = 1024
#: Seconds ws.close() waits for the client's close frame (RFC 6455 §7.1.1 lets the server then drop
#: the TCP connection); aiohttp's default is 10.
CLOSE_TIMEOUT = 5.0
#: Credentials one account may be issued per minute. Each costs two PBKDF2 derivations (10000
#: iterations, about 10 ms of CPU); converse.js asks once per connection attempt, at most every 2 s
#: while failing, so 30 a minute never stops a real page and bounds what a script logged in can burn.
CREDENTIALS_PER_MINUTE = 30
#: Accounts whose recent issuances are remembered before the table is cleared (bounded memory).
CREDENTIAL_RATE_ACCOUNTS = 10000
#: Bytes of queued (control) messages before aiohttp pauses reading: aiohttp's own default, 64 KiB.
QUEUE_LIMIT = 2**16
#: The RFC 7395 §3.3 framing elements.
CLOSE_FRAME = f"<close xmlns='{FRAMING_NS}'/>".encode()
_HEADER_ATTRS = re.compile(rb"xmlns:stream='[^']*'(.*?)\s*>\s*$", re.S)
_SYNTHETIC_HEADER = f"<stream:stream xmlns='{CLIENT_NS}' xmlns:stream='{STREAM_NS}'>".encode()
# No default namespace: an <open/> or <close/> that is not qualified (section 3.3.1) is refused.
_FRAMING_HEADER = f"<stream:stream xmlns:stream='{STREAM_NS}'>".encode()
_STREAM_DECL = f" xmlns:stream='{STREAM_NS}'".encode()
_CLIENT_DECL = f" xmlns='{CLIENT_NS}'".encode()
_CLIENT_DECL_SIZE = len(_CLIENT_DECL)
_STANZA_PREFIXES = (b"<message", b"<presence", b"<iq")
_NAME_ENDS = (b" ", b"/", b">", b"\t", b"\r", b"\n")


#: Heads of text frames with a 7-bit length, made once; 16-bit lengths packed in one call.
_SHORT_HEADS = tuple(bytes((0x81, size)) for size in range(126))
_HEAD16 = struct.Struct("!BBH").pack
_HEAD64 = struct.Struct("!BBQ").pack


def _frame_header(size: int) -> bytes:
    """The head of one unmasked, unfragmented text frame (RFC 6455 §5.2; servers never mask, §5.1)."""
    if size < 126:
        return _SHORT_HEADS[size]
    if size < 65536:
        return _HEAD16(0x81, 126, size)
    return _HEAD64(0x81, 127, size)


def _text_frame(payload: bytes) -> bytes:
    return _frame_header(len(payload)) + payload


def _name_end(data: bytes) -> int:
    """Where the element name of the start tag at the beginning of ``data`` ends."""
    for index in range(1, len(data)):
        if data[index] in b" />\t\r\n":
            return index
    return len(data)


def frame_element(data: bytes, out: list[bytes]) -> None:
    """Turn one piece the client stream writes (TCP framing) into RFC 7395 messages appended to ``out``
    (as byte strings to join).

    The stream header becomes ``<open/>``, ``</stream:stream>`` becomes ``<close/>``, stanzas get their
    ``jabber:client`` namespace and ``stream:`` elements their prefix declaration (section 3.3.3: every
    message is a standalone element)."""
    if data.startswith(_STANZA_PREFIXES):
        end = 3 if data[1] == 0x69 else (8 if data[1] == 0x6D else 9)  # <iq, <message, <presence
        if data[end:end + 7] != b" xmlns=":
            # Pieces, not a new string: the caller joins one loop turn's frames in one copy.
            out += (_frame_header(len(data) + len(_CLIENT_DECL)), data[:end], _CLIENT_DECL, data[end:])
        else:
            out += (_frame_header(len(data)), data)
    elif data.startswith(b"<stream:"):
        tail = data.endswith(STREAM_CLOSE)
        if tail:
            data = data[:-len(STREAM_CLOSE)]
        end = _name_end(data)
        out.append(_text_frame(data[:end] + _STREAM_DECL + data[end:]))
        if tail:
            out.append(_text_frame(CLOSE_FRAME))
    elif data.startswith(b"<?xml"):
        match = _HEADER_ATTRS.search(data)
        attrs = match.group(1) if match else b""
        out.append(_text_frame(b"<open xmlns='" + FRAMING_NS.encode() + b"'" + attrs + b"/>"))
    elif data == STREAM_CLOSE:
        out.append(_text_frame(CLOSE_FRAME))
    elif data:
        out.append(_text_frame(data))


class _DispatchingQueue(WebSocketDataQueue):
    """aiohttp's queue of received messages, except that a text message goes to the stream as soon as
    aiohttp's frame reader completes it, within the HTTP connection's data_received, as TCP's bytes
    do, instead of waking the reading task for each one (a loop turn and a task step per read).
    Everything else (close, ping, pong, binary, errors) is queued for ``WebSocketEndpoint._read`` and
    aiohttp's close handshake as before. Until ``deliver`` is set, and while text messages queued
    before it are not yet read, text is queued too, so the stream sees the messages in order."""

    def __init__(self, protocol: Any, limit: int, *, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(protocol, limit, loop=loop)
        self.deliver: Any = None
        self.deliver_batch: Any = None
        self.queued_text = 0  # text messages in the queue, read by _read
        #: While _BatchingReader reads one TCP read's frames: their text messages, handed to
        #: deliver_batch together once the read is parsed.
        self.batch: list[bytes] | None = None

    def feed_data(self, data: Any, size: int) -> None:
        if data[0] is WSMsgType.TEXT:
            if self.deliver is not None and not self.queued_text:
                batch = self.batch
                if batch is not None:
                    batch.append(data[1])
                else:
                    self.deliver(data[1])
                return
            self.queued_text += 1
        super().feed_data(data, size)


class _BatchingReader:
    """aiohttp's frame reader, whose text messages from one read of the connection reach the stream
    together (``WebSocketC2S.messages_received``): one XML parse for them, as TCP parses one read."""

    __slots__ = ("_feed", "feed_eof", "queue")

    def __init__(self, reader: WebSocketReader, queue: _DispatchingQueue) -> None:
        self._feed = reader.feed_data
        self.feed_eof = reader.feed_eof
        self.queue = queue

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        queue = self.queue
        if queue.deliver_batch is None:
            return self._feed(data)
        batch = queue.batch = []
        try:
            result = self._feed(data)
        finally:
            queue.batch = None
        if batch:
            try:
                queue.deliver_batch(batch)
            except Exception as error:  # as aiohttp's reader does with an error in its queue
                queue.set_exception(error)
                return True, b""
        return result


class _Carrier:
    """What C2SConnection needs of a transport, over an aiohttp WebSocket: raw frames written to the
    HTTP connection's transport (so one loop turn's stanzas leave in one TLS write, as on TCP), reading
    paused by pausing the HTTP connection (text messages arrive without being asked for, see
    ``_DispatchingQueue``) and by not asking aiohttp for the next queued message, and closing through
    aiohttp's close handshake."""

    __slots__ = ("_resume", "close_code", "closer", "conn", "done", "paused", "protocol", "raw", "receiving", "ws")

    def __init__(self, ws: web.WebSocketResponse, raw: asyncio.Transport, protocol: Any = None) -> None:
        self.ws = ws
        self.raw = raw
        self.protocol = protocol  # aiohttp's protocol of the HTTP connection, when it dispatches
        self.paused = False
        self._resume = asyncio.Event()
        self.close_code = WSCloseCode.OK
        self.conn: WebSocketC2S | None = None
        self.closer: asyncio.Task[bool] | None = None
        #: the reading task's receive() of a control message (dispatching only), cancelled by close()
        self.receiving: asyncio.Future[Any] | None = None
        #: set once the handler has closed the WebSocket (the close handshake done or timed out)
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.raw.get_extra_info(name, default)

    def write(self, data: bytes) -> None:
        if not self.raw.is_closing():
            self.raw.write(data)

    def get_write_buffer_size(self) -> int:
        return self.raw.get_write_buffer_size()

    def pause_reading(self) -> None:
        self.paused = True
        self._resume.clear()
        if self.protocol is not None:
            self.protocol.pause_reading()

    def resume_reading(self) -> None:
        was_paused = self.paused
        self.paused = False
        self._resume.set()
        if was_paused and self.protocol is not None:
            self.protocol.resume_reading()

    async def wait_resumed(self) -> None:
        await self._resume.wait()

    def close(self) -> None:
        self.resume_reading()  # a reader waiting to resume must see the close
        if self.protocol is not None:
            # Dispatching: the reading task waits in receive() only for control messages. It stops,
            # and the handler runs aiohttp's close handshake (the client's close frame awaited); a
            # close() from another task while one waits in receive() drops the TCP connection at once.
            receiving = self.receiving
            if receiving is not None and receiving is not asyncio.current_task():  # not from within
                receiving.cancel()  # receive() itself (aiohttp closing with 1009 there)
            return
        if self.closer is None and not self.ws.closed:
            # aiohttp's close handshake, from outside the reading task (it breaks receive() for us);
            # the handler awaits it before returning.
            self.closer = asyncio.get_running_loop().create_task(self.ws.close(code=self.close_code))

    def abort(self) -> None:
        self.raw.abort()


class _XmppWebSocketResponse(web.WebSocketResponse):
    """aiohttp answers a message over ``max_msg_size`` with close code 1009 from inside receive();
    the stream error must go out before that close frame (RFC 7395 §3.6: the error, then <close/>)."""

    connection: WebSocketC2S | None = None
    #: The queue whose text messages go straight to the stream (None: aiohttp's own queue is used).
    dispatch: _DispatchingQueue | None = None

    def _post_start(self, request: Any, protocol: Any, writer: Any) -> None:
        super()._post_start(request, protocol, writer)
        # The same reader, over a _DispatchingQueue. Nothing was read between the two (no await), so
        # the reader aiohttp made is replaced before any frame reaches it. Should a later aiohttp not
        # have these attributes, its own queue stays (every message then goes through receive()).
        try:
            http = request.protocol
            queue = _DispatchingQueue(http, QUEUE_LIMIT, loop=asyncio.get_running_loop())
            parser = WebSocketReader(queue, self._max_msg_size, compress=False, decode_text=False)
            if self._heartbeat is not None or http._payload_parser is not self._parser:
                return
            http._payload_parser = None
            http.set_parser(_BatchingReader(parser, queue))
        except (AttributeError, TypeError, AssertionError):  # pragma: no cover - another aiohttp
            log.debug("aiohttp's WebSocket reader kept", exc_info=True)
            return
        self._reader = queue
        self._parser = parser
        self.dispatch = queue

    async def close(self, *, code: int = WSCloseCode.OK, message: bytes = b"", drain: bool = True) -> bool:
        connection = self.connection
        if code == WSCloseCode.MESSAGE_TOO_BIG and connection is not None and not connection.closing:
            connection.carrier_close_code(WSCloseCode.MESSAGE_TOO_BIG)
            connection.stream_error("policy-violation", "the message exceeds the stanza size limit")
            connection._flush()
        return await super().close(code=code, message=message, drain=drain)


class WebSocketC2S(C2SConnection):
    """One RFC 7395 connection: a client stream whose framing is WebSocket messages."""

    __slots__ = ("_opened", "carrier", "max_message", "origin")

    def __init__(self, service: XmppService, carrier: _Carrier, max_message: int) -> None:
        super().__init__(service, direct_tls=False)
        # The HTTPS connection is the stream's TLS: no STARTTLS, no channel binding (module docstring).
        self.stream = C2SStream(tls=True, tls_available=True, hosted=service.router.is_hosted,
                                features=service.stream_features, default_domain=service.default_domain,
                                pre_auth=service.pre_auth_features)  # XEP-0077 registration, as on TCP
        self.carrier = carrier
        self.max_message = max_message
        carrier.conn = self
        self._opened = False
        self.origin = ""

    def carrier_close_code(self, code: int) -> None:
        self.carrier.close_code = WSCloseCode(code)

    # --- input: one WebSocket message at a time ---------------------------------------------------
    def message_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.last_activity = time.monotonic()
        if len(data) > self.max_message:
            self.carrier_close_code(WSCloseCode.MESSAGE_TOO_BIG)
            self.stream_error("policy-violation", "the message exceeds the stanza size limit")
            return
        if self._opened and data.startswith(_STANZA_PREFIXES):
            # The common case, a stanza on an open stream, straight to the parser.
            self._element(data)
            return
        head = data[:7] if data[:1] == b"<" else data.lstrip()[:7]
        if head.startswith(b"<open") and head[5:6] in _NAME_ENDS:
            self._open(data)
            return
        if head.startswith(b"<close") and head[6:7] in _NAME_ENDS:
            framing = self._framing_element(data, "close")
            if framing is not None:
                self._peer_closed()
            return
        if head[:1] != b"<" and not data.strip():
            return  # whitespace between elements carries nothing (RFC 7395 §3.3.3 asks for none)
        if not self._opened:
            if head.startswith((b"<?xml", b"<stream")):  # a TCP client: the stream tags are not framing
                self.stream_error("invalid-namespace", f"XMPP over WebSocket opens with <open xmlns='{FRAMING_NS}'/> "
                                  "(RFC 7395 section 3.3.1)")
            else:
                self.stream_error("not-authorized", "send <open/> first (RFC 7395 section 3.3.2)")
            return
        self._element(data)

    def _element(self, data: bytes) -> None:
        """One message that must carry one whole element (RFC 7395 section 3.3.3)."""
        parser = self.parser
        events = parser.feed_message(data)
        if len(events) != 1 or events[0].__class__ is not Element or parser._depth != 1:
            failure = next((e for e in events if isinstance(e, StreamFailure)), None)
            if failure is not None:
                self.stream_error(failure.condition, failure.text)
            else:
                self.stream_error("not-well-formed",
                                  "each WebSocket message carries one complete element (RFC 7395 section 3.3.3)")
            return
        element = events[0]
        assert isinstance(element, Element)
        self._take(element)

    def _take(self, element: Element) -> None:
        # As C2SConnection.data_received: in order, queued behind one that waits for storage.
        if self._busy:
            if self._queue is None:
                from collections import deque

                self._queue = deque()
            self._queue.append(element)
            if len(self._queue) >= MAX_QUEUED_STANZAS and not self._reading_paused:
                self._reading_paused = True
                self.carrier.pause_reading()
        else:
            self._process(element)

    def messages_received(self, messages: list[bytes]) -> None:
        """The text messages of one read: stanzas on an open stream are parsed in one go, the way TCP
        parses a read; anything else (and a lone message) goes through message_received."""
        max_message = self.max_message
        if len(messages) == 1 or not self._opened or self.closing \
                or not all(m.startswith(_STANZA_PREFIXES) and len(m) <= max_message for m in messages):
            for message in messages:
                self.message_received(message)
            return
        self.last_activity = time.monotonic()
        parser = self.parser
        events, starts = parser.feed_messages(messages)
        # A message held exactly one element if one began at its first byte and the next began at
        # the next message's first byte (between them only whitespace parses at stream level); the
        # last one, if the parse ended between elements. Whatever follows the first message that
        # did not is never handled, as when message_received refuses it.
        count = len(messages)
        failure = None
        offset = 0
        valid = 0
        for index, message in enumerate(messages):
            if index >= len(starts) or starts[index] != offset:
                break
            offset += len(message)
            if index + 1 < count:
                if index + 1 >= len(starts) or starts[index + 1] != offset:
                    break
            elif len(starts) != count or parser._depth != 1:
                break
            valid += 1
        for index, event in enumerate(events):
            if event.__class__ is not Element:
                if isinstance(event, StreamFailure):
                    failure = event
                valid = min(valid, index)
                break
        if failure is not None:
            valid = min(valid, count - 1)  # the failure is in a message after these, or the last one
        for element in events[:valid]:
            if self.closing or self.parser is not parser:
                return  # closed by an earlier element: later ones belong to no stream
            assert isinstance(element, Element)
            self._take(element)
        if valid < count and not self.closing:
            if failure is not None:
                self.stream_error(failure.condition, failure.text)
            else:
                self.stream_error("not-well-formed",
                                  "each WebSocket message carries one complete element (RFC 7395 section 3.3.3)")

    def _framing_element(self, data: bytes, name: str) -> Element | None:
        """Parse an <open/> or <close/> message; a stream error (and None) if it is not one."""
        parser = XmlStreamParser(self.service.max_stanza_size)
        parser.feed(_FRAMING_HEADER)
        events = parser.feed(data)
        depth = parser._depth
        parser.release()  # one message, one use: freed now, not by the cyclic collector
        element = events[0] if len(events) == 1 else None
        if not isinstance(element, Element) or depth != 1 or element.name != name \
                or element.xmlns != FRAMING_NS:
            failure = next((e for e in events if isinstance(e, StreamFailure)), None)
            if failure is not None:
                self.stream_error(failure.condition, failure.text)
            else:
                self.stream_error("invalid-namespace" if isinstance(element, Element) and element.name == name
                                  else "not-well-formed", f"<{name}/> must be in {FRAMING_NS} (RFC 7395 section 3.3)")
            return None
        return element

    def _open(self, data: bytes) -> None:
        element = self._framing_element(data, "open")
        if element is None:
            return
        # A fresh parser per stream (RFC 7395 §3.3.2: <open/> after SASL success restarts the stream),
        # primed with a header whose default namespace is jabber:client. The previous one (the
        # stream before the restart, or the unused one C2SConnection made) is let go at once.
        self.parser.release()
        self.parser = XmlStreamParser(self.service.max_stanza_size)
        self.parser.feed(_SYNTHETIC_HEADER)
        self._opened = True
        attrs = {key: value for key, value in element.attrs.items() if not key.startswith("{")}
        self._run(self.stream.opened(StreamOpened(attrs, CLIENT_NS), {}))

    def _restart(self) -> None:
        """After SASL success the client sends a new <open/>."""
        self._opened = False
        self.parser.release()
        self.parser = XmlStreamParser(self.service.max_stanza_size)

    # --- output: one message per element (C2SConnection._write queues, this frames) -----------
    def _flush(self) -> None:
        self._flush_scheduled = False
        carrier = self.carrier
        out = self._out
        if not out or self.transport is None:
            out.clear()
            return
        frames: list[bytes] = []
        for piece in out:
            # frame_element's stanza case inlined (one call less per stanza); the rest goes to it.
            first = piece[1:2]
            if first == b"m":
                end = 8
            elif first == b"p":
                end = 9
            elif first == b"i":
                end = 3
            else:
                frame_element(piece, frames)
                continue
            if piece[end:end + 7] == b" xmlns=" or not piece.startswith(_STANZA_PREFIXES):
                frame_element(piece, frames)
                continue
            size = len(piece) + _CLIENT_DECL_SIZE
            frames += (_SHORT_HEADS[size] if size < 126 else _HEAD16(0x81, 126, size) if size < 65536
                       else _HEAD64(0x81, 127, size), piece[:end], _CLIENT_DECL, piece[end:])
        out.clear()
        carrier.write(b"".join(frames))
        if carrier.get_write_buffer_size() > MAX_WRITE_BUFFER and not self.closing:
            log.info("%s does not read its WebSocket; closing", self.name)
            self._abort()

    def release_buffers(self) -> bool:
        return False  # aiohttp owns the buffers; the parser is small next to them


# ================================================================================================
# HTTP side
# ================================================================================================
class WebSocketEndpoint:
    def __init__(self, service: XmppService, ctx: WebContext) -> None:
        self.service = service
        self.ctx = ctx
        config = service.host.config.xmpp.websocket
        self.allowed_origins = frozenset(o.rstrip("/").lower() for o in config.allowed_origins)
        self.credential_lifetime = config.credential_lifetime
        self._issued: dict[str, list[float]] = {}
        self.live: set[WebSocketC2S] = set()

        self.max_message = service.max_stanza_size + FRAME_SLACK
        # aiohttp buffers up to this much of one message; between the two limits the message is read and
        # refused in order (a clean close handshake), beyond it aiohttp drops the connection itself.
        # Prosody's websocket_frame_buffer_limit is twice its stanza limit too.
        self.max_buffered = 2 * service.max_stanza_size + FRAME_SLACK

    async def shutdown(self, _app: web.Application) -> None:
        """The web service stops (it stops before the XMPP service): tell each client why, as c2s does
        (RFC 6120 section 4.9.3.20), and let the close handshakes run, within CLOSE_TIMEOUT."""
        for connection in list(self.live):
            if connection.sm is not None:
                connection.sm.resumable = False
            connection.stream_error("system-shutdown", "the server is shutting down")
        closers = [c.carrier.closer if c.carrier.closer is not None else c.carrier.done for c in self.live]
        if closers:
            await asyncio.wait(closers, timeout=CLOSE_TIMEOUT)

    def origin_allowed(self, request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        if origin is None:
            return True  # not a browser (RFC 6455 §10.2)
        origin = origin.rstrip("/").lower()
        if "*" in self.allowed_origins or origin in self.allowed_origins:
            return True
        return origin == f"https://{(request.host or '').lower()}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return web.Response(status=400, text="this is an XMPP over WebSocket endpoint (RFC 7395); "
                                "connect with a WebSocket client and subprotocol xmpp\n")
        if SUBPROTOCOL not in offered:
            # RFC 7395 §3.1: without the xmpp subprotocol no XMPP connection exists (Prosody: 501).
            return web.Response(status=400, text="Sec-WebSocket-Protocol must offer xmpp (RFC 7395 section 3.1)\n")
        if not self.origin_allowed(request):
            log.info("WebSocket from origin %s refused", request.headers.get("Origin"))
            return web.Response(status=403, text="this origin may not open XMPP connections here\n")
        ws = _XmppWebSocketResponse(protocols=(SUBPROTOCOL,), compress=False, autoping=False,
                                    max_msg_size=self.max_buffered, decode_text=False, timeout=CLOSE_TIMEOUT)
        await ws.prepare(request)
        raw = request.transport
        if raw is None:
            return ws
        dispatch = ws.dispatch
        carrier = _Carrier(ws, raw, request.protocol if dispatch is not None else None)
        connection = WebSocketC2S(self.service, carrier, self.max_message)
        connection.origin = request.headers.get("Origin", "")
        ws.connection = connection
        self.live.add(connection)
        connection.connection_made(carrier)  # type: ignore[arg-type]
        if dispatch is not None:
            dispatch.deliver = connection.message_received
            dispatch.deliver_batch = connection.messages_received
        try:
            await self._read(ws, connection, carrier)
        finally:
            if dispatch is not None:
                dispatch.deliver = dispatch.deliver_batch = None
            self.live.discard(connection)
            connection.connection_lost(None)
            try:
                if carrier.closer is not None:
                    with contextlib.suppress(Exception):
                        await carrier.closer
                elif not ws.closed:
                    await ws.close(code=carrier.close_code)
            finally:
                if not carrier.done.done():
                    carrier.done.set_result(None)
        return ws

    async def _read(self, ws: _XmppWebSocketResponse, connection: WebSocketC2S, carrier: _Carrier) -> None:
        """The messages aiohttp queues: every one without a _DispatchingQueue, else the control
        messages and what came before the stream was there to take text."""
        dispatch = ws.dispatch
        while not connection.closing:
            if carrier.paused:
                await carrier.wait_resumed()
                continue
            if dispatch is None:
                message = await ws.receive()
            else:
                # In a task, so that _Carrier.close() can stop it (control messages only: rare).
                receiving = carrier.receiving = asyncio.ensure_future(ws.receive())
                try:
                    message = await receiving
                except asyncio.CancelledError:
                    current = asyncio.current_task()
                    if receiving.cancelled() and connection.closing and not (current and current.cancelling()):
                        return  # _Carrier.close(): the handler closes the WebSocket
                    raise
                finally:
                    carrier.receiving = None
            kind = message.type
            if kind is WSMsgType.TEXT:
                if dispatch is not None:
                    dispatch.queued_text -= 1
                connection.message_received(message.data)
            elif kind is WSMsgType.BINARY:
                # RFC 7395 §3.2: text frames only.
                carrier.close_code = WSCloseCode.UNSUPPORTED_DATA
                connection.stream_error("bad-format", "XMPP over WebSocket uses text frames only (RFC 7395 section 3.2)")
            elif kind is WSMsgType.PING:
                connection.last_activity = time.monotonic()
                await ws.pong(message.data)
            elif kind is WSMsgType.PONG:
                connection.last_activity = time.monotonic()
            else:  # CLOSE, CLOSING, CLOSED, ERROR: the WebSocket is gone (an unclean end for XEP-0198)
                return

    async def credentials(self, request: web.Request) -> web.Response:
        """``{"jid", "password"}`` for the logged-in browser (converse.js ``credentials_url``).

        A GET, as converse.js sends it: the cookie is SameSite=Strict, so another site's request never
        carries it; Fetch Metadata from another site is refused too; and no CORS header lets another
        origin read the answer. The token it creates opens nothing by itself."""
        principal = await self.ctx.auth.principal(request)
        if principal is None or principal.session is None:
            return web.json_response({"error": "log in first"}, status=401,
                                     headers={"Cache-Control": "no-store"})
        site = request.headers.get("Sec-Fetch-Site")
        if site is not None and site not in ("same-origin", "none"):
            return web.json_response({"error": "cross-site request refused"}, status=403)
        now = time.monotonic()
        recent = [t for t in self._issued.get(principal.account, ()) if t > now - 60.0]
        if len(recent) >= CREDENTIALS_PER_MINUTE:
            return web.json_response({"error": "too many credentials asked for; try again in a minute"},
                                     status=429, headers={"Retry-After": "60", "Cache-Control": "no-store"})
        if len(self._issued) >= CREDENTIAL_RATE_ACCOUNTS:
            self._issued.clear()
        self._issued[principal.account] = [*recent, now]
        from peerage.web.sessions import hash_token

        web_session = hash_token(principal.token) if principal.token else None
        token, expires = await self.service.host.accounts.login_token(
            principal.account, "xmpp", self.credential_lifetime, web_session=web_session)
        body = {"jid": principal.account, "password": token,
                "expires": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires))}
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    async def revoke_credentials(self, request: web.Request) -> web.Response:
        """End every token this web session was given (a state change: CSRF token required)."""
        principal = await self.ctx.auth.principal(request)
        if principal is None or principal.session is None or not principal.token:
            return web.json_response({"error": "log in first"}, status=401)
        from peerage.web.sessions import hash_token

        count = await self.service.host.accounts.tokens.revoke_web_session(hash_token(principal.token))
        return web.json_response({"revoked": count})


def register(service: XmppService) -> None:
    """Add the endpoint and the credential route to the web service, and the host-meta link."""
    host = service.host
    from peerage.xmpp import bosh

    bosh.register(service)  # XEP-0206 on the same web service, for clients without WebSocket
    if not host.config.xmpp.websocket.enabled:
        return
    from peerage.web import routes_for

    routes = routes_for(host)

    def setup(ctx: WebContext) -> None:
        endpoint = WebSocketEndpoint(service, ctx)
        ctx.app.router.add_get(PATH, endpoint.handle)
        ctx.app.router.add_get(CREDENTIALS_PATH, endpoint.credentials)
        ctx.app.router.add_delete(CREDENTIALS_PATH, endpoint.revoke_credentials)
        ctx.app.on_shutdown.append(endpoint.shutdown)

    routes.add("xmpp-websocket", setup)
    link = (HOST_META_REL, "wss://{authority}" + PATH)
    if link not in routes.host_meta_links:
        routes.host_meta_links.append(link)
