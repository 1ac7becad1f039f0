"""A real client library over the WebSocket endpoint: xmpp.js (@xmpp/client 0.14, npm), which speaks
RFC 7395 (slixmpp does not), logs in with the web session's XMPP token and chats with a slixmpp user on
TCP. In CI a missing node or npm module is a failure, elsewhere a skip."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from pathlib import Path

import pytest

from tests.websocket.conftest import C2S_PORT, DOMAIN, PASSWORD, WsServer
from tests.xmpp.conftest import Client

XMPPJS = Path(__file__).resolve().parent / "xmppjs"


def _node() -> str:
    node = shutil.which("node")
    missing = None if node else "node is not installed"
    if node and not (XMPPJS / "node_modules" / "@xmpp" / "client").is_dir():
        missing = "npm modules missing: run npm --prefix tests/websocket/xmppjs ci"
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(missing)
        pytest.skip(missing)
    assert node is not None
    return node


async def test_xmppjs_logs_in_with_the_web_token_and_chats(ws_server: WsServer, closing: list[object]) -> None:
    node = _node()
    web, _ = await ws_server.web_login(f"victor@{DOMAIN}")
    closing.append(web)
    async with web.get(ws_server.base + "/auth/xmpp-credentials") as response:
        credentials = await response.json()
    peer = Client(f"trent@{DOMAIN}/tcp", PASSWORD)
    closing.append(peer)
    await peer.login(ws_server.address, C2S_PORT)
    process = await asyncio.create_subprocess_exec(
        node, "--experimental-websocket", "--no-warnings", str(XMPPJS / "client.mjs"), ws_server.url, DOMAIN,
        credentials["jid"].split("@")[0], credentials["password"], f"trent@{DOMAIN}/tcp", "90000",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=XMPPJS,
        # The test certificate names ws.test, the URL an address: loopback only, no verification.
        env=dict(os.environ, NODE_TLS_REJECT_UNAUTHORIZED="0"))
    try:
        try:
            # node's start, the WebSocket and SASL on a loaded CI machine; the client's own bound is 90 s too
            got = await peer.next_message(timeout=90)
        except TimeoutError:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):  # it may end on its own bound meanwhile
                    process.kill()
            out, err = await process.communicate()
            raise AssertionError(f"no message from xmpp.js: {out.decode()} {err.decode()[-2000:]}") from None
        assert got["body"] == "hello from xmpp.js"
        assert str(got["from"]) == f"victor@{DOMAIN}/xmppjs"
        peer.send_message(mto=got["from"], mbody="hello from slixmpp", mtype="chat")
        stdout, stderr = await asyncio.wait_for(process.communicate(), 90)
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
    events = [json.loads(line) for line in stdout.decode().splitlines() if line.startswith("{")]
    detail = stdout.decode() + stderr.decode()[-2000:]
    assert {"event": "message", "from": f"trent@{DOMAIN}/tcp", "body": "hello from slixmpp"} in events, detail
    assert any(e["event"] == "online" and e["jid"] == f"victor@{DOMAIN}/xmppjs" for e in events), detail
    assert process.returncode == 0, detail
