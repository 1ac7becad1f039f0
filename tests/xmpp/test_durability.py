"""Durable before acknowledged: a stanza the server acked (XEP-0198 <a/>) survives a crash (SIGKILL)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.harness import PeerageServer
from tests.xmpp.conftest import PASSWORD, start_server
from tests.xmpp.rawclient import RawClient

SERVER_ADDRESS = "127.0.1.7"
SERVER_USERS = ["alice@a.test", "bob@b.test", "carol@a.test", "dave@a.test"]
SHORT_RESUMPTION_ADDRESS = "127.0.1.8"
#: Seconds of hibernation in the resumption-timeout test (the default is 300).
SHORT_RESUMPTION = 2.0


async def test_offline_message_acked_then_crash_is_delivered_after_restart(xmpp_server: PeerageServer) -> None:
    alice = RawClient(SERVER_ADDRESS, "a.test")
    await alice.login("alice", PASSWORD, resource="sender")
    await alice.send("<enable xmlns='urn:xmpp:sm:3'/>")
    await alice.read_until(r"<enabled[^>]*/>")
    await alice.send("<message to='bob@b.test' id='durable1' type='chat'><body>survives a crash</body></message>"
                     "<r xmlns='urn:xmpp:sm:3'/>")
    ack = await alice.read_until(r"<a xmlns='urn:xmpp:sm:3'[^>]*/>")
    assert re.search(r"h='1'", ack), ack
    await alice.close()
    xmpp_server.kill()  # no clean shutdown: only what was committed survives
    xmpp_server.start()
    bob = RawClient(SERVER_ADDRESS, "b.test")
    try:
        await bob.login("bob", PASSWORD, resource="later")
        await bob.send("<presence/>")
        delivered = await bob.read_until(r"<message[^>]*>.*?survives a crash.*?</message>")
        assert "from='alice@a.test/sender'" in delivered
        assert "urn:xmpp:delay" in delivered
    finally:
        await bob.close()


async def test_unacknowledged_messages_go_to_offline_storage_when_the_session_ends(
        xmpp_server: PeerageServer) -> None:
    carol = RawClient(SERVER_ADDRESS, "a.test")
    dave = RawClient(SERVER_ADDRESS, "a.test")
    await carol.login("carol", PASSWORD, resource="phone")
    await dave.login("dave", PASSWORD, resource="desk")
    await carol.send("<enable xmlns='urn:xmpp:sm:3'/><presence/>")
    await carol.read_until(r"<enabled[^>]*/>")
    await dave.send("<message to='carol@a.test/phone' type='chat'><body>never acknowledged</body></message>")
    assert "never acknowledged" in await carol.read_until(r"never acknowledged</body>")
    # carol leaves without acknowledging (XEP-0198 section 4): the server must not drop the message.
    await carol.send("</stream:stream>")
    await carol.read_to_eof()
    await carol.close()
    again = RawClient(SERVER_ADDRESS, "a.test")
    try:
        await again.login("carol", PASSWORD, resource="laptop")
        await again.send("<presence/>")
        # Depending on timing it comes from offline storage or straight to this new resource.
        redelivered = await again.read_until(r"<message[^>]*>.*?never acknowledged.*?</message>")
        assert "from='dave@a.test/desk'" in redelivered
    finally:
        await again.close()
        await dave.close()


@pytest.fixture(scope="module")
def short_resumption_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PeerageServer]:
    server = start_server(tmp_path_factory.mktemp("sm"), SHORT_RESUMPTION_ADDRESS, ["erin@a.test", "frank@a.test"],
                          config={"xmpp": {"sm_resumption_timeout": SHORT_RESUMPTION}})
    try:
        yield server
    finally:
        server.stop()


async def test_session_not_resumed_in_time_hands_unacked_messages_on(
        short_resumption_server: PeerageServer) -> None:
    erin = RawClient(SHORT_RESUMPTION_ADDRESS, "a.test")
    frank = RawClient(SHORT_RESUMPTION_ADDRESS, "a.test")
    laptop = RawClient(SHORT_RESUMPTION_ADDRESS, "a.test")
    try:
        await erin.login("erin", PASSWORD, resource="phone")
        await frank.login("frank", PASSWORD, resource="desk")
        await erin.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/><presence/>")
        enabled = await erin.read_until(r"<enabled[^>]*/>")
        assert f"max='{int(SHORT_RESUMPTION)}'" in enabled
        await frank.send("<message to='erin@a.test/phone' type='chat'><body>held for resumption</body></message>")
        assert "held for resumption" in await erin.read_until(r"held for resumption</body>")
        await erin.close()  # the connection drops without </stream:stream>: the session hibernates
        await laptop.login("erin", PASSWORD, resource="laptop")
        await laptop.send("<presence/>")
        # Nobody resumes: when the hibernation ends, the unacknowledged message goes to erin's
        # other available resource (bare-JID rules), not into the void.
        handed_on = await laptop.read_until(r"<message[^>]*>.*?held for resumption.*?</message>",
                                            timeout=SHORT_RESUMPTION + 10)
        assert "from='frank@a.test/desk'" in handed_on
    finally:
        await laptop.close()
        await frank.close()


async def test_bare_jid_message_seen_by_another_resource_is_not_handed_to_it_again(
        short_resumption_server: PeerageServer) -> None:
    """A message to the bare JID reached a hibernating session and the connected one: when the
    hibernation ends, the connected resource must not get it a second time."""
    phone = RawClient(SHORT_RESUMPTION_ADDRESS, "a.test")
    desk = RawClient(SHORT_RESUMPTION_ADDRESS, "a.test")
    frank = RawClient(SHORT_RESUMPTION_ADDRESS, "a.test")
    try:
        await phone.login("erin", PASSWORD, resource="phone2")
        await phone.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/><presence/>")
        await phone.read_until(r"<enabled[^>]*/>")
        await desk.login("erin", PASSWORD, resource="desk2")
        await desk.send("<presence/>")
        await desk.read_until(r"<presence[^>]*from='erin@a.test/desk2'")
        await frank.login("frank", PASSWORD, resource="desk2")
        await frank.send("<message to='erin@a.test' type='chat' id='twice'><body>only once please</body></message>")
        assert "only once please" in await phone.read_until(r"only once please</body>")
        assert "only once please" in await desk.read_until(r"only once please</body>")
        await phone.close()  # hibernates; nobody resumes it
        # Its end is observable: desk gets phone's unavailable presence (RFC 6121 section 4.5.3).
        await desk.read_until(r"<presence[^>]*from='erin@a.test/phone2'[^>]*type='unavailable'|"
                              r"<presence[^>]*type='unavailable'[^>]*from='erin@a.test/phone2'",
                              timeout=SHORT_RESUMPTION + 10)
        # Anything re-routed is sent before that presence; a ping answer bounds what follows.
        await desk.send("<iq type='get' id='after' to='a.test'><ping xmlns='urn:xmpp:ping'/></iq>")
        rest = await desk.read_until(r"<iq[^>]*id='after'")
        assert "only once please" not in rest
    finally:
        await desk.close()
        await frank.close()


async def test_bare_jid_message_is_not_handed_again_to_a_resource_that_went_away_and_came_back(
        short_resumption_server: PeerageServer) -> None:
    """As above, but the connected resource went unavailable and came back after it got the
    message: it got it in its earlier span of availability, so the hibernation's end must not hand
    it over a second time."""
    phone = RawClient(SHORT_RESUMPTION_ADDRESS, "a.test")
    desk = RawClient(SHORT_RESUMPTION_ADDRESS, "a.test")
    frank = RawClient(SHORT_RESUMPTION_ADDRESS, "a.test")
    try:
        await phone.login("erin", PASSWORD, resource="phone3")
        await phone.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/><presence/>")
        await phone.read_until(r"<enabled[^>]*/>")
        await desk.login("erin", PASSWORD, resource="desk3")
        await desk.send("<presence/>")
        await desk.read_until(r"<presence[^>]*from='erin@a.test/desk3'")
        await frank.login("frank", PASSWORD, resource="desk3")
        await frank.send("<message to='erin@a.test' type='chat' id='back'><body>back once</body></message>")
        assert "back once" in await phone.read_until(r"back once</body>")
        assert "back once" in await desk.read_until(r"back once</body>")
        # desk goes away and comes back; phone sees both presences, so the server has processed them
        # before phone's connection drops.
        await desk.send("<presence type='unavailable' id='gone'/><presence id='again'/>")
        await phone.read_until(r"<presence[^>]*id='again'")
        await phone.close()  # hibernates; nobody resumes it
        await desk.read_until(r"<presence[^>]*from='erin@a.test/phone3'[^>]*type='unavailable'|"
                              r"<presence[^>]*type='unavailable'[^>]*from='erin@a.test/phone3'",
                              timeout=SHORT_RESUMPTION + 10)
        await desk.send("<iq type='get' id='after3' to='a.test'><ping xmlns='urn:xmpp:ping'/></iq>")
        rest = await desk.read_until(r"<iq[^>]*id='after3'")
        assert "back once" not in rest
    finally:
        await desk.close()
        await frank.close()
