"""Fixtures for the XMPP client-service tests: one peerage server hosting two domains on 127.0.1.x.

The server is started once per module (it is a real ``peerage serve`` process); tests use distinct
accounts so they do not see each other's traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import slixmpp

from tests.harness import PeerageServer

PASSWORD = "correct horse battery staple"
DOMAINS = ["a.test", "b.test"]
USERS = [f"{name}@{domain}" for domain in DOMAINS
         for name in ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy")]
CONNECT_TIMEOUT = 30.0  # a login (TLS, SCRAM, roster) on a loaded 2-core CI machine


def start_server(workdir: Path, address: str, users: list[str], config: dict | None = None) -> PeerageServer:
    server = PeerageServer(workdir, DOMAINS, address,
                           config={"server": {"log_level": "info"}, **(config or {})})
    for user in users:
        server.add_user(user, PASSWORD)
    server.start()
    return server


@pytest.fixture(scope="module")
def xmpp_server(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[PeerageServer]:
    address = getattr(request.module, "SERVER_ADDRESS", "127.0.1.2")
    users = getattr(request.module, "SERVER_USERS", USERS)
    server = start_server(tmp_path_factory.mktemp("xmpp"), address, users)
    try:
        yield server
    finally:
        server.kill() if not server.running else server.stop()


class Client(slixmpp.ClientXMPP):
    """slixmpp with event queues the tests can wait on (with bounds). Other areas subclass it with
    their own bounds and password (tests/xmppx)."""

    connect_timeout = CONNECT_TIMEOUT
    message_timeout = 30.0  # a loaded 2-core CI machine; a message that comes sooner returns sooner

    def __init__(self, jid: str, password: str = PASSWORD, plugins: tuple[str, ...] = ()) -> None:
        super().__init__(jid, password)
        self.messages: asyncio.Queue[slixmpp.Message] = asyncio.Queue()
        self.presences: asyncio.Queue[slixmpp.Presence] = asyncio.Queue()
        self.carbons_received: asyncio.Queue[slixmpp.Message] = asyncio.Queue()
        self.carbons_sent: asyncio.Queue[slixmpp.Message] = asyncio.Queue()
        self.started = asyncio.Event()
        self.resumed = asyncio.Event()
        self.failed = asyncio.Event()
        self.enable_plaintext = False
        self.ssl_context.check_hostname = False
        self.ssl_context.verify_mode = ssl.CERT_NONE
        for plugin in ("xep_0030", "xep_0199", *plugins):
            self.register_plugin(plugin)
        self.add_event_handler("session_start", self._on_start)
        self.add_event_handler("session_resumed", lambda _: self.resumed.set())
        self.add_event_handler("failed_auth", lambda _: self.failed.set())
        self.add_event_handler("message", self.messages.put_nowait)
        self.add_event_handler("presence", self.presences.put_nowait)
        self.add_event_handler("carbon_received", self.carbons_received.put_nowait)
        self.add_event_handler("carbon_sent", self.carbons_sent.put_nowait)
        self.send_initial_presence = True

    async def _on_start(self, _event: object) -> None:
        await self.get_roster()
        if self.send_initial_presence:
            self.send_presence()
        self.started.set()

    async def login(self, address: str, port: int = 5222) -> Client:
        self.connect(host=address, port=port)
        await asyncio.wait_for(self.started.wait(), self.connect_timeout)
        return self

    async def next_message(self, timeout: float | None = None, with_body: bool = True) -> slixmpp.Message:
        while True:
            message = await asyncio.wait_for(self.messages.get(), timeout or self.message_timeout)
            if not with_body or message["body"]:
                return message

    async def close(self) -> None:
        if self.transport is not None:
            self.disconnect()
            with contextlib.suppress(TimeoutError, Exception):
                await asyncio.wait_for(self.disconnected, 5)


@pytest.fixture
async def clients() -> AsyncIterator[list[Client]]:
    """Clients appended here are disconnected at the end of the test."""
    created: list[Client] = []
    yield created
    for client in created:
        await client.close()
