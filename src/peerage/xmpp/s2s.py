"""Server-to-server XMPP streams (RFC 6120), inbound and outbound, at the XEP-0238 levels.

This module is in charge of the network side of federation: finding a remote domain's servers
(``_xmpps-server._tcp`` for XEP-0368 Direct TLS, then ``_xmpp-server._tcp``, then the domain's A/AAAA
on port 5269), connecting, negotiating STARTTLS, SASL EXTERNAL (XEP-0178) or dialback (XEP-0220,
with piggybacked domain pairs), bidirectional streams (XEP-0288), queueing stanzas while a
connection is set up, reusing connections and closing idle ones, and bouncing stanzas with
``remote-server-not-found`` / ``remote-server-timeout`` when a domain cannot be reached in time.

Every decision about *whether* to trust a peer is delegated to ``peerage.xmpp.federation`` (the
same functions that predict the XEP-0238 table), certificate checks to ``peerage.xmpp.x509`` and keys
to ``peerage.xmpp.dialback``. Every connection records the level it reached (U/P/V/E/T) and why; the
records are logged and published in the status file (``[server] status_file`` in the data folder)
that ``peerage s2s status`` prints.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import os
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from peerage.net.dns import DnsTimeout
from peerage.net.limits import AuthThrottle, ConnectionCounter
from peerage.xmpp import dialback, s2s_stream
from peerage.xmpp.dialback import DialbackError, DialbackSecret
from peerage.xmpp.federation import (
    CertificateKind,
    DomainPolicy,
    FederationPolicy,
    Level,
    ServerProfile,
    level_reached,
    presents_certificate,
)
from peerage.xmpp.jid import JidError, normalize_jid, split_jid
from peerage.xmpp.s2s_tls import S2STlsContexts
from peerage.xmpp.stream import (
    SERVER_NS,
    STREAM_NS,
    Element,
    StreamClosed,
    StreamFailure,
    StreamOpened,
    XmlStreamParser,
    serialize,
    stream_error,
)
from peerage.xmpp.stream import serialize_features as serialize_stream_features
from peerage.xmpp.tls_layer import TlsLayer
from peerage.xmpp.x509 import CertificateCheck, TrustStore, check_certificate, own_certificate_trusted

log = logging.getLogger(__name__)


#: RFC 6120 section 3.2.3 fallback port when a domain has no SRV records.
DEFAULT_S2S_PORT = 5269
#: Seconds for one step of stream negotiation (a header, features, a TLS handshake, a dialback
#: answer). Prosody's s2s_timeout (whole setup) is 90 s; a step is much shorter.
NEGOTIATION_STEP_TIMEOUT = 20.0
#: Seconds for one TCP connect; a loopback or LAN peer answers in milliseconds, the Internet in < 3 s.
CONNECT_TIMEOUT = 10.0
#: Seconds the receiving server waits for the authoritative server's db:verify answer (XEP-0220
#: section 2.1.2); beyond it, the originating server gets ``remote-server-timeout``.
VERIFY_TIMEOUT = 15.0
#: Stanzas queued per remote domain while its connection is set up. Prosody's s2s send queue is
#: unbounded; a bound keeps a dead domain from eating memory (the excess bounces with
#: ``resource-constraint``).
MAX_QUEUED_STANZAS = 10000
#: Delays between connection attempts within the bounded wait (seconds, then the last one repeats).
RETRY_DELAYS = (0.25, 0.5, 1.0, 2.0)
#: Connection records kept for ``peerage s2s status`` (most recent first).
STATUS_HISTORY = 200
#: Seconds between status file writes at most (changes are batched).
STATUS_WRITE_DELAY = 0.2
#: Inbound s2s connections accepted from one IP address. A large provider may open one connection
#: per virtual host pair; 256 covers that while bounding file descriptors per peer.
S2S_CONNECTIONS_PER_IP = 256
#: Received bytes an s2s connection holds unparsed before it stops reading from the socket until
#: they are handled; a peer that sends faster than we route waits in its TCP window, not in our
#: memory (c2s bounds its queue the same way).
MAX_PENDING_BYTES = 512 * 1024
#: Bytes parsed at a time, when the stream's reader asks for its next event. One read can bring
#: 256 KiB (uvloop's read size), a thousand stanzas; parsed at once, they all stay alive while the
#: reader hands them on one by one, so the cyclic collector's young-generation passes find them
#: alive and promote them, and the full collections that promotion sets off took about a tenth of a
#: receiving server's CPU. A slice at a time, a few dozen elements are alive at once and die young.
PARSE_SLICE = 16 * 1024
#: Stream errors that say "try again later" (RFC 6120 section 4.9.3); any other refusal is final
#: for this attempt and the waiting stanzas bounce at once.
TRANSIENT_STREAM_ERRORS = frozenset(("connection-timeout", "system-shutdown", "reset",
                                     "resource-constraint", "internal-server-error", "see-other-host"))
#: Dialback verifications (connections to authoritative servers) running at once. Each costs a
#: connection and a TLS handshake; the bound keeps a flood of db:result requests from turning this
#: server into a connection amplifier.
MAX_CONCURRENT_VERIFICATIONS = 64
#: Bytes an s2s connection may hold unsent before senders wait for it to drain. A slow peer then
#: slows its senders instead of growing our memory (Prosody's send buffer is unbounded; 1 MiB is a
#: few thousand stanzas in flight).
WRITE_BUFFER_LIMIT = 1024 * 1024
#: Seconds between idle sweeps.
IDLE_SWEEP_INTERVAL = 5.0


class NegotiationFailed(Exception):
    """The peers have no level in common (the connection is U); stanzas bounce at once."""


class DomainNotFound(Exception):
    """DNS knows no server for the domain (``remote-server-not-found``)."""


class Unreachable(Exception):
    """No server of the domain answered; worth retrying until the bound."""


class StreamError(Exception):
    def __init__(self, condition: str, text: str = "") -> None:
        super().__init__(f"{condition}: {text}")
        self.condition = condition
        self.text = text


@dataclass
class ConnectionRecord:
    """What operators see for one connection (or one domain pair on a piggybacked connection)."""

    id: int
    direction: str            # "out" or "in"
    local: str
    remote: str
    peer: str                 # IP:port
    level: str = "U"
    reason: str = "negotiating"
    tls: str = ""             # TLS version, "" when clear
    authentication: str = ""  # sasl-external / dialback / none
    bidi: bool = False
    state: str = "negotiating"  # negotiating / open / closed / failed
    started: float = field(default_factory=time.time)
    ended: float | None = None
    stanzas: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    direct_tls: bool


# --- one XML stream over asyncio streams -----------------------------------------------------------

class XmlConnection(asyncio.Protocol):
    """One s2s connection: an asyncio Protocol with TLS through memory BIOs, as c2s runs.

    The I/O model is the one ``peerage.xmpp.c2s`` uses: bytes arrive in ``data_received``, pass
    through ``peerage.xmpp.tls_layer.TlsLayer`` when TLS is on, and feed the sans-I/O
    ``XmlStreamParser``; writes made in one turn of the event loop are joined and go out as one TLS
    record. The negotiation code above reads the parser's events with ``event()``/``element()``
    (one waiter at a time); stanzas are delivered by the same coroutines. Restartable after STARTTLS
    and SASL.
    """

    def __init__(self, max_stanza_bytes: int,
                 on_connected: Callable[[XmlConnection], None] | None = None,
                 tls_context: ssl.SSLContext | None = None, *, server_side: bool = True,
                 server_hostname: str | None = None) -> None:
        self.max_stanza_bytes = max_stanza_bytes
        self.parser = XmlStreamParser(max_stanza_bytes)
        self.events: collections.deque[Any] = collections.deque()
        #: Bytes received (after TLS) and not parsed yet; ``event()`` parses them PARSE_SLICE at a time.
        self._pending: collections.deque[bytes] = collections.deque()
        self._pending_bytes = 0
        self._pending_offset = 0  # into the first of ``_pending``
        self.closed = False
        self.header_sent = False
        self.last_activity = time.monotonic()
        self.peer = "?:0"
        self.peer_ip = "?"
        self.transport: asyncio.Transport | None = None
        self.tls: TlsLayer | None = None
        self.handshake: asyncio.Future[None] | None = None
        self._on_connected = on_connected
        self._initial_tls = (tls_context, server_side, server_hostname)
        self._waiter: asyncio.Future[None] | None = None
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._flush_scheduled = False
        self._peer_gone = False
        self._error: BaseException | None = None
        self._reading_paused = False
        self._write_paused: asyncio.Future[None] | None = None

    # --- asyncio.Protocol -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername") or ("?", 0)
        self.peer = f"{peer[0]}:{peer[1]}"
        self.peer_ip = str(peer[0])
        context, server_side, server_hostname = self._initial_tls
        if context is not None:
            self._start_tls(context, server_side, server_hostname)
        if self._on_connected is not None:
            self._on_connected(self)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.last_activity = time.monotonic()
        tls = self.tls
        if tls is not None:
            try:
                data = tls.receive(data)
            except ssl.SSLError as error:
                self._lost(error)
                if self.transport is not None:
                    self.transport.abort()
                return
            pending = tls.take_output()
            if pending and self.transport is not None:
                self.transport.write(pending)
            if tls.handshake_done and self.handshake is not None and not self.handshake.done():
                self.handshake.set_result(None)
            if tls.peer_closed:
                self._lost(None)
        if data:
            self._pending.append(data)
            self._pending_bytes += len(data)
            # A peer that sends faster than we handle waits in its TCP window, not in our memory.
            if self._pending_bytes >= MAX_PENDING_BYTES and not self._reading_paused and self.transport:
                self._reading_paused = True
                self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool | None:
        self._lost(None)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        # The expat parser and this parser object form a reference cycle; let it go now rather
        # than at the next full collection (as c2s does), or once the bytes received before the
        # loss are parsed (``event()``): what the peer sent before it went is still handled.
        if not self._pending:
            self.parser.release()
        self._lost(exc)
        if self._write_paused is not None and not self._write_paused.done():
            self._write_paused.set_result(None)

    def pause_writing(self) -> None:
        if self._write_paused is None or self._write_paused.done():
            self._write_paused = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._write_paused is not None and not self._write_paused.done():
            self._write_paused.set_result(None)

    def _lost(self, error: BaseException | None) -> None:
        self._peer_gone = True
        if error is not None and self._error is None:
            self._error = error
        if self.handshake is not None and not self.handshake.done():
            self.handshake.set_exception(error if isinstance(error, ssl.SSLError)
                                         else ConnectionError("the connection closed during the TLS handshake"))
            self.handshake.exception()  # retrieved here; the waiter sees it through the future
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- TLS ------------------------------------------------------------------------------------
    def _start_tls(self, context: ssl.SSLContext, server_side: bool, server_hostname: str | None) -> None:
        """Everything written so far goes out in the clear; everything after, through TLS. The
        parser restarts now, not after the handshake: a TLS 1.3 client's first stream header may
        arrive in the same flight as its Finished message."""
        self._flush()
        self.tls = TlsLayer(context, server_side=server_side, server_hostname=server_hostname)
        self.handshake = asyncio.get_running_loop().create_future()
        self.restart()
        if not server_side:
            self.tls.start()
            output = self.tls.take_output()
            if output and self.transport is not None:
                self.transport.write(output)

    async def wait_handshake(self) -> None:
        assert self.handshake is not None
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation of the
        # waiting task that arrives as the awaited future completes (CPython gh-86296).
        async with asyncio.timeout(NEGOTIATION_STEP_TIMEOUT):
            await asyncio.shield(self.handshake)

    async def starttls(self, context: ssl.SSLContext, server_hostname: str | None) -> None:
        self._start_tls(context, False, server_hostname)
        await self.wait_handshake()

    async def starttls_server(self, context: ssl.SSLContext) -> None:
        # Called right after writing <proceed/>, with no await in between: the ClientHello cannot
        # arrive before the TLS layer is in place.
        self._start_tls(context, True, None)
        await self.wait_handshake()

    @property
    def ssl_object(self) -> ssl.SSLObject | None:
        tls = self.tls
        return tls.sslobj if tls is not None and tls.handshake_done else None

    @property
    def tls_version(self) -> str:
        sslobj = self.ssl_object
        return (sslobj.version() or "TLS") if sslobj is not None else ""

    def peer_certificate(self) -> bytes | None:
        sslobj = self.ssl_object
        if sslobj is None:
            return None
        try:
            return sslobj.getpeercert(binary_form=True)
        except ValueError:
            return None

    # --- the stream -----------------------------------------------------------------------------
    def restart(self) -> None:
        """A new stream on this connection (RFC 6120 sections 5.4.3.3 and 6.4.6: after STARTTLS and
        SASL success): a fresh parser, the old one's expat parser let go at once, not left in its
        reference cycle for the collector."""
        self.parser.release()
        self.parser = XmlStreamParser(self.max_stanza_bytes)
        self.events.clear()
        # Bytes received after the element that ended the old stream belong to neither stream and
        # are dropped, as its parsed events are (RFC 6120 sections 5.4.3.3 and 6.4.6: nothing
        # learnt before the new stream is kept; plaintext sent ahead of TLS is not read after it).
        self._drop_pending()
        self.header_sent = False

    def _drop_pending(self) -> None:
        self._pending.clear()
        self._pending_bytes = 0
        self._pending_offset = 0
        self._resume_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and self._pending_bytes < MAX_PENDING_BYTES // 2 and self.transport:
            self._reading_paused = False
            self.transport.resume_reading()

    def _parse_slice(self) -> None:
        """Feed the parser the next PARSE_SLICE bytes received."""
        if self.parser.failed or self.closed:
            self._drop_pending()
            return
        chunk = self._pending[0]
        start = self._pending_offset
        end = start + PARSE_SLICE
        if end >= len(chunk):
            self._pending.popleft()
            self._pending_offset = 0
            data = chunk[start:] if start else chunk
        else:
            self._pending_offset = end
            data = chunk[start:end]
        self._pending_bytes -= len(data)
        self.events.extend(self.parser.feed(data))
        self._resume_reading()

    def write(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            return
        self._out.append(data)
        self._out_bytes += len(data)
        self.last_activity = time.monotonic()
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        transport = self.transport
        if not self._out:
            return
        data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
        self._out.clear()
        self._out_bytes = 0
        if transport is None or transport.is_closing():
            return
        if self.tls is not None:
            try:
                self.tls.send(data)
            except ssl.SSLError as error:
                self._lost(error)
                transport.abort()
                return
            data = self.tls.take_output()
        transport.write(data)

    def write_header(self, data: bytes) -> None:
        self.write(data)
        self.header_sent = True

    def send(self, element: Element) -> None:
        if element.xmlns == dialback.DIALBACK_NS:
            self.write(dialback.to_wire(element).encode())
        else:
            self.write(serialize(element, SERVER_NS).encode())

    async def event(self, timeout: float | None = NEGOTIATION_STEP_TIMEOUT) -> Any:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not self.events:
            if self._pending:
                self._parse_slice()
                continue
            if self.parser.failed or self.closed:
                raise ConnectionError("stream is closed")
            if self._peer_gone:
                if self.transport is None:
                    self.parser.release()  # what arrived before the loss is parsed
                if isinstance(self._error, ssl.SSLError):
                    raise self._error
                raise ConnectionError("connection closed by the peer")
            self._waiter = loop.create_future()
            try:
                if deadline is None:  # an established stream's reader: no timer per wait
                    await self._waiter
                else:
                    async with asyncio.timeout_at(deadline):  # not wait_for (CPython gh-86296)
                        await self._waiter
            except TimeoutError:
                raise StreamError("connection-timeout", "the peer did not answer in time") from None
            finally:
                self._waiter = None
        return self.events.popleft()

    async def element(self, timeout: float | None = NEGOTIATION_STEP_TIMEOUT) -> Element:
        event = await self.event(timeout)
        if isinstance(event, Element):
            if event.name == "error" and event.xmlns == STREAM_NS:
                raise peer_stream_error(event)
            return event
        if isinstance(event, StreamFailure):
            raise StreamError(event.condition, event.text)
        if isinstance(event, StreamClosed):
            raise ConnectionError("the peer closed the stream")
        raise StreamError("not-well-formed", f"unexpected {event!r}")

    async def header(self, timeout: float = NEGOTIATION_STEP_TIMEOUT) -> StreamOpened:
        event = await self.event(timeout)
        if isinstance(event, StreamOpened):
            if event.content_ns != SERVER_NS:
                raise StreamError("invalid-namespace", "server streams use jabber:server")
            return event
        if isinstance(event, StreamFailure):
            raise StreamError(event.condition, event.text)
        raise StreamError("not-well-formed", "expected a stream header")

    def buffered(self) -> int:
        """Bytes written but not yet sent to the peer."""
        transport = self.transport
        return self._out_bytes + (transport.get_write_buffer_size() if transport is not None else 0)

    async def drain(self) -> None:
        """Wait until the transport takes writes again (it paused above its high-water mark)."""
        self._flush()
        paused = self._write_paused
        if paused is not None and not paused.done():
            await paused

    def fail(self, condition: str, text: str = "") -> None:
        """Send a stream error and close (RFC 6120 section 4.9); callers send a header first."""
        if self.header_sent:
            self.write(stream_error(condition, text))
        self.close()

    def close(self, graceful: bool = False) -> None:
        if self.closed:
            return
        if graceful and self.header_sent:
            self.write(b"</stream:stream>")
        self.closed = True
        self._flush()
        transport = self.transport
        if transport is not None:
            if self.tls is not None:
                self.tls.close()
                pending = self.tls.take_output()
                if pending:
                    transport.write(pending)
            transport.close()
        self._wake()


async def open_xml_connection(address: str, port: int, max_stanza_bytes: int, *,
                              tls_context: ssl.SSLContext | None = None,
                              server_hostname: str | None = None) -> XmlConnection:
    """TCP to ``address``:``port`` (Direct TLS when ``tls_context`` is given, handshake included)."""
    loop = asyncio.get_running_loop()
    _, connection = await loop.create_connection(
        lambda: XmlConnection(max_stanza_bytes, tls_context=tls_context, server_side=False,
                              server_hostname=server_hostname), address, port)
    if tls_context is not None:
        try:
            await connection.wait_handshake()
        except BaseException:
            connection.close()
            raise
    return connection


def _domain(jid: str) -> str:
    return split_jid(jid)[1]


# --- outbound ---------------------------------------------------------------------------------------

class OutboundStream:
    """An authenticated stream that carries our stanzas to one remote domain."""

    def __init__(self, service: S2SService, connection: XmlConnection, local: str, remote: str,
                 record: ConnectionRecord, bidi: bool, stream_id: str = "") -> None:
        self.service = service
        self.connection = connection
        self.local = local
        self.remote = remote
        self.record = record
        self.bidi = bidi
        self.stream_id = stream_id
        #: Local domains authenticated on this stream: ours first, then piggybacked ones.
        self.locals: dict[str, ConnectionRecord] = {local: record}
        #: Piggybacked db:result requests waiting for the receiver's answer, by local domain.
        self.pending: dict[str, asyncio.Future[dialback.DialbackMessage]] = {}
        self.reader_task: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        return not self.connection.closed

    @property
    def can_piggyback(self) -> bool:
        """XEP-0220 section 2.3: more domain pairs may ride on a dialback-authenticated stream."""
        return self.alive and self.record.authentication == "dialback" and bool(self.stream_id)

    def send(self, stanza: Element) -> None:
        self.connection.send(stanza)
        from_ = stanza.attrs.get("from", "")
        record = self.locals.get(from_.partition("@")[2].partition("/")[0] if "@" in from_
                                 else from_.partition("/")[0], self.record)
        record.stanzas += 1

    async def piggyback(self, local: str) -> ConnectionRecord:
        """Authenticate ``local`` -> remote on this stream with another db:result."""
        future: asyncio.Future[dialback.DialbackMessage] = asyncio.get_running_loop().create_future()
        self.pending[local] = future
        record = self.service.new_record("out", local, self.remote, self.connection)
        record.tls = self.record.tls
        record.authentication = "dialback"
        self.connection.send(dialback.result_request(
            local, self.remote, self.service.secret.key(self.remote, local, self.stream_id)))
        try:
            async with asyncio.timeout(VERIFY_TIMEOUT + NEGOTIATION_STEP_TIMEOUT):  # not wait_for: gh-86296
                message = await future
        except (TimeoutError, ConnectionError) as error:
            self.service.finish_record(record, Level.UNSUCCESSFUL, f"piggybacked dialback failed: {error}")
            raise Unreachable(str(error) or "no dialback answer") from None
        finally:
            self.pending.pop(local, None)
        if message.type != "valid":
            self.service.finish_record(record, Level.UNSUCCESSFUL, "piggybacked dialback refused: "
                                       + (message.error or message.type))
            raise NegotiationFailed(f"the receiver refused {local} on the shared stream")
        self.locals[local] = record
        self.service.finish_record(record, Level.from_letter(self.record.level),
                                   f"piggybacked on connection #{self.record.id} (XEP-0220 section 2.3): "
                                   + self.record.reason, open_=True)
        return record

    async def run(self) -> None:
        """Read what the receiver sends on an established outbound stream until it closes."""
        connection = self.connection
        try:
            while True:
                event = await connection.event(timeout=None)
                if isinstance(event, StreamClosed):
                    connection.close(graceful=True)
                    break
                if isinstance(event, StreamFailure):
                    connection.fail(event.condition, event.text)
                    break
                if isinstance(event, Element) and event.xmlns == dialback.DIALBACK_NS:
                    self._dialback_answer(event)
                    continue
                # XEP-0288: the receiver may send stanzas back on this stream, from its own domain;
                # we reached it through DNS (and its certificate, where checked).
                if (isinstance(event, Element) and self.bidi and event.xmlns == ""
                        and event.name in ("message", "presence", "iq")
                        and not await self.service.accept_stanza(connection, event, {self.remote},
                                                                 set(self.locals))):
                    break
        except (ConnectionError, StreamError, OSError):
            connection.close()
        finally:
            for future in self.pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("the stream closed"))
            self.service.stream_closed(self)

    def _dialback_answer(self, element: Element) -> None:
        try:
            message = dialback.parse(element)
        except dialback.DialbackParseError:
            return
        if message.kind == "result" and message.from_ == self.remote and not message.is_request:
            future = self.pending.get(message.to)
            if future is not None and not future.done():
                future.set_result(message)


class OutboundRoute:
    """Stanzas from one local domain to one remote domain: a queue and at most one stream."""

    def __init__(self, service: S2SService, local: str, remote: str) -> None:
        self.service = service
        self.local = local
        self.remote = remote
        self.queue: collections.deque[tuple[Element, float]] = collections.deque()
        self.stream: OutboundStream | None = None
        self.bidi_stream: InboundStream | None = None
        self.task: asyncio.Task[None] | None = None

    def usable_stream(self) -> OutboundStream | InboundStream | None:
        if self.stream is not None and self.stream.alive:
            return self.stream
        if self.bidi_stream is not None and self.bidi_stream.alive:
            return self.bidi_stream
        return None

    def submit(self, stanza: Element) -> Awaitable[None] | None:
        stream = self.usable_stream()
        if stream is not None and not self.queue:
            stream.send(stanza)
            if stream.connection.buffered() > WRITE_BUFFER_LIMIT:
                return stream.connection.drain()  # back-pressure on whoever is sending
            return None
        if len(self.queue) >= MAX_QUEUED_STANZAS:
            return self.service.router.bounce(stanza, "resource-constraint",
                                              "too many stanzas waiting for this domain")
        self.queue.append((stanza, time.monotonic() + self.service.connect_timeout))
        self.service._publish()  # the queue is part of the status operators see
        if stream is not None:
            self.flush(stream)
        elif self.task is None:
            self.task = asyncio.ensure_future(self._connect())
        return None

    def flush(self, stream: OutboundStream | InboundStream) -> None:
        while self.queue and stream.alive:
            stanza, _ = self.queue.popleft()
            stream.send(stanza)

    async def _bounce_all(self, condition: str, text: str) -> None:
        while self.queue:
            stanza, _ = self.queue.popleft()
            await self.service.router.bounce(stanza, condition, text)

    async def _connect(self) -> None:
        delays = itertools.chain(RETRY_DELAYS, itertools.repeat(RETRY_DELAYS[-1]))
        last_error = "no attempt"
        try:
            while self.queue:
                now = time.monotonic()
                while self.queue and self.queue[0][1] <= now:
                    stanza, _ = self.queue.popleft()
                    await self.service.router.bounce(
                        stanza, "remote-server-timeout", f"{self.remote} unreachable: {last_error}")
                if not self.queue:
                    break
                remaining = self.queue[0][1] - now
                try:
                    # Not wait_for, which on Python 3.11 can swallow the cancellation that stops
                    # this task (CPython gh-86296): the route would connect on after shutdown.
                    async with asyncio.timeout(remaining):
                        stream = await self.service.connect_or_piggyback(self.local, self.remote)
                except DomainNotFound as error:
                    await self._bounce_all("remote-server-not-found", str(error))
                    break
                except NegotiationFailed as error:
                    # XEP-0238 flows: a policy mismatch reaches the sender as remote-server-timeout.
                    await self._bounce_all("remote-server-timeout", str(error))
                    break
                except (Unreachable, OSError, ConnectionError, StreamError, DnsTimeout, TimeoutError,
                        ssl.SSLError) as error:
                    last_error = str(error) or type(error).__name__
                    wait = min(next(delays), max(0.0, self.queue[0][1] - time.monotonic()))
                    await asyncio.sleep(wait)
                    continue
                self.stream = stream
                self.flush(stream)
                if self.queue:
                    continue  # the stream died while flushing: the rest waits for the next one
                break
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("outbound connection to %s failed", self.remote)
            await self._bounce_all("remote-server-not-found", "internal error")
        finally:
            self.task = None
            self.service._publish()


# --- inbound ------------------------------------------------------------------------------------------

class InboundStream:
    """One stream a remote server opened to us: the I/O of the sans-I/O ``s2s_stream.Receiver``.

    It reads the connection's events into the machine and carries out what the machine asks:
    writes, the TLS handshake, verifications with authoritative servers (run as tasks, their
    answers fed back), the records operators see, bidirectional routes and the stanzas to deliver.
    """

    def __init__(self, service: S2SService, connection: XmlConnection, direct_tls: bool) -> None:
        self.service = service
        self.connection = connection
        self.direct_tls = direct_tls
        # A slot in the global cap on connections not yet authenticated ([limits]
        # max_unauthenticated, shared with c2s, IMAP, SMTP and ManageSieve), given back at the first
        # authenticated domain pair or when the stream ends.
        self.preauth: Any = None
        self.machine = s2s_stream.Receiver(
            _ReceiverEnvironment(service, connection),
            direct_tls=(connection.peer_certificate() or b"") if direct_tls else None,
            legacy=service.policy.legacy)
        #: Records of the pairs authenticated on this stream.
        self.records: dict[tuple[str, str], ConnectionRecord] = {}
        #: Records of the pairs whose dialback key is being verified.
        self.verifying: dict[tuple[str, str], ConnectionRecord] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        self.deadline: asyncio.TimerHandle | None = None

    @property
    def alive(self) -> bool:
        return not self.connection.closed

    @property
    def external_domain(self) -> str | None:
        return self.machine.external_domain

    @property
    def header_to(self) -> str:
        return self.machine.header_to

    @property
    def authenticated(self) -> bool:
        """Some domain pair was authenticated on this stream (dialback, SASL EXTERNAL, permissive)."""
        return self.machine.authenticated

    def send(self, stanza: Element) -> None:
        """XEP-0288: stanzas back to the initiator on a bidirectional stream."""
        self.connection.send(stanza)

    def release_preauth(self) -> None:
        if self.preauth is not None:
            self.preauth.release()
            self.preauth = None

    def _negotiation_expired(self) -> None:
        """``[xmpp.federation] negotiation_timeout`` passed since the accept and nothing authenticated.

        The per-read bound (NEGOTIATION_STEP_TIMEOUT) does not stop a peer that drips a byte at a
        time; this bound on the whole negotiation does, as ejabberd's ``negotiation_timeout`` does.
        """
        if self.connection.closed:
            return
        self._carry_out_now(self.machine.expired(self.service.negotiation_timeout))

    async def run(self) -> None:
        connection = self.connection
        machine = self.machine
        self.deadline = asyncio.get_running_loop().call_later(self.service.negotiation_timeout,
                                                              self._negotiation_expired)
        try:
            while not machine.closed and not connection.closed:
                try:
                    event = await connection.event(
                        timeout=NEGOTIATION_STEP_TIMEOUT if machine.expects_header else None)
                except StreamError as error:  # the header did not come in time
                    actions = machine.fault(error.condition, error.text)
                except (ConnectionError, OSError, ssl.SSLError) as error:
                    actions = machine.lost(str(error))
                else:
                    if isinstance(event, StreamOpened):
                        actions = machine.opened(event.attrs, event.content_ns)
                    elif isinstance(event, Element):
                        actions = machine.element(event)
                    elif isinstance(event, StreamClosed):
                        actions = machine.closed_by_peer()
                    elif isinstance(event, StreamFailure):
                        actions = machine.parse_failure(event.condition, event.text)
                    else:
                        actions = machine.fault("not-well-formed", f"unexpected {event!r}")
                await self._carry_out(actions)
        finally:
            if self.deadline is not None:
                self.deadline.cancel()
            for task in self.tasks:
                task.cancel()
            for (remote, _local), record in list(self.verifying.items()):
                # The stream ended (closed by the peer, or the negotiation deadline) first: the record
                # must not stay "negotiating" in the status for ever.
                self.service.finish_record(record, Level.UNSUCCESSFUL, "the stream closed while the dialback "
                                           f"key was being verified with the authoritative server of {remote}")
            self.verifying.clear()
            self.service.inbound_closed(self)

    async def _carry_out(self, actions: list[s2s_stream.ReceiverAction]) -> None:
        """The machine's actions, in order; the two that wait (TLS, delivery) are awaited here."""
        for index, action in enumerate(actions):
            if isinstance(action, s2s_stream.StartTlsServer):
                self._carry_out_now(actions[:index])
                await self._starttls()
                await self._carry_out(actions[index + 1:])
                return
            if isinstance(action, s2s_stream.Deliver):
                self._carry_out_now(actions[:index])
                machine = self.machine
                if not await self.service.accept_stanza(self.connection, action.stanza,
                                                        machine.remote_domains(), None, self):
                    return
                await self._carry_out(actions[index + 1:])
                return
        self._carry_out_now(actions)

    async def _starttls(self) -> None:
        connection = self.connection
        try:
            # Called right after <proceed/> is written, with no await in between: the ClientHello
            # cannot arrive before the TLS layer is in place.
            await connection.starttls_server(self.service.tls.server())
        except (ConnectionError, OSError, ssl.SSLError, TimeoutError) as error:
            self._carry_out_now(self.machine.lost(str(error) or type(error).__name__))
            return
        self._carry_out_now(self.machine.tls_established(connection.peer_certificate()))

    def _carry_out_now(self, actions: list[s2s_stream.ReceiverAction]) -> None:
        """The actions that do not wait."""
        service = self.service
        connection = self.connection
        st = s2s_stream
        for action in actions:
            if isinstance(action, st.Send):
                connection.write(action.data)
            elif isinstance(action, st.SendHeader):
                connection.write_header(action.data)
            elif isinstance(action, st.Restart):
                connection.restart()
            elif isinstance(action, st.Verify):
                self._verify(action)
            elif isinstance(action, st.PairOpened):
                self._pair_opened(action)
            elif isinstance(action, st.PairFailed):
                record = self.verifying.pop((action.remote, action.local), None) if action.verification else None
                if record is None:
                    record = self._record(action.local, action.remote)
                service.finish_record(record, Level.UNSUCCESSFUL, action.reason)
            elif isinstance(action, st.AttachBidi):
                service.attach_bidi(action.local, action.remote, self)
            elif isinstance(action, st.AuthFailure):
                service.auth_throttle.failure(connection.peer_ip, protocol="xmpp-s2s",
                                              mechanism=action.mechanism)
            elif isinstance(action, st.Fail):
                connection.fail(action.condition, action.text)
            elif isinstance(action, st.Close):
                if action.note:
                    for record in self.records.values():
                        if record.state == "open":
                            record.reason += f"; {action.note}"
                    log.info("s2s in from %s: %s", self.machine.header_from or connection.peer, action.note)
                connection.close(graceful=action.graceful)
            else:  # pragma: no cover - the machine's actions are all above
                raise AssertionError(f"unknown action {action!r}")

    def _record(self, local: str, remote: str) -> ConnectionRecord:
        record = self.service.new_record("in", local, remote, self.connection)
        record.tls = self.connection.tls_version
        return record

    def _pair_opened(self, action: s2s_stream.PairOpened) -> None:
        key = (action.remote, action.local)
        record = self.verifying.pop(key, None) or self._record(action.local, action.remote)
        record.authentication = action.authentication
        record.bidi = action.bidi
        self.records[key] = record
        self.service.finish_record(record, action.level, action.reason, open_=True)
        self.release_preauth()

    def _verify(self, action: s2s_stream.Verify) -> None:
        record = self._record(action.local, action.remote)
        record.authentication = "dialback"
        self.verifying[(action.remote, action.local)] = record

        async def verification() -> None:
            outcome = await self.service.verify_with_authoritative(action.local, action.remote,
                                                                   action.stream_id, action.key)
            if not self.connection.closed:
                self._carry_out_now(self.machine.key_verified(action.remote, action.local, outcome))

        task = asyncio.ensure_future(verification())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


