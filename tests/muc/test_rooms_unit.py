"""XEP-0045 rooms in-process: the real service and rooms, a real Router, a throw-away SQLite file."""

from __future__ import annotations

import asyncio

import pytest

from peerage.xmpp.muc import limits
from peerage.xmpp.muc.room import MUC_USER
from tests.muc.memory import MucHarness, codes, condition, field, memory_engine

ROOM = "lounge@conference.a.test"
ALICE = "alice@a.test/phone"
BOB = "bob@a.test/laptop"
CAROL = "carol@b.test/desk"


@pytest.fixture
async def muc():
    engine = await memory_engine()
    harness = MucHarness(engine)
    harness.muc.message_rate = harness.muc.message_burst = 1000.0  # the flood test sets its own
    yield harness
    await harness.settle()
    await engine.dispose()


async def test_first_join_creates_a_locked_room_and_instant_config_opens_it(muc: MucHarness) -> None:
    got = await muc.join(ROOM, ALICE, "Alice")
    presence = next(s for s in got if s.name == "presence")
    assert {"110", "201"} <= set(codes(presence))
    item = presence.find("x", MUC_USER).find("item")
    assert (item.attrs["affiliation"], item.attrs["role"]) == ("owner", "moderator")
    assert presence.find("occupant-id", "urn:xmpp:occupant-id:0") is not None
    assert any(s.name == "message" and s.find("subject") is not None for s in got)
    # Locked: others cannot enter yet (section 10.1.1).
    refused = await muc.join(ROOM, BOB, "Bob")
    assert condition(refused[0]) == "item-not-found"
    await muc.send(f"<iq from='{ALICE}' to='{ROOM}' type='set' id='c'><query xmlns='http://jabber.org/protocol/"
                   "muc#owner'><x xmlns='jabber:x:data' type='submit'/></query></iq>")
    assert muc.take(ALICE)[-1].attrs["type"] == "result"
    got = await muc.join(ROOM, BOB, "Bob")
    assert [s.attrs["from"] for s in got if s.name == "presence"] == [f"{ROOM}/Alice", f"{ROOM}/Bob"]
    joined = muc.take(ALICE)
    assert joined[0].attrs["from"] == f"{ROOM}/Bob"
    # Semi-anonymous by default: Alice (a moderator) sees Bob's real JID, Bob does not see hers.
    assert joined[0].find("x", MUC_USER).find("item").attrs["jid"] == BOB
    assert "jid" not in got[0].find("x", MUC_USER).find("item").attrs


async def test_messages_history_subject_and_occupant_ids(muc: MucHarness) -> None:
    await muc.create(ROOM, ALICE, "Alice")
    await muc.join(ROOM, BOB, "Bob")
    muc.take(ALICE)
    for n in range(3):
        await muc.send(f"<message from='{ALICE}' to='{ROOM}' type='groupchat' id='m{n}'><body>hello {n}</body>"
                       "<occupant-id xmlns='urn:xmpp:occupant-id:0' id='forged'/></message>")
    to_bob = muc.take(BOB)
    assert [m.find_text("body") for m in to_bob] == ["hello 0", "hello 1", "hello 2"]
    ids = {m.find("occupant-id", "urn:xmpp:occupant-id:0").attrs["id"] for m in to_bob}
    assert len(ids) == 1 and "forged" not in ids
    assert all(m.find("stanza-id", "urn:xmpp:sid:0").attrs["by"] == ROOM for m in to_bob)
    assert [m.attrs["id"] for m in muc.take(ALICE)] == ["m0", "m1", "m2"]  # reflected with their ids
    await muc.send(f"<message from='{ALICE}' to='{ROOM}' type='groupchat'><subject>Plans</subject></message>")
    # Bob may not change the subject (participants cannot by default).
    await muc.send(f"<message from='{BOB}' to='{ROOM}' type='groupchat'><subject>Mine</subject></message>")
    assert condition(next(s for s in muc.take(BOB) if s.attrs.get("type") == "error")) == "forbidden"
    got = await muc.join(ROOM, "carol@a.test/x", "Carol", "<history maxstanzas='2'/>")
    history = [m for m in got if m.name == "message" and m.find("delay", "urn:xmpp:delay") is not None]
    assert [m.find_text("body") for m in history] == ["hello 1", "hello 2"]
    assert got[-1].find_text("subject") == "Plans"
    got = await muc.join(ROOM, "dave@a.test/x", "Dave", "<history maxchars='0'/>")
    assert not [m for m in got if m.find("delay", "urn:xmpp:delay") is not None]


