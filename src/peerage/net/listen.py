"""Listeners: open TCP (optionally TLS) servers for a list of "host:port" specs and log each one.

This module is in charge of binding, of logging `listening <name> on <host>:<port>` for every address
(operators and the test harness wait for that line), and of turning a bind failure into an error that
says which setting to change.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from peerage.config import parse_listen

log = logging.getLogger("peerage.net")

StreamHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
# Pending connections queued by the kernel (nginx and Prosody use 511/128; Linux caps at somaxconn).
LISTEN_BACKLOG = 1024


class ListenError(Exception):
    """A listen address could not be bound; the message names the setting."""


def _explain(setting: str, spec: str, exc: OSError) -> ListenError:
    if exc.errno == errno.EACCES:
        hint = "ports below 1024 need root or CAP_NET_BIND_SERVICE (setcap 'cap_net_bind_service=+ep' on python)"
    elif exc.errno == errno.EADDRINUSE:
        hint = "another program already listens there; stop it or change the port"
    elif exc.errno == errno.EADDRNOTAVAIL:
        hint = "this machine has no such address"
    else:
        hint = exc.strerror or str(exc)
    return ListenError(f"cannot listen on {spec} ({setting}): {hint}")


async def start_listeners(
    name: str,
    setting: str,
    specs: Sequence[str],
    *,
    stream_handler: StreamHandler | None = None,
    protocol_factory: Callable[[], asyncio.BaseProtocol] | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> list[asyncio.AbstractServer]:
    """Bind every spec; `setting` (e.g. "[xmpp] c2s_listen") is named in errors."""
    loop = asyncio.get_running_loop()
    servers: list[asyncio.AbstractServer] = []
    if stream_handler is not None:
        stream_handler = _counted_handler(name, stream_handler)
    if protocol_factory is not None:
        protocol_factory = _counted_factory(name, protocol_factory)
    for spec in specs:
        host, port = parse_listen(spec)
        if ":" in host and not socket.has_ipv6:
            continue
        try:
            if stream_handler is not None:
                server = await asyncio.start_server(
                    stream_handler, host, port, ssl=ssl_context, backlog=LISTEN_BACKLOG, reuse_address=True
                )
            else:
                assert protocol_factory is not None
                server = await loop.create_server(
                    protocol_factory, host, port, ssl=ssl_context, backlog=LISTEN_BACKLOG, reuse_address=True
                )
        except OSError as exc:
            # An IPv6 wildcard on a host without IPv6 is not an operator error.
            if ":" in host and exc.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                log.info("skipping %s on %s: no IPv6 here", name, spec)
                continue
            for opened in servers:
                opened.close()
            raise _explain(setting, spec, exc) from None
        servers.append(server)
        for sock in server.sockets:
            address = sock.getsockname()
            shown = f"[{address[0]}]:{address[1]}" if sock.family == socket.AF_INET6 else f"{address[0]}:{address[1]}"
            log.info("listening %s on %s", name, shown)
    return servers


def _counted_handler(name: str, handler: StreamHandler) -> StreamHandler:
    from peerage.ops.metrics import CONNECTIONS, CONNECTIONS_OPEN

    accepted, open_now = CONNECTIONS.labels(name), CONNECTIONS_OPEN.labels(name)

    async def counted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.inc()
        open_now.inc()
        try:
            await handler(reader, writer)
        finally:
            open_now.dec()

    return counted


def _counted_factory(name: str, factory: Callable[[], asyncio.BaseProtocol]) -> Callable[[], asyncio.BaseProtocol]:
    """Count connections accepted and open (peerage_connections_total, peerage_connections_open).

    Protocols are often slotted, so instead of wrapping each one, its class is swapped for a subclass
    (same layout, no new slots) whose connection_made/connection_lost also count: STARTTLS and every
    other path that calls the protocol directly still reach the counting methods.
    """
    from peerage.ops.metrics import CONNECTIONS, CONNECTIONS_OPEN

    accepted, open_now = CONNECTIONS.labels(name), CONNECTIONS_OPEN.labels(name)
    classes: dict[type, type | None] = {}

    def counting_class(cls: Any) -> type | None:
        if cls not in classes:
            def connection_made(self: Any, transport: asyncio.BaseTransport) -> None:
                accepted.inc()
                open_now.inc()
                cls.connection_made(self, transport)

            def connection_lost(self: Any, exc: Exception | None) -> None:
                open_now.dec()
                cls.connection_lost(self, exc)

            classes[cls] = type(cls.__name__, (cls,), {
                "__slots__": (), "__module__": cls.__module__, "__qualname__": cls.__qualname__,
                "connection_made": connection_made, "connection_lost": connection_lost})
        return classes[cls]

    def counted() -> asyncio.BaseProtocol:
        protocol = factory()
        counting = counting_class(type(protocol))
        if counting is not None:
            try:
                protocol.__class__ = counting
                return protocol
            except TypeError:  # a layout that cannot take a subclass: count what we can
                classes[type(protocol)] = None
        accepted.inc()
        return protocol

    return counted
