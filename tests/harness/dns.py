"""LocalDNS: a small authoritative DNS server (dnslib) serving the harness's zones on loopback.

Records are added at any time, also while it runs, so a test can change where a domain points. Names
under a zone it serves that have no record get NXDOMAIN; names outside every zone get REFUSED, as an
authoritative-only server answers.
"""

from __future__ import annotations

import threading
from collections import defaultdict

from dnslib import AAAA, MX, NAPTR, QTYPE, RCODE, RR, SRV, TLSA, TXT, A, DNSLabel, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSLogger, DNSServer

TTL = 5


class _ZoneResolver(BaseResolver):
    def __init__(self, owner: LocalDNS) -> None:
        self.owner = owner

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        reply = request.reply()
        reply.header.aa = 1
        # The AD bit claims DNSSEC validation (RFC 4035 §3.2.3). Only set it when a test asks the
        # harness to play a validating resolver (`LocalDNS.secure = True`), e.g. for DANE.
        reply.header.ad = 1 if self.owner.secure else 0
        qname = str(request.q.qname).lower()
        qtype = QTYPE[request.q.qtype]
        with self.owner.lock:
            records = list(self.owner.records.get(qname, ()))
            in_zone = any(qname == z or qname.endswith("." + z) for z in self.owner.zones)
        if not in_zone:
            reply.header.rcode = RCODE.REFUSED
            return reply
        if not records:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        for rtype, rdata in records:
            if rtype == qtype or (qtype == "ANY"):
                reply.add_answer(RR(qname, getattr(QTYPE, rtype), rdata=rdata, ttl=TTL))
        return reply


def _fqdn(name: str) -> str:
    return name.lower().rstrip(".") + "."


class LocalDNS:
    def __init__(self, address: str = "127.0.0.53", port: int = 53) -> None:
        self.address = address
        self.port = port
        self.lock = threading.Lock()
        self.records: dict[str, list[tuple[str, object]]] = defaultdict(list)
        self.zones: set[str] = set()
        self.secure = False
        self._servers: list[DNSServer] = []

    def add_zone(self, zone: str) -> None:
        with self.lock:
            self.zones.add(_fqdn(zone))

    def _add(self, name: str, rtype: str, rdata: object) -> None:
        fqdn = _fqdn(name)
        with self.lock:
            if not any(fqdn == z or fqdn.endswith("." + z) for z in self.zones):
                # The parent of the name becomes a zone, so `add_a("a.test", ...)` just works.
                self.zones.add(fqdn.split(".", 1)[1] if fqdn.count(".") > 1 else fqdn)
            self.records[fqdn].append((rtype, rdata))

    def remove(self, name: str, rtype: str | None = None) -> None:
        fqdn = _fqdn(name)
        with self.lock:
            if rtype is None:
                self.records.pop(fqdn, None)
            else:
                self.records[fqdn] = [r for r in self.records.get(fqdn, []) if r[0] != rtype]

    def add_a(self, name: str, address: str) -> None:
        self._add(name, "A", A(address))

    def add_aaaa(self, name: str, address: str) -> None:
        self._add(name, "AAAA", AAAA(address))

    def add_srv(self, name: str, priority: int, weight: int, port: int, target: str) -> None:
        self._add(name, "SRV", SRV(priority=priority, weight=weight, port=port, target=_fqdn(target)))

    def add_mx(self, name: str, preference: int, exchange: str) -> None:
        self._add(name, "MX", MX(_fqdn(exchange), preference))

    def add_naptr(self, name: str, order: int, preference: int, flags: str, service: str,
                  regexp: str, replacement: str) -> None:
        self._add(name, "NAPTR", NAPTR(order, preference, flags.encode(), service.encode(), regexp.encode(),
                                       DNSLabel(_fqdn(replacement) if replacement != "." else ".")))

    def add_txt(self, name: str, text: str) -> None:
        # Strings longer than 255 bytes are split into several character-strings (RFC 1035 §3.3.14).
        data = text.encode()
        self._add(name, "TXT", TXT([data[i:i + 255] for i in range(0, len(data), 255)] or [b""]))

    def add_tlsa(self, name: str, usage: int, selector: int, mtype: int, data: bytes) -> None:
        self._add(name, "TLSA", TLSA(usage, selector, mtype, data))

    def start(self) -> LocalDNS:
        resolver = _ZoneResolver(self)
        quiet = DNSLogger(log="-request,-reply,-truncated,-error,-recv,-send,-data", prefix=False)
        for tcp in (False, True):
            server = DNSServer(resolver, port=self.port, address=self.address, tcp=tcp, logger=quiet)
            server.start_thread()
            self._servers.append(server)
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.stop()
            server.server.server_close()
        self._servers.clear()

    def __enter__(self) -> LocalDNS:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
