"""IM rules and XEP features on the wire: subscriptions, delivery rules, blocking, vCard, private, CSI."""

from __future__ import annotations

import itertools
import re
from collections.abc import AsyncIterator

import pytest

from peerage.config import XmppConfig
from tests.harness import PeerageServer
from tests.xmpp.conftest import PASSWORD
from tests.xmpp.rawclient import RawClient

SERVER_ADDRESS = "127.0.1.6"
SERVER_USERS = [f"{name}@{domain}" for domain in ("a.test", "b.test")
                for name in ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy")]
IDS = itertools.count()


class Session(RawClient):
    async def iq(self, body: str, to: str | None = None, kind: str = "get") -> str:
        ident = f"q{next(IDS)}"
        target = f" to='{to}'" if to else ""
        await self.send(f"<iq type='{kind}' id='{ident}'{target}>{body}</iq>")
        return await self.read_until(rf"<iq[^>]*id='{ident}'[^>]*/>|<iq[^>]*id='{ident}'.*?</iq>")

    async def barrier(self) -> None:
        """Round trip to the server: everything this session sent before is processed."""
        assert "type='result'" in await self.iq("<ping xmlns='urn:xmpp:ping'/>", to=self.jid.split("@")[1].split("/")[0])

    async def roster(self) -> str:
        return await self.iq("<query xmlns='jabber:iq:roster'/>")


@pytest.fixture
async def login(xmpp_server: PeerageServer) -> AsyncIterator:
    sessions: list[Session] = []

    async def make(user: str, resource: str = "r", presence: str | None = "<presence/>") -> Session:
        local, domain = user.split("@")
        session = Session(SERVER_ADDRESS, domain)
        sessions.append(session)
        await session.login(local, PASSWORD, resource=resource)
        if presence is not None:
            await session.send(presence)
        return session

    yield make
    for session in sessions:
        await session.close()


async def test_subscription_request_approval_and_removal(login) -> None:  # type: ignore[no-untyped-def]
    carol = await login("carol@a.test")
    dave = await login("dave@b.test")
    await carol.roster()
    await dave.roster()
    await carol.send("<presence to='dave@b.test' type='subscribe'/>")
    push = await carol.read_until(r"<iq[^>]*type='set'.*?</iq>")
    assert "ask='subscribe'" in push and "subscription='none'" in push
    request = await dave.read_until(r"<presence[^>]*type='subscribe'[^>]*/?>")
    assert "from='carol@a.test'" in request
    await dave.send("<presence to='carol@a.test' type='subscribed'/>")
    push = await dave.read_until(r"<iq[^>]*type='set'.*?</iq>")
    assert "jid='carol@a.test'" in push and "subscription='from'" in push
    push = await carol.read_until(r"<iq[^>]*type='set'.*?subscription='to'.*?</iq>")
    assert "jid='dave@b.test'" in push
    # Once subscribed, carol receives dave's current presence.
    assert "from='dave@b.test/r'" in await carol.read_until(r"<presence[^>]*from='dave@b.test/r'[^>]*/?>")
    # Removing the item cancels both directions (RFC 6121 section 2.5.2).
    await carol.iq("<query xmlns='jabber:iq:roster'><item jid='dave@b.test' subscription='remove'/></query>", kind="set")
    # dave's server updates dave's roster (pushed before the presence is delivered).
    seen = await dave.read_until(r"<presence[^>]*type='unsubscribe'[^>]*/?>")
    assert re.search(r"<iq[^>]*type='set'.*?jid='carol@a.test'[^>]*subscription='none'", seen), seen
    roster = await carol.roster()
    assert "dave@b.test" not in roster


async def test_pre_approved_subscription_is_accepted_at_once(login) -> None:  # type: ignore[no-untyped-def]
    erin = await login("erin@a.test")
    frank = await login("frank@a.test")
    await frank.send("<presence to='erin@a.test' type='subscribed'/>")  # pre-approval
    await frank.barrier()
    await erin.send("<presence to='frank@a.test' type='subscribe'/>")
    answer = await erin.read_until(r"<presence[^>]*type='subscribed'[^>]*/?>")
    assert "from='frank@a.test'" in answer
    roster = await frank.roster()
    assert re.search(r"jid='erin@a.test'[^>]*subscription='from'|subscription='from'[^>]*jid='erin@a.test'", roster)


async def test_bare_jid_delivery_skips_negative_priority(login) -> None:  # type: ignore[no-untyped-def]
    grace_main = await login("grace@b.test", "main", "<presence><priority>5</priority></presence>")
    grace_bot = await login("grace@b.test", "bot", "<presence><priority>-1</priority></presence>")
    heidi = await login("heidi@b.test")
    await grace_main.barrier()
    await grace_bot.barrier()
    await heidi.send("<message to='grace@b.test' type='chat'><body>to the bare JID</body></message>")
    assert "to the bare JID" in await grace_main.read_until(r"<body>to the bare JID</body>")
    await heidi.barrier()
    await grace_bot.barrier()
    assert "to the bare JID" not in grace_bot.buffer
    # An IQ to a full JID that is not online is answered by the server (RFC 6121 section 8.5.3.2.1).
    reply = await heidi.iq("<query xmlns='jabber:iq:version'/>", to="grace@b.test/gone")
    assert "<service-unavailable" in reply


async def test_blocking_command(login) -> None:  # type: ignore[no-untyped-def]
    alice = await login("alice@a.test")
    bob = await login("bob@a.test")
    assert "type='result'" in await alice.iq("<blocklist xmlns='urn:xmpp:blocking'/>")
    await alice.iq("<block xmlns='urn:xmpp:blocking'><item jid='bob@a.test'/></block>", kind="set")
    assert "bob@a.test" in await alice.iq("<blocklist xmlns='urn:xmpp:blocking'/>")
    await bob.send("<message to='alice@a.test/r' id='b1' type='chat'><body>let me in</body></message>")
    bounce = await bob.read_until(r"<message[^>]*id='b1'.*?</message>")
    assert "type='error'" in bounce and "<service-unavailable" in bounce
    await alice.send("<message to='bob@a.test' id='a1' type='chat'><body>blocked</body></message>")
    refused = await alice.read_until(r"<message[^>]*id='a1'.*?</message>")
    assert "<not-acceptable" in refused and "urn:xmpp:blocking:errors" in refused
    await alice.iq("<unblock xmlns='urn:xmpp:blocking'/>", kind="set")
    await bob.send("<message to='alice@a.test/r' type='chat'><body>hello again</body></message>")
    assert "hello again" in await alice.read_until(r"<body>hello again</body>")


async def test_vcard_and_private_storage(login) -> None:  # type: ignore[no-untyped-def]
    carol = await login("carol@b.test")
    dave = await login("dave@a.test")
    await carol.iq("<vCard xmlns='vcard-temp'><FN>Carol Example</FN></vCard>", kind="set")
    assert "<FN>Carol Example</FN>" in await dave.iq("<vCard xmlns='vcard-temp'/>", to="carol@b.test")
    forbidden = await dave.iq("<vCard xmlns='vcard-temp'><FN>Not Carol</FN></vCard>", to="carol@b.test", kind="set")
    assert "<forbidden" in forbidden
    await carol.iq("<query xmlns='jabber:iq:private'><notes xmlns='urn:example:notes'>secret</notes></query>",
                   kind="set")
    stored = await carol.iq("<query xmlns='jabber:iq:private'><notes xmlns='urn:example:notes'/></query>")
    assert "secret" in stored
    refused = await carol.iq("<query xmlns='jabber:iq:private'><x xmlns='jabber:client'/></query>", kind="set")
    assert "<not-acceptable" in refused
    other = await dave.iq("<query xmlns='jabber:iq:private'><notes xmlns='urn:example:notes'/></query>",
                          to="carol@b.test")
    assert "secret" not in other and "type='error'" in other


async def test_csi_holds_presence_until_active(login) -> None:  # type: ignore[no-untyped-def]
    erin = await login("erin@b.test")
    frank = await login("frank@b.test")
    await erin.send("<enable xmlns='urn:xmpp:sm:3'/>")
    await erin.read_until(r"<enabled[^>]*/>")
    await erin.send("<inactive xmlns='urn:xmpp:csi:0'/>")
    await frank.send("<presence to='erin@b.test/r'><status>busy</status></presence>")
    await frank.barrier()  # the presence has reached erin's session
    # <a/> answers bypass the CSI queue: everything before it on the wire was not held.
    await erin.send("<r xmlns='urn:xmpp:sm:3'/>")
    before_ack = await erin.read_until(r"<a xmlns='urn:xmpp:sm:3'[^>]*/>")
    assert "busy" not in before_ack
    await erin.send("<active xmlns='urn:xmpp:csi:0'/>")
    assert "busy" in await erin.read_until(r"<status>busy</status>")
    # Messages with a body are never held.
    await erin.send("<inactive xmlns='urn:xmpp:csi:0'/>")
    await frank.send("<message to='erin@b.test/r' type='chat'><body>urgent</body></message>")
    assert "urgent" in await erin.read_until(r"<body>urgent</body>")


async def test_presence_probe_answers_after_login(login) -> None:  # type: ignore[no-untyped-def]
    grace = await login("grace@a.test")
    heidi = await login("heidi@a.test")
    await grace.send("<presence to='heidi@a.test' type='subscribe'/>")
    await heidi.read_until(r"<presence[^>]*type='subscribe'[^>]*/?>")
    await heidi.send("<presence to='grace@a.test' type='subscribed'/>")
    await grace.read_until(r"<presence[^>]*from='heidi@a.test/r'[^>]*/?>")
    # A second resource of grace logs in: its initial presence probes heidi, who answers.
    second = await login("grace@a.test", "second")
    assert "from='heidi@a.test/r'" in await second.read_until(r"<presence[^>]*from='heidi@a.test/r'[^>]*/?>")
    # heidi goes offline: grace sees unavailable.
    await heidi.send("<presence type='unavailable'/>")
    gone = await grace.read_until(r"<presence[^>]*type='unavailable'[^>]*/?>")
    assert re.search(r"<presence[^>]*from='heidi@a.test/r'[^>]*type='unavailable'|"
                     r"<presence[^>]*type='unavailable'[^>]*from='heidi@a.test/r'", gone), gone


async def test_entity_capabilities_pass_through(login) -> None:  # type: ignore[no-untyped-def]
    alice = await login("alice@b.test")
    bob = await login("bob@b.test")
    caps = "<c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='urn:example:client' ver='QgayPKawpkPSDYmwT/WM94uAlu0='/>"
    await alice.send(f"<presence to='bob@b.test/r'>{caps}</presence>")
    received = await bob.read_until(r"<presence[^>]*from='alice@b.test/r'.*?</presence>")
    assert "ver='QgayPKawpkPSDYmwT/WM94uAlu0='" in received and "node='urn:example:client'" in received
    # The server advertises its own capabilities in the stream features after authentication.
    fresh = Session(SERVER_ADDRESS, "b.test")
    try:
        await fresh.connect()
        await fresh.open_stream()
        await fresh.starttls()
        await fresh.open_stream()
        assert "<success" in await fresh.authenticate("alice", PASSWORD)
        features = await fresh.open_stream()
        assert "<c xmlns='http://jabber.org/protocol/caps' hash='sha-1'" in features
    finally:
        await fresh.close()


async def test_message_to_the_server_itself(login) -> None:  # type: ignore[no-untyped-def]
    ivan = await login("ivan@a.test")
    # RFC 6120 section 10.5.4: the server handles it, and it understands no chat or normal message.
    await ivan.send("<message to='a.test' id='srv1' type='chat'><body>hello server</body></message>")
    reply = await ivan.read_until(r"<message[^>]*id='srv1'.*?</message>")
    assert "type='error'" in reply and "from='a.test'" in reply and "<service-unavailable" in reply, reply
    await ivan.send("<message to='a.test' id='srv2'><body>a normal message</body></message>")
    reply = await ivan.read_until(r"<message[^>]*id='srv2'.*?</message>")
    assert "type='error'" in reply and "<service-unavailable" in reply, reply
    # Groupchat, headline and error messages to the server are dropped without an answer.
    await ivan.send("<message to='a.test' id='srv3' type='groupchat'><body>room?</body></message>"
                    "<message to='a.test' id='srv4' type='headline'><body>news</body></message>"
                    "<message to='a.test' id='srv5' type='error'><error type='cancel'>"
                    "<bad-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>")
    seen = await ivan.iq("<ping xmlns='urn:xmpp:ping'/>", to="a.test")
    assert "type='result'" in seen
    for ident in ("srv3", "srv4", "srv5"):
        assert f"id='{ident}'" not in seen + ivan.buffer


async def test_one_resource_more_than_the_limit_is_refused(login) -> None:  # type: ignore[no-untyped-def]
    limit = XmppConfig().max_resources_per_account
    for n in range(limit):
        await login("judy@b.test", f"r{n}", presence=None)
    extra = Session(SERVER_ADDRESS, "b.test")
    try:
        await extra.connect()
        await extra.open_stream()
        await extra.starttls()
        await extra.open_stream()
        assert "<success" in await extra.authenticate("judy", PASSWORD)
        await extra.open_stream()
        await extra.send("<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                         "<resource>one-too-many</resource></bind></iq>")
        answer = await extra.read_until(r"<iq[^>]*id='bind1'.*?</iq>")
        # RFC 6120 section 7.6.2.1: <resource-constraint/> of type wait.
        assert "type='error'" in answer and "<resource-constraint" in answer, answer
        assert re.search(r"<error[^>]*type='wait'", answer), answer
    finally:
        await extra.close()


async def test_roster_versioning_sends_only_what_changed(login) -> None:  # type: ignore[no-untyped-def]
    # XEP-0237 section 2.4: a client with an old version gets an empty result and one push per change.
    ivan = await login("ivan@a.test", presence=None)
    for contact in ("one@elsewhere.test", "two@elsewhere.test", "three@elsewhere.test"):
        await ivan.iq(f"<query xmlns='jabber:iq:roster'><item jid='{contact}'/></query>", kind="set")
    full = await ivan.roster()
    old = re.search(r"ver='(\d+)'", full)
    assert old and full.count("<item ") == 3
    await ivan.iq("<query xmlns='jabber:iq:roster'><item jid='two@elsewhere.test' subscription='remove'/></query>",
                  kind="set")
    await ivan.iq("<query xmlns='jabber:iq:roster'><item jid='four@elsewhere.test' name='Four'/></query>", kind="set")
    await ivan.close()
    again = await login("ivan@a.test", resource="later", presence=None)
    reply = await again.iq(f"<query xmlns='jabber:iq:roster' ver='{old.group(1)}'/>")
    assert "type='result'" in reply and "<item " not in reply
    pushes = re.findall(r"<iq[^>]*type='set'.*?</iq>", await again.read_until(r"four@elsewhere.test.*?</iq>"))
    items = [re.search(r"jid='([^']+)'", push).group(1) for push in pushes]  # type: ignore[union-attr]
    assert items == ["two@elsewhere.test", "four@elsewhere.test"], pushes
    assert "subscription='remove'" in pushes[0] and "name='Four'" in pushes[1]
