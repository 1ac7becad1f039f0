"""The SIP service: wires transports, transactions, registrar and proxy to the Host.

This module is in charge of building the SIP stack from ``host.config.sip``, loading persisted
registrations, driving transaction timers from the event loop, and stopping cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import secrets
import socket
import time
from typing import Any

from peerage.config import ConfigError
from peerage.sip.digest import DigestAuthenticator
from peerage.sip.locate import Locator
from peerage.sip.message import SipMessage
from peerage.sip.policy import FloodGuard, LocalDomains, PeeringPolicy
from peerage.sip.proxy import ProxyCore
from peerage.sip.registrar import Registrar
from peerage.sip.transaction import Destination, TransactionLayer
from peerage.sip.transport import SipTransport

log = logging.getLogger("peerage.sip")

# How often transaction timers are checked.  RFC 3261 timers are multiples of T1 = 500 ms; a 20 ms
# tick keeps them within 4% of nominal while costing 50 wake-ups a second.
TIMER_TICK = 0.02
# Weight of the newest sample in the smoothed loop delay: lateness has to last (about ten ticks)
# before it counts, so one scheduling hiccup of a shared CPU does not shed calls; datagrams that
# wait long show in the UDP measure (their kernel arrival stamps) anyway.
OVERLOAD_SMOOTHING = 0.1
# Keep-alives sent per round at most (one datagram each); past that the round ends early.
MAX_NAT_PINGS = 100_000


class SipService:
    def __init__(self) -> None:
        self.transport: SipTransport | None = None
        self.layer: TransactionLayer | None = None
        self.proxy: ProxyCore | None = None
        self.registrar: Registrar | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._pinger: asyncio.Task[None] | None = None
        self._flow_watch: asyncio.Task[None] | None = None
        self.overload_delay = 0.0
        self.overload_onsets = 0  # times shedding started
        self._overload_began = (0.0, 0)  # loop time and shed count when it last did
        self._accounts: Any = None

    async def start(self, host: Any) -> None:
        config = host.config.sip
        secret = await host.store.get_secret("sip-digest-nonce")
        authenticator = DigestAuthenticator(
            secret=secret, algorithms=tuple(a.upper() for a in config.digest_algorithms),
            sha256_first=tuple(config.digest_sha256_first_user_agents),
            md5_only=tuple(config.digest_md5_only_user_agents))
        registrar = Registrar(host, authenticator)
        await registrar.load()
        self.registrar = registrar
        transport = SipTransport(
            self._receive, max_message_size=config.max_message_size,
            client_context=lambda name: host.tls.client_context(verify=True),
            on_unreachable=self._unreachable)
        transport.auth_deadline = host.config.limits.auth_deadline
        transport.preauth = host.limits.preauth
        flood = FloodGuard(config.flood_requests_per_second, config.flood_ban_seconds)
        transport.admit = flood.allow
        transport.banned = flood.is_banned
        transport.udp_heard = registrar.udp_heard
        self.transport = transport
        server_context = None
        if (config.tls_listen or config.wss_listen) and host.tls.available:
            server_context = host.tls.server_context()
        await transport.start(config.udp_listen, config.tcp_listen, config.tls_listen, server_context,
                              ws=config.ws_listen, wss=config.wss_listen)
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
        policy = PeeringPolicy(LocalDomains(host.accounts), config.allow_domains, config.deny_domains)
        route_secret = await host.store.get_secret("sip-record-route")
        self.proxy = ProxyCore(
            host=host, layer=layer, send=transport.send, registrar=registrar,
            authenticator=authenticator, locator=Locator(host.dns), policy=policy, flood=flood,
            local_endpoints=endpoints, local_hosts=local_hosts, secret=route_secret,
            connection_for=transport.connections.get)
        self.overload_delay = config.overload_delay
        self._ticker = asyncio.ensure_future(self._tick())
        method = str(config.nat_ping_method).lower()
        if method not in ("options", "crlf"):
            raise ConfigError(f'[sip] nat_ping_method must be "options" or "crlf", not {config.nat_ping_method!r}')
        if config.nat_ping_interval > 0:
            self._pinger = asyncio.ensure_future(self._nat_pings(config.nat_ping_interval, method))
        if getattr(host, "cluster", None) is not None:
            await host.cluster.attach_sip(self)  # peerage.cluster: registrations and flows of every node
        self._flow_watch = asyncio.ensure_future(self._watch_udp_flows())
        # Registrations made with credentials that end (logout, password change, deletion) go at once.
        self._accounts = host.accounts
        await host.accounts.credential_events.listen(registrar.credentials_ended)
        # Objects alive after start-up (modules, config, loaded registrations) live as long as the
        # process: move them out of the collector's sight so its passes stay short under load.
        gc.freeze()

    def _receive(self, message: SipMessage, source: Destination) -> None:
        assert self.proxy is not None
        if message.method is None and _answers_ping(message):
            return  # the answer to a keep-alive OPTIONS: the transport noted the contact alive
        self.proxy.receive(message, source)

    def _unreachable(self, destination: Destination) -> None:
        assert self.layer is not None
        for transaction in list(self.layer.client.values()):
            target = transaction.destination
            if target.transport == destination.transport and target.address == destination.address:
                transaction.transport_error()

    async def _tick(self) -> None:
        assert self.layer is not None and self.proxy is not None and self.transport is not None
        layer = self.layer
        proxy = self.proxy
        transport = self.transport
        loop = asyncio.get_running_loop()
        delay = 0.0
        while True:
            started = loop.time()
            await asyncio.sleep(TIMER_TICK)
            # How late the loop woke us is how long a datagram now waits before it is read: past
            # overload_delay the proxy sheds new INVITEs (503) rather than answer them late.
            now = loop.time()
            late = max(0.0, now - started - TIMER_TICK)
            delay = delay * (1 - OVERLOAD_SMOOTHING) + late * OVERLOAD_SMOOTHING
            # ... and how long datagrams read since the last tick had waited in the kernel unread
            waited, drained = transport.udp_wait()
            limit = self.overload_delay
            if not limit:
                overloaded = False
            elif proxy.overloaded:
                # Shedding goes on until the backlog is gone (the sockets read empty), not just
                # under the limit: stopping at the limit would hold a standing queue just short of
                # it, and a non-INVITE request and its response each wait in it (two waits of
                # ~limit past Timer E's T1 bring the retransmissions shedding is there to prevent).
                overloaded = delay > limit or not drained
            else:
                overloaded = max(delay, waited) > limit
            if overloaded != proxy.overloaded:
                self._overload_changed(overloaded, now, delay, waited)
            proxy.overloaded = overloaded
            try:
                layer.tick()
            except Exception:
                log.exception("sip: timer error")

    def _overload_changed(self, overloaded: bool, now: float, delay: float, waited: float) -> None:
        """Say when shedding starts and stops, and which measure set it off: a loop kept late, or
        datagrams left waiting in the kernel (work arriving faster than it is done)."""
        assert self.proxy is not None
        if overloaded:
            self.overload_onsets += 1
            self._overload_began = (now, self.proxy.shed)
            log.warning("sip: overloaded, new INVITEs get 503 (event loop late by %.0f ms smoothed, "
                        "UDP datagrams waited up to %.0f ms unread; limit %.0f ms)",
                        delay * 1000, waited * 1000, self.overload_delay * 1000)
        else:
            began, shed = self._overload_began
            log.warning("sip: overload over after %.2f s, %d INVITEs shed", now - began, self.proxy.shed - shed)

    async def _nat_pings(self, interval: float, method: str) -> None:
        """Keep-alives to UDP contacts behind NAT, as Kamailio's nathelper does, so their NAT bindings
        stay open for incoming calls: an OPTIONS request ("options", nathelper's sipping; any answer,
        or any other datagram from the contact, shows it alive, and the registrar drops one silent
        past ``[sip] nat_ping_timeout``) or CRLF ("crlf", natping). Outbound UDP flows are not pinged:
        the UA keeps those alive itself (RFC 5626 §4.4.1)."""
        assert self.registrar is not None and self.transport is not None and self.proxy is not None
        registrar, transport = self.registrar, self.transport
        host, port = self.proxy.local_endpoints["UDP"]
        sent_by = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        while True:
            await asyncio.sleep(interval)
            sent = 0
            for aor, bindings in list(registrar.bindings.items()):
                for binding in bindings:
                    if not (binding.nat and binding.received.startswith("UDP ") and not binding.path
                            and binding.node == registrar.node):
                        continue
                    _, address, text = binding.received.split(" ")
                    if method == "options" and not binding.outbound:
                        data = _options_ping(binding.contact, aor, sent_by)
                    elif binding.outbound:
                        continue  # RFC 5626: the UA sends the keep-alives on its flow
                    else:
                        data = b"\r\n\r\n"
                    transport.sendto(data, (address, int(text)))
                    sent += 1
                if sent >= MAX_NAT_PINGS:
                    break

    async def _watch_udp_flows(self) -> None:
        """Drop the registrations of outbound UDP flows that stopped sending keep-alives (RFC 5626
        §4.4.1): checked five times per Flow-Timer, so a dead flow goes within a fifth of it late."""
        assert self.registrar is not None
        registrar = self.registrar
        while True:
            await asyncio.sleep(max(0.5, registrar.udp_flow_timer / 5))
            try:
                await registrar.expired_udp_flows()
            except Exception:
                log.exception("sip: flow check failed")

    async def stop(self) -> None:
        if self._accounts is not None and self.registrar is not None:
            await self._accounts.credential_events.unlisten(self.registrar.credentials_ended)
        if self._flow_watch is not None:
            self._flow_watch.cancel()
        if self._pinger is not None:
            self._pinger.cancel()
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self.proxy is not None:
            await self.proxy.stop()
        if self.transport is not None:
            await self.transport.stop()


# Top Via branch of the keep-alive OPTIONS (RFC 3261 §8.1.1.7 magic cookie, then our own mark), so
# their answers are known without a transaction: they are sent statelessly, never retransmitted.
PING_BRANCH = "z9hG4bKnatping"
# The From of the keep-alives (Kamailio's sipping_from is a setting; a fixed, clearly named user here).
PING_USER = "keepalive"


def _options_ping(contact: str, aor: str, sent_by: str) -> bytes:
    """An OPTIONS to a registered contact (RFC 3261 §11), Max-Forwards 0: the UA answers, no proxy
    on the way forwards it (as nathelper's sipping)."""
    domain = aor.rpartition("@")[2]
    tag = secrets.token_hex(4)
    call_id = f"{secrets.token_hex(8)}@{domain}"
    return (f"OPTIONS {contact} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {sent_by};branch={PING_BRANCH}{secrets.token_hex(6)}\r\n"
            f"Max-Forwards: 0\r\n"
            f"From: <sip:{PING_USER}@{domain}>;tag={tag}\r\n"
            f"To: <{aor}>\r\n"
            f"Call-ID: {call_id}\r\n"
            f"CSeq: 1 OPTIONS\r\n"
            f"Content-Length: 0\r\n\r\n").encode()


def _answers_ping(response: SipMessage) -> bool:
    try:
        return (response.top_via().branch or "").startswith(PING_BRANCH)
    except Exception:
        return False


def _primary_address() -> str:
    """The address other hosts reach us on, when listening on a wildcard."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent for a UDP connect
            return str(probe.getsockname()[0])
        except OSError:
            return "127.0.0.1"

