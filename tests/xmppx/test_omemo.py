"""OMEMO with real clients (slixmpp-omemo) on two accounts here and one on another peerage server over s2s.

Device lists and bundles of both versions are published through PEP, contacts get the device lists by
+notify (the remote contact over s2s), and an encrypted message is decrypted by each recipient, in both
versions: legacy ``eu.siacs.conversations.axolotl`` through slixmpp-omemo's own encrypt/decrypt, and
``urn:xmpp:omemo:2`` through the python-omemo session manager slixmpp-omemo runs (slixmpp-omemo 2.2 has
no XEP-0420 envelope of its own, so the test wraps the body in one, as the XEP says).
"""

from __future__ import annotations

import asyncio
import sys
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator

import pytest

pytest.importorskip("slixmpp_omemo")

import slixmpp
import twomemo
import twomemo.etree

import tests.xmpp.test_pep_omemo as omemo_plugin  # registers the in-memory, blind-trust XEP-0384 plugin
from tests.harness import PeerageServer
from tests.xmppx.conftest import ONE_ADDRESS, TIMEOUT, TWO_ADDRESS, Client, until

OLDMEMO = "eu.siacs.conversations.axolotl"
OLDMEMO_DEVICES = "eu.siacs.conversations.axolotl.devicelist"
TWOMEMO = "urn:xmpp:omemo:2"
TWOMEMO_DEVICES = "urn:xmpp:omemo:2:devices"
TWOMEMO_BUNDLES = "urn:xmpp:omemo:2:bundles"
SCE = "urn:xmpp:sce:1"


class OmemoClient(Client):
    def __init__(self, jid: str) -> None:
        super().__init__(jid, plugins=("xep_0115", "xep_0060", "xep_0163", "xep_0280", "xep_0334"))
        self.use_message_ids = True
        self.register_plugin("xep_0384", module=sys.modules[omemo_plugin.__name__])
        self.omemo_ready = asyncio.Event()
        self.device_lists: asyncio.Queue[slixmpp.Message] = asyncio.Queue()
        self.add_event_handler("omemo_initialized", lambda _: self.omemo_ready.set())
        self.add_event_handler("oldmemo_device_list_publish", self.device_lists.put_nowait)
        self.add_event_handler("twomemo_device_list_publish", self.device_lists.put_nowait)
        self.send_initial_presence = False

    async def _on_start(self, event: object) -> None:
        # As in tests/xmpp/test_pep_omemo.py: +notify interests declared again once the JID is bound,
        # then caps (and with them the initial presence) broadcast.
        await self.get_roster()
        for node in (TWOMEMO_DEVICES, OLDMEMO_DEVICES):
            self.plugin["xep_0163"].add_interest(node)
        await self.plugin["xep_0115"].update_caps(broadcast=True)
        self.started.set()

    async def device_list_from(self, bare: str, namespace: str) -> None:
        """Wait for a device-list notification of ``namespace`` from ``bare``."""
        while True:
            update = await asyncio.wait_for(self.device_lists.get(), TIMEOUT)
            if update["from"].bare == bare and update.xml.find(
                    f".//{{http://jabber.org/protocol/pubsub#event}}items[@node='{namespace}']") is not None:
                return

    async def encrypted_message(self, namespace: str) -> slixmpp.Message:
        while True:
            received = await asyncio.wait_for(self.messages.get(), TIMEOUT)
            if namespace in self.plugin["xep_0384"].is_encrypted(received):
                return received


@pytest.fixture
async def trio(one: PeerageServer, two: PeerageServer) -> AsyncIterator[tuple[OmemoClient, OmemoClient, OmemoClient]]:
    alice, bob, yves = OmemoClient("olga@x1.test"), OmemoClient("omar@x1.test"), OmemoClient("yves@y.test")
    try:
        await asyncio.gather(alice.login(ONE_ADDRESS), bob.login(ONE_ADDRESS), yves.login(TWO_ADDRESS))
        await asyncio.wait_for(asyncio.gather(*(c.omemo_ready.wait() for c in (alice, bob, yves))), 90)
        yield alice, bob, yves
    finally:
        for client in (alice, bob, yves):
            await client.close()


def sce_envelope(body: str, sender: str) -> bytes:
    """A XEP-0420 envelope for OMEMO 2 (XEP-0384 section 4.4): the body, random padding, the sender."""
    envelope = ET.Element(f"{{{SCE}}}envelope")
    content = ET.SubElement(envelope, f"{{{SCE}}}content")
    ET.SubElement(content, "{jabber:client}body").text = body
    ET.SubElement(envelope, f"{{{SCE}}}rpad").text = "padding"
    ET.SubElement(envelope, f"{{{SCE}}}from", {"jid": sender})
    return ET.tostring(envelope)


