"""PEP (XEP-0163) over raw XML: publish, publish-options, access models, limits, notifications by caps."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import AsyncIterator, Callable

import pytest

from peerage.xmpp.features.pep import MAX_ITEM_BYTES
from tests.harness import PeerageServer
from tests.xmpp.conftest import PASSWORD
from tests.xmpp.rawclient import RawClient

SERVER_ADDRESS = "127.0.10.2"
SERVER_USERS = [f"{name}@a.test" for name in ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi")]
PUBSUB = "http://jabber.org/protocol/pubsub"
COUNTER = iter(range(10**6))

@pytest.fixture
async def raw(xmpp_server: PeerageServer) -> AsyncIterator[Callable[[str, str], object]]:
    made: list[RawClient] = []

    async def login(user: str, resource: str = "raw") -> RawClient:
        local, _, domain = user.partition("@")
        client = RawClient(SERVER_ADDRESS, domain)
        await client.login(local, PASSWORD, resource=resource)
        made.append(client)
        return client

    yield login  # type: ignore[misc]
    for client in made:
        await client.close()


async def iq(client: RawClient, body: str, *, to: str = "", itype: str = "set") -> str:
    iq_id = f"q{next(COUNTER)}"
    to_attr = f" to='{to}'" if to else ""
    await client.send(f"<iq type='{itype}' id='{iq_id}'{to_attr}>{body}</iq>")
    return await client.read_until(rf"<iq[^>]*id=['\"]{iq_id}['\"][^>]*(/>|>.*?</iq>)")


def publish(node: str, item_id: str, payload: str, options: dict[str, str] | None = None) -> str:
    xml = f"<pubsub xmlns='{PUBSUB}'><publish node='{node}'><item id='{item_id}'>{payload}</item></publish>"
    if options:
        fields = "".join(f"<field var='{k}'><value>{v}</value></field>" for k, v in options.items())
        xml += (f"<publish-options><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>"
                f"<value>{PUBSUB}#publish-options</value></field>{fields}</x></publish-options>")
    return xml + "</pubsub>"


def items(node: str, max_items: int | None = None) -> str:
    extra = f" max_items='{max_items}'" if max_items is not None else ""
    return f"<pubsub xmlns='{PUBSUB}'><items node='{node}'{extra}/></pubsub>"


async def test_account_shows_pep_identity(raw: Callable[..., object]) -> None:
    alice: RawClient = await raw("alice@a.test")  # type: ignore[misc]
    reply = await iq(alice, "<query xmlns='http://jabber.org/protocol/disco#info'/>", to="alice@a.test", itype="get")
    assert "category='pubsub'" in reply.replace('"', "'") and "type='pep'" in reply.replace('"', "'")
    assert f"{PUBSUB}#publish-options" in reply


async def test_publish_autocreates_and_items_come_back(raw: Callable[..., object]) -> None:
    bob: RawClient = await raw("bob@a.test")  # type: ignore[misc]
    reply = await iq(bob, publish("urn:example:tune", "t1", "<tune xmlns='urn:example:tune'>one</tune>"))
    assert "type='result'" in reply.replace('"', "'") and "t1" in reply
    reply = await iq(bob, items("urn:example:tune"), itype="get")
    assert re.search(r"<item id=['\"]t1['\"]>.*one", reply), reply
    # max_items: the node keeps the newest ones only.
    options = {"pubsub#max_items": "2"}
    for n in range(3):
        await iq(bob, publish("urn:example:list", f"i{n}", f"<x xmlns='urn:example:list'>{n}</x>", options))
    reply = await iq(bob, items("urn:example:list"), itype="get")
    assert "i2" in reply and "i1" in reply and "i0" not in reply
    reply = await iq(bob, items("urn:example:list", max_items=1), itype="get")
    assert "i2" in reply and "i1" not in reply
    # max_items=max is accepted, and matches on the next publish.
    options = {"pubsub#max_items": "max", "pubsub#access_model": "open", "pubsub#persist_items": "true"}
    for n in range(2):
        reply = await iq(bob, publish("urn:example:many", f"m{n}", "<x xmlns='urn:example:many'/>", options))
        assert "type='result'" in reply.replace('"', "'"), reply


async def test_publish_options_mismatch_is_precondition_not_met(raw: Callable[..., object]) -> None:
    carol: RawClient = await raw("carol@a.test")  # type: ignore[misc]
    node = "urn:example:precondition"
    reply = await iq(carol, publish(node, "current", "<x xmlns='urn:example'/>", {"pubsub#access_model": "presence"}))
    assert "type='result'" in reply.replace('"', "'"), reply
    reply = await iq(carol, publish(node, "current", "<x xmlns='urn:example'/>", {"pubsub#access_model": "open"}))
    assert "precondition-not-met" in reply and "<conflict" in reply, reply
    # Reconfigure the node (what clients do on precondition-not-met), then the same options publish.
    form = ("<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>"
            f"<value>{PUBSUB}#node_config</value></field><field var='pubsub#access_model'><value>open</value>"
            "</field></x>")
    reply = await iq(carol, f"<pubsub xmlns='{PUBSUB}#owner'><configure node='{node}'>{form}</configure></pubsub>")
    assert "type='result'" in reply.replace('"', "'"), reply
    reply = await iq(carol, publish(node, "current", "<x xmlns='urn:example'/>", {"pubsub#access_model": "open"}))
    assert "type='result'" in reply.replace('"', "'"), reply


async def test_presence_access_model_refuses_non_contacts(raw: Callable[..., object]) -> None:
    dave: RawClient = await raw("dave@a.test")  # type: ignore[misc]
    erin: RawClient = await raw("erin@a.test")  # type: ignore[misc]
    await iq(dave, publish("urn:example:private", "p", "<x xmlns='urn:example'>secret</x>"))
    await iq(dave, publish("urn:example:public", "p", "<x xmlns='urn:example'>hello</x>",
                           {"pubsub#access_model": "open"}))
    reply = await iq(erin, items("urn:example:private"), to="dave@a.test", itype="get")
    assert "not-authorized" in reply and "presence-subscription-required" in reply and "secret" not in reply
    reply = await iq(erin, items("urn:example:public"), to="dave@a.test", itype="get")
    assert "hello" in reply
    # Node discovery lists only what the requester may read.
    disco = "<query xmlns='http://jabber.org/protocol/disco#items'/>"
    reply = await iq(erin, disco, to="dave@a.test", itype="get")
    assert "urn:example:public" in reply and "urn:example:private" not in reply, reply
    reply = await iq(dave, disco, to="dave@a.test", itype="get")
    assert "urn:example:public" in reply and "urn:example:private" in reply, reply
    # Only the owner publishes.
    reply = await iq(erin, publish("urn:example:public", "q", "<x xmlns='urn:example'/>"), to="dave@a.test")
    assert "forbidden" in reply


async def test_oversized_item_is_refused(raw: Callable[..., object]) -> None:
    frank: RawClient = await raw("frank@a.test")  # type: ignore[misc]
    big = "A" * (MAX_ITEM_BYTES + 10)
    reply = await iq(frank, publish("urn:example:big", "b", f"<x xmlns='urn:example'>{big}</x>"))
    assert "not-acceptable" in reply and "payload-too-big" in reply
    reply = await iq(frank, items("urn:example:big"), itype="get")
    assert "item-not-found" in reply


async def test_retract_and_delete(raw: Callable[..., object]) -> None:
    grace: RawClient = await raw("grace@a.test")  # type: ignore[misc]
    node = "urn:example:gone"
    await iq(grace, publish(node, "a", "<x xmlns='urn:example'/>", {"pubsub#max_items": "10"}))
    await iq(grace, publish(node, "b", "<x xmlns='urn:example'/>"))
    reply = await iq(grace, f"<pubsub xmlns='{PUBSUB}'><retract node='{node}'><item id='a'/></retract></pubsub>")
    assert "type='result'" in reply.replace('"', "'")
    reply = await iq(grace, items(node), itype="get")
    assert "id='b'" in reply.replace('"', "'") and "id='a'" not in reply.replace('"', "'")
    reply = await iq(grace, f"<pubsub xmlns='{PUBSUB}#owner'><delete node='{node}'/></pubsub>")
    assert "type='result'" in reply.replace('"', "'")
    reply = await iq(grace, items(node), itype="get")
    assert "item-not-found" in reply


CAPS = "<c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='urn:example:client' ver='{ver}'/>"


def caps_ver(notify: str) -> str:
    """The XEP-0115 verification string of what answer_caps_query answers."""
    features = sorted(["http://jabber.org/protocol/disco#info", f"{notify}+notify"])
    text = "client/pc//<" + "".join(f + "<" for f in features)
    return base64.b64encode(hashlib.sha1(text.encode()).digest()).decode()


async def answer_caps_query(client: RawClient, notify: str) -> None:
    query = await client.read_until(r"<iq[^>]*type=['\"]get['\"][^>]*>.*?</iq>")
    assert "disco#info" in query, query
    iq_id = re.search(r"id=['\"]([^'\"]+)['\"]", query).group(1)  # type: ignore[union-attr]
    sender = re.search(r"from=['\"]([^'\"]+)['\"]", query).group(1)  # type: ignore[union-attr]
    node = re.search(r"node=['\"]([^'\"]+)['\"]", query).group(1)  # type: ignore[union-attr]
    await client.send(f"<iq type='result' id='{iq_id}' to='{sender}'><query xmlns='http://jabber.org/protocol/"
                      f"disco#info' node='{node}'><identity category='client' type='pc'/>"
                      f"<feature var='http://jabber.org/protocol/disco#info'/><feature var='{notify}+notify'/>"
                      "</query></iq>")


async def test_notifications_follow_caps_and_last_item_on_presence(raw: Callable[..., object]) -> None:
    node = "urn:example:mood"
    heidi1: RawClient = await raw("heidi@a.test", "one")  # type: ignore[misc]
    heidi2: RawClient = await raw("heidi@a.test", "two")  # type: ignore[misc]
    ver = caps_ver(node)
    await heidi1.send("<presence>" + CAPS.format(ver=ver) + "</presence>")
    await answer_caps_query(heidi1, node)
    await heidi2.send("<presence/>")  # no caps: no notifications
    await iq(heidi2, publish(node, "m1", "<mood xmlns='urn:example:mood'>happy</mood>"))
    event = await heidi1.read_until(r"<message.*?</message>")
    assert "pubsub#event" in event and "happy" in event and "m1" in event
    # A resource that comes online later with the same caps gets the last item, with no new query.
    heidi3: RawClient = await raw("heidi@a.test", "three")  # type: ignore[misc]
    await heidi3.send("<presence>" + CAPS.format(ver=ver) + "</presence>")
    event = await heidi3.read_until(r"<message[^>]*>(?:(?!</message>).)*pubsub#event.*?</message>")
    assert "happy" in event
    # heidi2 (no +notify) got none.
    seen = await iq(heidi2, "<ping xmlns='urn:xmpp:ping'/>", itype="get")
    assert "pubsub#event" not in seen + heidi2.buffer


async def test_caps_that_do_not_hash_to_their_ver_are_not_believed(raw: Callable[..., object]) -> None:
    node = "urn:example:forged"
    alice1: RawClient = await raw("alice@a.test", "forger")  # type: ignore[misc]
    alice2: RawClient = await raw("alice@a.test", "publisher")  # type: ignore[misc]
    await alice1.send("<presence>" + CAPS.format(ver="bm90IGEgcmVhbCBoYXNo") + "</presence>")
    await answer_caps_query(alice1, node)  # features that do not hash to the ver shown
    await alice2.send("<presence/>")
    await iq(alice2, publish(node, "f1", "<x xmlns='urn:example'>forged</x>"))
    seen = await iq(alice1, "<ping xmlns='urn:xmpp:ping'/>", itype="get")
    assert "pubsub#event" not in seen + alice1.buffer
