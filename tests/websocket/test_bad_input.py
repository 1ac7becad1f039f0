"""Bad input on /xmpp-websocket gets the protocol-correct answer, never a hang or a crash.

HTTP-level refusals (no xmpp subprotocol, a foreign Origin, no upgrade), RFC 7395 framing violations
(binary frames, two or half an element in one message, unqualified framing elements, stanzas before
<open/>), malformed or restricted XML, oversized messages, and a client that drips bytes or never
authenticates ([limits] auth_deadline). After each, the server still serves a normal login.
"""

from __future__ import annotations

import asyncio
import base64
import os
import ssl
import xml.etree.ElementTree as ET

import aiohttp

from tests.websocket.conftest import AUTH_DEADLINE, DOMAIN, HTTPS_PORT, PASSWORD, WsServer
from tests.websocket.wsclient import FRAMING, STREAMS, WsXmpp, q

STREAM_ERRORS = "urn:ietf:params:xml:ns:xmpp-streams"
OPEN = f"<open xmlns='{FRAMING}' to='{DOMAIN}' version='1.0'/>"


async def opened(server: WsServer, closing: list[object]) -> WsXmpp:
    client = await server.ws().connect()
    closing.append(client)
    await client.open()
    return client


async def expect_stream_error(client: WsXmpp, condition: str, close_code: int = 1000) -> None:
    """<stream:error> with ``condition``, then <close/>, then the WebSocket close with ``close_code``."""
    error = await client.recv_until(lambda e: e.tag == q(STREAMS, "error"))
    assert error.find(q(STREAM_ERRORS, condition)) is not None, ET.tostring(error)
    closed = await client.recv()
    assert closed.tag == q(FRAMING, "close")
    message = await client.recv_raw()
    # The server's close frame carries the code (when the server ends the stream from a timer it closes
    # TCP right after its close frame, so the client's own reply may find the socket gone: aiohttp
    # then records 1006 for itself, but the code the server sent is what counts).
    assert message.type is aiohttp.WSMsgType.CLOSE, message
    assert message.data == close_code


async def still_serves(server: WsServer, closing: list[object]) -> None:
    client = await server.ws().connect()
    closing.append(client)
    await client.login(f"alice@{DOMAIN}", PASSWORD)
    assert client.jid


async def test_http_refusals(ws_server: WsServer, closing: list[object]) -> None:
    web = ws_server.web()
    closing.append(web)
    # No upgrade: a plain GET is told what this is.
    async with web.get(ws_server.base + "/xmpp-websocket") as response:
        assert response.status == 400 and "RFC 7395" in await response.text()
    # RFC 7395 §3.1: the xmpp subprotocol is required.
    for protocols in ((), ("chat",)):
        try:
            await web.ws_connect(ws_server.url, protocols=protocols)
        except aiohttp.WSServerHandshakeError as error:
            assert error.status == 400
        else:
            raise AssertionError("a WebSocket without the xmpp subprotocol was accepted")
    # Browsers only from the same origin.
    try:
        await web.ws_connect(ws_server.url, protocols=("xmpp",), headers={"Origin": "https://evil.example"})
    except aiohttp.WSServerHandshakeError as error:
        assert error.status == 403
    else:
        raise AssertionError("a foreign origin was accepted")
    same = await ws_server.ws(origin=ws_server.base).connect()
    closing.append(same)
    await same.login(f"bob@{DOMAIN}", PASSWORD)


async def test_binary_frame(ws_server: WsServer, closing: list[object]) -> None:
    client = await opened(ws_server, closing)
    assert client.ws is not None
    await client.ws.send_bytes(b"<presence/>")
    await expect_stream_error(client, "bad-format", close_code=1003)
    await still_serves(ws_server, closing)


async def test_malformed_and_restricted_xml(ws_server: WsServer, closing: list[object]) -> None:
    cases = [
        ("<message xmlns='jabber:client'><body>x</message>", "not-well-formed"),
        ("<presence xmlns='jabber:client'/><presence xmlns='jabber:client'/>", "not-well-formed"),  # two
        ("<message xmlns='jabber:client'><body>half", "not-well-formed"),  # half an element
        ("<!-- hello --><presence xmlns='jabber:client'/>", "restricted-xml"),
        ("<?pi x?><presence xmlns='jabber:client'/>", "restricted-xml"),
        ("text outside", "not-well-formed"),
    ]
    for text, condition in cases:
        client = await opened(ws_server, closing)
        await client.send(text)
        await expect_stream_error(client, condition)


async def test_framing_violations(ws_server: WsServer, closing: list[object]) -> None:
    # A stanza before <open/>.
    client = await ws_server.ws().connect()
    closing.append(client)
    await client.send("<presence xmlns='jabber:client'/>")
    opened_ = await client.recv()
    assert opened_.tag == q(FRAMING, "open")  # the error comes on an opened stream (RFC 6120 §4.9.1.1)
    await expect_stream_error(client, "not-authorized")
    # An <open/> outside the framing namespace.
    client = await ws_server.ws().connect()
    closing.append(client)
    await client.send(f"<open to='{DOMAIN}' version='1.0'/>")
    await expect_stream_error(client, "invalid-namespace")
    # The TCP stream header is not RFC 7395 framing.
    client = await ws_server.ws().connect()
    closing.append(client)
    await client.send(f"<stream:stream xmlns='jabber:client' xmlns:stream='{STREAMS}' to='{DOMAIN}' version='1.0'>")
    await expect_stream_error(client, "invalid-namespace")
    # A domain not hosted here.
    client = await ws_server.ws().connect()
    closing.append(client)
    await client.send(f"<open xmlns='{FRAMING}' to='elsewhere.test' version='1.0'/>")
    await expect_stream_error(client, "host-unknown")


