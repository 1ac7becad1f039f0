"""An XMPP client for the cluster tests that counts exactly what XEP-0198 counts.

After login (tests/xmpp/rawclient.py), the rest of the stream is parsed with peerage's own stream
parser, so every stanza received is counted (answering the server's <r/> with the true h) and every
<a/> of the server is recorded. The node to connect to is chosen from the DNS SRV records.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable
from typing import Any

import dns.asyncresolver

from peerage.xmpp.stream import Element, XmlStreamParser, serialize
from tests.cluster.conftest import DNS_ADDRESS, DOMAIN, PASSWORD
from tests.xmpp.rawclient import RawClient

SM_NS = "urn:xmpp:sm:3"
STREAMS_NS = "http://etherx.jabber.org/streams"
HEADER = b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"


async def srv_targets() -> list[tuple[str, int]]:
    """The c2s targets of the domain, by SRV priority and weight (RFC 6120 section 3.2.1)."""
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [DNS_ADDRESS]
    answer = await resolver.resolve(f"_xmpp-client._tcp.{DOMAIN}", "SRV")
    records = sorted(answer, key=lambda r: (r.priority, -r.weight))
    targets = []
    for record in records:
        a = await resolver.resolve(record.target, "A")
        targets.append((a[0].address, int(record.port)))
    return targets


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class ClusterClient:
    def __init__(self, user: str, resource: str, domain: str = DOMAIN) -> None:
        self.user = user
        self.resource = resource
        self.domain = domain
        self.jid = f"{user}@{domain}/{resource}"
        self.bare = f"{user}@{domain}"
        self.raw: RawClient | None = None
        self.received: list[Element] = []
        #: Stanzas received by name (what a load loop reads per message, instead of scanning ``received``).
        self.counts = {"message": 0, "presence": 0, "iq": 0}
        self.handled = 0  # stanzas received (our h)
        self.acked_h = 0  # the last h we reported
        self.server_h = 0  # the server's last <a h=/> for what we sent
        self.sent = 0
        self.sm = False
        self.previd = ""  # the XEP-0198 resumption id, when resumption was asked for
        self.stream_error = ""  # the condition of a stream error the server sent (RFC 6120 section 4.9)
        #: Futures of the waits in progress, resolved whenever something was received.
        self._waiters: list[asyncio.Future[None]] = []
        self._reader: asyncio.Task[None] | None = None
        self.address = ""

    async def connect(self, address: str, *, sm: bool = False, presence: bool = True,
                      resume: bool = False) -> ClusterClient:
        self.address = address
        raw = RawClient(address, self.domain)
        await raw.login(self.bare, PASSWORD, self.resource)
        self.raw = raw
        self.parser = XmlStreamParser()
        self.parser.feed(HEADER)
        leftover = raw.buffer.encode()
        raw.buffer = ""
        self._reader = asyncio.ensure_future(self._read(leftover))
        if sm:
            await self.write("<enable xmlns='urn:xmpp:sm:3' resume='true'/>" if resume
                             else "<enable xmlns='urn:xmpp:sm:3'/>")
            await self.wait(lambda: self.sm, what="XEP-0198 enabled")
        if presence:
            await self.send("<presence/>")
        return self

    async def _read(self, leftover: bytes) -> None:
        assert self.raw is not None and self.raw.reader is not None
        data = leftover
        while True:
            if data:
                for event in self.parser.feed(data):
                    if isinstance(event, Element):
                        await self._element(event)
                self._notify()
            data = await self.raw.reader.read(65536)
            if not data:
                return

    async def _element(self, element: Element) -> None:
        if element.name == "error" and element.xmlns == STREAMS_NS:
            self.stream_error = next((child.name for child in element.elements()
                                      if child.xmlns == "urn:ietf:params:xml:ns:xmpp-streams" and child.name != "text"),
                                     "undefined-condition")
            self._notify()
            return
        if element.xmlns == SM_NS:
            if element.name == "enabled":
                self.sm = True
                self.previd = element.attrs.get("id", "") if element.attrs.get("resume") in ("true", "1") else ""
            elif element.name == "r":
                self.acked_h = self.handled
                await self.write(f"<a xmlns='urn:xmpp:sm:3' h='{self.handled}'/>")
            elif element.name == "a":
                self.server_h = int(element.attrs.get("h", "0"))
            return
        if element.name in ("message", "presence", "iq"):
            self.handled += 1
            self.counts[element.name] += 1
            self.received.append(element)
            if element.name == "iq" and element.attrs.get("type") in ("get", "set"):
                # Roster pushes and pings get their result (RFC 6120 section 8.2.3).
                await self.write(f"<iq type='result' id='{element.attrs.get('id', '')}'/>")

    async def write(self, data: str) -> None:
        assert self.raw is not None
        await self.raw.send(data)

    async def send(self, stanza: str) -> None:
        self.sent += 1
        await self.write(stanza)

    async def request_ack(self) -> None:
        await self.write("<r xmlns='urn:xmpp:sm:3'/>")

    async def wait(self, predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            result = predicate()
            if result:
                return result
            remaining = deadline - loop.time()
            if remaining <= 0 or (self._reader is not None and self._reader.done()):
                tail = [serialize(e) for e in self.received[-5:]]
                raise AssertionError(f"{self.jid}: {what} not seen within {timeout} s; last received {tail}")
            # A bare future and a timer, not wait_for on an Event: a load loop waits here once per
            # message, and wait_for starts a task each time.
            waiter = loop.create_future()
            self._waiters.append(waiter)
            timer = loop.call_later(min(remaining, 0.5), _wake, waiter)
            try:
                await waiter
            finally:
                timer.cancel()

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            _wake(waiter)

    def find(self, name: str, pattern: str) -> list[Element]:
        return [e for e in self.received if e.name == name and re.search(pattern, serialize(e), re.S)]

    async def wait_for(self, name: str, pattern: str, timeout: float = 10.0) -> Element:
        found = await self.wait(lambda: self.find(name, pattern), timeout, f"<{name}> matching {pattern!r}")
        return found[0]  # type: ignore[no-any-return]

    def bodies(self) -> list[str]:
        return [body for e in self.received if e.name == "message"
                for body in [e.find_text("body")] if body is not None]

    async def close(self) -> None:
        if self.raw is not None:
            with contextlib.suppress(Exception):
                await self.write("</stream:stream>")
            with contextlib.suppress(Exception):
                await self.raw.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader

    def drop(self) -> None:
        """The connection is gone without a goodbye (its node was killed)."""
        if self._reader is not None:
            self._reader.cancel()
