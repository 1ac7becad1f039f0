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
from tests.harness import PeerageServer

DEADLINE = 3.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PeerageServer]:
    srv = make_server(tmp_path_factory.mktemp("deadline"),
                      {"limits": {"auth_deadline": DEADLINE, "idle_timeout_unauthenticated": 20.0,
                                  "max_unauthenticated": 6}},
                      services=("smtp", "imap"))
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
    assert DEADLINE - 0.5 < took < DEADLINE + 3, took
    assert b"BYE" in received


async def test_smtp_submission_slow_drip_closed_at_deadline(server: PeerageServer) -> None:
    reader, writer = await asyncio.open_connection(ADDRESS, 587, local_addr=("127.0.7.51", 0))
    assert (await reader.readline()).startswith(b"220")
    writer.write(b"EHLO drip.example\r\n")
    took, received = await _drip_until_closed(reader, writer, b"N", 15)
    writer.close()
    assert DEADLINE - 1 < took < DEADLINE + 3, took
    assert b"421 4.4.2" in received


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
    await asyncio.sleep(0.5)
    # Slots come back once those connections close.
    again = await ImapFrom(ADDRESS, "127.0.7.72").connect()
    assert b"OK" in again.greeting and b"OK" in await again.login(ALICE, PASSWORD)
    await again.close()


def test_insecure_context_is_for_tests_only() -> None:
    assert insecure_context().verify_mode.name == "CERT_NONE"