async def test_join_refusals_each_with_its_condition(muc: MucHarness) -> None:
    await muc.create(ROOM, ALICE, "Alice", field("muc#roomconfig_passwordprotectedroom", "1")
                     + field("muc#roomconfig_roomsecret", "s3cret") + field("muc#roomconfig_maxusers", "3"))
    assert condition((await muc.join(ROOM, BOB, "Bob"))[0]) == "not-authorized"
    assert condition((await muc.join(ROOM, BOB, "Bob", "<password>nope</password>"))[0]) == "not-authorized"
    assert condition((await muc.join(ROOM, BOB, "Alice", "<password>s3cret</password>"))[0]) == "conflict"
    assert condition((await muc.join(ROOM, BOB, "x" * (limits.MAX_NICK_LENGTH + 1)))[0]) == "not-acceptable"
    await muc.join(ROOM, BOB, "Bob", "<password>s3cret</password>")
    await muc.join(ROOM, "eve@a.test/1", "Eve", "<password>s3cret</password>")
    assert condition((await muc.join(ROOM, "zed@a.test/1", "Zed", "<password>s3cret</password>"))[0]) \
        == "service-unavailable"
    muc.take(BOB)
    await muc.send(f"<presence from='{BOB}' to='{ROOM}'/>")
    assert condition(muc.take(BOB)[0]) == "jid-malformed"
    # Members-only: registration-required; then banned: forbidden.
    await muc.send(f"<iq from='{ALICE}' to='{ROOM}' type='set' id='mo'><query xmlns='http://jabber.org/protocol/"
                   "muc#owner'><x xmlns='jabber:x:data' type='submit'>"
                   + field("muc#roomconfig_membersonly", "1") + "</x></query></iq>")
    assert muc.take(ALICE)[-1].attrs["type"] == "result"
    assert "322" in codes(next(s for s in muc.take(BOB) if s.attrs.get("type") == "unavailable"))
    assert condition((await muc.join(ROOM, BOB, "Bob", "<password>s3cret</password>"))[0]) == "registration-required"
    await muc.send(f"<iq from='{ALICE}' to='{ROOM}' type='set' id='ban'><query xmlns='http://jabber.org/protocol/"
                   "muc#admin'><item affiliation='outcast' jid='bob@a.test'><reason>spam</reason></item></query></iq>")
    assert muc.take(ALICE)[-1].attrs["type"] == "result"
    assert condition((await muc.join(ROOM, BOB, "Bob", "<password>s3cret</password>"))[0]) == "forbidden"


