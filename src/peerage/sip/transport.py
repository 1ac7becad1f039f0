"""SIP transports (RFC 3261 §18): UDP and TCP on 5060, TLS on 5061, as asyncio adapters.

This module is in charge of moving bytes: receiving datagrams and stream data, framing them with
:mod:`peerage.sip.message`, stamping the top Via of requests with ``received`` and ``rport``
(RFC 3581 §4), answering CRLF keep-alives (RFC 5626 §3.5.1), answering malformed requests with 400
where enough was parsed (RFC 4475), and sending: datagrams from our listening socket, stream data on
an existing connection to the peer when there is one (responses go back on the connection the
request came in on, §18.2.2), otherwise on a new one.

A stream connection is anything with ``write(bytes)`` and ``closed``; the WebSocket adapter
(RFC 7118, :mod:`peerage.sip.websocket`) plugs in the same way, one SIP message per WebSocket
message.  WebSocket clients cannot be dialled: a request reaches them only on their connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

from peerage.config import parse_listen
from peerage.sip.message import (
    Header,
    SipMessage,
    SipParseError,
    StreamParser,
    Via,
    make_response,
    parse_datagram,
    split_values,
    take_simple_via,
)
from peerage.sip.transaction import Destination, udp_destination

log = logging.getLogger("peerage.sip")

# Bytes queued on one outgoing stream before we consider the peer stuck and drop the connection.
# Kamailio's tcp_conn_wq_max defaults to 32 KiB per connection (with async writes enabled); we allow
# a little more since we write whole messages.
MAX_STREAM_WRITE_BUFFER = 256 * 1024
# Concurrent stream connections kept (incoming + outgoing). Kamailio's tcp_max_connections is 2048.
MAX_STREAM_CONNECTIONS = 2048
# Seconds to wait for an outgoing TCP/TLS connection (RFC 3261 leaves it open; Timer B/F still cap
# the transaction at 32 s).  Kamailio's tcp_connect_timeout is 10 s.
CONNECT_TIMEOUT = 10.0
# Seconds an idle stream connection stays open; Kamailio's tcp_connection_lifetime is 120 s, but a
# registered client keeps its flow open with CRLF keep-alives (RFC 5626) well within that.
STREAM_IDLE_TIMEOUT = 600.0

# Receive buffer asked for on UDP sockets: absorbs bursts while the loop is busy.  Kamailio raises
# its UDP buffers up to udp4_raw_buffer/maxbuffer (256 KiB by default); the kernel caps the request
# at net.core.rmem_max.
UDP_RECEIVE_BUFFER = 4 * 1024 * 1024
# Datagrams read per readiness callback before yielding to other work (fairness with streams).
UDP_READ_BATCH = 64
# The largest UDP payload (65,535 minus IP and UDP headers).
UDP_MAX_DATAGRAM = 65535
# Linux's SO_TIMESTAMPNS (asm-generic/socket.h; Python's socket module does not name it): the kernel
# stamps every datagram with its arrival time (CLOCK_REALTIME, a struct timespec), so how long the
# one read first in a batch, the oldest still queued, waited unread is known exactly.
SO_TIMESTAMPNS = 35
TIMESPEC = struct.Struct("@qq")
UDP_ANCILLARY = socket.CMSG_SPACE(TIMESPEC.size)

MessageHandler = Callable[[SipMessage, Destination], None]

# STUN (RFC 5389) magic cookie: RFC 5626 §8 keep-alives on UDP are STUN Binding requests sent to
# the SIP port, told apart from SIP by their first byte (0x00 or 0x01; SIP starts with a letter).
STUN_MAGIC = b"\x21\x12\xa4\x42"


def stun_binding_response(data: bytes, address: tuple[str, int]) -> bytes | None:
    """The Binding success response (with XOR-MAPPED-ADDRESS) to a STUN Binding request, or None
    when ``data`` is not one.  IPv4 and IPv6 sources both work (RFC 5389 §15.2)."""
    if len(data) < 20 or data[0:2] != b"\x00\x01" or data[4:8] != STUN_MAGIC:
        return None
    transaction = data[8:20]
    port = address[1] ^ 0x2112
    try:
        packed = socket.inet_pton(socket.AF_INET6 if ":" in address[0] else socket.AF_INET, address[0])
    except OSError:
        return None
    mask = STUN_MAGIC + transaction
    xored = bytes(b ^ mask[i] for i, b in enumerate(packed))
    family = b"\x02" if len(packed) == 16 else b"\x01"
    value = b"\x00" + family + port.to_bytes(2, "big") + xored
    attribute = b"\x00\x20" + len(value).to_bytes(2, "big") + value
    return b"\x01\x01" + len(attribute).to_bytes(2, "big") + STUN_MAGIC + transaction + attribute


def stamp_via(message: SipMessage, ip: str, port: int) -> None:
    """RFC 3261 §18.2.1 ``received`` and RFC 3581 §4 ``rport`` on the top Via of a request."""
    for position, entry in enumerate(message.headers):
        if entry[0] != "via":
            continue
        raw = entry[2]
        via = take_simple_via(raw) if "," not in raw else None
        if via is not None:
            _stamp_simple_via(message, position, entry, via, ip, port)
            return
        if "," in raw:
            values = split_values(raw)
            top, rest = values[0], values[1:]
        else:
            top, rest = raw.strip(), []
        sent_by_end = top.find(";")
        head = top if sent_by_end < 0 else top[:sent_by_end]
        params = "" if sent_by_end < 0 else top[sent_by_end:]
        param_names = [p.split("=", 1)[0].strip().lower() for p in params.split(";") if p.strip()]
        changed = False
        if "rport" in param_names:
            params = ";".join(
                f"rport={port}" if p.strip().lower() == "rport" else p for p in params.split(";"))
            changed = True
        host = head.rsplit(" ", 1)[-1]
        host = host[1:host.find("]")] if host.startswith("[") else host.split(":", 1)[0]
        if (host != ip or "rport" in param_names) and "received" not in param_names:
            params += f";received={ip}"
            changed = True
        if changed:
            top = head + params
            message.headers[position] = (entry[0], entry[1], ", ".join([top, *rest]) if rest else top)
            message.headers_changed("via")
        return


def _stamp_simple_via(message: SipMessage, position: int, entry: Header, via: Via, ip: str, port: int) -> None:
    """stamp_via for a lone Via of the simple form (no blanks, quotes or IPv6 reference), parsed
    already: the parse, updated, becomes the message's top Via instead of being redone."""
    params = via.params
    rport = "rport" in params
    if rport or ("received" not in params and via.host != ip):
        text = entry[2]
        if rport and params["rport"] is None:
            if text.endswith(";rport"):  # as user agents write it: last, or between others
                text = f"{text}={port}"
            elif ";rport;" in text:
                text = text.replace(";rport;", f";rport={port};", 1)
            else:
                head, _, rest = text.partition(";")
                text = head + "".join([f";rport={port}" if item.lower() == "rport" else f";{item}"
                                       for item in rest.split(";")])
            params["rport"] = str(port)
        if "received" not in params:
            text += f";received={ip}"
            params["received"] = ip
        message.replace_top_via(position, (entry[0], entry[1], text), via)
    else:
        message._top_via = via


