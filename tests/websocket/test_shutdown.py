"""Stopping the server tells WebSocket clients why (RFC 6120 §4.9.3.20 <system-shutdown/>, then
<close/> and close code 1000), as it tells TCP clients, and does not wait for them to leave."""

from __future__ import annotations

import asyncio
import re

import aiohttp

from peerage.web.service import SHUTDOWN_TIMEOUT
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
        stopping = asyncio.get_running_loop().run_in_executor(None, server.stop)
        error = await client.recv_until(lambda e: e.tag == q(STREAMS, "error"), timeout=15)
        assert error.find(q(STREAM_ERRORS, "system-shutdown")) is not None
        assert (await client.recv()).tag == q(FRAMING, "close")
        message = await client.recv_raw()
        assert message.type is aiohttp.WSMsgType.CLOSE and message.data == 1000
        assert await asyncio.wait_for(stopping, 30) == 0
        # aiohttp's own shutdown wait (SHUTDOWN_TIMEOUT, 5 s, for requests in progress) is not spent
        # on open WebSockets: the web service's own figure, which the machine's load does not inflate
        # the way the whole process's exit time (measured from here) is.
        stopped = re.search(r"web: stopped in ([0-9.]+) s", server.log_text())
        assert stopped is not None, server.log_text()[-2000:]
        assert float(stopped.group(1)) < SHUTDOWN_TIMEOUT / 2
    finally:
        if server.running:
            server.kill()
