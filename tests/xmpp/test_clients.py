"""Real clients (slixmpp) against a real peerage server: chat, roster, offline, carbons, SM, MAM."""

from __future__ import annotations

import asyncio

import slixmpp

from tests.harness import PeerageServer
from tests.xmpp.conftest import Client

SERVER_ADDRESS = "127.0.1.2"


async def test_two_users_chat_across_hosted_domains(xmpp_server: PeerageServer, clients: list[Client]) -> None:
    alice = Client("alice@a.test/phone")
    bob = Client("bob@b.test/laptop")
    clients += [alice, bob]
    await asyncio.gather(alice.login(SERVER_ADDRESS), bob.login(SERVER_ADDRESS))
    alice.send_message(mto="bob@b.test/laptop", mbody="hello bob", mtype="chat")
    message = await bob.next_message()
    assert message["body"] == "hello bob"
    assert message["from"] == "alice@a.test/phone"
    bob.send_message(mto="alice@a.test", mbody="hi alice", mtype="chat")  # to the bare JID
    reply = await alice.next_message()
    assert reply["body"] == "hi alice"
    assert reply["from"] == "bob@b.test/laptop"


async def test_roster_subscription_completes_both_ways(xmpp_server: PeerageServer, clients: list[Client]) -> None:
    carol = Client("carol@a.test/home")
    dave = Client("dave@b.test/home")
    clients += [carol, dave]
    await asyncio.gather(carol.login(SERVER_ADDRESS), dave.login(SERVER_ADDRESS))
    # slixmpp's defaults accept subscription requests and subscribe back (auto_authorize/auto_subscribe).
    carol.send_presence_subscription(pto="dave@b.test")

    async def both() -> bool:
        while True:
            if (carol.client_roster["dave@b.test"]["subscription"] == "both"
                    and dave.client_roster["carol@a.test"]["subscription"] == "both"):
                return True
            await asyncio.sleep(0.05)

    await asyncio.wait_for(both(), 30)
    # Presence flows once subscribed: dave sees carol online.
    async def dave_sees_carol() -> None:
        while not dave.client_roster["carol@a.test"].resources:
            await asyncio.sleep(0.05)

    await asyncio.wait_for(dave_sees_carol(), 30)
    # The roster survives a new login (it is stored), with a version (XEP-0237).
    await carol.close()
    again = Client("carol@a.test/other")
    clients.append(again)
    await again.login(SERVER_ADDRESS)
    assert again.client_roster["dave@b.test"]["subscription"] == "both"
    iq = again.Iq()
    iq["type"] = "get"
    iq.enable("roster")
    roster = await iq.send(timeout=10)
    version = roster["roster"]["ver"]
    assert version and "dave@b.test" in roster["roster"]["items"]
    # Asking with the current version gets an empty result: nothing changed (XEP-0237 section 2.5).
    iq = again.Iq()
    iq["type"] = "get"
    iq["roster"]["ver"] = version
    unchanged = await iq.send(timeout=10)
    assert unchanged.xml.find("{jabber:iq:roster}query") is None


async def test_offline_message_delivered_at_login(xmpp_server: PeerageServer, clients: list[Client]) -> None:
    erin = Client("erin@a.test/x")
    clients.append(erin)
    await erin.login(SERVER_ADDRESS)
    erin.send_message(mto="frank@b.test", mbody="while you were out", mtype="chat")
    # The message is stored before the server answers this ping (stanzas are handled in order).
    await erin.plugin["xep_0199"].ping(jid="a.test", timeout=10)
    frank = Client("frank@b.test/y")
    clients.append(frank)
    await frank.login(SERVER_ADDRESS)
    message = await frank.next_message()
    assert message["body"] == "while you were out"
    assert message["from"].bare == "erin@a.test"
    delay = message.xml.find("{urn:xmpp:delay}delay")
    assert delay is not None and delay.get("stamp")
    # Delivered once: a second login gets nothing more.
    await frank.close()
    frank2 = Client("frank@b.test/z")
    clients.append(frank2)
    await frank2.login(SERVER_ADDRESS)
    await frank2.plugin["xep_0199"].ping(jid="a.test", timeout=10)
    assert frank2.messages.empty()


