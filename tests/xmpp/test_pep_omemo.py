"""OMEMO over PEP with real clients: slixmpp with slixmpp-omemo on two accounts.

slixmpp-omemo 2.2 publishes device lists and bundles for both OMEMO versions (``urn:xmpp:omemo:2``
and the legacy ``eu.siacs.conversations.axolotl``) and decrypts both, but encrypts with the legacy
version only (it has no XEP-0420 stanza content encryption for OMEMO 2), so the message exchanged
here is legacy OMEMO; for OMEMO 2 the test checks that both clients' device lists and bundles are on
the server and readable by the other.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

pytest.importorskip("slixmpp_omemo")

import slixmpp
from omemo.storage import Just, Maybe, Nothing, Storage
from omemo.types import JSONType
from slixmpp.plugins import register_plugin
from slixmpp_omemo import XEP_0384

from tests.harness import PeerageServer
from tests.xmpp.conftest import CONNECT_TIMEOUT, Client

SERVER_ADDRESS = "127.0.10.3"
SERVER_USERS = ["alice@a.test", "bob@a.test"]
TWOMEMO_DEVICES = "urn:xmpp:omemo:2:devices"
TWOMEMO_BUNDLES = "urn:xmpp:omemo:2:bundles"
OLDMEMO_DEVICES = "eu.siacs.conversations.axolotl.devicelist"


class MemoryStorage(Storage):
    def __init__(self) -> None:
        super().__init__()
        self.data: dict[str, JSONType] = {}

    async def _load(self, key: str) -> Maybe[JSONType]:
        return Just(self.data[key]) if key in self.data else Nothing()

    async def _store(self, key: str, value: JSONType) -> None:
        self.data[key] = value

    async def _delete(self, key: str) -> None:
        self.data.pop(key, None)


class XEP_0384Impl(XEP_0384):
    """Blind trust before verification (BTBV), storage in memory."""

    def plugin_init(self) -> None:
        self._memory = MemoryStorage()
        super().plugin_init()

    @property
    def storage(self) -> Storage:
        return self._memory

    @property
    def _btbv_enabled(self) -> bool:
        return True

    async def _devices_blindly_trusted(self, blindly_trusted: Any, identifier: str | None) -> None:
        return None

    async def _prompt_manual_trust(self, manually_trusted: Any, identifier: str | None) -> None:
        raise AssertionError("BTBV is on: no manual trust decision is expected")


register_plugin(XEP_0384Impl)


class OmemoClient(Client):
    def __init__(self, jid: str) -> None:
        super().__init__(jid, plugins=("xep_0115", "xep_0060", "xep_0163", "xep_0280", "xep_0334"))
        self.use_message_ids = True
        self.register_plugin("xep_0384", module=sys.modules[__name__])
        self.omemo_ready = asyncio.Event()
        self.device_lists: asyncio.Queue[slixmpp.Message] = asyncio.Queue()
        self.add_event_handler("omemo_initialized", lambda _: self.omemo_ready.set())
        self.add_event_handler("oldmemo_device_list_publish", self.device_lists.put_nowait)
        self.add_event_handler("twomemo_device_list_publish", self.device_lists.put_nowait)
        self.send_initial_presence = False

    async def _on_start(self, event: object) -> None:
        # slixmpp-omemo declares its +notify interests before the JID is bound, which slixmpp files
        # under the unbound JID; declared again now, they are in the bound JID's caps. slixmpp puts
        # caps in presence once they are computed: the update broadcasts the initial presence.
        await self.get_roster()
        for node in (TWOMEMO_DEVICES, OLDMEMO_DEVICES):
            self.plugin["xep_0163"].add_interest(node)
        await self.plugin["xep_0115"].update_caps(broadcast=True)
        self.started.set()


@pytest.fixture
async def pair(xmpp_server: PeerageServer) -> AsyncIterator[tuple[OmemoClient, OmemoClient]]:
    alice, bob = OmemoClient("alice@a.test"), OmemoClient("bob@a.test")
    try:
        await alice.login(SERVER_ADDRESS)
        await bob.login(SERVER_ADDRESS)
        await asyncio.wait_for(asyncio.gather(alice.omemo_ready.wait(), bob.omemo_ready.wait()), 60)
        yield alice, bob
    finally:
        await alice.close()
        await bob.close()


async def until(predicate: Any, timeout: float = CONNECT_TIMEOUT) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def test_device_lists_bundles_and_a_decrypted_message(pair: tuple[OmemoClient, OmemoClient]) -> None:
    alice, bob = pair
    bob_jid, alice_jid = slixmpp.JID("bob@a.test"), slixmpp.JID("alice@a.test")
    # Both versions' device lists and bundles are on the server, readable by the other account.
    for reader, owner in ((alice, bob_jid), (bob, alice_jid)):
        for node in (TWOMEMO_DEVICES, OLDMEMO_DEVICES, TWOMEMO_BUNDLES):
            items = await reader.plugin["xep_0060"].get_items(owner, node, timeout=10)
            assert list(items["pubsub"]["items"]), (owner, node)
        devices = await reader.plugin["xep_0060"].get_items(owner, OLDMEMO_DEVICES, timeout=10)
        device_id = next(iter(devices["pubsub"]["items"]))["payload"][0].attrib["id"]
        bundle = await reader.plugin["xep_0060"].get_items(owner, f"eu.siacs.conversations.axolotl.bundles:{device_id}",
                                                    timeout=10)
        assert list(bundle["pubsub"]["items"])

    # Mutual presence subscription: each now gets the other's device list as a +notify contact.
    alice.send_presence(pto=bob_jid, ptype="subscribe")
    await until(lambda: alice.client_roster[bob_jid.bare]["subscription"] == "both"
                and bob.client_roster[alice_jid.bare]["subscription"] == "both")
    while True:
        update = await asyncio.wait_for(alice.device_lists.get(), 15)
        if update["from"].bare == bob_jid.bare:
            break

    # An encrypted message (legacy OMEMO: what slixmpp-omemo encrypts with) is decrypted by bob.
    message = alice.make_message(mto=bob_jid, mtype="chat", mbody="the eagle lands at noon")
    encrypted, errors = await alice.plugin["xep_0384"].encrypt_message(message, bob_jid)
    assert encrypted is not None and not errors, errors
    assert "the eagle" not in str(encrypted)
    encrypted.send()
    while True:
        received = await asyncio.wait_for(bob.messages.get(), 15)
        if bob.plugin["xep_0384"].is_encrypted(received):
            break
    assert bob.plugin["xep_0384"].is_encrypted(received) == {"eu.siacs.conversations.axolotl"}
    decrypted, sender = await bob.plugin["xep_0384"].decrypt_message(received)
    assert decrypted["body"] == "the eagle lands at noon"
    assert sender.bare_jid == "alice@a.test"
