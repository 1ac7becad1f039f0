"""Relayed activities with real peers (Fedify, bovine-herd): boosts of posts of a third server, inbox
forwarding, and what a relayer may not make peerage believe.

- A boost (Announce) names a post on another server: peerage fetches the post from its own server
  (bovine's post boosted by Fedify's fred, Fedify's post boosted by bovine's bea), shows it, and
  passes it on to the account's XMPP client as a repeat (an item with ``link rel=via``) from the
  booster's gateway JID; an Undo takes it back on both sides.
- The account's own likes and boosts of the peers' posts reach them, and so do their Undos.
- A reply bovine sent only to fred, which Fedify forwards (InboxContext.forwardActivity, ActivityPub
  §7.1.2) under fred's signature, is believed as bovine serves it; a Delete forwarded the same way is
  believed once bovine no longer serves the post.
- XEP-0277 comments nodes: a post's replies are the items of its comments node on the gateway
  service, and an entry published there is a reply.
- Spoofs relayed by another server (signed by alice@alpha.test, claiming to be bea): a made-up post,
  a post of another host, a Delete of a post bovine still serves, an Announce and a Like nobody made
  are refused with 401 and leave nothing; a real post with forged content is stored as bovine
  serves it, never as the relayer wrote it.

The boost tests use their own host, delta.test (web and XMPP, tests/social/conftest.py), whose account
follows both peers; the
forwarding tests use accounts on beta.test, which follow nobody (so no peer delivers to beta.test
directly what the test wants to arrive forwarded).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import xml.etree.ElementTree as ET
from typing import Any
from urllib.parse import quote

import pytest
import slixmpp

from peerage.social import keys, signatures
from tests.harness.ca import TestCA
from tests.harness.server import PeerageServer
from tests.harness.waiting import async_wait_for
from tests.social.conftest import ALPHA, BETA, DELTA, DELTA_ADDRESS, PASSWORD, Peer, client
from tests.social.test_federation import Account, find
from tests.social.test_interop import control, of_type
from tests.social.test_xmpp_bridge import ATOM, NODE, SocialClient, _item

pytestmark = [pytest.mark.interop, pytest.mark.timeout(180)]
XENA = f"xena@{DELTA}"
WAIT = 30.0
AS = "https://www.w3.org/ns/activitystreams"
COMMENTS = "urn:xmpp:microblog:0:comments/"


def _gateway(peer: Peer) -> str:
    user, _, host = peer.handle.partition("@")
    return f"{user}={host}@ap.{DELTA}"


def _content(items: list[dict[str, Any]], kind: str, object_id: str) -> list[str]:
    return [str(i["object"].get("content")) for i in find(items, kind, object_id) if isinstance(i.get("object"), dict)]


async def _boost_shown(account: Account, announce: str, object_id: str, text: str) -> bool:
    for item in await account.inbox():
        obj = item.get("object")
        if item.get("id") == announce and isinstance(obj, dict) and obj.get("id") == object_id:
            return text in str(obj.get("content"))
    return False


async def _absent(account: Account, activity_id: str) -> bool:
    return all(item.get("id") != activity_id for item in await account.inbox())


async def test_boosts_of_posts_from_a_third_server(delta: PeerageServer, fedify: Peer, bovine: Peer,
                                                   social_ca: TestCA) -> None:
    async with client(social_ca) as http:
        xena = Account(http, XENA)
        for peer in (fedify, bovine):
            await xena.do({"type": "Follow", "object": f"acct:{peer.handle}"})
        await async_wait_for(lambda: _following(xena, {fedify.actor, bovine.actor}), WAIT, "both peers' Accepts")
        xmpp = SocialClient(XENA)
        try:
            await xmpp.login(DELTA_ADDRESS)
            # The gateway is in the domain's disco#items.
            items = await xmpp.plugin["xep_0030"].get_items(jid=DELTA, timeout=WAIT)
            assert (f"ap.{DELTA}", None, "ActivityPub (fediverse)") in items["disco_items"]["items"]
            await xmpp.caps_known()
            # bea posts; fred boosts it. Fedify's Announce names the post by its URL only: peerage
            # fetches it from bovine.
            bea_post = (await control(bovine.control, "post", content="<p>Bea wrote this</p>",
                                      to=f"acct:{XENA}"))["id"]
            await async_wait_for(lambda: _has(xena, "Create", bea_post), WAIT, "bea's post at xena's")
            boost = (await control(fedify.control, "announce", object=bea_post, to=f"acct:{XENA}"))["id"]
            await async_wait_for(lambda: _boost_shown(xena, boost, bea_post, "Bea wrote this"), WAIT,
                                 "fred's boost of bea's post, with the post")
            # The XMPP client gets the repeat from fred's gateway JID: bea's entry, via her item.
            event = await xmpp.next_item(lambda m: _item(m) == (_gateway(fedify), NODE, boost))
            entry = event["pubsub_event"]["items"]["item"]["payload"]
            assert "Bea wrote this" in (entry.findtext(f"{{{ATOM}}}title") or "")
            via = [link.get("href", "") for link in entry.findall(f"{{{ATOM}}}link") if link.get("rel") == "via"]
            assert via and via[0].startswith(f"xmpp:{_gateway(bovine)}?;node=")
            assert (entry.find(f"{{{ATOM}}}author/{{{ATOM}}}uri") is not None and
                    entry.findtext(f"{{{ATOM}}}author/{{{ATOM}}}uri") == f"xmpp:{_gateway(bovine)}")

            # fred posts; bea boosts it (bovine's Announce, peerage fetches the post from Fedify).
            fred_post = (await control(fedify.control, "post", content="<p>Fred wrote that</p>",
                                       to=f"acct:{XENA}"))["id"]
            await async_wait_for(lambda: _has(xena, "Create", fred_post), WAIT, "fred's post at xena's")
            bea_boost = (await control(bovine.control, "announce", object=fred_post, to=f"acct:{XENA}"))["id"]
            await async_wait_for(lambda: _boost_shown(xena, bea_boost, fred_post, "Fred wrote that"), WAIT,
                                 "bea's boost of fred's post, with the post")

            # fred takes his boost back: gone from the inbox, retracted from the XMPP client.
            await control(fedify.control, "undo", activity=boost, to=f"acct:{XENA}")
            await async_wait_for(lambda: _absent(xena, boost), WAIT, "fred's Undo of his boost")
            retraction = await asyncio.wait_for(xmpp.retracted.get(), WAIT)
            assert str(retraction["from"]) == _gateway(fedify)
            assert retraction["pubsub_event"]["items"]["retract"]["id"] == boost
            await control(bovine.control, "undo", activity=bea_boost, to=f"acct:{XENA}")
            await async_wait_for(lambda: _absent(xena, bea_boost), WAIT, "bea's Undo of her boost")
        finally:
            await xmpp.close()


@pytest.fixture(params=["fedify", "bovine"])
def peer(request: pytest.FixtureRequest) -> Peer:
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


async def test_own_likes_and_boosts_and_their_undo(delta: PeerageServer, peer: Peer, social_ca: TestCA) -> None:
    async with client(social_ca) as http:
        xena = Account(http, XENA)
        post = (await control(peer.control, "post", content=f"<p>Like me, {peer.name}</p>", to=f"acct:{XENA}"))["id"]
        await async_wait_for(lambda: _has(xena, "Create", post), WAIT, f"{peer.name}'s post at xena's")
        like = await xena.do({"type": "Like", "object": post})
        boost = await xena.do({"type": "Announce", "object": post})
        await async_wait_for(lambda: _peer_has(peer, "Like", post), WAIT, f"xena's like at {peer.name}'s")
        await async_wait_for(lambda: _peer_has(peer, "Announce", post), WAIT, f"xena's boost at {peer.name}'s")
        for activity in (like, boost):
            await xena.do({"type": "Undo", "object": activity["id"]})
        await async_wait_for(lambda: _undone(peer, {like["id"], boost["id"]}), WAIT, f"both Undos at {peer.name}'s")
        # The other way: the peer likes a post of xena's, then takes it back.
        mine = (await xena.do({"type": "Note", "content": f"Like this, {peer.name}"}))["object"]["id"]
        await control(peer.control, "like", object=mine, to=f"acct:{XENA}")
        liked = await async_wait_for(lambda: _has(xena, "Like", mine), WAIT, f"{peer.name}'s like at xena's")
        await control(peer.control, "undo", activity=liked[0]["id"], to=f"acct:{XENA}")
        await async_wait_for(lambda: _lacks(xena, "Like", mine), WAIT, f"{peer.name}'s Undo of the like")


async def test_a_forwarded_reply_and_delete_are_believed_as_their_origin_serves_them(
        beta: PeerageServer, fedify: Peer, bovine: Peer, social_ca: TestCA) -> None:
    address = f"yuri@{BETA}"
    beta.add_user(address, PASSWORD)
    async with client(social_ca) as http:
        yuri = Account(http, address)
        async with http.post(f"https://{BETA}/social/api/settings", json={"discoverable": True},
                             headers=yuri.auth) as response:
            assert response.status == 200, await response.text()
        mine = (await yuri.do({"type": "Note", "content": "A thread of mine"}))["object"]["id"]
        # bea replies to it, but sends the reply to fred alone; fred's server forwards it to yuri.
        reply = (await control(bovine.control, "post", content="<p>Said to fred about yuri's post</p>",
                               to=f"acct:{fedify.handle}", inReplyTo=mine))["id"]
        await async_wait_for(lambda: _peer_has(fedify, "Create", reply), WAIT, "bea's reply at fred's")
        offset = beta.log_path.stat().st_size
        await control(fedify.control, "forward", activity=reply, to=f"acct:{address}")
        arrived = await async_wait_for(lambda: _has(yuri, "Create", reply), WAIT, "the forwarded reply")
        assert "Said to fred about yuri" in arrived[0]["object"]["content"]
        assert arrived[0]["object"]["inReplyTo"] == mine
        await async_wait_for(lambda: f"forwarded by {fedify.actor} confirmed at its origin" in beta.log_text(offset),
                             WAIT, "peerage's log line for the confirmed forward")
        # bea deletes it (again to fred alone); the forwarded Delete is believed: bovine no longer
        # serves the post.
        await control(bovine.control, "delete", object=reply, to=f"acct:{fedify.handle}")
        await async_wait_for(lambda: _peer_has(fedify, "Delete", reply), WAIT, "bea's Delete at fred's")
        await control(fedify.control, "forward", activity=_delete_id(await control(fedify.control, "received"), reply),
                      to=f"acct:{address}")
        await async_wait_for(lambda: _lacks(yuri, "Create", reply), WAIT, "the forwarded Delete")


async def test_spoofs_relayed_by_another_server_are_refused(alpha: PeerageServer, beta: PeerageServer,
                                                           fedify: Peer, bovine: Peer, social_ca: TestCA) -> None:
    address = f"zoe@{BETA}"
    beta.add_user(address, PASSWORD)
    inbox = f"https://{BETA}/users/zoe/inbox"
    relayer = keys.load(alpha.data_dir, f"alice@{ALPHA}", "main-key")
    assert relayer is not None
    key_id = f"https://{ALPHA}/users/alice#main-key"

    async def relay(activity: dict[str, Any]) -> tuple[int, str]:
        body = json.dumps({"@context": AS, **activity}).encode()
        headers = signatures.sign_cavage("POST", inbox, relayer.private_key, key_id, body)
        async with http.post(inbox, data=body, headers={"Content-Type": "application/activity+json",
                                                        **headers}) as response:
            return response.status, await response.text()

    async with client(social_ca) as http:
        zoe = Account(http, address)
        async with http.post(f"https://{BETA}/social/api/settings", json={"discoverable": True},
                             headers=zoe.auth) as response:
            assert response.status == 200, await response.text()
        zoe_post = (await zoe.do({"type": "Note", "content": "Nobody liked this"}))["object"]["id"]
        # A real post of bea's, which zoe never received: a reply to zoe's post, sent to fred alone.
        real = (await control(bovine.control, "post", content="<p>What bea really said</p>",
                              to=f"acct:{fedify.handle}", inReplyTo=zoe_post))["id"]
        await async_wait_for(lambda: _peer_has(fedify, "Create", real), WAIT, "bea's post at fred's")
        bea, fred, zoe_url = bovine.actor, fedify.actor, zoe.url
        origin = f"https://{bovine.handle.partition('@')[2]}"

        def note(object_id: str, content: str) -> dict[str, Any]:
            return {"id": object_id, "type": "Note", "attributedTo": bea, "content": content,
                    "to": [f"{AS}#Public"], "cc": [zoe_url]}

        # Forged content of a real post: stored as bovine serves it (for zoe, as it replies to her post;
        # the relayer's own addressing counts for nothing).
        status, text = await relay({"id": f"{origin}/spoof/{secrets.token_hex(4)}", "type": "Create", "actor": bea,
                                    "to": [zoe_url], "object": note(real, "<p>FORGED words</p>")})
        assert status == 202, text
        stored = await async_wait_for(lambda: _has(zoe, "Create", real), WAIT, "the real post, from bovine")
        assert "What bea really said" in stored[0]["object"]["content"]
        # An Update with forged content changes nothing either.
        status, text = await relay({"id": f"{origin}/spoof/{secrets.token_hex(4)}", "type": "Update", "actor": bea,
                                    "to": [zoe_url], "object": note(real, "<p>FORGED update</p>")})
        assert status == 202, text
        refused = [
            # A post bovine never served.
            {"type": "Create", "actor": bea, "object": note(f"{real}-made-up", "<p>FORGED</p>")},
            # A post of another host, claimed for bea.
            {"type": "Create", "actor": bea, "object": note(f"https://{BETA}/users/bob/statuses/x", "<p>FORGED</p>")},
            # A Delete of a post bovine still serves.
            {"type": "Delete", "actor": bea, "object": {"id": real, "type": "Tombstone"}},
            # An Announce and a Like nobody made.
            {"type": "Announce", "actor": bea, "object": zoe_post},
            {"type": "Like", "actor": fred, "object": zoe_post},
        ]
        for activity in refused:
            host = f"https://{activity['actor'].split('/')[2]}"
            status, text = await relay({"id": f"{host}/spoof/{secrets.token_hex(4)}", "to": [zoe_url], **activity})
            assert status == 401, (activity["type"], status, text)
        items = await zoe.inbox()
        assert not any("FORGED" in json.dumps(item) for item in items)
        assert _content(items, "Create", real) and all("What bea really said" in c for c in _content(items, "Create", real))
        assert not find(items, "Create", f"{real}-made-up") and not find(items, "Announce") and not find(items, "Like")


def _delete_id(items: list[dict[str, Any]], object_id: str) -> str:
    found = of_type(items, "Delete", object_id)
    assert found, f"no Delete of {object_id}"
    return str(found[-1]["id"])


async def _following(account: Account, actors: set[str]) -> bool:
    return actors <= set(await account.collection("following"))


async def _has(account: Account, kind: str, object_id: str) -> list[dict[str, Any]]:
    return find(await account.inbox(), kind, object_id)


async def _lacks(account: Account, kind: str, object_id: str) -> bool:
    return not find(await account.inbox(), kind, object_id)


async def _peer_has(peer: Peer, kind: str, object_id: str) -> bool:
    return bool(of_type(await control(peer.control, "received"), kind, object_id))


async def _undone(peer: Peer, activity_ids: set[str]) -> bool:
    undone = set()
    for item in await control(peer.control, "received"):
        if item.get("type") == "Undo":
            obj = item.get("object")
            undone.add(obj.get("id") if isinstance(obj, dict) else obj)
    return activity_ids <= undone



async def test_comments_nodes_are_the_replies(delta: PeerageServer, peer: Peer, social_ca: TestCA) -> None:
    """XEP-0277 §3: xena's post names its comments node on the gateway service; the peer's reply is
    an item there, and an entry xena publishes there is a reply Note the peer receives."""
    service = f"ap.{DELTA}"
    async with client(social_ca) as http:
        xena = Account(http, XENA)
        await control(peer.control, "follow", handle=f"acct:{XENA}")
        await async_wait_for(lambda: _in(xena, "followers", peer.actor), WAIT, f"{peer.name} following xena")
        post = (await xena.do({"type": "Note", "content": f"Comment on this, {peer.name}"}))["object"]["id"]
        node = COMMENTS + post
        xmpp = SocialClient(XENA)
        try:
            await xmpp.login(DELTA_ADDRESS)
            # Her own microblog item names the comments node.
            items = await xmpp.plugin["xep_0060"].get_items(slixmpp.JID(XENA), NODE, timeout=WAIT)
            entry = next(i["payload"] for i in items["pubsub"]["items"] if i["id"] == post.rsplit("/", 1)[-1])
            replies = [link.get("href") for link in entry.findall(f"{{{ATOM}}}link") if link.get("rel") == "replies"]
            assert replies == [f"xmpp:{service}?;node={quote(node, safe='')}"]
            # The peer's reply is an item of that node.
            reply = (await control(peer.control, "post", content=f"<p>A comment from {peer.name}</p>",
                                   to=f"acct:{XENA}", inReplyTo=post))["id"]
            await async_wait_for(lambda: _has(xena, "Create", reply), WAIT, f"{peer.name}'s reply at xena's")
            comments = await xmpp.plugin["xep_0060"].get_items(slixmpp.JID(service), node, timeout=WAIT)
            found = {i["id"]: i for i in comments["pubsub"]["items"]}
            assert reply in found
            assert f"A comment from {peer.name}" in (found[reply]["payload"].findtext(f"{{{ATOM}}}title") or "")
            # xena comments from XMPP: a reply Note at the peer's.
            comment = ET.Element(f"{{{ATOM}}}entry")
            ET.SubElement(comment, f"{{{ATOM}}}title", {"type": "text"}).text = f"Thanks, {peer.name}"
            await xmpp.plugin["xep_0060"].publish(slixmpp.JID(service), node, payload=comment, timeout=WAIT)
            received = await async_wait_for(lambda: _peer_reply(peer, post, f"Thanks, {peer.name}"), WAIT,
                                            f"xena's XMPP comment at {peer.name}'s")
            comments = await xmpp.plugin["xep_0060"].get_items(slixmpp.JID(service), node, timeout=WAIT)
            assert {reply, received} <= {i["id"] for i in comments["pubsub"]["items"]}
        finally:
            await xmpp.close()


async def _in(account: Account, collection: str, actor: str) -> bool:
    return actor in await account.collection(collection)


async def _peer_reply(peer: Peer, parent: str, text: str) -> str:
    for item in await control(peer.control, "received"):
        obj = item.get("object")
        if item.get("type") == "Create" and isinstance(obj, dict) and text in str(obj.get("content")):
            reply_to = obj.get("inReplyTo")
            if (reply_to.get("id") if isinstance(reply_to, dict) else reply_to) == parent:
                return str(obj["id"])
    return ""
