"""Groupchat 1.0 joins, and XEP-0425 message moderation (with XEP-0424 retraction) in a peerage room, with slixmpp clients on two
servers: a moderator retracts a remote occupant's message, everyone is told in both protocol versions,
the room's archive keeps only a tombstone and newcomers' history drops it; non-moderators and unknown
ids are refused."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET

import pytest
import slixmpp
from slixmpp.exceptions import IqError

from tests.muc.helpers import TIMEOUT, Client, logged_in

ROOM = "moderated@conference.one.muc.test"
MODERATE = "urn:xmpp:message-moderate:1"
RETRACT = "urn:xmpp:message-retract:1"
MODERATE_0 = "urn:xmpp:message-moderate:0"
RETRACT_0 = "urn:xmpp:message-retract:0"
FASTEN = "urn:xmpp:fasten:0"
OCCUPANT_ID = "urn:xmpp:occupant-id:0"


async def moderate(client: Client, stanza_id: str, reason: str = "", version: int = 1) -> None:
    iq = client.make_iq_set(ito=ROOM)
    if version == 1:
        request = ET.SubElement(iq.xml, f"{{{MODERATE}}}moderate", {"id": stanza_id})
        ET.SubElement(request, f"{{{RETRACT}}}retract")
        if reason:
            ET.SubElement(request, f"{{{MODERATE}}}reason").text = reason
    else:
        apply_to = ET.SubElement(iq.xml, f"{{{FASTEN}}}apply-to", {"id": stanza_id})
        request = ET.SubElement(apply_to, f"{{{MODERATE_0}}}moderate")
        ET.SubElement(request, f"{{{RETRACT_0}}}retract")
        if reason:
            ET.SubElement(request, f"{{{MODERATE_0}}}reason").text = reason
    await iq.send(timeout=TIMEOUT)


async def retraction(client: Client, stanza_id: str) -> ET.Element:
    """The room's announcement that ``stanza_id`` was retracted (the <message/>), at ``client``."""
    while True:
        message = await asyncio.wait_for(client.groupchat.get(), TIMEOUT)
        if message.xml.find(f"{{{RETRACT}}}retract[@id='{stanza_id}']") is not None:
            return message.xml


async def test_moderator_retracts_a_message(peerage_pair) -> None:
    one, two = peerage_pair
    alice = await logged_in("alice@one.muc.test/mod", one.address)
    carol = await logged_in("carol@two.muc.test/mod", two.address)
    bob = None
    try:
        await alice.create_room(ROOM, "Alice", persistentroom=True)
        info = await alice.plugin["xep_0030"].get_info(jid=ROOM, timeout=TIMEOUT)
        assert {MODERATE, MODERATE_0} <= set(info["disco_info"]["features"])
        await carol.plugin["xep_0045"].join_muc_wait(slixmpp.JID(ROOM), "Carol", maxstanzas=0, timeout=TIMEOUT)
        for body in ("keep this", "spam spam spam", "and this spam"):
            carol.send_message(mto=ROOM, mbody=body, mtype="groupchat")
        heard = {}
        while len(heard) < 3:
            message = await alice.next_groupchat()
            heard[message["body"]] = message
        spam_id = heard["spam spam spam"]["stanza_id"]["id"]
        carol_occupant = heard["spam spam spam"]["occupant-id"]["id"]

        # A participant may not moderate; an unknown id is item-not-found.
        with pytest.raises(IqError) as refused:
            await moderate(carol, heard["keep this"]["stanza_id"]["id"])
        assert refused.value.iq["error"]["condition"] == "forbidden"
        with pytest.raises(IqError) as unknown:
            await moderate(alice, "no-such-message")
        assert unknown.value.iq["error"]["condition"] == "item-not-found"

        # The owner (a moderator) retracts carol's message; both occupants hear it, carol over s2s.
        await moderate(alice, spam_id, reason="Spam")
        for client in (alice, carol):
            announcement = await retraction(client, spam_id)
            assert announcement.get("from") == ROOM
            retract = announcement.find(f"{{{RETRACT}}}retract")
            assert retract is not None
            moderated = retract.find(f"{{{MODERATE}}}moderated")
            assert moderated is not None and moderated.get("by") == f"{ROOM}/Alice"
            assert moderated.find(f"{{{OCCUPANT_ID}}}occupant-id") is not None
            assert retract.findtext(f"{{{RETRACT}}}reason") == "Spam"
            legacy = announcement.find(f"{{{FASTEN}}}apply-to[@id='{spam_id}']/{{{MODERATE_0}}}moderated")
            assert legacy is not None and legacy.find(f"{{{RETRACT_0}}}retract") is not None
        # The version 0 request works as well.
        other_id = heard["and this spam"]["stanza_id"]["id"]
        await moderate(alice, other_id, version=0)
        await retraction(carol, other_id)

        # The archive: tombstones, with who wrote them but not what.
        results = [m async for m in carol.plugin["xep_0313"].iterate(jid=slixmpp.JID(ROOM), total=10)]
        stored = {m["mam_result"]["id"]: m["mam_result"]["forwarded"]["stanza"] for m in results}
        assert stored[heard["keep this"]["stanza_id"]["id"]]["body"] == "keep this"
        for retracted_id in (spam_id, other_id):
            tombstone = stored[retracted_id]
            assert not tombstone["body"]
            assert "spam" not in str(tombstone)
            assert tombstone.xml.find(f"{{{RETRACT}}}retracted/{{{MODERATE}}}moderated") is not None
            assert tombstone.xml.find(f"{{{OCCUPANT_ID}}}occupant-id").get("id") == carol_occupant  # type: ignore[union-attr]
        # Retracting again is harmless.
        await moderate(alice, spam_id)

        # A newcomer's history has only what is left.
        bob = await logged_in("bob@one.muc.test/mod", one.address)
        _, _, _, history = await bob.plugin["xep_0045"].join_muc_wait(slixmpp.JID(ROOM), "Bob", maxstanzas=10,
                                                                      timeout=TIMEOUT)
        assert [m["body"] for m in history] == ["keep this"]
    finally:
        for client in (alice, carol, bob):
            if client is not None:
                await client.close()


async def test_groupchat_1_0_client(peerage_pair) -> None:
    """XEP-0045 section 7.1.1: a client that joins with plain presence (no MUC extension, the old
    groupchat 1.0 protocol) gets an instant, unlocked room others can enter at once, and chats in it."""
    one, two = peerage_pair
    old = await logged_in("alice@one.muc.test/gc10", one.address)
    carol = await logged_in("carol@two.muc.test/gc10", two.address)
    room = "oldstyle@conference.one.muc.test"
    try:
        old.send_presence(pto=f"{room}/Old")  # no <x xmlns='http://jabber.org/protocol/muc'/>
        presence = await old.presence_with(110, "Old")
        assert presence["muc"]["affiliation"] == "owner"
        # Not locked: another user enters without the owner configuring anything.
        await carol.plugin["xep_0045"].join_muc_wait(slixmpp.JID(room), "Carol", maxstanzas=0, timeout=TIMEOUT)
        await old.presence_of("Carol", "available")
        carol.send_message(mto=room, mbody="hello old client", mtype="groupchat")
        assert (await old.next_groupchat("hello old client"))["from"] == f"{room}/Carol"
        old.send_message(mto=room, mbody="hello back", mtype="groupchat")
        assert (await carol.next_groupchat("hello back"))["from"] == f"{room}/Old"
        old.send_presence(pto=f"{room}/Old", ptype="unavailable")
        await carol.presence_of("Old", "unavailable")
    finally:
        for client in (old, carol):
            await client.close()
