"""Real clients (slixmpp) on two federated peerage servers: chat, a presence subscription, and an iq
ping answered by the remote server."""

from __future__ import annotations

import asyncio
import contextlib
import ssl

import pytest
import slixmpp

from tests.s2s.helpers import FEDERATION_TIMEOUT, PASSWORD, Federation


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid: str) -> None:
        super().__init__(jid, PASSWORD)
        self.messages: asyncio.Queue[slixmpp.Message] = asyncio.Queue()
        self.presences: asyncio.Queue[slixmpp.Presence] = asyncio.Queue()
        self.started = asyncio.Event()
        self.enable_plaintext = False
        self.ssl_context.check_hostname = False
        self.ssl_context.verify_mode = ssl.CERT_NONE
        for plugin in ("xep_0030", "xep_0199"):
            self.register_plugin(plugin)
        self.add_event_handler("session_start", self._on_start)
        self.add_event_handler("message", self.messages.put_nowait)
        self.add_event_handler("presence", self.presences.put_nowait)

    async def _on_start(self, _event: object) -> None:
        await self.get_roster()
        self.send_presence()
        self.started.set()

    async def login(self, address: str) -> Client:
        self.connect(host=address, port=5222)
        await asyncio.wait_for(self.started.wait(), FEDERATION_TIMEOUT)
        return self

    async def presence_of_type(self, kind: str) -> slixmpp.Presence:
        while True:
            presence = await asyncio.wait_for(self.presences.get(), FEDERATION_TIMEOUT)
            if presence["type"] == kind:
                return presence

    async def close(self) -> None:
        if self.transport is not None:
            self.disconnect()
            with contextlib.suppress(Exception):  # best effort at teardown
                await asyncio.wait_for(self.disconnected, 5)


@pytest.fixture(scope="module")
def servers(federation: Federation):
    one = federation.server("sx1.s2s.test", "127.0.2.71", level="encrypted", users=("juliet",))
    two = federation.server("sx2.s2s.test", "127.0.2.72", level="encrypted", certificate="self",
                            users=("romeo",), federation={"bidi": True})
    federation.start_all([one, two])
    return one, two


async def test_slixmpp_clients_across_federation(servers) -> None:
    one, two = servers
    juliet = await Client("juliet@sx1.s2s.test/balcony").login(one.address)
    romeo = await Client("romeo@sx2.s2s.test/garden").login(two.address)
    try:
        juliet.send_presence(pto="romeo@sx2.s2s.test", ptype="subscribe")
        request = await romeo.presence_of_type("subscribe")
        assert request["from"].bare == "juliet@sx1.s2s.test"
        romeo.send_presence(pto="juliet@sx1.s2s.test", ptype="subscribed")
        approval = await juliet.presence_of_type("subscribed")
        assert approval["from"].bare == "romeo@sx2.s2s.test"

        juliet.send_message(mto="romeo@sx2.s2s.test", mbody="wherefore art thou", mtype="chat")
        message = await asyncio.wait_for(romeo.messages.get(), FEDERATION_TIMEOUT)
        assert message["body"] == "wherefore art thou"
        romeo.send_message(mto="juliet@sx1.s2s.test", mbody="here", mtype="chat")
        message = await asyncio.wait_for(juliet.messages.get(), FEDERATION_TIMEOUT)
        assert message["body"] == "here" and message["from"].bare == "romeo@sx2.s2s.test"

        rtt = await romeo.plugin["xep_0199"].ping("sx1.s2s.test", timeout=FEDERATION_TIMEOUT)
        assert rtt >= 0
    finally:
        await juliet.close()
        await romeo.close()
