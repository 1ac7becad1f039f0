"""SIP over WebSocket (RFC 7118): WS and WSS listeners for the SIP transport layer.

This module is in charge of the WebSocket framing only: an HTTP server (aiohttp) on the
``ws_listen`` and ``wss_listen`` addresses of ``[sip]`` accepts upgrades that offer the ``sip``
subprotocol (RFC 7118 §4.1: refused otherwise), reads each WebSocket message as exactly one SIP
message (§5.1: text or binary frames, Content-Length optional), and hands it to
:class:`peerage.sip.transport.SipTransport` with a :class:`WebSocketConnection` as its stream.
Everything else (Via ``received``, responses on the same connection, the flow a registration is
bound to) is the transport's and the proxy's, as for TCP and TLS.

A WebSocket client cannot be dialled: its Contact names a ``.invalid`` host (§5.2), so requests
reach it only down its open connection (RFC 5626 flows, see :mod:`peerage.sip.registrar`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from peerage.config import parse_listen
from peerage.sip.message import SipParseError, parse_datagram
from peerage.sip.transaction import Destination

if TYPE_CHECKING:
    from peerage.sip.transport import SipTransport

log = logging.getLogger("peerage.sip")

# RFC 7118 §4.1: the WebSocket subprotocol of SIP.
SUBPROTOCOL = "sip"
# Largest WebSocket message accepted: one SIP message, bounded like a datagram (Kamailio's
# websocket module reads frames into its 64 KiB TCP buffer as well).
MAX_WS_MESSAGE = 65535
# Seconds between WebSocket pings on an idle connection (RFC 6455 §5.5.2), which keep NATs and
# proxies between a browser and us from dropping it; JsSIP and Kamailio do not ping by default,
# browsers answer pings.  Flow keep-alives (RFC 5626) ride on them.
WS_HEARTBEAT = 30.0
# Messages queued to one client before it is considered stuck and the connection dropped (the
# same idea as transport.MAX_STREAM_WRITE_BUFFER for TCP).
MAX_WS_QUEUE = 256


class WebSocketConnection:
    """One WebSocket client, seen by the SIP transport as a stream with ``write`` and ``closed``."""

    def __init__(self, owner: SipTransport, transport_name: str, ws: web.WebSocketResponse,
                 peer: tuple[str, int]) -> None:
        self.owner = owner
        self.transport_name = transport_name
        self.ws = ws
        self.peer = peer
        self.key: tuple[str, str, int] | None = (transport_name, peer[0], peer[1])
        self.closed = False
        self.verified_name: str | None = None
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._writer = asyncio.ensure_future(self._write_loop())

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        if self._queue.qsize() >= MAX_WS_QUEUE:
            log.warning("sip: WebSocket peer %s not reading; closing", self.peer)
            self.close()
            return
        self._queue.put_nowait(data)

    async def _write_loop(self) -> None:
        while True:
            data = await self._queue.get()
            if data is None:
                return
            try:
                # RFC 7118 §5.1: text frames for UTF-8 messages, binary ones otherwise
                try:
                    await self.ws.send_str(data.decode("utf-8"))
                except UnicodeDecodeError:
                    await self.ws.send_bytes(data)
            except (ConnectionError, RuntimeError):
                self.close()
                return

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._queue.put_nowait(None)
        task = asyncio.ensure_future(self.ws.close())
        task.add_done_callback(lambda _task: None)

    def lost(self) -> None:
        self.closed = True
        self._queue.put_nowait(None)


class WebSocketListener:
    """The aiohttp servers for ``ws_listen`` and ``wss_listen``."""

    def __init__(self, owner: SipTransport) -> None:
        self.owner = owner
        self.runners: list[web.AppRunner] = []

    async def start(self, ws: list[str], wss: list[str], context: ssl.SSLContext | None) -> None:
        for name, specs, ssl_context in (("WS", ws, None), ("WSS", wss, context)):
            if not specs or (name == "WSS" and ssl_context is None):
                continue
            app = web.Application()
            app.router.add_get("/{tail:.*}", self._handler(name))
            runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await runner.setup()
            self.runners.append(runner)
            for spec in specs:
                host, port = parse_listen(spec)
                site = web.TCPSite(runner, host, port, ssl_context=ssl_context, reuse_address=True)
                await site.start()
                self.owner.endpoints.setdefault(name, (host, port))
                log.info("listening sip-%s on %s:%d", name.lower(), host, port)

    async def stop(self) -> None:
        for runner in self.runners:
            with contextlib.suppress(Exception):
                await runner.cleanup()

    def _handler(self, transport_name: str) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._serve(request, transport_name)
        return handle

    async def _serve(self, request: web.Request, transport_name: str) -> web.StreamResponse:
        offered = [p.strip().lower() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        if SUBPROTOCOL not in offered:
            # RFC 7118 §4.1: a handshake without the sip subprotocol is refused
            return web.Response(status=400, text="the 'sip' WebSocket subprotocol is required\n")
        ws = web.WebSocketResponse(protocols=(SUBPROTOCOL,), heartbeat=WS_HEARTBEAT,
                                   max_msg_size=MAX_WS_MESSAGE)
        await ws.prepare(request)
        peername = request.transport.get_extra_info("peername") if request.transport else None
        peer = (str(peername[0]), int(peername[1])) if peername else ("", 0)
        connection = WebSocketConnection(self.owner, transport_name, ws, peer)
        owner = self.owner
        owner.register_connection(connection)
        source = Destination(transport_name, peer, connection)
        try:
            async for frame in ws:
                if frame.type == WSMsgType.TEXT:
                    data = frame.data.encode("utf-8")
                elif frame.type == WSMsgType.BINARY:
                    data = frame.data
                else:
                    break
                self._receive(data, source, connection)
        finally:
            connection.lost()
            owner.unregister_connection(connection)
        return ws

    def _receive(self, data: bytes, source: Destination, connection: WebSocketConnection) -> None:
        from peerage.sip.transport import error_response

        if not data.strip(b"\r\n"):
            connection.write(b"\r\n")  # a CRLF keep-alive (RFC 5626 §3.5.1) inside a frame
            return
        try:
            message = parse_datagram(data)  # §5.1: one message per frame, like a datagram
        except SipParseError as error:
            if error.message is not None and error.message.method not in (None, "ACK"):
                connection.write(error_response(error, source.address))
            return
        try:
            self.owner.deliver(message, source)
        except Exception:
            log.exception("sip: error on a WebSocket message from %s", source.address)