async def test_moderation_kick_voice_and_voice_requests(muc: MucHarness) -> None:
    await muc.create(ROOM, ALICE, "Alice", field("muc#roomconfig_moderatedroom", "1"))
    got = await muc.join(ROOM, BOB, "Bob")
    assert got[1].find("x", MUC_USER).find("item").attrs["role"] == "visitor"
    await muc.send(f"<message from='{BOB}' to='{ROOM}' type='groupchat'><body>hi</body></message>")
    assert condition(muc.take(BOB)[0]) == "forbidden"
    await muc.send(f"<message from='{BOB}' to='{ROOM}'><x xmlns='jabber:x:data' type='submit'>"
                   "<field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#request</value></field>"
                   "<field var='muc#role'><value>participant</value></field></x></message>")
    request = next(s for s in muc.take(ALICE) if s.name == "message")
    assert request.find("x", "jabber:x:data") is not None
    await muc.send(f"<message from='{ALICE}' to='{ROOM}'><x xmlns='jabber:x:data' type='submit'>"
                   "<field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#request</value></field>"
                   "<field var='muc#roomnick'><value>Bob</value></field>"
                   "<field var='muc#request_allow'><value>true</value></field></x></message>")
    assert muc.take(BOB)[-1].find("x", MUC_USER).find("item").attrs["role"] == "participant"
    # Bob may not kick the owner; Alice kicks Bob.
    await muc.send(f"<iq from='{BOB}' to='{ROOM}' type='set' id='k1'><query xmlns='http://jabber.org/protocol/"
                   "muc#admin'><item nick='Alice' role='none'/></query></iq>")
    assert condition(muc.take(BOB)[-1]) == "forbidden"
    await muc.send(f"<iq from='{ALICE}' to='{ROOM}' type='set' id='k2'><query xmlns='http://jabber.org/protocol/"
                   "muc#admin'><item nick='Bob' role='none'><reason>calm down</reason></item></query></iq>")
    kicked = next(s for s in muc.take(BOB) if s.name == "presence")
    assert kicked.attrs["type"] == "unavailable" and {"110", "307"} <= set(codes(kicked))
    assert kicked.find("x", MUC_USER).find("item").find_text("reason", MUC_USER) == "calm down"
    # The last owner cannot leave the owner list (section 10.9).
    await muc.send(f"<iq from='{ALICE}' to='{ROOM}' type='set' id='o'><query xmlns='http://jabber.org/protocol/"
                   "muc#admin'><item affiliation='none' jid='alice@a.test'/></query></iq>")
    assert condition(muc.take(ALICE)[-1]) == "conflict"


async def test_floods_huge_messages_and_bad_forms(muc: MucHarness) -> None:
    muc.muc.message_rate, muc.muc.message_burst = limits.DEFAULT_MESSAGE_RATE, limits.DEFAULT_MESSAGE_BURST
    await muc.create(ROOM, ALICE, "Alice")
    await muc.join(ROOM, BOB, "Bob")
    muc.take(ALICE)
    for n in range(int(limits.DEFAULT_MESSAGE_BURST) + 2):
        await muc.send(f"<message from='{BOB}' to='{ROOM}' type='groupchat' id='f{n}'><body>{n}</body></message>")
    errors = [s for s in muc.take(BOB) if s.attrs.get("type") == "error"]
    assert errors and condition(errors[0]) == "policy-violation"
    assert errors[0].find("error").attrs["type"] == "wait"
    await muc.send(f"<presence from='{BOB}' to='{ROOM}/Bob'><show>away</show></presence>")
    assert condition(muc.take(BOB)[-1]) == "policy-violation"  # presence updates share the bucket
    muc.muc.message_rate = 1000.0
    await muc.send(f"<message from='{BOB}' to='{ROOM}' type='groupchat'><body>{'x' * (limits.MAX_BODY_CHARS + 1)}"
                   "</body></message>")
    assert condition(muc.take(BOB)[-1]) == "policy-violation"
    await muc.send(f"<message from='{CAROL}' to='{ROOM}' type='groupchat'><body>not in</body></message>")
    assert condition(muc.take(CAROL)[-1]) == "not-acceptable"
    await muc.send(f"<iq from='{ALICE}' to='{ROOM}' type='set' id='bad'><query xmlns='http://jabber.org/protocol/"
                   "muc#owner'><x xmlns='jabber:x:data' type='submit'>" + field("muc#roomconfig_maxusers", "many")
                   + "</x></query></iq>")
    assert condition(muc.take(ALICE)[-1]) == "not-acceptable"
    await muc.send(f"<iq from='{BOB}' to='{ROOM}' type='get' id='cfg'><query xmlns='http://jabber.org/protocol/"
                   "muc#owner'/></iq>")
    assert condition(muc.take(BOB)[-1]) == "forbidden"
    # A user of another server may not create rooms here by default ([muc] room_creation = "local").
    got = await muc.join("new@conference.a.test", CAROL, "Carol")
    assert condition(got[0]) == "not-allowed"


async def test_too_many_rooms_created_by_one_user(muc: MucHarness) -> None:
    for n in range(limits.MAX_ROOM_CREATIONS_PER_HOUR):
        got = await muc.join(f"r{n}@conference.a.test", ALICE, "Alice")
        assert "201" in codes(got[0])
    got = await muc.join("onemore@conference.a.test", ALICE, "Alice")
    assert condition(got[0]) == "not-allowed"


