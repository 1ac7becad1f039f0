"""On the wire: the deadline to authenticate, the cap on streams not yet authenticated, and a stream
header without version.

A client that trickles bytes keeps the idle timer from ever firing; the authentication deadline is
counted from the connection (``[limits] auth_deadline``, shared with IMAP and submission), so the
stream is closed with a stream error all the same.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from tests.harness import PeerageServer
from tests.xmpp.conftest import PASSWORD, USERS, start_server
from tests.xmpp.rawclient import RawClient

SERVER_ADDRESS = "127.0.1.9"
#: Seconds a stream has to authenticate in these tests (the default is 60).
DEADLINE = 2.0
#: ``[limits] max_unauthenticated`` in these tests (the default is 1000).
PREAUTH_CAP = 3


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PeerageServer]:
    server = start_server(tmp_path_factory.mktemp("deadline"), SERVER_ADDRESS, USERS[:2],
                          {"limits": {"auth_deadline": DEADLINE, "max_unauthenticated": PREAUTH_CAP}})
    try:
        yield server
    finally:
        server.kill() if not server.running else server.stop()


async def test_a_slow_drip_client_is_closed_at_the_deadline(slow_server: PeerageServer) -> None:
    client = RawClient(SERVER_ADDRESS, "a.test")
    await client.connect()
    assert client.writer is not None and client.reader is not None
    started = time.monotonic()
    header = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
              b"xmlns:stream='http://etherx.jabber.org/streams' to='a.test' version='1.0'>")
    received = b""
    try:
        # One byte every 0.2 s: never idle, never done.
        for byte in header + b" " * 200:
            client.writer.write(bytes([byte]))
            await client.writer.drain()
            try:
                chunk = await asyncio.wait_for(client.reader.read(65536), 0.2)
            except TimeoutError:
                continue
            if not chunk:
                break
            received += chunk
        else:
            pytest.fail("the stream was never closed")
    except ConnectionError:
        pass
    finally:
        await client.close()
    elapsed = time.monotonic() - started
    assert b"<connection-timeout xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in received
    assert received.rstrip().endswith(b"</stream:stream>")
    assert DEADLINE - 0.5 < elapsed < DEADLINE + 5


async def test_a_header_without_version_gets_a_reply_without_version(slow_server: PeerageServer) -> None:
    client = RawClient(SERVER_ADDRESS, "a.test")
    await client.connect()
    try:
        await client.send("<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
                          "xmlns:stream='http://etherx.jabber.org/streams' to='a.test'>")
        reply = await client.read_to_eof()
    finally:
        await client.close()
    opening = reply.split("?>", 1)[-1].split(">", 1)[0]
    assert opening.startswith("<stream:stream") and " version=" not in opening  # RFC 6120 section 4.7.5
    assert "unsupported-version" in reply




async def test_streams_beyond_the_unauthenticated_cap_are_refused(slow_server: PeerageServer) -> None:
    waiting = [RawClient(SERVER_ADDRESS, "a.test") for _ in range(PREAUTH_CAP)]
    try:
        for client in waiting:
            await client.connect()
            await client.open_stream()  # answered: the stream holds a slot
        refused = RawClient(SERVER_ADDRESS, "a.test")
        await refused.connect()
        try:
            reply = await refused.read_to_eof()
        finally:
            await refused.close()
        assert "<resource-constraint xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in reply
        # A stream that logs in gives its slot back: the next one is served.
        first = waiting[0]
        await first.starttls()
        await first.open_stream()
        assert "<success" in await first.authenticate(USERS[0].split("@")[0], PASSWORD)
        served = RawClient(SERVER_ADDRESS, "a.test")
        await served.connect()
        try:
            assert "<stream:features>" in await served.open_stream()
        finally:
            await served.close()
    finally:
        for client in waiting:
            await client.close()
