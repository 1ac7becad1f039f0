"""An s2s connection lets its expat parser go on a stream restart and when the connection is lost,
as c2s does, instead of leaving it in its reference cycle for the cyclic collector; what was parsed
before the loss is still read. A real TCP peer on the loopback, in process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from peerage.xmpp.s2s import MAX_PENDING_BYTES, PARSE_SLICE, XmlConnection, open_xml_connection
from peerage.xmpp.stream import Element

HEADER = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
          b"xmlns:stream='http://etherx.jabber.org/streams' from='b.test' to='a.test' id='s1' version='1.0'>")
MESSAGE = b"<message from='u@b.test' to='v@a.test'><body>hi</body></message>"


async def _lost(connection: XmlConnection) -> None:
    """Until asyncio has called connection_lost (it follows the peer's FIN by a loop turn or two)."""
    async with asyncio.timeout(10):
        while connection.transport is not None:
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def _connected() -> AsyncIterator[tuple[XmlConnection, asyncio.StreamWriter]]:
    """Our connection to a real TCP peer on the loopback, and the peer's side of it to write with."""
    accepted: asyncio.Future[asyncio.StreamWriter] = asyncio.get_running_loop().create_future()

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set_result(writer)

    server = await asyncio.start_server(peer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        connection = await open_xml_connection("127.0.0.1", port, 65536)
        async with asyncio.timeout(10):
            writer = await accepted
        yield connection, writer
        connection.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_restart_and_connection_loss_release_the_parser() -> None:
    async with _connected() as (connection, writer):
        writer.write(HEADER)
        assert (await connection.header()).attrs["id"] == "s1"

        first = connection.parser
        connection.restart()  # RFC 6120 section 6.4.6: a new stream after SASL success
        assert connection.parser is not first
        assert first.feed(MESSAGE) == [], "the parser of the stream before the restart still parses"

        # The restarted stream parses; then the peer goes away right after a stanza.
        writer.write(HEADER + MESSAGE)
        await writer.drain()
        await connection.header()
        writer.close()
        await _lost(connection)
        assert connection.parser.feed(MESSAGE) == [], "the parser outlived the connection"
        stanza = await connection.element()  # parsed before the loss: still delivered
        assert isinstance(stanza, Element) and stanza.find_text("body") == "hi"


async def test_a_burst_is_read_in_order_and_in_full_before_the_peer_closes() -> None:
    """More than one read and one parse slice's worth of stanzas, split inside multi-byte
    characters, written at once by a peer that closes at once: every stanza comes out, in
    order, before the connection reports the close (RFC 6120 section 4.4: what was sent before the
    close is handled)."""
    count = 6000
    euros = "\u20ac" * 30  # 90 of a stanza's ~170 bytes: a third of slice and read boundaries split one
    stanzas = b"".join(f"<message from='u@b.test' to='v@a.test' id='m{n}'><body>{n} {euros}</body></message>"
                       .encode() for n in range(count))
    assert len(stanzas) > MAX_PENDING_BYTES + 4 * PARSE_SLICE  # the connection must pause and resume reading
    async with _connected() as (connection, writer):
        writer.write(HEADER + stanzas)
        writer.close()  # the transport sends what it holds, then closes
        await connection.header()
        ids = []
        async with asyncio.timeout(30):
            try:
                while True:
                    stanza = await connection.element()
                    assert stanza.find_text("body") == f"{len(ids)} {euros}"
                    ids.append(stanza.attrs["id"])
            except ConnectionError:
                pass
        assert ids == [f"m{n}" for n in range(count)]