async def send_twomemo(sender: OmemoClient, to: slixmpp.JID, body: str) -> None:
    xep = sender.plugin["xep_0384"]
    await xep.refresh_device_lists({to})
    manager = await xep.get_session_manager()
    messages, errors = await manager.encrypt(frozenset({to.bare}), {TWOMEMO: sce_envelope(body, sender.boundjid.bare)},
                                             backend_priority_order=[TWOMEMO])
    assert not errors, errors
    stanza = sender.make_message(mto=to, mtype="chat", mbody="This message is encrypted with OMEMO.")
    stanza.enable("store")
    for message in messages:
        stanza.append(twomemo.etree.serialize_message(message))
    assert body not in str(stanza)
    stanza.send()


async def open_twomemo(receiver: OmemoClient, stanza: slixmpp.Message) -> tuple[str, str]:
    """(body, sender's bare JID) of an OMEMO 2 message, from its decrypted envelope."""
    element = stanza.xml.find(f"{{{TWOMEMO}}}encrypted")
    assert element is not None
    manager = await receiver.plugin["xep_0384"].get_session_manager()
    plaintext, device, _ = await manager.decrypt(twomemo.etree.parse_message(element, stanza["from"].bare))
    assert plaintext is not None
    envelope = ET.fromstring(plaintext)
    body = envelope.findtext(f"{{{SCE}}}content/{{jabber:client}}body")
    sender = envelope.find(f"{{{SCE}}}from")
    assert body is not None and sender is not None
    assert device.bare_jid == stanza["from"].bare == sender.get("jid")
    return body, device.bare_jid


async def test_omemo_both_versions_locally_and_over_s2s(trio: tuple[OmemoClient, OmemoClient, OmemoClient]) -> None:
    alice, bob, yves = trio
    alice_jid = alice.boundjid.bare
    # Mutual presence subscriptions: alice with bob (same server) and with yves (over s2s).
    for contact in (bob, yves):
        alice.send_presence(pto=contact.boundjid.bare, ptype="subscribe")
        await until(lambda c=contact: alice.client_roster[c.boundjid.bare]["subscription"] == "both"
                    and c.client_roster[alice_jid]["subscription"] == "both", timeout=30)
    # Each contact gets alice's device lists by +notify, the remote one over s2s.
    for contact in (bob, yves):
        await contact.device_list_from(alice_jid, OLDMEMO_DEVICES)
    # Device lists and bundles of both versions are readable by the contacts, across servers too.
    for reader, owner in ((bob, alice_jid), (yves, alice_jid), (alice, yves.boundjid.bare)):
        for node in (TWOMEMO_DEVICES, OLDMEMO_DEVICES, TWOMEMO_BUNDLES):
            items = await reader.plugin["xep_0060"].get_items(slixmpp.JID(owner), node, timeout=TIMEOUT)
            assert list(items["pubsub"]["items"]), (reader.boundjid.bare, owner, node)

    for recipient in (bob, yves):
        to = slixmpp.JID(recipient.boundjid.bare)
        # Legacy OMEMO, as slixmpp-omemo sends it.
        message = alice.make_message(mto=to, mtype="chat", mbody=f"legacy to {to}")
        encrypted, errors = await alice.plugin["xep_0384"].encrypt_message(message, to)
        assert encrypted is not None and not errors, errors
        assert "legacy to" not in str(encrypted)
        encrypted.send()
        received = await recipient.encrypted_message(OLDMEMO)
        decrypted, sender = await recipient.plugin["xep_0384"].decrypt_message(received)
        assert decrypted["body"] == f"legacy to {to}"
        assert sender.bare_jid == alice_jid
        # OMEMO 2.
        await send_twomemo(alice, to, f"omemo 2 to {to}")
        received = await recipient.encrypted_message(TWOMEMO)
        assert await open_twomemo(recipient, received) == (f"omemo 2 to {to}", alice_jid)

    # And back from the remote server: yves answers alice in OMEMO 2.
    await send_twomemo(yves, slixmpp.JID(alice_jid), "the reply crosses too")
    received = await alice.encrypted_message(TWOMEMO)
    assert await open_twomemo(alice, received) == ("the reply crosses too", yves.boundjid.bare)
