"""The /chat/ page's server side, without a browser: the page is behind the login and under its CSP;
/chat/config says where to connect; POST /auth/sip-credentials needs the CSRF token and gives a
short-lived SIP password that JsSIP (on Node, over SIP WSS) registers with, and that opens nothing
else (not the web login, not XMPP); /chat/ice-servers carries TURN credentials coturn accepts."""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import slixmpp

from tests.harness import PeerageServer
from tests.harness.peers import IN_CI
from tests.webchat.conftest import (
    ALICE,
    BOB,
    CLIENT_ADDRESS,
    DOMAIN,
    ORIGIN,
    PASSWORD,
    PEERAGE_ADDRESS,
    SIP_WSS_PORT,
    TURN_ADDRESS,
    TURN_PORT,
)
from tests.webchat.coturn import Coturn
from tests.webchat.turnclient import allocate

JSSIP = Path(__file__).resolve().parents[1] / "auth" / "jssip"


def tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class Web:
    def __init__(self) -> None:
        resolver = aiohttp.resolver.ThreadedResolver()

        class Fixed(aiohttp.abc.AbstractResolver):
            async def resolve(self, host: str, port: int = 0, family: int = 0) -> list[dict[str, object]]:
                return [{"hostname": host, "host": PEERAGE_ADDRESS, "port": port, "family": 2, "proto": 0,
                         "flags": 0}]

            async def close(self) -> None:
                await resolver.close()

        self.client = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls(), resolver=Fixed()),
                                            cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.csrf = ""

    async def login(self, account: str, password: str = PASSWORD) -> Web:
        async with self.client.post(ORIGIN + "/login", json={"account": account, "password": password},
                                    headers={"Origin": ORIGIN}) as response:
            assert response.status == 200, await response.text()
            self.csrf = (await response.json())["csrf"]
        return self

    async def sip_credentials(self) -> dict[str, object]:
        async with self.client.post(ORIGIN + "/auth/sip-credentials",
                                    headers={"Origin": ORIGIN, "X-CSRF-Token": self.csrf}) as response:
            assert response.status == 200, await response.text()
            return dict(await response.json())


@pytest.fixture
async def web(peerage: PeerageServer) -> AsyncIterator[list[Web]]:
    made: list[Web] = []
    yield made
    for item in made:
        await item.client.close()


async def test_page_needs_the_login_and_has_a_tight_csp(web: list[Web]) -> None:
    anonymous = Web()
    web.append(anonymous)
    async with anonymous.client.get(ORIGIN + "/chat/", allow_redirects=False) as response:
        assert response.status == 303 and response.headers["Location"] == "/login?next=/chat/"
    for path in ("/chat/config", "/chat/ice-servers"):
        async with anonymous.client.get(ORIGIN + path) as response:
            assert response.status == 401
    user = await Web().login(ALICE)
    web.append(user)
    async with user.client.get(ORIGIN + "/chat/") as response:
        assert response.status == 200
        policy = response.headers["Content-Security-Policy"]
        assert "<converse-root>" in await response.text()
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
    assert directives["script-src"] == "'self' 'wasm-unsafe-eval'"  # OMEMO's libsignal, and nothing looser
    assert directives["connect-src"] == f"'self' wss://{DOMAIN}:{SIP_WSS_PORT}"
    assert directives["default-src"] == "'none'" and directives["frame-ancestors"] == "'none'"
    assert "unsafe-eval'" not in policy.replace("'wasm-unsafe-eval'", "")
    async with user.client.get(ORIGIN + "/chat/curve25519_compiled.wasm") as response:
        assert response.status == 200 and response.content_type == "application/wasm"
    async with user.client.get(ORIGIN + "/chat/config") as response:
        config = await response.json()
    assert config["account"] == ALICE
    assert config["xmpp"] == {"websocket": f"wss://{DOMAIN}:8443/xmpp-websocket", "credentials": "/auth/xmpp-credentials",
                              "bosh": "/http-bind"}
    assert config["sip"]["websocket"] == f"wss://{DOMAIN}:{SIP_WSS_PORT}" and config["sip"]["uri"] == f"sip:{ALICE}"