class _ReceiverEnvironment:
    """The questions ``s2s_stream.Receiver`` asks, answered from the service's policy and keys."""

    def __init__(self, service: S2SService, connection: XmlConnection) -> None:
        self.service = service
        self.connection = connection
        self.default_domain = service.default_domain
        self.hosted_domains = service.hosted_domains
        self.tls_available = service.tls.available
        self.bidi_enabled = service.bidi_enabled

    def is_hosted(self, domain: str) -> bool:
        return bool(self.service.router.is_hosted(domain))

    def profile(self, remote: str, local: str) -> ServerProfile:
        return self.service.policy.profile(remote, self.service.certificate_kind(local))

    def domain_policy(self, remote: str) -> DomainPolicy:
        return self.service.policy.for_domain(remote)

    def check_certificate(self, der: bytes | None, domain: str) -> CertificateCheck:
        return check_certificate(der, domain, self.service.trust)

    def key_is_ours(self, originator: str, receiver: str, stream_id: str, key: str) -> bool:
        return bool(self.service.secret.check(originator, receiver, stream_id, key))

    def throttled(self) -> bool:
        return self.service.auth_throttle.check(self.connection.peer_ip) is None


def peer_stream_error(error: Element) -> StreamError:
    """The ``<stream:error/>`` a peer sent (RFC 6120 section 4.9), with its ``<text/>`` when any."""
    condition = next((c.name for c in error.elements() if c.name != "text"), "undefined-condition")
    text = (error.find_text("text") or "").strip()
    return StreamError(condition, "the peer sent a stream error" + (f": {text}" if text else ""))


