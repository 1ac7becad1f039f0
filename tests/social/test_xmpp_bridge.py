"""The XMPP side of the social identity, with slixmpp and real ActivityPub peers (Fedify, bovine-herd).

- Microblog (XEP-0472/XEP-0277): an Atom entry alice's XMPP client publishes on her PEP node
  ``urn:xmpp:microblog:0`` reaches the peer as a Note (edits as an Update, a retraction as a Delete);
  a post she makes through ActivityPub appears on that node (her client is notified, another account
  reads it); a followed peer's post reaches her client as a pubsub event from the peer's gateway JID.
- Direct messages: the peer's direct Note arrives as a chat message from ``fred=fedify.test@ap.alpha.test``
  and alice's XMPP reply goes back as a direct Note in reply to it; an account that is not published
  may not write through the gateway.
"""

from __future__ import annotations

import asyncio
import uuid
import xml.etree.ElementTree as ET
from typing import Any

import pytest
import slixmpp

from tests.harness.ca import TestCA
from tests.harness.server import PeerageServer
from tests.harness.waiting import async_wait_for
from tests.social.conftest import ALPHA, ALPHA_ADDRESS, PASSWORD, Peer, client
from tests.social.test_federation import Account
from tests.social.test_interop import control, of_type
from tests.xmpp.conftest import Client

pytestmark = [pytest.mark.interop, pytest.mark.timeout(180)]
ALICE, CAROL = f"alice@{ALPHA}", f"carol@{ALPHA}"
ALICE_URL = f"https://{ALPHA}/users/alice"
NODE = "urn:xmpp:microblog:0"
# A node of alice's own, outside the bridge, to learn when the server knows the client's +notify caps.
PROBE = "urn:peerage:test:caps-probe"
ATOM = "http://www.w3.org/2005/Atom"
PUBLIC = "https://www.w3.org/ns/activitystreams#Public"
WAIT = 30.0


