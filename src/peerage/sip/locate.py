"""Locating SIP servers (RFC 3263): from a SIP URI to an ordered list of (transport, IP, port).

This module is in charge of the RFC 3263 §4 procedure: transport selection (NAPTR, then SRV, then
the defaults), port and address determination (SRV, then A/AAAA), and the ordered list of targets
the proxy fails over through on 503 or timeout (§4.3).  It asks the DNS through ``host.dns``; the
selection logic itself is pure and takes already-resolved records, so it is unit tested without a
resolver.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from peerage.identity.address import is_ip_literal
from peerage.sip.message import SipUri

log = logging.getLogger(__name__)

# NAPTR services we can use (RFC 3263 §4.1, RFC 7118 adds SIP+D2W for WebSocket later).
NAPTR_SERVICES = {"SIP+D2U": "UDP", "SIP+D2T": "TCP", "SIPS+D2T": "TLS"}
SRV_PREFIXES = {"UDP": "_sip._udp.", "TCP": "_sip._tcp.", "TLS": "_sips._tcp."}
DEFAULT_PORTS = {"UDP": 5060, "TCP": 5060, "TLS": 5061}
# Transports we speak, in the order we prefer them when DNS gives no preference (RFC 3263 §4.1
# leaves the order to the client; TLS first protects the call when both ends can).
SUPPORTED_TRANSPORTS = ("TLS", "TCP", "UDP")
# Most targets we will try for one request: bounds the work a hostile zone can cause.
MAX_TARGETS = 8


@dataclass(frozen=True, slots=True)
class Target:
    transport: str
    host: str  # the name the target was reached by (for TLS server identity, RFC 5922)
    address: str
    port: int


def transport_for_uri(uri: SipUri) -> str | None:
    """The transport the URI forces, if any (RFC 3263 §4.1, first paragraphs)."""
    explicit = uri.transport
    if explicit:
        name = {"udp": "UDP", "tcp": "TCP", "tls": "TLS"}.get(explicit)
        if uri.scheme == "sips":
            return "TLS"
        return name or "unsupported"
    if uri.scheme == "sips":
        return "TLS"
    return None


def order_naptr(records: list[Any], sips: bool) -> list[tuple[str, str]]:
    """NAPTR records -> [(transport, SRV name)] for services we support (RFC 3263 §4.1)."""
    usable = []
    for record in records:
        service = str(getattr(record, "service", "")).upper()
        flags = str(getattr(record, "flags", "")).lower()
        transport = NAPTR_SERVICES.get(service)
        if transport is None or flags != "s":
            continue
        if sips and transport != "TLS":
            continue
        replacement = str(getattr(record, "replacement", "")).rstrip(".")
        usable.append((int(record.order), int(record.preference), transport, replacement))
    usable.sort(key=lambda item: (item[0], item[1]))
    return [(transport, name) for _, _, transport, name in usable]


class Locator:
    """RFC 3263 over a resolver with async ``naptr``, ``srv``, ``a``, ``aaaa``."""

    def __init__(self, resolver: Any) -> None:
        self.resolver = resolver

    async def _query(self, kind: str, name: str) -> list[Any]:
        try:
            result = await getattr(self.resolver, kind)(name)
        except Exception as error:  # NXDOMAIN, timeout, SERVFAIL: no records of that kind
            log.debug("DNS %s %s failed: %s", kind, name, error)
            return []
        return list(result or [])

    async def _addresses(self, host: str) -> list[str]:
        if is_ip_literal(host):
            return [host]
        addresses = [str(a) for a in await self._query("a", host)]
        addresses += [str(a) for a in await self._query("aaaa", host)]
        return addresses

    async def _from_srv(self, transport: str, srv_name: str) -> list[Target]:
        targets: list[Target] = []
        for record in await self._query("srv", srv_name):
            host = str(getattr(record, "host", None) or record.target).rstrip(".")
            if host in ("", "."):
                continue  # "service not available" (RFC 2782)
            for address in await self._addresses(host):
                targets.append(Target(transport, host, address, int(record.port)))
        return targets

    async def locate(self, uri: SipUri) -> list[Target]:
        """Ordered targets for ``uri``; empty when the name does not resolve."""
        host = uri.params.get("maddr") or uri.host
        forced = transport_for_uri(uri)
        if forced == "unsupported":
            return []
        targets: list[Target] = []
        if is_ip_literal(host) or uri.port is not None:
            # §4.1/§4.2: numeric host or explicit port: no NAPTR or SRV
            transport = forced or "UDP"
            port = uri.port or DEFAULT_PORTS[transport]
            for address in await self._addresses(host):
                targets.append(Target(transport, host, address, port))
            return targets[:MAX_TARGETS]
        if forced is None:
            for transport, srv_name in order_naptr(await self._query("naptr", host),
                                                   uri.scheme == "sips"):
                targets += await self._from_srv(transport, srv_name)
        if not targets:
            # §4.1: no NAPTR: try SRV for each supported transport (or the forced one)
            transports = [forced] if forced else [
                t for t in SUPPORTED_TRANSPORTS if uri.scheme != "sips" or t == "TLS"]
            for transport in transports:
                targets += await self._from_srv(transport, SRV_PREFIXES[transport] + host)
        if not targets:
            # §4.2: no SRV: A/AAAA with the default port
            transport = forced or ("TLS" if uri.scheme == "sips" else "UDP")
            for address in await self._addresses(host):
                targets.append(Target(transport, host, address, DEFAULT_PORTS[transport]))
        return targets[:MAX_TARGETS]
