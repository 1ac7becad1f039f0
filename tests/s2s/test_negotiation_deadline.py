"""``[xmpp.federation] negotiation_timeout``: an inbound s2s connection that does not authenticate in
time is closed with ``<connection-timeout/>``, however steadily it keeps sending (a slow drip defeats
a per-read timeout, not this one), and the failure is recorded for ``peerage s2s status``."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.harness import async_wait_for
from tests.s2s.helpers import FEDERATION_TIMEOUT, Federation, records
from tests.s2s.rawpeer import RawPeer

#: The configured deadline, and the slack allowed past it on a loaded machine.
DEADLINE = 2.0
SLACK = 5.0
#: Seconds between two dripped bytes; well under the per-read bound, so only the deadline can fire.
DRIP_EVERY = 0.2


@pytest.fixture(scope="module")
def server(federation: Federation):
    server = federation.server("slow.s2s.test", "127.0.2.125", level="verified", users=("sam",),
                               federation={"negotiation_timeout": DEADLINE})
    federation.start_all([server])
    return server


async def _drip_until_closed(peer: RawPeer, data: bytes, start: float | None = None) -> tuple[str, float]:
    """Send ``data`` one byte at a time (then whitespace keepalives) until the server closes the
    connection; each wait for the close is bounded by DRIP_EVERY and the whole by DEADLINE + SLACK.
    Returns what the server sent and the seconds it took since `start` (by default now; a test that
    opened the connection first passes when it began, as the server's deadline runs from its accept)."""
    assert peer.reader is not None and peer.writer is not None
    start = time.monotonic() if start is None else start
    received = b""
    position = 0
    while time.monotonic() - start < DEADLINE + SLACK:
        byte = data[position:position + 1] or b" "
        position += 1
        try:
            peer.writer.write(byte)
            await peer.writer.drain()
            chunk = await asyncio.wait_for(peer.reader.read(65536), DRIP_EVERY)
        except TimeoutError:
            continue
        except ConnectionError:
            break
        if not chunk:
            break
        received += chunk
    return received.decode("utf-8", "replace"), time.monotonic() - start


async def test_slow_drip_after_the_header_is_closed_on_time(server) -> None:
    peer = RawPeer(server.address, "drip.example", "slow.s2s.test")
    try:
        started = time.monotonic()  # the header exchange counts: the deadline runs from the accept
        await peer.connect()
        text, took = await _drip_until_closed(peer, b"", started)
    finally:
        await peer.close()
    assert "<connection-timeout" in text, text
    assert DEADLINE - 0.5 <= took <= DEADLINE + SLACK, took
    await async_wait_for(lambda: any("negotiation_timeout" in r["reason"]
                                     for r in records(server, "in", "drip.example")),
                         FEDERATION_TIMEOUT, "the failed inbound record")
    record = next(r for r in records(server, "in", "drip.example") if "negotiation_timeout" in r["reason"])
    assert record["level"] == "U" and record["state"] == "failed"


async def test_slow_drip_of_the_header_itself_is_closed_on_time(server) -> None:
    header = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
              b"xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' "
              b"from='drip2.example' to='slow.s2s.test' version='1.0'>")
    peer = RawPeer(server.address, "drip2.example", "slow.s2s.test")
    started = time.monotonic()
    peer.reader, peer.writer = await asyncio.open_connection(server.address, 5269)
    try:
        # Everything but the closing '>': the keepalive spaces that follow stay inside the open tag.
        text, took = await _drip_until_closed(peer, header[:-1], started)
    finally:
        await peer.close()
    assert "<connection-timeout" in text, text
    assert DEADLINE - 0.5 <= took <= DEADLINE + SLACK, took


async def test_deadline_during_a_dialback_verification_records_the_failure(federation: Federation,
                                                                            server) -> None:
    """The peer asks for dialback as a domain whose authoritative server accepts TCP and never
    answers: the deadline closes the stream first, and the pending pair is recorded as failed."""
    silent = await asyncio.start_server(lambda reader, writer: None, "127.0.2.127", 5269)
    federation.dns.add_a("silent.example", "127.0.2.127")
    federation.dns.add_srv("_xmpp-server._tcp.silent.example", 0, 5, 5269, "silent.example")
    peer = RawPeer(server.address, "silent.example", "slow.s2s.test")
    try:
        await peer.connect()
        await peer.send("<db:result from='silent.example' to='slow.s2s.test'>0123456789abcdef</db:result>")
        text, took = await _drip_until_closed(peer, b"")
    finally:
        await peer.close()
        silent.close()
    assert "<connection-timeout" in text, text
    assert took <= DEADLINE + SLACK, took
    await async_wait_for(lambda: any(r["state"] == "failed" for r in records(server, "in", "silent.example")),
                         FEDERATION_TIMEOUT, "the pending pair recorded as failed")
    assert all(r["state"] != "negotiating" for r in records(server, "in", "silent.example"))