class SocialClient(Client):
    """slixmpp with +notify interest in the microblog node (XEP-0163 §4.3) and queues of events."""

    message_timeout = WAIT

    def __init__(self, jid: str) -> None:
        super().__init__(jid, PASSWORD, plugins=("xep_0004", "xep_0115", "xep_0060", "xep_0163"))
        self.published: asyncio.Queue[slixmpp.Message] = asyncio.Queue()
        self.retracted: asyncio.Queue[slixmpp.Message] = asyncio.Queue()
        self.add_event_handler("pubsub_publish", self.published.put_nowait)
        self.add_event_handler("pubsub_retract", self.retracted.put_nowait)
        self.errors: asyncio.Queue[slixmpp.Message] = asyncio.Queue()
        self.add_event_handler("message_error", self.errors.put_nowait)
        self.send_initial_presence = False

    async def _on_start(self, _event: object) -> None:
        await self.get_roster()
        self.plugin["xep_0163"].add_interest(NODE)  # declared once bound, so it is in the caps
        self.plugin["xep_0163"].add_interest(PROBE)
        await self.plugin["xep_0115"].update_caps(broadcast=True)  # sends the initial presence
        self.started.set()

    async def caps_known(self) -> None:
        """Publish on the probe node until its notification comes back: the server has then learnt
        this resource's caps (PEP asks the client with disco#info after its presence)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        attempt = 0
        while loop.time() < deadline:
            attempt += 1
            item = ET.Element("{urn:peerage:test}probe", {"n": str(attempt)})
            await self.plugin["xep_0060"].publish(slixmpp.JID(self.boundjid.bare), PROBE, id="probe",
                                                  payload=item, timeout=WAIT)
            try:
                while True:
                    message = await asyncio.wait_for(self.published.get(), 1.0)
                    if _item(message)[1] == PROBE:
                        return
            except TimeoutError:
                continue
        raise AssertionError("the server never sent the probe notification")

    async def next_item(self, predicate: Any) -> slixmpp.Message:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while True:
            message = await asyncio.wait_for(self.published.get(), max(0.1, deadline - loop.time()))
            if predicate(message):
                return message

    async def publish_entry(self, item_id: str, text: str, *, title_only: bool = False) -> None:
        entry = ET.Element(f"{{{ATOM}}}entry")
        ET.SubElement(entry, f"{{{ATOM}}}title", {"type": "text"}).text = text
        if not title_only:
            ET.SubElement(entry, f"{{{ATOM}}}content", {"type": "text"}).text = text
        ET.SubElement(entry, f"{{{ATOM}}}id").text = f"urn:uuid:{item_id}"
        ET.SubElement(entry, f"{{{ATOM}}}published").text = "2026-12-01T12:00:00Z"
        form = self.plugin["xep_0004"].make_form(ftype="submit")
        form.add_field(var="FORM_TYPE", ftype="hidden", value="http://jabber.org/protocol/pubsub#publish-options")
        form.add_field(var="pubsub#access_model", value="open")
        form.add_field(var="pubsub#type", value=NODE)  # XEP-0472 §4.1
        await self.plugin["xep_0060"].publish(slixmpp.JID(ALICE), NODE, id=item_id, payload=entry,
                                              options=form, timeout=WAIT)


def _entry_title(message: slixmpp.Message) -> str:
    payload = message["pubsub_event"]["items"]["item"]["payload"]
    title = payload.find(f"{{{ATOM}}}title") if payload is not None else None
    return (title.text or "") if title is not None else ""


def _item(message: slixmpp.Message) -> tuple[str, str, str]:
    items = message["pubsub_event"]["items"]
    return str(message["from"]), items["node"], items["item"]["id"]


def _oid(value: Any) -> Any:
    return value.get("id") if isinstance(value, dict) else value


def _ids(value: Any) -> list[str]:
    values = value if isinstance(value, list) else [value] if value else []
    return [_oid(v) for v in values]


async def _received(peer: Peer, kind: str, object_id: str) -> list[dict[str, Any]]:
    return of_type(await control(peer.control, "received"), kind, object_id)


async def _received_matching(peer: Peer, kind: str, predicate: Any) -> list[dict[str, Any]]:
    items = await control(peer.control, "received")
    return [i for i in items if i.get("type") == kind and isinstance(i.get("object"), dict) and predicate(i["object"])]


async def _follow_both_ways(alice: Account, peer: Peer) -> None:
    await control(peer.control, "follow", handle=f"acct:{ALICE}")
    await async_wait_for(lambda: _in(alice, "followers", peer.actor), WAIT, f"{peer.name} in alice's followers")
    await alice.do({"type": "Follow", "object": f"acct:{peer.handle}"})
    await async_wait_for(lambda: _in(alice, "following", peer.actor), WAIT, f"{peer.name}'s Accept at alice's")


async def _in(account: Account, collection: str, actor: str) -> bool:
    return actor in await account.collection(collection)


@pytest.fixture(params=["fedify", "bovine"])
def peer(request: pytest.FixtureRequest) -> Peer:
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


def _gateway_jid(peer: Peer) -> str:
    user, _, host = peer.handle.partition("@")
    return f"{user}={host}@ap.{ALPHA}"


async def test_microblog_node_and_activitypub_are_one_feed(alpha: PeerageServer, peer: Peer,
                                                          social_ca: TestCA) -> None:
    async with client(social_ca) as http:
        alice = Account(http, ALICE)
        await _follow_both_ways(alice, peer)
        xmpp, carol = SocialClient(ALICE), SocialClient(CAROL)
        try:
            await xmpp.login(ALPHA_ADDRESS)
            await xmpp.caps_known()
            await carol.login(ALPHA_ADDRESS)
            # 1. An entry published from XMPP goes out as a public Note whose id is the item's.
            item_id = uuid.uuid4().hex
            text = f"Posted from XMPP to {peer.name} #xmpp"
            await xmpp.publish_entry(item_id, text)
            # PEP notifies her own resource (that also shows the server knows her +notify caps).
            await xmpp.next_item(lambda m: _item(m) == (ALICE, NODE, item_id))
            note_id = f"{ALICE_URL}/statuses/{item_id}"
            created = await async_wait_for(lambda: _received(peer, "Create", note_id), WAIT,
                                           f"the XMPP post at {peer.name}'s")
            note = created[0]["object"]
            assert "Posted from XMPP" in note["content"]
            assert PUBLIC in _ids(created[0].get("to")) + _ids(note.get("to")) or \
                "as:Public" in _ids(created[0].get("to")) + _ids(note.get("to"))

            # 2. The same item edited on the node: an Update of the Note.
            await xmpp.publish_entry(item_id, "Edited from XMPP", title_only=True)
            await async_wait_for(lambda: _received_matching(
                peer, "Update", lambda o: o.get("id") == note_id and "Edited from XMPP" in str(o.get("content"))),
                WAIT, f"the Update at {peer.name}'s")

            # 3. A post made through ActivityPub appears on the node: her client is notified, and
            #    another account's client reads it (the node is open, as the post is public).
            web = await alice.do({"type": "Note", "content": "Posted on the web"})
            web_id = web["object"]["id"]
            sid = web_id.rsplit("/", 1)[-1]
            event = await xmpp.next_item(lambda m: _item(m) == (ALICE, NODE, sid))
            assert _entry_title(event) == "Posted on the web"
            items = await carol.plugin["xep_0060"].get_items(slixmpp.JID(ALICE), NODE, timeout=WAIT)
            found = {item["id"] for item in items["pubsub"]["items"]}
            assert {item_id, sid} <= found

            # 4. The peer's public post reaches her client from the peer's gateway JID, and that JID
            #    answers items requests with it.
            theirs = await control(peer.control, "post", content=f"<p>Public hello from {peer.name}</p>",
                                   to=f"acct:{ALICE}")
            gateway = _gateway_jid(peer)
            event = await xmpp.next_item(lambda m: _item(m) == (gateway, NODE, theirs["id"]))
            assert f"Public hello from {peer.name}" in _entry_title(event)
            items = await xmpp.plugin["xep_0060"].get_items(slixmpp.JID(gateway), NODE, timeout=WAIT)
            assert theirs["id"] in {item["id"] for item in items["pubsub"]["items"]}
            # ... and its deletion retracts it there.
            await control(peer.control, "delete", object=theirs["id"], to=f"acct:{ALICE}")
            retraction = await asyncio.wait_for(xmpp.retracted.get(), WAIT)
            assert str(retraction["from"]) == gateway
            assert retraction["pubsub_event"]["items"]["retract"]["id"] == theirs["id"]
            items = await xmpp.plugin["xep_0060"].get_items(slixmpp.JID(gateway), NODE, timeout=WAIT)
            assert theirs["id"] not in {item["id"] for item in items["pubsub"]["items"]}

            # 5. Retracting the item deletes the Note.
            await xmpp.plugin["xep_0060"].retract(slixmpp.JID(ALICE), NODE, item_id, notify=True, timeout=WAIT)
            await async_wait_for(lambda: _received(peer, "Delete", note_id), WAIT, f"the Delete at {peer.name}'s")
            async with http.get(note_id, headers={"Accept": "application/activity+json"}) as response:
                assert response.status == 410
        finally:
            await xmpp.close()
            await carol.close()


async def test_direct_messages_between_activitypub_and_xmpp(alpha: PeerageServer, peer: Peer,
                                                           social_ca: TestCA) -> None:
    async with client(social_ca) as http:
        alice = Account(http, ALICE)
        await _follow_both_ways(alice, peer)
        xmpp, carol = SocialClient(ALICE), SocialClient(CAROL)
        try:
            await xmpp.login(ALPHA_ADDRESS)
            gateway = _gateway_jid(peer)
            secret = f"Just between us, {peer.name} {uuid.uuid4().hex[:6]}"
            dm = await control(peer.control, "post", content=f"<p>{secret}</p>", to=f"acct:{ALICE}", direct=True)
            message = await xmpp.next_message()
            while secret not in message["body"]:  # anything else waiting for alice (offline) comes first
                message = await xmpp.next_message()
            assert message["type"] == "chat" and str(message["from"]) == gateway
            assert secret in message["body"]
            # A direct Note is not a public post: it is not on the microblog node.
            assert xmpp.published.empty() or all(_item(m)[2] != dm["id"] for m in list(xmpp.published._queue))  # type: ignore[attr-defined]

            # alice answers from her XMPP client: a direct Note to the peer, in reply to its message.
            xmpp.send_message(mto=gateway, mbody="A private answer", mtype="chat")
            answers = await async_wait_for(lambda: _received_matching(
                peer, "Create", lambda o: o.get("inReplyTo") == dm["id"] or _oid(o.get("inReplyTo")) == dm["id"]),
                WAIT, f"alice's direct answer at {peer.name}'s")
            answer = answers[0]
            assert "A private answer" in answer["object"]["content"]
            audience = _ids(answer.get("to")) + _ids(answer.get("cc")) + _ids(answer["object"].get("to")) + \
                _ids(answer["object"].get("cc"))
            assert peer.actor in audience
            assert PUBLIC not in audience and "as:Public" not in audience
            assert not any(a.endswith("/followers") for a in audience)

            # carol has not published her profile: the gateway does not write for her.
            await carol.login(ALPHA_ADDRESS)
            carol.send_message(mto=gateway, mbody="hello?", mtype="chat")
            refused = await asyncio.wait_for(carol.errors.get(), WAIT)
            assert str(refused["from"]) == gateway
            assert refused["error"]["condition"] == "not-allowed"
        finally:
            await xmpp.close()
            await carol.close()
