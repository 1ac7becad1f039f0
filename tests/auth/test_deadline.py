"""Slow-drip connections are closed at the deadline to authenticate ([limits] auth_deadline), however
often they send a byte, and a global cap bounds connections that have not logged in
([limits] max_unauthenticated)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from tests.auth.clients import ImapFrom, insecure_context
from tests.auth.conftest import ADDRESS, ALICE, PASSWORD, make_server
from tests.harness import PeerageServer, async_wait_for

DEADLINE = 3.0
# How far the measured life of a dripping connection may sit from DEADLINE. The server counts from its
# accept, the client from its connect (IMAP: from the greeting), and a loaded CI machine delays both
# the greeting and the server's deadline check; still well short of the 20 s idle timeout and the
# 15 s the drip lasts, so a connection the deadline did not close cannot pass.
EARLY, LATE = 1.5, 8.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PeerageServer]:
    srv = make_server(tmp_path_factory.mktemp("deadline"),
                      {"limits": {"auth_deadline": DEADLINE, "idle_timeout_unauthenticated": 20.0,
                                  "max_unauthenticated": 6}},
                      services=("smtp", "imap", "sip", "xmpp"))
    srv.add_user(ALICE, PASSWORD)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


async def _drip_until_closed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, byte: bytes,
                             limit: float) -> tuple[float, bytes]:
    """Send one byte every 0.5 s (each well inside the idle timeout) until the server closes."""
    started = time.monotonic()
    received = b""
    while time.monotonic() - started < limit:
        try:
            writer.write(byte)
            await writer.drain()
            chunk = await asyncio.wait_for(reader.read(4096), 0.5)
        except TimeoutError:
            continue
        except (ConnectionError, OSError):
            break
        if not chunk:
            break
        received += chunk
    return time.monotonic() - started, received


async def test_imap_slow_drip_closed_at_deadline(server: PeerageServer) -> None:
    client = await ImapFrom(ADDRESS, "127.0.7.50").connect()
    assert client.reader is not None and client.writer is not None
    took, received = await _drip_until_closed(client.reader, client.writer, b" ", 15)
    await client.close()
    assert DEADLINE - EARLY < took < DEADLINE + LATE, took
    assert b"BYE" in received


async def test_smtp_submission_slow_drip_closed_at_deadline(server: PeerageServer) -> None:
    reader, writer = await asyncio.open_connection(ADDRESS, 587, local_addr=("127.0.7.51", 0))
    assert (await reader.readline()).startswith(b"220")
    writer.write(b"EHLO drip.example\r\n")
    took, received = await _drip_until_closed(reader, writer, b"N", 15)
    writer.close()
    assert DEADLINE - EARLY < took < DEADLINE + LATE, took
    assert b"421 4.4.2" in received


async def test_sip_tcp_slow_drip_closed_at_deadline(server: PeerageServer) -> None:
    reader, writer = await asyncio.open_connection(ADDRESS, 5060, local_addr=("127.0.7.53", 0))
    took, _ = await _drip_until_closed(reader, writer, b"R", 15)
    writer.close()
    assert DEADLINE - EARLY < took < DEADLINE + LATE, took


async def test_sip_tcp_flow_with_a_message_outlives_the_deadline(server: PeerageServer) -> None:
    reader, writer = await asyncio.open_connection(ADDRESS, 5060, local_addr=("127.0.7.54", 0))
    port = writer.get_extra_info("sockname")[1]

    async def options(number: int) -> bytes:
        writer.write((
            f"OPTIONS sip:example.org SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.7.54:{port};branch=z9hG4bK-dl-{number}\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:probe@example.net>;tag={number}\r\nTo: <sip:example.org>\r\n"
            f"Call-ID: deadline-{number}@127.0.7.54\r\nCSeq: {number} OPTIONS\r\nContent-Length: 0\r\n\r\n"
        ).encode())
        await writer.drain()
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)

    assert (await options(1)).startswith(b"SIP/2.0 ")
    await asyncio.sleep(DEADLINE + 1)
    assert (await options(2)).startswith(b"SIP/2.0 ")  # still open past the deadline
    writer.close()


async def test_logged_in_connection_outlives_the_deadline(server: PeerageServer) -> None:
    client = await ImapFrom(ADDRESS, "127.0.7.52").connect()
    assert b"OK" in await client.login(ALICE, PASSWORD)
    await asyncio.sleep(DEADLINE + 1)
    assert b"OK" in await client.command("a9", "NOOP")
    await client.close()


async def test_global_cap_on_unauthenticated_connections(server: PeerageServer) -> None:
    holders = []
    for n in range(6):  # the cap, spread over both protocols and several addresses
        if n % 2:
            holders.append(await ImapFrom(ADDRESS, f"127.0.7.{60 + n}").connect())
        else:
            reader, writer = await asyncio.open_connection(ADDRESS, 587, local_addr=(f"127.0.7.{60 + n}", 0))
            assert (await reader.readline()).startswith(b"220")
            holders.append(writer)
    refused = await ImapFrom(ADDRESS, "127.0.7.70").connect()
    assert b"BYE" in refused.greeting, refused.greeting
    await refused.close()
    reader, writer = await asyncio.open_connection(ADDRESS, 587, local_addr=("127.0.7.71", 0))
    assert (await reader.readline()).startswith(b"421")
    writer.close()
    for holder in holders:
        if isinstance(holder, ImapFrom):
            await holder.close()
        else:
            holder.close()
    # Slots come back once the server has seen those connections close.
    async def admitted() -> ImapFrom | None:
        client = await ImapFrom(ADDRESS, "127.0.7.72").connect()
        if b"OK" in client.greeting:
            return client
        await client.close()
        return None

    again = await async_wait_for(admitted, 30, "an IMAP connection admitted again")
    assert b"OK" in await again.login(ALICE, PASSWORD)
    await again.close()


async def _s2s_header_answered(source: str, timeout: float = 20) -> tuple[asyncio.StreamWriter, bool]:
    """Open an s2s stream from ``source``: whether the server answers with its stream header within
    `timeout` (a refused stream is closed at once)."""
    reader, writer = await asyncio.open_connection(ADDRESS, 5269, local_addr=(source, 0))
    writer.write(b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream="
                 b"'http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' to='example.org'"
                 b" version='1.0'>")
    await writer.drain()
    try:
        data = await asyncio.wait_for(reader.read(4096), timeout)
    except (ConnectionError, OSError):
        data = b""
    return writer, b"<stream:stream" in data


async def test_global_cap_counts_unauthenticated_server_streams(server: PeerageServer) -> None:
    # Inbound s2s streams take slots too until a domain pair is authenticated (XMPP c2s and s2s,
    # IMAP, SMTP and ManageSieve share the one cap), so a flood on 5269 cannot hold more.
    holders = []
    for n in range(6):
        writer, answered = await _s2s_header_answered(f"127.0.7.{80 + n}")
        assert answered, n
        holders.append(writer)
    refused, answered = await _s2s_header_answered("127.0.7.90", 5)
    assert not answered
    refused.close()
    for writer in holders:
        writer.close()
    # The server sees the closes, and admits a stream again.
    async def admitted() -> asyncio.StreamWriter | None:
        writer, answered = await _s2s_header_answered("127.0.7.91")
        if answered:
            return writer
        writer.close()
        return None

    again = await async_wait_for(admitted, 30, "an s2s stream admitted again")
    again.close()


def test_insecure_context_is_for_tests_only() -> None:
    assert insecure_context().verify_mode.name == "CERT_NONE"
