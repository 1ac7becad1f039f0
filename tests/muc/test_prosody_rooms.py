"""Group chat between peerage and Debian's Prosody (mod_muc) over s2s, both ways: a Prosody user in a
peerage room, and a peerage user in a room on Prosody's conference service."""

from __future__ import annotations

import pytest
import slixmpp
from slixmpp.exceptions import PresenceError

from tests.muc.helpers import TIMEOUT, logged_in


async def test_prosody_user_in_a_peerage_room(peerage_pair, prosody) -> None:
    one, _ = peerage_pair
    room = "mixed@conference.one.muc.test"
    alice = await logged_in("alice@one.muc.test/p1", one.address)
    dave = await logged_in("dave@pro.muc.test/p1", prosody.address)
    try:
        await alice.create_room(room, "Alice", roomname="Mixed")
        alice.send_message(mto=room, mbody="before dave", mtype="groupchat")
        await alice.next_groupchat("before dave")
        presence, _, _, history = await dave.plugin["xep_0045"].join_muc_wait(
            slixmpp.JID(room), "Dave", maxstanzas=5, timeout=TIMEOUT)
        assert 110 in presence["muc"]["status_codes"]
        assert [m["body"] for m in history] == ["before dave"]
        dave.send_message(mto=room, mbody="hello from prosody", mtype="groupchat")
        heard = await alice.next_groupchat("hello from prosody")
        assert heard["from"] == f"{room}/Dave"
        alice.send_message(mto=room, mbody="welcome", mtype="groupchat")
        assert (await dave.next_groupchat("welcome"))["from"] == f"{room}/Alice"
        # A private message through the room, and Prosody's user reads the room archive.
        alice.send_message(mto=f"{room}/Dave", mbody="just you", mtype="chat")
        private = await dave.messages.get()
        assert private["body"] == "just you" and private["from"] == f"{room}/Alice"
        got = [m async for m in dave.plugin["xep_0313"].iterate(jid=slixmpp.JID(room), total=10)]
        bodies = [m["mam_result"]["forwarded"]["stanza"]["body"] for m in got]
        assert bodies == ["before dave", "hello from prosody", "welcome"]
        # Rooms here are created by this server's users only ([muc] room_creation = "local").
        with pytest.raises(PresenceError) as refused:
            await dave.plugin["xep_0045"].join_muc_wait(slixmpp.JID("daves@conference.one.muc.test"), "Dave",
                                                        timeout=TIMEOUT)
        assert refused.value.condition == "not-allowed"
        # Dave's client goes away: Prosody sends unavailable to the room (RFC 6121 section 4.6), so
        # Dave leaves it.
        await dave.close()
        gone = await alice.presence_of("Dave", "unavailable")
        assert gone["muc"]["role"] == "none"
    finally:
        await alice.close()
        await dave.close()


async def test_peerage_user_in_a_prosody_room(peerage_pair, prosody) -> None:
    one, _ = peerage_pair
    room = "party@conference.pro.muc.test"
    dave = await logged_in("dave@pro.muc.test/p2", prosody.address)
    bob = await logged_in("bob@one.muc.test/p2", one.address)
    try:
        await dave.plugin["xep_0045"].join_muc_wait(slixmpp.JID(room), "Dave", maxstanzas=0, timeout=TIMEOUT)
        dave.send_message(mto=room, mbody="prosody room", mtype="groupchat")
        await dave.next_groupchat("prosody room")
        presence, _, occupants, history = await bob.plugin["xep_0045"].join_muc_wait(
            slixmpp.JID(room), "Bob", maxstanzas=5, timeout=TIMEOUT)
        assert 110 in presence["muc"]["status_codes"]
        assert sorted(p["from"].resource for p in occupants) == ["Bob", "Dave"]
        assert [m["body"] for m in history] == ["prosody room"]
        bob.send_message(mto=room, mbody="peerage says hi", mtype="groupchat")
        assert (await dave.next_groupchat("peerage says hi"))["from"] == f"{room}/Bob"
        dave.send_message(mto=room, mbody="hi bob", mtype="groupchat")
        assert (await bob.next_groupchat("hi bob"))["from"] == f"{room}/Dave"
        # And the other way: peerage tells Prosody's room when Bob's client goes away.
        await bob.close()
        assert (await dave.presence_of("Bob", "unavailable"))["from"] == f"{room}/Bob"
    finally:
        await dave.close()
        await bob.close()
