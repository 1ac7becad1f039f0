"""PEP access models beyond presence (roster groups, whitelist with affiliations), node limits and floods."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from slixmpp.exceptions import IqError, IqTimeout

from peerage.xmpp.features.pep import MAX_ITEMS_PER_NODE, MAX_NODES_PER_ACCOUNT
from tests.harness import PeerageServer
from tests.xmppx.conftest import ONE_ADDRESS, TIMEOUT, Client, until

PUBSUB = "http://jabber.org/protocol/pubsub"
OWNER = PUBSUB + "#owner"


async def raw_iq(client: Client, xml: str, *, to: str | None = None, itype: str = "set") -> str:
    iq = client.make_iq(ito=to, itype=itype)
    iq.append(ET.fromstring(xml))
    try:
        reply = await iq.send(timeout=TIMEOUT)
    except IqError as exc:
        reply = exc.iq
    except IqTimeout:
        raise AssertionError(f"no answer to {xml}") from None
    return str(reply)


def form(form_type: str, fields: dict[str, str | list[str]]) -> str:
    xml = f"<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>{form_type}</value></field>"
    for var, value in fields.items():
        values = value if isinstance(value, list) else [value]
        xml += f"<field var='{var}'>" + "".join(f"<value>{v}</value>" for v in values) + "</field>"
    return xml + "</x>"


def publish(node: str, item_id: str, payload: str, options: dict[str, str | list[str]] | None = None) -> str:
    xml = f"<pubsub xmlns='{PUBSUB}'><publish node='{node}'><item id='{item_id}'>{payload}</item></publish>"
    if options:
        xml += f"<publish-options>{form(PUBSUB + '#publish-options', options)}</publish-options>"
    return xml + "</pubsub>"


def items(node: str) -> str:
    return f"<pubsub xmlns='{PUBSUB}'><items node='{node}'/></pubsub>"


async def subscribed(owner: Client, contact: Client, groups: list[str]) -> None:
    """``contact`` subscribes to ``owner``'s presence; ``owner`` files it under ``groups``."""
    owner.update_roster(contact.boundjid.bare, groups=groups)
    contact.send_presence(pto=owner.boundjid.bare, ptype="subscribe")
    await until(lambda: owner.client_roster[contact.boundjid.bare]["subscription"] in ("from", "both"))


async def test_roster_and_whitelist_access_models(one: PeerageServer, clients: list[Client]) -> None:
    pat, quinn, ruth, sam = (Client(f"{name}@x1.test") for name in ("pat", "quinn", "ruth", "sam"))
    for client in (pat, quinn, ruth, sam):
        clients.append(await client.login(ONE_ADDRESS))
    await subscribed(pat, quinn, ["Family"])
    await subscribed(pat, ruth, ["Work"])
    owner = "pat@x1.test"
    reply = await raw_iq(pat, publish("urn:example:family", "1", "<x xmlns='urn:example'>for the family</x>", {
        "pubsub#access_model": "roster", "pubsub#roster_groups_allowed": ["Family", "Friends"]}))
    assert "type=\"result\"" in reply, reply
    assert "for the family" in await raw_iq(quinn, items("urn:example:family"), to=owner, itype="get")
    reply = await raw_iq(ruth, items("urn:example:family"), to=owner, itype="get")
    assert "not-in-roster-group" in reply and "for the family" not in reply, reply
    # Publishing again with other groups is a precondition failure (XEP-0060 section 7.1.5).
    reply = await raw_iq(pat, publish("urn:example:family", "2", "<x xmlns='urn:example'/>", {
        "pubsub#access_model": "roster", "pubsub#roster_groups_allowed": ["Work"]}))
    assert "precondition-not-met" in reply, reply
    # The configuration form shows the model and the groups.
    reply = await raw_iq(pat, f"<pubsub xmlns='{OWNER}'><configure node='urn:example:family'/></pubsub>", itype="get")
    assert "roster_groups_allowed" in reply and "<value>Family</value>" in reply, reply

    # Whitelist: only members the owner affiliates may read, whatever their subscription.
    await raw_iq(pat, publish("urn:example:list", "1", "<x xmlns='urn:example'>members only</x>",
                              {"pubsub#access_model": "whitelist"}))
    reply = await raw_iq(sam, items("urn:example:list"), to=owner, itype="get")
    assert "closed-node" in reply and "members only" not in reply, reply
    reply = await raw_iq(pat, f"<pubsub xmlns='{OWNER}'><affiliations node='urn:example:list'>"
                              "<affiliation jid='sam@x1.test' affiliation='member'/></affiliations></pubsub>")
    assert "type=\"result\"" in reply, reply
    assert "members only" in await raw_iq(sam, items("urn:example:list"), to=owner, itype="get")
    listing = await raw_iq(pat, f"<pubsub xmlns='{OWNER}'><affiliations node='urn:example:list'/></pubsub>",
                           itype="get")
    assert "sam@x1.test" in listing and "affiliation=\"owner\"" in listing, listing
    reply = await raw_iq(sam, f"<pubsub xmlns='{OWNER}'><affiliations node='urn:example:list'/></pubsub>",
                         to=owner, itype="get")
    assert "forbidden" in reply  # only the owner manages affiliations
    await raw_iq(pat, f"<pubsub xmlns='{OWNER}'><affiliations node='urn:example:list'>"
                      "<affiliation jid='sam@x1.test' affiliation='none'/></affiliations></pubsub>")
    assert "closed-node" in await raw_iq(sam, items("urn:example:list"), to=owner, itype="get")
    # Open: anyone, even without a subscription.
    await raw_iq(pat, publish("urn:example:open", "1", "<x xmlns='urn:example'>for all</x>",
                              {"pubsub#access_model": "open", "pubsub#max_items": "max"}))
    assert "for all" in await raw_iq(sam, items("urn:example:open"), to=owner, itype="get")
    reply = await raw_iq(pat, f"<pubsub xmlns='{OWNER}'><configure node='urn:example:open'/></pubsub>", itype="get")
    assert f"<value>{MAX_ITEMS_PER_NODE}</value>" in reply  # 'max' is the service's maximum


async def test_node_flood_hits_the_named_limit(one: PeerageServer, clients: list[Client]) -> None:
    uma = await Client("uma@x1.test").login(ONE_ADDRESS)
    clients.append(uma)
    for index in range(MAX_NODES_PER_ACCOUNT):
        iq = uma.make_iq(itype="set")
        iq.append(ET.fromstring(publish(f"urn:example:flood:{index}", "1", "<x xmlns='urn:example'/>")))
        await iq.send(timeout=TIMEOUT)
    reply = await raw_iq(uma, publish("urn:example:flood:one-more", "1", "<x xmlns='urn:example'/>"))
    assert "not-allowed" in reply and "max-nodes-exceeded" in reply, reply
    assert f"at most {MAX_NODES_PER_ACCOUNT} nodes" in reply
    # The account still works: existing nodes take items.
    reply = await raw_iq(uma, publish("urn:example:flood:0", "2", "<x xmlns='urn:example'/>"))
    assert "type=\"result\"" in reply
    # A malformed request gets an error, not silence.
    reply = await raw_iq(uma, f"<pubsub xmlns='{PUBSUB}'><publish node='urn:example:flood:0'><item id='3'/></publish></pubsub>")
    assert "bad-request" in reply and "item-required" in reply, reply
