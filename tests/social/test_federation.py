"""Two peerage hosts federating over ActivityPub: follows, posts, replies, likes, boosts, deletes, and a
delivery that waits for its remote to come back.

bob@beta.test and alice@alpha.test act through their own outboxes (ActivityPub client-to-server, HTTP
Basic), and read what arrived through their inboxes; every request between the servers is signed
(RFC 9421 first, draft-cavage when a host wants it) and verified.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.harness.ca import TestCA
from tests.harness.server import PeerageServer
from tests.harness.waiting import async_wait_for
from tests.social.conftest import ALPHA, BETA, PASSWORD, SERVER_START_TIMEOUT, client

pytestmark = pytest.mark.timeout(240)  # includes the module's server starts, on a loaded CI machine
ALICE, BOB = f"alice@{ALPHA}", f"bob@{BETA}"
ALICE_URL, BOB_URL = f"https://{ALPHA}/users/alice", f"https://{BETA}/users/bob"
AP = {"Accept": "application/activity+json"}


class Account:
    def __init__(self, http: aiohttp.ClientSession, address: str) -> None:
        self.http = http
        self.address = address
        local, _, self.domain = address.partition("@")
        self.url = f"https://{self.domain}/users/{local}"
        self.auth = {"Authorization": aiohttp.encode_basic_auth(address, PASSWORD)}

    async def do(self, activity: dict[str, Any]) -> dict[str, Any]:
        async with self.http.post(f"{self.url}/outbox", json=activity, headers=self.auth) as response:
            assert response.status == 201, await response.text()
            assert response.headers["Location"]
            return dict(await response.json(content_type=None))

    async def inbox(self) -> list[dict[str, Any]]:
        async with self.http.get(f"{self.url}/inbox", headers={**self.auth, **AP}) as response:
            assert response.status == 200, await response.text()
            return list((await response.json(content_type=None))["orderedItems"])

    async def collection(self, name: str) -> list[Any]:
        async with self.http.get(f"{self.url}/{name}", headers=AP) as response:
            return list((await response.json(content_type=None))["orderedItems"])


def find(items: list[dict[str, Any]], kind: str, object_id: str | None = None) -> list[dict[str, Any]]:
    def oid(value: Any) -> Any:
        return value.get("id") if isinstance(value, dict) else value
    return [i for i in items if i.get("type") == kind and (object_id is None or oid(i.get("object")) == object_id)]


async def test_follow_post_reply_like_boost_delete_both_ways(alpha: PeerageServer, beta: PeerageServer,
                                                             social_ca: TestCA) -> None:
    async with client(social_ca) as http:
        alice, bob = Account(http, ALICE), Account(http, BOB)
        # Follows both ways, by address (WebFinger) and by actor URL; each Accept comes back.
        await bob.do({"type": "Follow", "object": f"acct:{ALICE}"})
        await alice.do({"type": "Follow", "object": BOB_URL})
        await async_wait_for(lambda: _has(alice, "followers", BOB_URL), 20, "bob in alice's followers")
        await async_wait_for(lambda: _has(bob, "followers", ALICE_URL), 20, "alice in bob's followers")
        await async_wait_for(lambda: _has(bob, "following", ALICE_URL), 20, "alice's Accept at bob's")
        await async_wait_for(lambda: _has(alice, "following", BOB_URL), 20, "bob's Accept at alice's")

        # A public post with a mention, a hashtag and a content warning.
        created = await alice.do({"type": "Note", "content": f"Hello @bob@{BETA} #peerage", "summary": "greeting"})
        note_id = created["object"]["id"]
        arrived = await async_wait_for(lambda: _inbox_has(bob, "Create", note_id), 20, "alice's post at bob's")
        note = arrived[0]["object"]
        assert note["summary"] == "greeting" and note["sensitive"] is True
        assert 'class="mention hashtag"' in note["content"] and "h-card" in note["content"]
        assert {"type": "Mention", "href": BOB_URL, "name": f"@{BOB}"} in note["tag"]
        assert any(t["type"] == "Hashtag" and t["name"] == "#peerage" for t in note["tag"])

        # bob replies, likes and boosts; alice sees all three.
        reply = await bob.do({"type": "Note", "content": f"@alice@{ALPHA} hi!", "inReplyTo": note_id})
        like = await bob.do({"type": "Like", "object": note_id})
        await bob.do({"type": "Announce", "object": note_id})
        await async_wait_for(lambda: _inbox_has(alice, "Create", reply["object"]["id"]), 20, "bob's reply")
        await async_wait_for(lambda: _inbox_has(alice, "Like", note_id), 20, "bob's like")
        await async_wait_for(lambda: _inbox_has(alice, "Announce", note_id), 20, "bob's boost")
        # ...and he takes the like back (Undo).
        await bob.do({"type": "Undo", "object": like["id"]})
        await async_wait_for(lambda: _inbox_lacks(alice, "Like", note_id), 20, "the Undo of bob's like")

        # bob posts; alice (following him) gets it; he deletes it, and it is gone from her inbox.
        post = await bob.do({"type": "Note", "content": "a post that will not last"})
        post_id = post["object"]["id"]
        await async_wait_for(lambda: _inbox_has(alice, "Create", post_id), 20, "bob's post at alice's")
        await bob.do({"type": "Delete", "object": post_id})
        await async_wait_for(lambda: _inbox_lacks(alice, "Create", post_id), 20, "bob's Delete at alice's")
        async with http.get(post_id, headers=AP) as response:
            assert response.status == 410  # a Tombstone where the Note was

        # alice's public post is in her outbox and fetchable by its id.
        assert note_id in [i["object"]["id"] for i in await alice.collection("outbox")]
        async with http.get(note_id, headers=AP) as response:
            assert (await response.json(content_type=None))["id"] == note_id


async def test_delivery_waits_for_a_remote_that_is_down(alpha: PeerageServer, beta: PeerageServer,
                                                        social_ca: TestCA) -> None:
    async with client(social_ca) as http:
        alice, bob = Account(http, ALICE), Account(http, BOB)
        if not await _has(alice, "followers", BOB_URL):
            await bob.do({"type": "Follow", "object": f"acct:{ALICE}"})
            await async_wait_for(lambda: _has(alice, "followers", BOB_URL), 20, "bob in alice's followers")
        beta.stop()
        try:
            created = await alice.do({"type": "Note", "content": "sent while beta is down"})
            note_id = created["object"]["id"]
            listing = await async_wait_for(lambda: _queue_with_error(alpha), 20, "a failed attempt in the queue")
            assert f"https://{BETA}/inbox" in listing
        finally:
            beta.start(timeout=SERVER_START_TIMEOUT)
        # The operator asks for a retry now rather than at the next back-off step.
        assert "will be retried now" in alpha.cli("social", "queue", "retry").stdout
        arrived = await async_wait_for(lambda: _inbox_has(bob, "Create", note_id), 30, "the post after restart")
        assert len(arrived) == 1
        await async_wait_for(lambda: "queue is empty" in alpha.cli("social", "queue").stdout, 20, "an empty queue")
        assert len(find(await bob.inbox(), "Create", note_id)) == 1  # delivered once


def _queue_with_error(server: PeerageServer) -> str | None:
    text = server.cli("social", "queue", "list").stdout
    return text if "attempts=" in text and "attempts=0" not in text else None


async def _has(account: Account, collection: str, actor: str) -> bool:
    return actor in await account.collection(collection)


async def _inbox_has(account: Account, kind: str, object_id: str) -> list[dict[str, Any]]:
    return find(await account.inbox(), kind, object_id)


async def _inbox_lacks(account: Account, kind: str, object_id: str) -> bool:
    return not find(await account.inbox(), kind, object_id)