def serialize_features(features: Element) -> bytes:
    return serialize_stream_features(features, SERVER_NS)


# --- the service ----------------------------------------------------------------------------------

class S2SService:
    """Federation for every hosted domain; installed as the router's remote sender."""

    def __init__(self, host: Any, router: Any) -> None:
        self.host = host
        self.router = router
        config = host.config
        self.federation = config.xmpp.federation
        self.policy = FederationPolicy.from_config(self.federation)
        self.connect_timeout = float(self.federation.connect_timeout)
        self.negotiation_timeout = float(self.federation.negotiation_timeout)
        self.idle_timeout = float(self.federation.idle_timeout)
        self.idle_unauthenticated = min(self.idle_timeout,
                                        float(config.limits.idle_timeout_unauthenticated))
        self.bidi_enabled = bool(getattr(self.federation, "bidi", True))
        self.hosted_domains = list(config.domains)
        self.default_domain = self.hosted_domains[0] if self.hosted_domains else "localhost"
        self.trust = TrustStore(config.tls.ca_file)
        certificates = {name: (d.cert, d.key) for name, d in config.domains.items()
                        if d.cert is not None and d.key is not None}
        self.tls = S2STlsContexts(certificates, config.tls.ca_file, router.certificate_domain)
        self._certificate_kinds = {
            name: (CertificateKind.NONE if name not in certificates or self.policy.legacy
                   else CertificateKind.CA_ISSUED if own_certificate_trusted(certificates[name][0], self.trust)
                   else CertificateKind.SELF_SIGNED)
            for name in self.hosted_domains}
        # The nodes of a cluster share one secret (server_secrets, read in start), so a key one node
        # sent is verified by whichever node the remote server asks (XEP-0220 section 2.3).
        self.clustered = getattr(host, "cluster", None) is not None
        self.secret = (DialbackSecret(os.urandom(32)) if self.clustered
                       else DialbackSecret.load_or_create(config.data_dir))
        self.max_stanza = config.xmpp.max_stanza_size
        self.routes: dict[tuple[str, str], OutboundRoute] = {}
        self.inbound: set[InboundStream] = set()
        self.outbound: set[OutboundStream] = set()
        self.auth_throttle = AuthThrottle(config.limits)
        self.connections_per_ip = ConnectionCounter(S2S_CONNECTIONS_PER_IP)
        self.records: collections.deque[ConnectionRecord] = collections.deque(maxlen=STATUS_HISTORY)
        self._record_ids = itertools.count(1)
        self.servers: list[asyncio.AbstractServer] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Accepted connections' tasks, held so that none is collected while it runs.
        self._accepting: set[asyncio.Task[None]] = set()
        self._status_pending = False
        self._sweeper: asyncio.Task[None] | None = None
        self._verifications = asyncio.Semaphore(MAX_CONCURRENT_VERIFICATIONS)
        #: Why the current attempt for (local, remote) is on a clear stream (rule 1 fallback).
        self.fallback_notes: dict[tuple[str, str], str] = {}

    # --- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        from peerage.net.listen import start_listeners

        xmpp = self.host.config.xmpp
        if self.clustered:
            self.secret = DialbackSecret(await self.host.store.get_secret(dialback.CLUSTER_SECRET_NAME))
        self.servers += await start_listeners(
            "xmpp-server", "[xmpp] s2s_listen", xmpp.s2s_listen,
            protocol_factory=lambda: XmlConnection(
                self.max_stanza, lambda connection: self._accepted(connection, False)))
        if self.tls.available and not self.policy.legacy:
            # Direct TLS (XEP-0368) runs through the same TLS layer as STARTTLS, not asyncio's.
            context = self.tls.server()
            self.servers += await start_listeners(
                "xmpps-server", "[xmpp] s2s_direct_tls_listen", xmpp.s2s_direct_tls_listen,
                protocol_factory=lambda: XmlConnection(
                    self.max_stanza, lambda connection: self._accepted(connection, True),
                    tls_context=context, server_side=True))
        self.router.set_remote_sender(self.send)
        for domain, kind in self._certificate_kinds.items():
            log.info("s2s: %s federates at level %s by default (certificate: %s%s)", domain,
                     self.policy.default.name.lower(), kind.value,
                     ", legacy pre-1.0 dialback only" if self.policy.legacy else "")
        self._sweeper = asyncio.ensure_future(self._sweep())
        self._publish()

    async def stop(self) -> None:
        self.router.set_remote_sender(None)
        if self._sweeper is not None:
            self._sweeper.cancel()
        for server in self.servers:
            server.close()
        for route in self.routes.values():
            if route.task is not None:
                route.task.cancel()
            while route.queue:
                stanza, _ = route.queue.popleft()
                await self.router.bounce(stanza, "remote-server-timeout", "the server is shutting down")
        for stream in list(self.outbound):
            stream.connection.close(graceful=True)
        for inbound in list(self.inbound):
            inbound.connection.write(stream_error("system-shutdown", "the server is shutting down"))
            inbound.connection.close()
        for task in list(self._tasks):
            task.cancel()
        self._write_status()

    # --- sending ----------------------------------------------------------------------------------
    async def send(self, stanza: Element, to_domain: str) -> None:
        """Router hook: queue ``stanza`` for ``to_domain`` (returns once queued)."""
        from_ = stanza.attrs.get("from", "")
        local = _domain(from_) if from_ else self.default_domain
        if not self.router.is_hosted(local):
            local = self.default_domain
        policy = self.policy.for_domain(to_domain)
        if not policy.allowed:
            await self.router.bounce(stanza, "remote-server-not-found", policy.why_refused)
            return
        route = self.routes.get((local, to_domain))
        if route is None:
            route = self.routes[(local, to_domain)] = OutboundRoute(self, local, to_domain)
        result = route.submit(stanza)
        if result is not None:
            await result

    def attach_bidi(self, local: str, remote: str, stream: InboundStream) -> None:
        route = self.routes.get((local, remote))
        if route is None:
            route = self.routes[(local, remote)] = OutboundRoute(self, local, remote)
        route.bidi_stream = stream
        if route.queue and route.usable_stream() is stream:
            route.flush(stream)

    # --- receiving --------------------------------------------------------------------------------
    async def accept_stanza(self, connection: XmlConnection, stanza: Element, remotes: set[str],
                            locals_: set[str] | None, inbound: InboundStream | None = None) -> bool:
        """Check the addresses of a stanza received from a peer and deliver it. False when the
        stream was closed for it."""
        from_ = stanza.attrs.get("from")
        to = stanza.attrs.get("to")
        if not from_ or not to:
            connection.fail("improper-addressing", "stanzas between servers need 'from' and 'to'")
            return False
        try:
            from_ = normalize_jid(from_)
            to = normalize_jid(to)
        except JidError:
            connection.fail("improper-addressing", "malformed address")
            return False
        from_domain, to_domain = _domain(from_), _domain(to)
        authorised = from_domain in remotes
        if authorised and inbound is not None:
            authorised = inbound.machine.authorised(from_domain, to_domain)
        if locals_ is not None and to_domain not in locals_:
            authorised = False
        if not authorised:
            # RFC 6120 section 4.9.3.9: a 'from' the stream has not authenticated.
            connection.fail("invalid-from", f"{from_domain} is not authenticated on this stream")
            return False
        stanza.attrs["from"] = from_
        stanza.attrs["to"] = to
        if not await self.router.deliver_from_remote(stanza):
            await self.router.bounce(stanza, "item-not-found", f"{to_domain} is not served here")
        if inbound is not None:  # counted once delivered (or stored), so the count means "handled"
            record = inbound.records.get((from_domain, to_domain)) or (
                inbound.records.get((from_domain, inbound.header_to)))
            if record is not None:
                record.stanzas += 1
                self._publish()
        return True

    # --- connections ------------------------------------------------------------------------------
    def certificate_kind(self, local: str) -> CertificateKind:
        # A hosted service JID (conference.DOMAIN) presents its parent domain's certificate.
        return self._certificate_kinds.get(self.router.certificate_domain(local), CertificateKind.NONE)

    def _accepted(self, connection: XmlConnection, direct_tls: bool) -> None:
        task = asyncio.ensure_future(self._accept(connection, direct_tls))
        self._accepting.add(task)
        task.add_done_callback(self._accepting.discard)

    async def _accept(self, connection: XmlConnection, direct_tls: bool) -> None:
        if not self.connections_per_ip.acquire(connection.peer_ip):
            connection.fail("policy-violation", "too many connections from your address")
            return
        limits = getattr(self.host, "limits", None)
        preauth = limits.preauth() if limits is not None else None
        if limits is not None and preauth is None:
            self.connections_per_ip.release(connection.peer_ip)
            # RFC 6120 section 4.9.3.17: the server lacks the resources to serve the stream now.
            connection.fail("resource-constraint", "too many connections are still authenticating; try later")
            return
        inbound: InboundStream | None = None
        try:
            if direct_tls:
                try:
                    await connection.wait_handshake()
                except (ssl.SSLError, ConnectionError, TimeoutError) as error:
                    log.debug("s2s: Direct TLS handshake from %s failed: %s", connection.peer, error)
                    connection.close()
                    return
            inbound = InboundStream(self, connection, direct_tls)
            inbound.preauth, preauth = preauth, None
            self.inbound.add(inbound)
            await inbound.run()
        finally:
            if inbound is not None:
                inbound.release_preauth()
            if preauth is not None:
                preauth.release()
            self.connections_per_ip.release(connection.peer_ip)

    def inbound_closed(self, inbound: InboundStream) -> None:
        self.inbound.discard(inbound)
        for record in inbound.records.values():
            self._close_record(record)
        for route in self.routes.values():
            if route.bidi_stream is inbound:
                route.bidi_stream = None

    def stream_closed(self, stream: OutboundStream) -> None:
        self.outbound.discard(stream)
        for local, record in stream.locals.items():
            self._close_record(record)
            route = self.routes.get((local, stream.remote))
            if route is not None and route.stream is stream:
                route.stream = None
                if route.queue and route.task is None:
                    route.task = asyncio.ensure_future(route._connect())

    async def connect_or_piggyback(self, local: str, remote: str) -> OutboundStream:
        """Reuse a dialback stream another local domain has with ``remote`` when the policy for it is
        the same (XEP-0220 section 2.3), else open a new one."""
        for stream in list(self.outbound):
            if (stream.remote == remote and stream.can_piggyback and local not in stream.locals
                    and self.certificate_kind(local) is self.certificate_kind(stream.local)):
                try:
                    await stream.piggyback(local)
                except Unreachable:
                    break
                return stream
        return await self.connect_out(local, remote)

    async def discover(self, remote: str, allow_direct_tls: bool) -> list[Target]:
        """XEP-0368 then RFC 6120 section 3.2: SRV _xmpps-server, SRV _xmpp-server, then A/AAAA:5269."""
        targets: list[Target] = []
        if allow_direct_tls:
            targets += [Target(t.host, t.port, True)
                        for t in await self.host.dns.srv(f"_xmpps-server._tcp.{remote}")]
        targets += [Target(t.host, t.port, False)
                    for t in await self.host.dns.srv(f"_xmpp-server._tcp.{remote}")]
        if not targets:
            targets = [Target(remote, DEFAULT_S2S_PORT, False)]
        return targets

    async def _open(self, remote: str, local: str, allow_direct_tls: bool, present: bool
                    ) -> tuple[XmlConnection, Target]:
        """TCP (or Direct TLS) to the first target that answers."""
        targets = await self.discover(remote, allow_direct_tls)
        resolved_any = False
        errors: list[str] = []
        for target in targets:
            addresses = await self._addresses(target.host)
            resolved_any = resolved_any or bool(addresses)
            for address in addresses:
                try:
                    context = self.tls.client(local, present, direct_tls=True) if target.direct_tls else None
                    async with asyncio.timeout(CONNECT_TIMEOUT):  # not wait_for (CPython gh-86296)
                        connection = await open_xml_connection(
                            address, target.port, self.max_stanza, tls_context=context,
                            server_hostname=remote if context is not None else None)
                except (OSError, TimeoutError, ssl.SSLError) as error:
                    errors.append(f"{address}:{target.port}: {error or type(error).__name__}")
                    continue
                return connection, target
        if not resolved_any:
            raise DomainNotFound(f"no address for {remote} (SRV _xmpps-server/_xmpp-server, A/AAAA)")
        raise Unreachable("; ".join(errors) or f"cannot connect to {remote}")

    async def _addresses(self, host: str) -> list[str]:
        from peerage.identity.address import is_ip_literal

        if is_ip_literal(host):
            return [host.strip("[]")]
        return list(await self.host.dns.addresses(host))

    async def connect_out(self, local: str, remote: str) -> OutboundStream:
        """Connect and authenticate a stream for (local -> remote) stanzas."""
        profile = self.policy.profile(remote, self.certificate_kind(local))
        skip_tls = False
        while True:
            connection, target = await self._open(remote, local, not profile.legacy,
                                                  presents_certificate(profile))
            record = self.new_record("out", local, remote, connection)
            try:
                stream = await self._negotiate_out(connection, target, profile, local, remote, record,
                                                   skip_tls)
            except _FallBackToClear as fallback:
                # Not a failure of its own: the next connection's record says why it is clear.
                connection.close(graceful=True)
                with contextlib.suppress(ValueError):
                    self.records.remove(record)
                self.fallback_notes[(local, remote)] = str(fallback)
                skip_tls = True
                continue
            except NegotiationFailed as error:
                self.finish_record(record, Level.UNSUCCESSFUL, str(error))
                connection.close(graceful=True)
                raise
            except asyncio.CancelledError:
                self.finish_record(record, Level.UNSUCCESSFUL, "gave up: the bounded wait ran out")
                connection.close()
                raise
            except (StreamError, ssl.SSLError) as error:
                # The peer refused us (a stream error, a failed handshake): retrying will not help.
                transient = isinstance(error, StreamError) and error.condition in TRANSIENT_STREAM_ERRORS
                self.finish_record(record, Level.UNSUCCESSFUL, f"refused by the peer: {error}")
                connection.close()
                if transient:
                    raise Unreachable(str(error)) from None
                raise NegotiationFailed(str(error)) from None
            except (ConnectionError, OSError) as error:
                self.finish_record(record, Level.UNSUCCESSFUL, f"connection lost: {error}")
                connection.close()
                raise Unreachable(str(error)) from None
            self.outbound.add(stream)
            stream.reader_task = asyncio.ensure_future(stream.run())
            return stream

    async def _negotiate_out(self, connection: XmlConnection, target: Target, profile: ServerProfile,
                             local: str, remote: str, record: ConnectionRecord, skip_tls: bool
                             ) -> OutboundStream:
        """Carry out what the sans-I/O initiator (``peerage.xmpp.s2s_stream``) asks until it ends."""
        negotiation = s2s_stream.Initiator(
            profile, local, remote, present_certificate=presents_certificate(profile), skip_tls=skip_tls,
            bidi_enabled=self.bidi_enabled,
            dialback_key=lambda stream_id: self.secret.key(remote, local, stream_id))
        direct = None
        if target.direct_tls:
            record.tls = connection.tls_version
            direct = check_certificate(connection.peer_certificate(), remote, self.trust)
        result = await self._drive(connection, negotiation, negotiation.start(direct), local, remote, record)
        if isinstance(result, s2s_stream.FallBackToClear):
            raise _FallBackToClear(result.reason)
        if not isinstance(result, s2s_stream.Authenticated):
            raise NegotiationFailed(result.reason if isinstance(result, s2s_stream.Failed) else repr(result))
        authenticated, encrypted, receiver_verified = result.method, result.encrypted, result.receiver
        level = level_reached(encrypted, authenticated)
        record.tls = connection.tls_version
        record.authentication = authenticated
        record.bidi = result.bidi
        why = {
            "sasl-external": "TLS with a CA-issued certificate on both sides; SASL EXTERNAL",
            "dialback": ("TLS" + (" (receiver certificate: " + receiver_verified.explain(remote) + ")"
                                  if receiver_verified is not None else "") + ", then dialback")
            if encrypted else "dialback on a clear stream",
        }[authenticated]
        if result.note:
            why = f"{why} ({result.note})"
        if target.direct_tls:
            why = "Direct TLS (XEP-0368); " + why
        note = self.fallback_notes.pop((local, remote), None)
        if note is not None and not encrypted:
            why = f"{why} ({note.replace('; reconnecting without TLS', '')})"
        self.finish_record(record, level, why, open_=True)
        return OutboundStream(self, connection, local, remote, record, result.bidi, result.stream_id)

    async def _drive(self, connection: XmlConnection, negotiation: s2s_stream.Initiator,
                     actions: list[s2s_stream.Action], local: str, remote: str,
                     record: ConnectionRecord | None) -> s2s_stream.Result:
        """The I/O of an initiating negotiation: actions out, the receiver's header, elements and
        TLS handshake in, each read bounded (a dialback answer gets the receiver's verification
        time on top)."""
        expect = s2s_stream.Expect
        while True:
            for action in actions:
                if isinstance(action, s2s_stream.Send):
                    connection.write(action.data)
                elif isinstance(action, s2s_stream.SendHeader):
                    connection.write_header(action.data)
                elif isinstance(action, s2s_stream.Restart):
                    connection.restart()
                elif isinstance(action, s2s_stream.StartTls):
                    await connection.starttls(self.tls.client(local, action.present_certificate), remote)
                    if record is not None:
                        # A later failure still shows that TLS was reached (``peerage s2s status``).
                        record.tls = connection.tls_version
            if negotiation.result is not None:
                return negotiation.result
            wanted = negotiation.expects
            if wanted is expect.HEADER:
                actions = negotiation.opened((await connection.header()).attrs)
            elif wanted is expect.TLS:
                actions = negotiation.tls_established(
                    check_certificate(connection.peer_certificate(), remote, self.trust))
            else:
                timeout = NEGOTIATION_STEP_TIMEOUT
                if negotiation.awaits_dialback and negotiation.verify is None:
                    timeout += VERIFY_TIMEOUT
                actions = negotiation.element(await connection.element(timeout))

    async def verify_with_authoritative(self, local: str, remote: str, stream_id: str, key: str
                                        ) -> bool | DialbackError:
        """XEP-0220 section 2.1.2: ask ``remote``'s authoritative server whether ``key`` is its own."""
        profile = self.policy.profile(remote, self.certificate_kind(local))
        try:
            # The bound covers the verification, not the wait for a slot; asyncio.timeout rather
            # than wait_for, which on Python 3.11 can swallow a cancellation (CPython gh-86296).
            async with self._verifications, asyncio.timeout(VERIFY_TIMEOUT):
                return await self._verify(local, remote, stream_id, key, profile)
        except DomainNotFound:
            return DialbackError.REMOTE_SERVER_NOT_FOUND
        except (Unreachable, OSError, ConnectionError, StreamError, DnsTimeout, ssl.SSLError, TimeoutError) as error:
            log.info("s2s: dialback verification with %s failed: %s", remote, error)
            return DialbackError.REMOTE_SERVER_TIMEOUT

    async def _verify(self, local: str, remote: str, stream_id: str, key: str,
                      profile: ServerProfile) -> bool:
        present = presents_certificate(profile)
        connection, _ = await self._open(remote, local, not profile.legacy, present)
        negotiation = s2s_stream.Initiator(profile, local, remote, present_certificate=present,
                                           verify=(stream_id, key))
        try:
            result = await self._drive(connection, negotiation, negotiation.start(), local, remote, None)
        finally:
            connection.close(graceful=True)
        if isinstance(result, s2s_stream.Verified):
            return result.valid
        raise StreamError("policy-violation", result.reason if isinstance(result, s2s_stream.Failed) else "")

    # --- records and status -----------------------------------------------------------------------
    def new_record(self, direction: str, local: str, remote: str, connection: XmlConnection
                   ) -> ConnectionRecord:
        record = ConnectionRecord(next(self._record_ids), direction, local, remote, connection.peer)
        self.records.appendleft(record)
        return record

    def finish_record(self, record: ConnectionRecord, level: Level, reason: str, open_: bool = False
                      ) -> None:
        record.level = level.letter
        record.reason = reason
        record.state = "open" if open_ else "failed"
        if not open_:
            record.ended = time.time()
        arrow = "->" if record.direction == "out" else "<-"
        log.info("s2s %s %s %s %s: level %s (%s)", record.direction, record.local, arrow, record.remote,
                 record.level, reason)
        self._publish()

    def _close_record(self, record: ConnectionRecord) -> None:
        if record.state == "open":
            record.state = "closed"
            record.ended = time.time()
            log.info("s2s %s %s %s closed after %d stanzas", record.direction, record.local,
                     record.remote, record.stanzas)
            self._publish()

    def _publish(self) -> None:
        if self._status_pending:
            return
        self._status_pending = True
        try:
            asyncio.get_running_loop().call_later(STATUS_WRITE_DELAY, self._write_status)
        except RuntimeError:
            self._write_status()

    def status(self) -> dict[str, Any]:
        return {
            "updated": time.time(),
            "policy": {"default": self.policy.default.name.lower(), "legacy": self.policy.legacy,
                       "allow": sorted(self.policy.allow), "deny": sorted(self.policy.deny)},
            "certificates": {d: k.value for d, k in self._certificate_kinds.items()},
            "queues": {f"{local}->{remote}": len(route.queue)
                       for (local, remote), route in self.routes.items() if route.queue},
            "connections": [r.as_dict() for r in self.records],
        }

    def _write_status(self) -> None:
        self._status_pending = False
        try:
            self.host.publish_status("s2s", self.status())
        except OSError:
            log.exception("cannot write the s2s status file")

    async def _sweep(self) -> None:
        """Close streams idle for longer than ``[xmpp.federation] idle_timeout``."""
        while True:
            await asyncio.sleep(min(IDLE_SWEEP_INTERVAL, self.idle_timeout))
            now = time.monotonic()
            for stream in list(self.outbound):
                if now - stream.connection.last_activity > self.idle_timeout:
                    log.info("s2s: closing idle stream %s -> %s", stream.local, stream.remote)
                    stream.connection.close(graceful=True)
                    self.stream_closed(stream)
            for inbound in list(self.inbound):
                # Streams that never authenticated get the shorter unauthenticated limit.
                limit = self.idle_timeout if inbound.records else self.idle_unauthenticated
                if now - inbound.connection.last_activity > limit:
                    inbound.connection.close(graceful=True)


class _FallBackToClear(Exception):
    """Rule 1 of ``peerage.xmpp.federation``: optional TLS did not authenticate the receiver."""