async def test_messages_read_together(ws_server: WsServer, closing: list[object]) -> None:
    """Several messages in one read are parsed together: each must still hold exactly one element,
    and the stanzas before the first that does not are handled, in order."""

    def chat(client: WsXmpp, number: int) -> str:
        return (f"<message xmlns='jabber:client' to='{client.jid}' type='chat' id='t{number}'>"
                f"<body>{number}</body></message>")

    async def body(client: WsXmpp) -> str | None:
        return (await client.next_body()).findtext(q("jabber:client", "body"))

    client = await ws_server.ws().connect()
    closing.append(client)
    await client.login(f"alice@{DOMAIN}", PASSWORD)
    await client.send_together([chat(client, number) for number in range(20)])
    assert [await body(client) for _ in range(20)] == [str(number) for number in range(20)]
    cases = [
        # An element that runs on into the next message, though the counts agree (two, two).
        (["<message xmlns='jabber:client'>", "<iq xmlns='jabber:client' type='get' id='x'/></message>{chat}"],
         "not-well-formed"),
        (["<presence xmlns='jabber:client'/><presence xmlns='jabber:client'/>", "{chat}"], "not-well-formed"),
        (["<message xmlns='jabber:client'><body>half", "{chat}"], "not-well-formed"),
        (["<message xmlns='jabber:client'/>text outside", "{chat}"], "not-well-formed"),
        (["<presence xmlns='jabber:client'/><!-- c -->", "{chat}"], "restricted-xml"),
    ]
    for texts, condition in cases:
        client = await ws_server.ws().connect()
        closing.append(client)
        await client.login(f"alice@{DOMAIN}", PASSWORD)
        await client.send_together([chat(client, 1)] + [t.replace("{chat}", chat(client, 2)) for t in texts])
        assert await body(client) == "1"  # the whole element before the bad one is handled
        await expect_stream_error(client, condition)
    await still_serves(ws_server, closing)


async def test_oversized_message(ws_server: WsServer, closing: list[object]) -> None:
    client = await opened(ws_server, closing)
    body = "x" * (262144 + 4096)
    await client.send(f"<message xmlns='jabber:client'><body>{body}</body></message>")
    await expect_stream_error(client, "policy-violation", close_code=1009)
    await still_serves(ws_server, closing)


async def test_ping_is_answered(ws_server: WsServer, closing: list[object]) -> None:
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ws_server.ssl_context()))
    closing.append(session)
    ws = await session.ws_connect(ws_server.url, protocols=("xmpp",), autoping=False)
    closing.append(ws)
    await ws.ping(b"are you there")
    message = await asyncio.wait_for(ws.receive(), 10)
    assert message.type is aiohttp.WSMsgType.PONG and message.data == b"are you there"


async def test_never_authenticating_is_closed_at_the_deadline(ws_server: WsServer, closing: list[object]) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    client = await opened(ws_server, closing)
    await expect_stream_error(client, "connection-timeout")
    elapsed = loop.time() - start
    assert AUTH_DEADLINE - 0.5 <= elapsed <= AUTH_DEADLINE + 10  # a loaded machine may be late, never early


async def test_slow_drip_is_closed_at_the_deadline(ws_server: WsServer) -> None:
    """A client dripping one byte of a frame at a time never completes a message; the deadline holds."""
    context = ws_server.ssl_context()
    reader, writer = await asyncio.open_connection(ws_server.address, HTTPS_PORT, ssl=context)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((f"GET /xmpp-websocket HTTP/1.1\r\nHost: {ws_server.address}:{HTTPS_PORT}\r\n"
                      f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                      "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: xmpp\r\n\r\n").encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 101")
        payload = OPEN.encode()
        mask = os.urandom(4)
        frame = bytes((0x81, 0x80 | len(payload))) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        loop = asyncio.get_running_loop()
        start = loop.time()
        closed_at = None
        for byte in frame * 100:
            try:
                writer.write(bytes((byte,)))
                await writer.drain()
            except (ConnectionError, ssl.SSLError):
                break
            try:
                data = await asyncio.wait_for(reader.read(4096), 0.25)
            except TimeoutError:
                continue
            if not data:
                closed_at = loop.time()
                break
            if loop.time() - start > AUTH_DEADLINE + 10:
                break
        if closed_at is None:
            # Read until the server ends the connection, within a bound.
            while True:
                data = await asyncio.wait_for(reader.read(4096), AUTH_DEADLINE + 10)
                if not data:
                    break
            closed_at = loop.time()
        assert closed_at - start <= AUTH_DEADLINE + 10
    finally:
        writer.close()