async def test_rooms_joined_and_owned_per_user_follow_the_settings(muc: MucHarness) -> None:
    """[muc] max_rooms_joined (resource-constraint) and max_rooms_owned (not-allowed), lowered here;
    leaving a room and destroying one make room again."""
    muc.muc.max_rooms_joined, muc.muc.max_rooms_owned = 2, 1
    await muc.create(ROOM, BOB, "Bob")
    await muc.create("other@conference.a.test", "dave@a.test/desk", "Dave")
    await muc.create("alices@conference.a.test", ALICE, "Alice")
    got = await muc.join("second@conference.a.test", ALICE, "Alice")
    assert condition(got[0]) == "not-allowed"  # owns one already
    assert any("110" in codes(s) for s in await muc.join(ROOM, ALICE, "Alice"))
    got = await muc.join("other@conference.a.test", ALICE, "Alice")
    assert condition(got[0]) == "resource-constraint"  # in two rooms already
    await muc.send(f"<presence from='{ALICE}' to='{ROOM}/Alice' type='unavailable'/>")
    assert any("110" in codes(s) for s in await muc.join("other@conference.a.test", ALICE, "Alice"))
    await muc.send(f"<presence from='{ALICE}' to='other@conference.a.test/Alice' type='unavailable'/>")
    await muc.send(f"<iq from='{ALICE}' to='alices@conference.a.test' type='set' id='d'><query "
                   "xmlns='http://jabber.org/protocol/muc#owner'><destroy/></query></iq>")
    muc.take(ALICE)
    assert any("201" in codes(s) for s in await muc.join("second@conference.a.test", ALICE, "Alice"))


