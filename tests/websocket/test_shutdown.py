"""Stopping the server tells WebSocket clients why (RFC 6120 §4.9.3.20 <system-shutdown/>, then
<close/> and close code 1000), as it tells TCP clients, and does not wait for them to leave."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.websocket.conftest import BLOCK, DOMAIN, PASSWORD, WsServer, start_server
from tests.websocket.wsclient import FRAMING, STREAMS, q

STREAM_ERRORS = "urn:ietf:params:xml:ns:xmpp-streams"


async def test_shutdown_ends_websocket_streams(tmp_path: object, closing: list[object]) -> None:
    from pathlib import Path

    server = await asyncio.to_thread(start_server, Path(str(tmp_path)), f"{BLOCK}.3")
    try:
        ws = WsServer(server)
        client = await ws.ws().connect()
        closing.append(client)
        await client.login(f"alice@{DOMAIN}", PASSWORD)
        await client.enable_sm()  # resumable: the shutdown still ends it for good
        loop = asyncio.get_running_loop()
        start = loop.time()
        stopping = loop.run_in_executor(None, server.stop)
        error = await client.recv_until(lambda e: e.tag == q(STREAMS, "error"), timeout=15)
        assert error.find(q(STREAM_ERRORS, "system-shutdown")) is not None
        assert (await client.recv()).tag == q(FRAMING, "close")
        message = await client.recv_raw()
        assert message.type is aiohttp.WSMsgType.CLOSE and message.data == 1000
        assert await asyncio.wait_for(stopping, 30) == 0
        # aiohttp's own shutdown wait (5 s for requests in progress) is not spent on open WebSockets.
        assert loop.time() - start < 5.0
    finally:
        if server.running:
            server.kill()
