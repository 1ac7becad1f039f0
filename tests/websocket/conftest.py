"""Fixtures for the XMPP over WebSocket tests: one `peerage serve` on 127.0.13.x with XMPP, the web
service (HTTPS, where /xmpp-websocket lives), IMAP and submission (to show the XMPP token opens neither).

The server is started once for the area; tests use distinct accounts so they do not see each other.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.harness import PeerageServer
from tests.websocket.wsclient import WsXmpp

# The area's loopback block. PEERAGE_TEST_WEBSOCKET_BLOCK moves it, for a local run while another run
# (a CI run taking no area locks) holds 127.0.13; CI uses the default.
BLOCK = os.environ.get("PEERAGE_TEST_WEBSOCKET_BLOCK", "127.0.13")
DOMAIN = "ws.test"
PASSWORD = "correct horse battery staple"
USERS = [f"{name}@{DOMAIN}" for name in ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi",
                                          "ivan", "judy", "mallory", "oscar", "peggy", "trent", "victor",
                                          "wendy", "yves", "uma", "walt", "xena", "zara")]
HTTPS_PORT = 13443
HTTP_PORT = 13080
C2S_PORT = 5222
IMAP_PORT = 13143
SUBMISSION_PORT = 13587
CREDENTIAL_LIFETIME = 4.0
AUTH_DEADLINE = 8.0  # SASL within 8 s: xmpp.js (a node process) missed 3 s on a loaded machine
BOSH_INACTIVITY = 5  # the shortest [xmpp.bosh] inactivity the server accepts
BOSH_MAX_PAUSE = 30  # [xmpp.bosh] max_pause: longer than any pause the tests ask for


class WsServer:
    def __init__(self, server: PeerageServer) -> None:
        self.server = server
        self.address = server.address
        self.cert = server.workdir / f"{DOMAIN}.crt"

    @property
    def base(self) -> str:
        return f"https://{self.address}:{HTTPS_PORT}"

    @property
    def url(self) -> str:
        return f"wss://{self.address}:{HTTPS_PORT}/xmpp-websocket"

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.cert))
        context.check_hostname = False
        return context

    def ws(self, **kwargs: object) -> WsXmpp:
        return WsXmpp(self.url, DOMAIN, ssl_context=self.ssl_context(), **kwargs)  # type: ignore[arg-type]

    def web(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.ssl_context()),
                                     cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def web_login(self, account: str, password: str = PASSWORD) -> tuple[aiohttp.ClientSession, str]:
        client = self.web()
        async with client.post(self.base + "/login", json={"account": account, "password": password},
                               headers={"Origin": self.base}) as response:
            assert response.status == 200, await response.text()
            csrf = (await response.json())["csrf"]
        return client, csrf


# One process adds every account (a `peerage user add` each would start the interpreter a dozen times).
ADD_USERS = """
import asyncio, sys
from peerage.config import load_config
from peerage.server import Host

async def main():
    host = Host(load_config(sys.argv[1]))
    await host.open()
    await asyncio.gather(*(host.accounts.add(user, sys.argv[2]) for user in sys.argv[3:]))
    await host.store.close()

asyncio.run(main())
"""


def start_server(workdir: Path, address: str) -> PeerageServer:
    config = {
        "server": {"log_level": "info"},
        "limits": {"auth_deadline": AUTH_DEADLINE},
        "web": {"https_listen": [f"{address}:{HTTPS_PORT}"], "http_listen": [f"{address}:{HTTP_PORT}"]},
        "imap": {"listen": [f"{address}:{IMAP_PORT}"], "tls_listen": []},
        "sieve": {"listen": []},  # no ManageSieve on the wildcard 0.0.0.0:4190 default
        "smtp": {"mx_listen": [], "submission_listen": [f"{address}:{SUBMISSION_PORT}"], "submissions_listen": []},
        "xmpp": {"websocket": {"credential_lifetime": CREDENTIAL_LIFETIME}, "s2s_listen": [],
                 "bosh": {"inactivity": BOSH_INACTIVITY, "max_pause": BOSH_MAX_PAUSE},
                 "s2s_direct_tls_listen": [],
                 # open in-band registration (XEP-0077), to show it works over WebSocket as on TCP
                 "registration": {"enabled": True}},
    }
    server = PeerageServer(workdir, [DOMAIN], address, services=("xmpp", "web", "imap", "smtp"), config=config)
    subprocess.run([sys.executable, "-c", ADD_USERS, str(server.config_path), PASSWORD, *USERS], check=True,
                   timeout=120)
    return server.start()


@pytest.fixture(scope="session")
def ws_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WsServer]:
    server = start_server(tmp_path_factory.mktemp("websocket"), f"{BLOCK}.2")
    try:
        yield WsServer(server)
    finally:
        server.kill() if not server.running else server.stop()


@pytest.fixture
async def closing() -> AsyncIterator[list[object]]:
    """Clients (WsXmpp, aiohttp sessions, slixmpp) appended here are closed at the end of the test."""
    created: list[object] = []
    yield created
    for client in created:
        close = getattr(client, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                await close()