class StreamConnection(asyncio.Protocol):
    """One TCP or TLS connection, incoming or outgoing."""

    def __init__(self, owner: SipTransport, transport_name: str, *, incoming: bool = False) -> None:
        self.owner = owner
        self.transport_name = transport_name
        self.incoming = incoming
        # An incoming connection must carry one complete SIP message within [limits] auth_deadline
        # (a slow drip never does) and holds a place in the global cap on anonymous connections until
        # then (peerage.net.limits). Peers and clients alike send a whole request at once.
        self.deadline_handle: asyncio.TimerHandle | None = None
        self.preauth: Any = None
        self.parser = StreamParser()
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] = ("", 0)
        self.closed = False
        self.key: tuple[str, str, int] | None = None
        self.idle_handle: asyncio.TimerHandle | None = None
        self.verified_name: str | None = None  # the domain an outgoing TLS peer proved

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = (peer[0], peer[1])
        self.key = (self.transport_name, self.peer[0], self.peer[1])
        self.owner.register_connection(self)
        self._touch()
        if self.incoming and self.owner.auth_deadline is not None:
            self.preauth = self.owner.preauth() if self.owner.preauth is not None else True
            if self.preauth is None:
                self.close()
                return
            self.deadline_handle = asyncio.get_running_loop().call_later(self.owner.auth_deadline, self.close)

    def _first_message(self) -> None:
        if self.deadline_handle is not None:
            self.deadline_handle.cancel()
            self.deadline_handle = None
        if self.preauth is not None and self.preauth is not True:
            self.preauth.release()
        self.preauth = None

    def _touch(self) -> None:
        if self.idle_handle is not None:
            self.idle_handle.cancel()
        self.idle_handle = asyncio.get_running_loop().call_later(STREAM_IDLE_TIMEOUT, self.close)

    def data_received(self, data: bytes) -> None:
        self._touch()
        try:
            items = self.parser.feed(data)
        except SipParseError as error:
            if error.message is not None and error.message.method not in (None, "ACK"):
                self.write(error_response(error, self.peer))
            self.close()  # framing is lost: RFC 3261 §18.3 says close the connection
            return
        source = Destination(self.transport_name, self.peer, self)
        for item in items:
            if isinstance(item, str):
                self.write(b"\r\n")  # pong (RFC 5626 §3.5.1)
                continue
            if self.deadline_handle is not None or self.preauth is not None:
                self._first_message()
            self.owner.deliver(item, source)

    def write(self, data: bytes) -> None:
        transport = self.transport
        if self.closed or transport is None:
            return
        if transport.get_write_buffer_size() > MAX_STREAM_WRITE_BUFFER:
            log.warning("sip: %s peer %s not reading; closing", self.transport_name, self.peer)
            self.close()
            return
        transport.write(data)

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.transport.close()
        self.closed = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.idle_handle is not None:
            self.idle_handle.cancel()
        self._first_message()
        self.owner.unregister_connection(self)