async def test_private_messages_invitations_and_self_ping(muc: MucHarness) -> None:
    await muc.create(ROOM, ALICE, "Alice")
    await muc.join(ROOM, BOB, "Bob")
    muc.take(ALICE)
    await muc.send(f"<message from='{BOB}' to='{ROOM}/Alice' type='chat'><body>psst</body></message>")
    pm = muc.take(ALICE)[0]
    assert pm.attrs["from"] == f"{ROOM}/Bob" and pm.find_text("body") == "psst"
    await muc.send(f"<message from='{BOB}' to='{ROOM}/Nobody' type='chat'><body>?</body></message>")
    assert condition(muc.take(BOB)[0]) == "item-not-found"
    await muc.send(f"<message from='{ALICE}' to='{ROOM}'><x xmlns='{MUC_USER}'><invite to='carol@b.test'>"
                   "<reason>join us</reason></invite></x></message>")
    invite = muc.take("carol@b.test")[0]
    assert invite.attrs["from"] == ROOM
    assert invite.find("x", MUC_USER).find("invite", MUC_USER).attrs["from"] == ALICE
    await muc.send(f"<message from='{CAROL}' to='{ROOM}'><x xmlns='{MUC_USER}'><decline to='{ALICE}'/></x></message>")
    assert muc.take(ALICE)[0].find("x", MUC_USER).find("decline", MUC_USER).attrs["from"] == "carol@b.test"
    # XEP-0410: a self-ping is answered by the room; a non-occupant gets not-acceptable.
    await muc.send(f"<iq from='{BOB}' to='{ROOM}/Bob' type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert muc.take(BOB)[0].attrs["type"] == "result"
    await muc.send(f"<iq from='{CAROL}' to='{ROOM}/Bob' type='get' id='p2'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert condition(muc.take(CAROL)[0]) == "not-acceptable"
    # An IQ to another occupant is proxied, and its answer comes back under the target's nick.
    await muc.send(f"<iq from='{BOB}' to='{ROOM}/Alice' type='get' id='v1'><query xmlns='jabber:iq:version'/></iq>")
    proxied = muc.take(ALICE)[0]
    assert proxied.attrs["from"] == f"{ROOM}/Bob" and proxied.attrs["id"] != "v1"
    await muc.send(f"<iq from='{ALICE}' to='{ROOM}/Bob' type='result' id='{proxied.attrs['id']}'>"
                   "<query xmlns='jabber:iq:version'><name>x</name></query></iq>")
    answer = muc.take(BOB)[0]
    assert (answer.attrs["id"], answer.attrs["from"], answer.attrs["type"]) == ("v1", f"{ROOM}/Alice", "result")


async def test_room_mam_and_persistence_across_a_restart() -> None:
    engine = await memory_engine()
    try:
        first = MucHarness(engine)
        first.muc.message_rate = first.muc.message_burst = 1000.0
        await first.create(ROOM, ALICE, "Alice", field("muc#roomconfig_persistentroom", "1")
                           + field("muc#roomconfig_roomname", "The Lounge"))
        await first.send(f"<iq from='{ALICE}' to='{ROOM}' type='set' id='m'><query xmlns='http://jabber.org/protocol/"
                         "muc#admin'><item affiliation='member' jid='bob@a.test' nick='Bobby'/></query></iq>")
        for n in range(3):
            await first.send(f"<message from='{ALICE}' to='{ROOM}' type='groupchat'><body>kept {n}</body></message>")
        await first.send(f"<iq from='{BOB}' to='{ROOM}' type='set' id='q'><query xmlns='urn:xmpp:mam:2' queryid='x'>"
                         "<set xmlns='http://jabber.org/protocol/rsm'><max>2</max></set></query></iq>")
        await first.settle()
        got = first.take(BOB)
        results = [s for s in got if s.name == "message"]
        assert [r.find("result", "urn:xmpp:mam:2").find("forwarded", "urn:xmpp:forward:0").find("message")
                .find_text("body") for r in results] == ["kept 0", "kept 1"]
        fin = got[-1].find("fin", "urn:xmpp:mam:2")
        assert fin is not None and fin.attrs.get("complete") != "true"
        await first.send(f"<presence from='{ALICE}' to='{ROOM}/Alice' type='unavailable'/>")
        await first.muc.stop()
        await first.settle()
        second = MucHarness(engine)
        await second.muc.load()
        room = second.muc.rooms[ROOM]
        assert room.config.name == "The Lounge" and room.affiliations["bob@a.test"] == "member"
        assert next(s.attrs.get("type") for s in await second.join(ROOM, BOB, "Bob")) is None  # a member enters
        got = await second.join(ROOM, "zed@a.test/z", "Bobby")
        assert condition(got[0]) == "conflict"  # reserved by a member (section 7.12)
        history = [m.find_text("body") for m in await second.join(ROOM, ALICE, "Alice")
                   if m.find("delay", "urn:xmpp:delay") is not None]
        assert history == ["kept 0", "kept 1", "kept 2"]
        items = []
        await second.send(f"<iq from='{BOB}' to='conference.a.test' type='get' id='d'>"
                          "<query xmlns='http://jabber.org/protocol/disco#items'/></iq>")
        items = second.take(BOB)[-1].find("query").find_all("item")
        assert [(i.attrs["jid"], i.attrs["name"]) for i in items] == [(ROOM, "The Lounge")]
        await second.muc.stop()
        await second.settle()
    finally:
        await engine.dispose()


async def test_registration_reserves_a_nickname(muc: MucHarness) -> None:
    await muc.create(ROOM, ALICE, "Alice")
    await muc.send(f"<iq from='{BOB}' to='{ROOM}' type='get' id='r1'><query xmlns='jabber:iq:register'/></iq>")
    form = muc.take(BOB)[0].find("query", "jabber:iq:register").find("x", "jabber:x:data")
    assert "muc#register_roomnick" in [f.attrs["var"] for f in form.find_all("field", "jabber:x:data")]
    register = ("<iq from='{who}' to='" + ROOM + "' type='set' id='{id}'><query xmlns='jabber:iq:register'>"
                "<x xmlns='jabber:x:data' type='submit'>" + field("muc#register_roomnick", "{nick}") + "</x></query></iq>")
    await muc.send(register.format(who=BOB, id="r2", nick="Bobby"))
    assert muc.take(BOB)[0].attrs["type"] == "result"
    assert muc.muc.rooms[ROOM].affiliations["bob@a.test"] == "member"
    await muc.send(register.format(who=CAROL, id="r3", nick="Bobby"))
    assert condition(muc.take(CAROL)[0]) == "conflict"
    await muc.send(f"<iq from='{BOB}' to='{ROOM}' type='get' id='r4'><query xmlns='http://jabber.org/protocol/"
                   "disco#info' node='x-roomuser-item'/></iq>")
    assert muc.take(BOB)[0].find("query").find("identity").attrs["name"] == "Bobby"
    await muc.send(f"<iq from='{BOB}' to='{ROOM}' type='set' id='r5'><query xmlns='jabber:iq:register'><remove/>"
                   "</query></iq>")
    assert muc.take(BOB)[0].attrs["type"] == "result" and "bob@a.test" not in muc.muc.rooms[ROOM].affiliations


async def test_occupants_hear_the_service_shut_down(muc: MucHarness) -> None:
    await muc.create(ROOM, ALICE, "Alice")
    await muc.join(ROOM, CAROL, "Carol")
    muc.take(ALICE)
    await muc.muc.shutdown_notice()
    for who in (ALICE, CAROL):
        presence = muc.take(who)[0]
        assert presence.attrs["type"] == "unavailable" and {"110", "332"} <= set(codes(presence))


async def test_retracted_messages_stay_out_of_the_history_after_a_restart() -> None:
    """XEP-0425: a moderated message's tombstone stays in the archive, and the history read back from
    the archive at start (the room's persistent history) leaves it out."""
    engine = await memory_engine()
    try:
        first = MucHarness(engine)
        first.muc.message_rate = first.muc.message_burst = 1000.0
        await first.create(ROOM, ALICE, "Alice", field("muc#roomconfig_persistentroom", "1"))
        # A member's offline-delivery choice is kept with the affiliation.
        await first.send(f"<iq from='{BOB}' to='{ROOM}' type='set' id='reg'><query xmlns='jabber:iq:register'>"
                         "<x xmlns='jabber:x:data' type='submit'>" + field("muc#register_roomnick", "Bobby")
                         + field("{http://tigase.org/protocol/muc}offline", "1") + "</x></query></iq>")
        assert first.take(BOB)[-1].attrs["type"] == "result"
        for n in range(3):
            await first.send(f"<message from='{ALICE}' to='{ROOM}' type='groupchat'><body>said {n}</body></message>")
        said = {m.find_text("body"): m.find("stanza-id", "urn:xmpp:sid:0") for m in first.take(ALICE)
                if m.name == "message" and m.find_text("body")}
        stanza_id = said["said 1"]
        assert stanza_id is not None, said
        await first.send(f"<iq from='{ALICE}' to='{ROOM}' type='set' id='mod'><moderate xmlns='urn:xmpp:message-"
                         f"moderate:1' id='{stanza_id.attrs['id']}'><retract xmlns='urn:xmpp:message-retract:1'/>"
                         "<reason>spam</reason></moderate></iq>")
        await first.settle()
        assert [s.attrs["type"] for s in first.take(ALICE) if s.name == "iq"] == ["result"]
        await first.send(f"<presence from='{ALICE}' to='{ROOM}/Alice' type='unavailable'/>")
        await first.muc.stop()
        await first.settle()

        second = MucHarness(engine)
        await second.muc.load()
        assert second.muc.rooms[ROOM].offline == {"bob@a.test": True}
        history = [m.find_text("body") for m in await second.join(ROOM, BOB, "Bobby")
                   if m.find("delay", "urn:xmpp:delay") is not None]
        assert history == ["said 0", "said 2"]
        # The archive still has three messages, the middle one a tombstone without its body.
        await second.send(f"<iq from='{BOB}' to='{ROOM}' type='set' id='q'><query xmlns='urn:xmpp:mam:2' "
                          "queryid='x'/></iq>")
        await second.settle()
        archived = [r.find("result", "urn:xmpp:mam:2").find("forwarded", "urn:xmpp:forward:0").find("message")
                    for r in second.take(BOB) if r.name == "message"]
        assert [m.find_text("body") for m in archived] == ["said 0", None, "said 2"]
        assert archived[1].find("retracted", "urn:xmpp:message-retract:1") is not None
        await second.muc.stop()
        await second.settle()
    finally:
        await engine.dispose()


async def test_room_writes_are_not_undone_by_reads_at_the_same_time(caplog: pytest.LogCaptureFixture) -> None:
    """The room writer's transaction (DELETE then INSERT of the room's row) runs while other tasks read
    the database: none may roll it back (which an in-memory database shared by all tasks did)."""
    engine = await memory_engine()
    try:
        muc = MucHarness(engine)
        muc.muc.message_rate = muc.muc.message_burst = 1000.0
        await muc.create(ROOM, ALICE, "Alice", field("muc#roomconfig_persistentroom", "1")
                         + field("muc#roomconfig_changesubject", "1"))
        for n in range(15):
            await muc.send(f"<message from='{ALICE}' to='{ROOM}' type='groupchat'><subject>topic {n}</subject>"
                           "</message>")
            await asyncio.gather(*(muc.muc.archive.recent(ROOM, 5) for _ in range(4)))
        await muc.muc.stop()
        await muc.settle()
        assert "could not write" not in caplog.text
        second = MucHarness(engine)
        await second.muc.load()
        assert second.muc.rooms[ROOM].subject == "topic 14"
    finally:
        await engine.dispose()


OFFLINE_FIELD = "{http://tigase.org/protocol/muc}offline"


async def test_absent_members_get_the_room_messages_they_asked_for(muc: MucHarness) -> None:
    """Offline delivery (Prosody's mod_muc_offline_delivery): a member with a reserved nickname who is
    not in the room gets its messages at their bare JID, for their server to push, if they chose so in
    the registration form or, not having chosen, if the service's default says so."""
    await muc.create(ROOM, ALICE, "Alice")

    async def register(full: str, nick: str, offline: str | None) -> None:
        choice = field(OFFLINE_FIELD, offline) if offline is not None else ""
        await muc.send(f"<iq from='{full}' to='{ROOM}' type='set' id='reg'><query xmlns='jabber:iq:register'>"
                       f"<x xmlns='jabber:x:data' type='submit'>{field('muc#register_roomnick', nick)}{choice}"
                       "</x></query></iq>")
        assert muc.take(full)[-1].attrs["type"] == "result"

    await register(BOB, "Bobby", "1")
    await register(CAROL, "Caro", None)
    await register("dan@a.test/x", "Dan", "0")
    await muc.send(f"<iq from='{BOB}' to='{ROOM}' type='get' id='form'><query xmlns='jabber:iq:register'/></iq>")
    answer = muc.take(BOB)[0].find("query", "jabber:iq:register")
    assert answer.find("registered", "jabber:iq:register") is not None  # and the form, with bob's choice
    values = {f.attrs["var"]: f.find_text("value", "jabber:x:data")
              for f in answer.find("x", "jabber:x:data").find_all("field", "jabber:x:data")}
    assert values[OFFLINE_FIELD] == "1" and values["muc#register_roomnick"] == "Bobby"
    muc.take(ALICE)

    await muc.send(f"<message from='{ALICE}' to='{ROOM}' type='groupchat'><body>hello</body></message>")
    delivered = muc.take("bob@a.test")
    assert [(m.attrs["from"], m.attrs["type"], m.find_text("body")) for m in delivered] == [
        (f"{ROOM}/Alice", "groupchat", "hello")]
    assert delivered[0].find("stanza-id", "urn:xmpp:sid:0") is not None  # so the app can fetch from there
    assert muc.take("carol@b.test") == [] and muc.take("dan@a.test") == []
    # The service's default covers those who did not choose, not those who said no.
    muc.muc.offline_delivery_default = True
    await muc.send(f"<message from='{ALICE}' to='{ROOM}' type='groupchat'><body>again</body></message>")
    assert [m.find_text("body") for m in muc.take("carol@b.test")] == ["again"]
    assert muc.take("dan@a.test") == []
    # A member in the room gets the message there, not at the bare JID; a subject goes to nobody absent.
    await muc.join(ROOM, BOB, "Bobby")
    muc.take("bob@a.test")
    await muc.send(f"<message from='{ALICE}' to='{ROOM}' type='groupchat'><body>now here</body></message>")
    assert muc.take("bob@a.test") == []
    assert [m.find_text("body") for m in muc.take(BOB)] == ["now here"]
    muc.take("carol@b.test")
    await muc.send(f"<message from='{ALICE}' to='{ROOM}' type='groupchat'><subject>Agenda</subject></message>")
    assert muc.take("carol@b.test") == []


async def test_rooms_expire_their_archive_by_their_own_setting(muc: MucHarness) -> None:
    """[muc] archive_expires_days: the one-to-one sweep leaves the rooms' archives alone, and the rooms'
    own sweep removes only room messages older than the rooms' setting."""
    import time

    from peerage.xmpp.storage import XmppStorage

    day = 86400.0
    now = time.time()
    storage = muc.ctx.storage
    assert storage.expired_elsewhere == frozenset({"conference.a.test"})
    rows = [(ROOM, f"{ROOM}/Alice", 20), (ROOM, f"{ROOM}/Alice", 3), ("alice@a.test", "bob@a.test", 20),
            ("alice@a.test", "bob@a.test", 3), ("alice@a.test", "x@conference.a.test.evil", 20)]
    await storage.archive_many([{"owner": owner, "archive_id": XmppStorage.new_archive_id(), "with_jid": peer,
                                 "stamp": now - age * day, "stanza": f"<message><body>{owner} {age}</body></message>"}
                                for owner, peer, age in rows])

    async def left() -> set[tuple[str, int]]:
        from sqlalchemy import select

        from peerage.xmpp.tables import xmpp_archive

        async with storage.engine.connect() as conn:
            found = (await conn.execute(select(xmpp_archive.c.owner, xmpp_archive.c.stamp))).all()
        return {(owner, round((now - stamp) / day)) for owner, stamp in found}

    await storage.expire_archive(now - 7 * day)  # the one-to-one sweep, [xmpp] archive_expires_days = 7
    assert await left() == {(ROOM, 20), (ROOM, 3), ("alice@a.test", 3)}
    muc.muc.archive_expires_days = 30
    await muc.muc.expire_archive(now)
    assert await left() == {(ROOM, 20), (ROOM, 3), ("alice@a.test", 3)}
    muc.muc.archive_expires_days = 14
    await muc.muc.expire_archive(now)
    assert await left() == {(ROOM, 3), ("alice@a.test", 3)}
    muc.muc.archive_expires_days = 0  # kept while the room lives
    await muc.muc.expire_archive(now + 365 * day)
    assert await left() == {(ROOM, 3), ("alice@a.test", 3)}


async def test_a_room_gone_without_a_stanza_is_reported(muc: MucHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cluster gives a room's lease up when the room goes (MucService.on_gone): also when its
    lock times out (XEP-0045 section 10.1.1), which no stanza for the room follows."""
    gone: list[str] = []
    reported = asyncio.Event()

    def on_gone(jid: str) -> None:
        gone.append(jid)
        reported.set()

    muc.muc.on_gone = on_gone
    monkeypatch.setattr(limits, "ROOM_LOCK_TIMEOUT", 0.05)
    got = await muc.join(ROOM, ALICE, "Alice")
    assert "201" in codes(next(s for s in got if s.name == "presence"))
    await asyncio.wait_for(reported.wait(), 10)
    assert gone == [ROOM] and ROOM not in muc.muc.rooms
    told = muc.take(ALICE)
    assert told and told[-1].attrs.get("type") == "unavailable" and told[-1].find("x", MUC_USER).find("destroy") is not None
    # An instant (configured, not persistent) room left by its last occupant: reported once.
    other = f"other@{ROOM.partition('@')[2]}"
    await muc.create(other, ALICE, "Alice")
    assert gone == [ROOM]
    await muc.send(f"<presence from='{ALICE}' to='{other}/Alice' type='unavailable'/>")
    assert gone == [ROOM, other] and other not in muc.muc.rooms
