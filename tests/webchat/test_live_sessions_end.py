"""What is already running on ended credentials ends too: a password change over XEP-0077 ends the
account's other live XMPP streams with <reset/> (RFC 6120 section 4.9.3.19; Prosody's mod_c2s does the
same on a password change); the stream that made the change stays (XEP-0077 section 3.3)."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import slixmpp

from tests.harness import PeerageServer
from tests.webchat.conftest import DOMAIN, PEERAGE_ADDRESS

IVAN = "ivan@example.org"  # changes his password over XEP-0077 (his own account)
IVAN_PASSWORD = "ivan's first password is long 1"
IVAN_NEW = "ivan's second password is long 2"
WAIT = 20.0  # seconds any one step may take on a loaded machine


class Client:
    """A slixmpp client with XEP-0077, recording the stream error it gets."""

    def __init__(self, password: str, resource: str) -> None:
        self.xmpp = slixmpp.ClientXMPP(f"{IVAN}/{resource}", password)
        self.xmpp.ssl_context.check_hostname = False
        self.xmpp.ssl_context.verify_mode = ssl.CERT_NONE
        for plugin in ("xep_0030", "xep_0077", "xep_0199"):
            self.xmpp.register_plugin(plugin)
        self.xmpp.auto_reconnect = False
        loop = self.xmpp.loop
        self.started: asyncio.Future[bool] = loop.create_future()
        self.error: asyncio.Future[str] = loop.create_future()
        self.gone: asyncio.Future[None] = loop.create_future()
        self.xmpp.add_event_handler("failed_auth", lambda _: self.started.done() or self.started.set_result(False))
        self.xmpp.add_event_handler("session_start", self._started)
        self.xmpp.add_event_handler("stream_error", self._stream_error)
        self.xmpp.add_event_handler("disconnected", lambda _: self.gone.done() or self.gone.set_result(None))

    def _started(self, _: Any) -> None:
        self.xmpp.send_presence()
        if not self.started.done():
            self.started.set_result(True)

    def _stream_error(self, error: Any) -> None:
        if not self.error.done():
            self.error.set_result(str(error["condition"]))

    async def start(self) -> bool:
        self.xmpp.connect(host=PEERAGE_ADDRESS, port=5222)
        return await asyncio.wait_for(self.started, WAIT)

    async def stop(self) -> None:
        if not self.gone.done():
            self.xmpp.disconnect()
            await asyncio.wait_for(self.gone, WAIT)


def ensure_ivan(peerage: PeerageServer) -> None:
    if IVAN in peerage.cli("user", "list", DOMAIN).stdout.split():
        peerage.cli("user", "passwd", IVAN, "--password-file", "-", input=IVAN_PASSWORD + "\n")
    else:
        peerage.add_user(IVAN, IVAN_PASSWORD)


async def test_an_xep0077_password_change_ends_the_accounts_other_streams(peerage: PeerageServer) -> None:
    await asyncio.to_thread(ensure_ivan, peerage)
    changer, phone, laptop = (Client(IVAN_PASSWORD, name) for name in ("changer", "phone", "laptop"))
    clients = [changer, phone, laptop]
    try:
        assert [await c.start() for c in clients] == [True, True, True]

        await asyncio.wait_for(changer.xmpp.plugin["xep_0077"].change_password(IVAN_NEW), WAIT)

        # The others get <reset/> and their streams close.
        for other in (phone, laptop):
            assert await asyncio.wait_for(other.error, WAIT) == "reset"
            await asyncio.wait_for(other.gone, WAIT)
        # The one that changed the password keeps its stream: it still answers a ping.
        assert not changer.error.done() and not changer.gone.done()
        await asyncio.wait_for(changer.xmpp.plugin["xep_0199"].ping(DOMAIN, timeout=WAIT), WAIT)

        # The old password is refused now; the new one opens a stream again.
        stale = Client(IVAN_PASSWORD, "phone")
        clients.append(stale)
        assert not await stale.start()
        fresh = Client(IVAN_NEW, "phone")
        clients.append(fresh)
        assert await fresh.start()
    finally:
        for client in clients:
            await client.stop()
        await asyncio.to_thread(ensure_ivan, peerage)