class UdpEndpoint:
    """A UDP socket read in batches straight from the event loop's reader callback.

    Plain non-blocking ``recvfrom``/``sendto`` calls cost a few microseconds each, less than a
    datagram transport's per-packet machinery; at thousands of messages a second that matters.
    """

    def __init__(self, owner: SipTransport, host: str, port: int) -> None:
        self.owner = owner
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER)
        self.sock.setblocking(False)
        self.sock.bind((host, port))
        self.closed = False
        # The longest a datagram read first in a batch had waited in the kernel's buffer since
        # ``waited()`` last looked (seconds).  Requests are answered that late, plus processing:
        # what overload control compares with ``overload_delay``.  Not the time since the socket
        # was last emptied: close to a full core a short stall (a collector pass) leaves a queue that
        # takes long to drain while each datagram in it waits only about as long as the stall.
        self.longest_wait = 0.0
        # Whether the socket was read empty since ``waited()`` last looked: the backlog is gone.
        self.drained = False
        self.timestamps = False
        if sys.platform.startswith("linux"):
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                self.timestamps = True
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._readable)

    def waited(self) -> tuple[float, bool]:
        """The longest wait seen since the last call (0.0 when nothing was read) and whether the
        socket was read empty meanwhile (True when nothing came), then both reset."""
        longest, self.longest_wait = self.longest_wait, 0.0
        drained = self.drained or not longest
        self.drained = False
        return longest, drained

    def _readable(self) -> None:
        deliver = self.owner.datagram
        if self.timestamps:
            # One recvmsg per batch (about half a microsecond more than recvfrom): the first
            # datagram is the oldest queued, so its stamp bounds the wait of the whole batch.
            try:
                data, ancillary, _, address = self.sock.recvmsg(UDP_MAX_DATAGRAM, UDP_ANCILLARY)
            except (BlockingIOError, InterruptedError):
                self.drained = True
                return
            except OSError as error:
                log.debug("sip: UDP error %s", error)
                return
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= TIMESPEC.size:
                    seconds, nanoseconds = TIMESPEC.unpack_from(value)
                    wait = time.time() - seconds - nanoseconds * 1e-9
                    if wait > self.longest_wait:
                        self.longest_wait = wait  # a wall-clock step back gives a negative wait: ignored
            try:
                deliver(data, (address[0], address[1]))
            except Exception:
                log.exception("sip: error on a datagram from %s", address)
            batch = UDP_READ_BATCH - 1
        else:
            batch = UDP_READ_BATCH
        receive = self.sock.recvfrom
        for _ in range(batch):
            try:
                data, address = receive(UDP_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                self.drained = True
                return
            except OSError as error:  # ICMP errors reported on the socket
                log.debug("sip: UDP error %s", error)
                continue
            try:
                deliver(data, (address[0], address[1]))
            except Exception:
                log.exception("sip: error on a datagram from %s", address)

    def sendto(self, data: bytes, address: tuple[str, int]) -> None:
        try:
            self.sock.sendto(data, address)
        except (BlockingIOError, InterruptedError):
            pass  # full send buffer: UDP is lossy, the transaction layer retransmits
        except OSError as error:
            log.debug("sip: UDP send to %s failed: %s", address, error)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()


def error_response(error: SipParseError, source: tuple[str, int]) -> bytes:
    """A stateless answer to a malformed request, its top Via stamped with ``received`` (and
    ``rport``) as for any request (RFC 3261 §18.2.1, RFC 3581 §4)."""
    assert error.message is not None
    with contextlib.suppress(SipParseError, ValueError):
        stamp_via(error.message, source[0], source[1])
    return make_response(error.message, error.status, error.reason[:80], "pg400").serialize()


class SipTransport:
    """All listening sockets and stream connections of the SIP service."""

    def __init__(self, handler: MessageHandler, *, max_message_size: int,
                 admit: Callable[[str], bool] = lambda ip: True,
                 banned: Callable[[str], bool] = lambda ip: False,
                 client_context: Callable[[str], ssl.SSLContext] | None = None,
                 on_unreachable: Callable[[Destination], None] | None = None) -> None:
        self.handler = handler
        # Set by the service from [limits]: the deadline for an incoming stream's first message and
        # the global cap's slot factory (peerage.net.limits.Limits.preauth).
        self.auth_deadline: float | None = None
        self.preauth: Callable[[], Any] | None = None
        self.on_unreachable = on_unreachable
        self.max_message_size = max_message_size
        self.admit = admit
        self.banned = banned
        self.client_context = client_context
        self.udp: list[UdpEndpoint] = []
        self.servers: list[asyncio.AbstractServer] = []
        self.connections: dict[tuple[str, str, int], Any] = {}  # StreamConnection or WebSocketConnection
        self._pending: dict[tuple[str, str, int], list[bytes]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.endpoints: dict[str, tuple[str, int]] = {}
        self.websocket: Any = None
        # RFC 5626 outbound UDP flows being watched (the registrar adds them): source address -> when
        # anything (a STUN keep-alive, a request, a response) last came from it, time.monotonic().
        self.udp_heard: dict[tuple[str, int], float] = {}

    async def start(self, udp: list[str], tcp: list[str], tls: list[str],
                    server_context: ssl.SSLContext | None, ws: list[str] | None = None,
                    wss: list[str] | None = None) -> None:
        loop = asyncio.get_running_loop()
        for spec in udp:
            host, port = parse_listen(spec)
            self.udp.append(UdpEndpoint(self, host, port))
            self.endpoints.setdefault("UDP", (host, port))
            log.info("listening sip-udp on %s:%d", host, port)
        for name, specs, context in (("TCP", tcp, None), ("TLS", tls, server_context)):
            if name == "TLS" and context is None:
                continue
            for spec in specs:
                host, port = parse_listen(spec)
                server = await loop.create_server(
                    lambda name=name: StreamConnection(self, name, incoming=True), host, port, ssl=context,
                    reuse_address=True, backlog=1024)
                self.servers.append(server)
                self.endpoints.setdefault(name, (host, port))
                log.info("listening sip-%s on %s:%d", name.lower(), host, port)
        if ws or wss:
            from peerage.sip.websocket import WebSocketListener

            self.websocket = WebSocketListener(self)
            await self.websocket.start(ws or [], wss or [], server_context)

    def udp_wait(self) -> tuple[float, bool]:
        """The longest any UDP datagram read since the last call had waited unread in the kernel
        (seconds), what the event loop's own lateness does not show (the loop may be on time yet
        never get to the bottom of the socket), and whether every UDP socket was read empty since."""
        longest, drained = 0.0, True
        for endpoint in self.udp:
            wait, emptied = endpoint.waited()
            longest = max(longest, wait)
            drained = drained and emptied
        return longest, drained

    async def stop(self) -> None:
        if self.websocket is not None:
            await self.websocket.stop()
        for server in self.servers:
            server.close()
        for connection in list(self.connections.values()):
            connection.close()
        for endpoint in self.udp:
            endpoint.close()
        for task in list(self._tasks):
            task.cancel()

    # -- receiving
    def datagram(self, data: bytes, address: tuple[str, int]) -> None:
        heard = self.udp_heard
        if heard and address in heard:
            heard[address] = time.monotonic()  # the flow is alive (RFC 5626 §4.4.1)
        ip = address[0]
        if len(data) <= 4 and not data.strip(b"\r\n"):
            return  # CRLF keep-alive on UDP (RFC 5626 uses STUN there; ignore the CRLFs)
        if data[0] < 2:
            response = stun_binding_response(data, address)  # RFC 5626 §8 keep-alive
            if response is not None and not self.banned(ip) and self.admit(ip):
                self.sendto(response, address)
            return
        if self.banned(ip):
            return  # flood ban: drop silently, as pike does
        if len(data) > self.max_message_size:
            return
        try:
            message = parse_datagram(data)
        except SipParseError as error:
            if error.message is not None and error.message.method not in (None, "ACK"):
                self.sendto(error_response(error, address), address)
            return
        self.deliver(message, udp_destination(address))

    def deliver(self, message: SipMessage, source: Destination) -> None:
        if message.method is not None:
            if not self.admit(source.address[0]):
                return  # requests count towards the flood limit (pike_check_req)
            try:
                stamp_via(message, source.address[0], source.address[1])
            except SipParseError:
                return
        self.handler(message, source)

    # -- sending
    def sendto(self, data: bytes, address: tuple[str, int]) -> None:
        if self.udp:
            self.udp[0].sendto(data, address)

    def send(self, data: bytes, destination: Destination) -> None:
        transport = destination.transport
        if transport == "UDP":
            self.sendto(data, destination.address)
            return
        connection = destination.connection
        if connection is not None and not connection.closed:
            connection.write(data)
            return
        key = (transport, destination.address[0], destination.address[1])
        existing = self.connections.get(key)
        if existing is not None and transport == "TLS" and destination.name is not None \
                and existing.verified_name != destination.name.lower():
            existing = None  # a connection proven for another domain does not prove this one
        if existing is not None and not existing.closed:
            existing.write(data)
            return
        if transport in ("WS", "WSS"):
            # RFC 7118 §5.2: a WebSocket client is reached on its connection or not at all
            if self.on_unreachable is not None:
                self.on_unreachable(Destination(transport, destination.address))
            return
        pending = self._pending.get(key)
        if pending is not None:
            pending.append(data)
            return
        self._pending[key] = [data]
        task = asyncio.ensure_future(self._connect(key, destination.name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, key: tuple[str, str, int], name: str | None) -> None:
        transport_name, host, port = key
        loop = asyncio.get_running_loop()
        context = None
        server_name = None
        if transport_name == "TLS":
            if self.client_context is None:
                self._pending.pop(key, None)
                return
            context = self.client_context(name or host)
            server_name = name or host
            # RFC 5922 §4: the certificate must name the SIP domain we are trying to reach
            # (checked by OpenSSL against its subjectAltName), and chain to a trusted root.
            context.check_hostname = context.verify_mode == ssl.CERT_REQUIRED
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can lose the cancellation stop()
            # sends as the connection completes (CPython gh-86296), and the task then runs on.
            async with asyncio.timeout(CONNECT_TIMEOUT):
                _, connection = await loop.create_connection(
                    lambda: StreamConnection(self, transport_name), host, port, ssl=context,
                    server_hostname=server_name)
        except (TimeoutError, OSError, ssl.SSLError) as error:
            log.info("sip: cannot connect to %s %s:%d%s: %s", transport_name, host, port,
                     f" ({server_name})" if server_name else "", error)
            self._pending.pop(key, None)
            if self.on_unreachable is not None:
                # §17.1.4: report the transport error so the proxy fails over now, not after Timer B
                self.on_unreachable(Destination(transport_name, (host, port)))
            return
        if server_name is not None:
            connection.verified_name = server_name.lower()
        for data in self._pending.pop(key, []):
            connection.write(data)

    def register_connection(self, connection: Any) -> None:
        if len(self.connections) >= MAX_STREAM_CONNECTIONS:
            connection.close()
            return
        assert connection.key is not None
        self.connections[connection.key] = connection

    def unregister_connection(self, connection: Any) -> None:
        key = connection.key
        if key is not None and self.connections.get(key) is connection:
            del self.connections[key]
