"""The SIP service: wires transports, transactions, registrar and proxy to the Host.

This module is in charge of building the SIP stack from ``host.config.sip``, loading persisted
registrations, driving transaction timers from the event loop, and stopping cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
import time
from typing import Any

from peerage.sip.digest import DigestAuthenticator
from peerage.sip.locate import Locator
from peerage.sip.message import SipMessage
from peerage.sip.policy import FloodGuard, PeeringPolicy
from peerage.sip.proxy import ProxyCore
from peerage.sip.registrar import Registrar
from peerage.sip.transaction import Destination, TransactionLayer
from peerage.sip.transport import SipTransport

log = logging.getLogger("peerage.sip")

# How often transaction timers are checked.  RFC 3261 timers are multiples of T1 = 500 ms; a 20 ms
# tick keeps them within 4% of nominal while costing 50 wake-ups a second.
TIMER_TICK = 0.02


class SipService:
    def __init__(self) -> None:
        self.transport: SipTransport | None = None
        self.layer: TransactionLayer | None = None
        self.proxy: ProxyCore | None = None
        self.registrar: Registrar | None = None
        self._ticker: asyncio.Task[None] | None = None

    async def start(self, host: Any) -> None:
        config = host.config.sip
        secret = await host.store.get_secret("sip-digest-nonce")
        authenticator = DigestAuthenticator(
            secret=secret, algorithms=tuple(a.upper() for a in config.digest_algorithms))
        registrar = Registrar(host, authenticator)
        await registrar.load()
        self.registrar = registrar
        transport = SipTransport(
            self._receive, max_message_size=config.max_message_size,
            client_context=lambda name: host.tls.client_context(verify=True),
            on_unreachable=self._unreachable)
        flood = FloodGuard(config.flood_requests_per_second, config.flood_ban_seconds)
        transport.admit = flood.allow
        transport.banned = flood.is_banned
        self.transport = transport
        server_context = None
        if config.tls_listen and host.tls.available:
            server_context = host.tls.server_context()
        await transport.start(config.udp_listen, config.tcp_listen, config.tls_listen, server_context)
        endpoints = {}
        local_hosts = set()
        for name, (address, port) in transport.endpoints.items():
            advertised = config.advertised_host or address
            if advertised in ("0.0.0.0", "::", ""):
                advertised = _primary_address()
            endpoints[name] = (advertised, port)
            local_hosts.update({advertised, address})
        if not endpoints:
            raise RuntimeError("[sip] is enabled but udp_listen, tcp_listen and tls_listen are all empty")
        if "UDP" not in endpoints:
            endpoints["UDP"] = next(iter(endpoints.values()))
        layer = TransactionLayer(transport.send, time.monotonic)
        self.layer = layer
        policy = PeeringPolicy(host.accounts.is_local_domain, config.allow_domains, config.deny_domains)
        route_secret = await host.store.get_secret("sip-record-route")
        self.proxy = ProxyCore(
            host=host, layer=layer, send=transport.send, registrar=registrar,
            authenticator=authenticator, locator=Locator(host.dns), policy=policy, flood=flood,
            local_endpoints=endpoints, local_hosts=local_hosts, secret=route_secret)
        self._ticker = asyncio.ensure_future(self._tick())
        # Objects alive after start-up (modules, config, loaded registrations) live as long as the
        # process: move them out of the collector's sight so its passes stay short under load.
        gc.freeze()

    def _receive(self, message: SipMessage, source: Destination) -> None:
        assert self.proxy is not None
        self.proxy.receive(message, source)

    def _unreachable(self, destination: Destination) -> None:
        assert self.layer is not None
        for transaction in list(self.layer.client.values()):
            target = transaction.destination
            if target.transport == destination.transport and target.address == destination.address:
                transaction.transport_error()

    async def _tick(self) -> None:
        assert self.layer is not None
        layer = self.layer
        while True:
            await asyncio.sleep(TIMER_TICK)
            try:
                layer.tick()
            except Exception:
                log.exception("sip: timer error")

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self.proxy is not None:
            await self.proxy.stop()
        if self.transport is not None:
            await self.transport.stop()


def _primary_address() -> str:
    """The address other hosts reach us on, when listening on a wildcard."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent for a UDP connect
            return str(probe.getsockname()[0])
        except OSError:
            return "127.0.0.1"

