"""Group chat with real clients (slixmpp) on two federating peerage servers: create and configure a
room, invite a user of the other server (mediated and direct), join with history, query the room's
archive, moderate (kick, ban), and the room surviving a restart."""

from __future__ import annotations

import asyncio

import pytest
import slixmpp
from slixmpp.exceptions import IqError, PresenceError

from tests.muc.conftest import START_TIMEOUT
from tests.muc.helpers import TIMEOUT, logged_in

ROOM = "plans@conference.one.muc.test"


async def test_room_across_two_servers(peerage_pair) -> None:
    one, two = peerage_pair
    alice = await logged_in("alice@one.muc.test/desk", one.address)
    carol = await logged_in("carol@two.muc.test/phone", two.address)
    try:
        muc_a, muc_c = alice.plugin["xep_0045"], carol.plugin["xep_0045"]
        await alice.create_room(ROOM, "Alice", roomname="Plans", persistentroom=True, changesubject=False)
        muc_a.set_subject(slixmpp.JID(ROOM), "Saturday")
        for n in range(3):
            alice.send_message(mto=ROOM, mbody=f"early {n}", mtype="groupchat")
            await alice.next_groupchat(f"early {n}")  # the room reflects each message to its sender
        # Mediated invitation (XEP-0045 section 7.8.2) and a direct one (XEP-0249), over s2s.
        muc_a.invite(slixmpp.JID(ROOM), "carol@two.muc.test", reason="weekend plans")
        invite = await asyncio.wait_for(carol.invites.get(), TIMEOUT)
        assert invite["from"].bare == ROOM
        assert invite["muc"]["invite"]["from"].bare == "alice@one.muc.test"
        alice.plugin["xep_0249"].send_invitation(slixmpp.JID("carol@two.muc.test"), slixmpp.JID(ROOM),
                                                 reason="come")
        direct = await asyncio.wait_for(carol.direct_invites.get(), TIMEOUT)
        assert direct["groupchat_invite"]["jid"] == ROOM

        presence, subject, occupants, history = await muc_c.join_muc_wait(
            slixmpp.JID(ROOM), "Carol", maxstanzas=2, timeout=TIMEOUT)
        assert 110 in presence["muc"]["status_codes"]
        assert presence["occupant-id"]["id"]
        assert sorted(p["from"].resource for p in occupants) == ["Alice", "Carol"]
        assert [m["body"] for m in history] == ["early 1", "early 2"]
        assert subject["subject"] == "Saturday"

        carol.send_message(mto=ROOM, mbody="count me in", mtype="groupchat")
        heard = await alice.next_groupchat("count me in")
        assert heard["from"] == f"{ROOM}/Carol"
        assert heard["occupant-id"]["id"] == presence["occupant-id"]["id"]
        assert heard["stanza_id"]["by"] == ROOM

        # MAM on the room (XEP-0313 section 6) from the remote occupant.
        bodies = [m["mam_result"]["forwarded"]["stanza"]["body"]
                  async for m in carol.plugin["xep_0313"].iterate(jid=slixmpp.JID(ROOM), total=10)]
        assert bodies == ["early 0", "early 1", "early 2", "count me in"]

        # Disco: the domain lists its conference service, the service lists the public room.
        items = await alice.plugin["xep_0030"].get_items(jid="one.muc.test", timeout=TIMEOUT)
        assert "conference.one.muc.test" in [i[0] for i in items["disco_items"]["items"]]
        rooms = await carol.plugin["xep_0030"].get_items(jid="conference.one.muc.test", timeout=TIMEOUT)
        assert (ROOM, "Plans") in [(i[0], i[2]) for i in rooms["disco_items"]["items"]]
        info = await carol.plugin["xep_0030"].get_info(jid=ROOM, timeout=TIMEOUT)
        features = info["disco_info"]["features"]
        assert {"http://jabber.org/protocol/muc", "muc_persistent", "urn:xmpp:mam:2",
                "urn:xmpp:occupant-id:0"} <= set(features)

        # XEP-0410 self-ping from the remote occupant.
        assert await carol.plugin["xep_0199"].ping(f"{ROOM}/Carol", timeout=TIMEOUT) >= 0

        # Moderation: Carol may not kick; Alice kicks Carol, then bans her.
        with pytest.raises(IqError) as refused:
            await muc_c.set_role(slixmpp.JID(ROOM), "Alice", "none", timeout=TIMEOUT)
        assert refused.value.condition == "forbidden"
        await muc_a.set_role(slixmpp.JID(ROOM), "Carol", "none", reason="test kick", timeout=TIMEOUT)
        kicked = await carol.presence_with(307)
        assert kicked["type"] == "unavailable"
        await muc_a.set_affiliation(slixmpp.JID(ROOM), "outcast", jid=slixmpp.JID("carol@two.muc.test"),
                                    timeout=TIMEOUT)
        with pytest.raises(PresenceError) as banned:
            await muc_c.join_muc_wait(slixmpp.JID(ROOM), "Carol", timeout=TIMEOUT)
        assert banned.value.condition == "forbidden"
        outcasts = await muc_a.get_affiliation_list(slixmpp.JID(ROOM), "outcast", timeout=TIMEOUT)
        assert [str(j) for j in outcasts] == ["carol@two.muc.test"]
    finally:
        await alice.close()
        await carol.close()

    # The persistent room survives a restart of its server, with its name and its ban list.
    one.stop()
    one.start(timeout=START_TIMEOUT)
    bob = await logged_in("bob@one.muc.test/x", one.address)
    try:
        info = await bob.plugin["xep_0030"].get_info(jid=ROOM, timeout=TIMEOUT)
        assert "Plans" in {identity[3] for identity in info["disco_info"]["identities"]}
        presence, subject, _, history = await bob.plugin["xep_0045"].join_muc_wait(
            slixmpp.JID(ROOM), "Bob", maxstanzas=1, timeout=TIMEOUT)
        assert subject["subject"] == "Saturday"
        assert [m["body"] for m in history] == ["count me in"]
    finally:
        await bob.close()