async def test_sip_credentials_need_csrf_and_open_only_sip(web: list[Web], coturn: Coturn) -> None:
    alice = await Web().login(ALICE)
    web.append(alice)
    async with alice.client.post(ORIGIN + "/auth/sip-credentials", headers={"Origin": ORIGIN}) as response:
        assert response.status == 403  # no CSRF token
    async with alice.client.post(ORIGIN + "/auth/sip-credentials",
                                 headers={"Origin": "https://attacker.test", "X-CSRF-Token": alice.csrf}) as response:
        assert response.status == 403  # another origin
    credentials = await alice.sip_credentials()
    assert credentials["uri"] == f"sip:{ALICE}" and credentials["username"] == "alice"
    token = str(credentials["password"])
    assert token != PASSWORD and len(token) >= 20
    # The token is no password: the web login refuses it...
    other = Web()
    web.append(other)
    async with other.client.post(ORIGIN + "/login", json={"account": ALICE, "password": token},
                                 headers={"Origin": ORIGIN}) as response:
        assert response.status in (401, 403), await response.text()
    # ... and so does XMPP.
    client = slixmpp.ClientXMPP(ALICE, token)
    client.ssl_context.check_hostname = False
    client.ssl_context.verify_mode = ssl.CERT_NONE
    failed = client.loop.create_future()
    client.add_event_handler("failed_auth", lambda _: failed.done() or failed.set_result(True))
    client.add_event_handler("session_start", lambda _: failed.done() or failed.set_result(False))
    client.connect(host=PEERAGE_ADDRESS, port=5222)
    try:
        assert await asyncio.wait_for(failed, 15) is True
    finally:
        client.disconnect()
    # DELETE ends this session's SIP tokens (the page's "Log out" calls it), with the CSRF token only.
    async with alice.client.delete(ORIGIN + "/auth/sip-credentials", headers={"Origin": ORIGIN}) as response:
        assert response.status == 403
    async with alice.client.delete(ORIGIN + "/auth/sip-credentials",
                                   headers={"Origin": ORIGIN, "X-CSRF-Token": alice.csrf}) as response:
        assert response.status == 200 and (await response.json())["revoked"] == 1
    # ICE servers: TURN credentials coturn accepts.
    async with alice.client.get(ORIGIN + "/chat/ice-servers") as response:
        ice = await response.json()
    turn = next(server for server in ice["iceServers"] if "username" in server)
    assert f"turn:{TURN_ADDRESS}:{TURN_PORT}?transport=udp" in turn["urls"]
    answer = await asyncio.to_thread(allocate, (TURN_ADDRESS, TURN_PORT), turn["username"], turn["credential"],
                                     source=CLIENT_ADDRESS)
    assert answer.code == 0


async def test_jssip_registers_with_the_web_issued_credential(web: list[Web]) -> None:
    node = shutil.which("node")
    if node is None or not (JSSIP / "node_modules" / "jssip").is_dir():
        message = "node and tests/auth/jssip's modules are needed (scripts/setup-test-env)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    alice = await Web().login(ALICE)
    bob = await Web().login(BOB)
    web.extend([alice, bob])
    alice_token = (await alice.sip_credentials())["password"]
    bob_token = (await bob.sip_credentials())["password"]
    result = await asyncio.to_thread(
        subprocess.run, [node, str(JSSIP / "register.js"), f"wss://{PEERAGE_ADDRESS}:{SIP_WSS_PORT}", DOMAIN, "alice",
                         str(alice_token), "bob", str(bob_token), "15000"],
        capture_output=True, text=True, timeout=30, env={"NODE_TLS_REJECT_UNAUTHORIZED": "0", "PATH": "/usr/bin:/bin"})
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert result.returncode == 0, (events, result.stderr[-2000:])
    assert [e["event"] for e in events if e["event"] == "registered"] == ["registered", "registered"]