async def test_carbons_reach_second_resource(xmpp_server: PeerageServer, clients: list[Client]) -> None:
    phone = Client("grace@a.test/phone", plugins=("xep_0280",))
    desktop = Client("grace@a.test/desktop", plugins=("xep_0280",))
    heidi = Client("heidi@b.test/web")
    clients += [phone, desktop, heidi]
    await asyncio.gather(phone.login(SERVER_ADDRESS), desktop.login(SERVER_ADDRESS), heidi.login(SERVER_ADDRESS))
    await desktop.plugin["xep_0280"].enable()
    heidi.send_message(mto="grace@a.test/phone", mbody="to your phone", mtype="chat")
    assert (await phone.next_message())["body"] == "to your phone"
    received = await asyncio.wait_for(desktop.carbons_received.get(), 30)
    assert received["carbon_received"]["body"] == "to your phone"
    phone.send_message(mto="heidi@b.test", mbody="sent from phone", mtype="chat")
    sent = await asyncio.wait_for(desktop.carbons_sent.get(), 30)
    assert sent["carbon_sent"]["body"] == "sent from phone"
    assert sent["carbon_sent"]["to"] == "heidi@b.test"
    assert (await heidi.next_message())["body"] == "sent from phone"


async def test_stream_management_resumes_after_connection_drop(xmpp_server: PeerageServer,
                                                                 clients: list[Client]) -> None:
    ivan = Client("ivan@a.test/mobile", plugins=("xep_0198",))
    judy = Client("judy@b.test/desk")
    clients += [ivan, judy]
    await asyncio.gather(ivan.login(SERVER_ADDRESS), judy.login(SERVER_ADDRESS))
    sm = ivan.plugin["xep_0198"]

    async def enabled() -> None:
        while not sm.sm_id:
            await asyncio.sleep(0.05)

    await asyncio.wait_for(enabled(), 30)
    previous_id = sm.sm_id
    # The network drops: no </stream:stream>, the TCP connection just dies.
    assert ivan.transport is not None
    ivan.transport.abort()
    await asyncio.wait_for(ivan.disconnected, 5)
    judy.send_message(mto="ivan@a.test/mobile", mbody="sent while you were away", mtype="chat")
    await judy.plugin["xep_0199"].ping(jid="a.test", timeout=10)
    ivan.connect(host=SERVER_ADDRESS, port=5222)
    await asyncio.wait_for(ivan.resumed.wait(), 15)
    assert sm.sm_id == previous_id
    message = await ivan.next_message()
    assert message["body"] == "sent while you were away"
    # The resumed session is the same full JID and still routable.
    judy.send_message(mto="ivan@a.test/mobile", mbody="and after", mtype="chat")
    assert (await ivan.next_message())["body"] == "and after"


async def test_mam_returns_history(xmpp_server: PeerageServer, clients: list[Client]) -> None:
    alice = Client("alice@b.test/mam", plugins=("xep_0313", "xep_0059"))
    bob = Client("bob@a.test/mam")
    clients += [alice, bob]
    await asyncio.gather(alice.login(SERVER_ADDRESS), bob.login(SERVER_ADDRESS))
    for index in range(3):
        alice.send_message(mto="bob@a.test", mbody=f"history {index}", mtype="chat")
        assert (await bob.next_message())["body"] == f"history {index}"
    bob.send_message(mto="alice@b.test", mbody="answer", mtype="chat")
    assert (await alice.next_message())["body"] == "answer"
    result = await alice.plugin["xep_0313"].retrieve(with_jid=slixmpp.JID("bob@a.test"), timeout=10)
    bodies = [m["mam_result"]["forwarded"]["stanza"]["body"] for m in result["mam"]["results"]]
    assert bodies == ["history 0", "history 1", "history 2", "answer"]
    assert result["mam_fin"]["complete"] in (True, "true")
