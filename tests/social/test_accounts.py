"""Account life on ActivityPub with real peers (Fedify, bovine-herd): key rotation announced, locked
accounts whose owner approves or refuses follow requests, and pinned posts (the featured collection).

Rotation and locked accounts use accounts of their own on beta.test, so alpha's alice keeps her key
and alpha's NodeInfo its count for tests/social/test_discovery.py.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.harness.ca import TestCA
from tests.harness.server import PeerageServer
from tests.harness.waiting import async_wait_for
from tests.social.conftest import ALPHA, BETA, PASSWORD, Peer, client
from tests.social.test_federation import AP, Account
from tests.social.test_interop import control

pytestmark = [pytest.mark.interop, pytest.mark.timeout(180)]
ALICE = f"alice@{ALPHA}"
ALICE_URL = f"https://{ALPHA}/users/alice"
WAIT = 30.0


@pytest.fixture(params=["fedify", "bovine"])
def peer(request: pytest.FixtureRequest) -> Peer:
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


def _oid(value: Any) -> Any:
    return value.get("id") if isinstance(value, dict) else value


async def _received(peer: Peer, kind: str, predicate: Any) -> list[dict[str, Any]]:
    return [i for i in await control(peer.control, "received") if i.get("type") == kind and predicate(i)]


async def _document(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(url, headers=AP) as response:
        assert response.status == 200, await response.text()
        return dict(await response.json(content_type=None))


async def _settings(http: aiohttp.ClientSession, account: Account, **values: Any) -> None:
    async with http.post(f"https://{account.domain}/social/api/settings", json=values,
                         headers=account.auth) as response:
        assert response.status == 200, await response.text()


async def _requests(http: aiohttp.ClientSession, account: Account) -> list[str]:
    async with http.get(f"https://{account.domain}/social/api/requests", headers=account.auth) as response:
        assert response.status == 200, await response.text()
        return [r["actor"] for r in (await response.json())["requests"]]


async def _followed_by(account: Account, actor: str) -> bool:
    return actor in await account.collection("followers")


async def test_rotate_key_sends_an_update_to_followers(beta: PeerageServer, peer: Peer, social_ca: TestCA) -> None:
    address = f"rota{peer.name}@{BETA}"
    beta.add_user(address, PASSWORD)
    async with client(social_ca) as http:
        account = Account(http, address)
        await _settings(http, account, discoverable=True)
        await control(peer.control, "follow", handle=f"acct:{address}")
        await async_wait_for(lambda: _followed_by(account, peer.actor), WAIT, f"{peer.name} following {address}")
        before = (await _document(http, account.url))["publicKey"]["id"]
        offset = beta.log_path.stat().st_size
        beta.cli("social", "rotate-key", address)
        key_id = await async_wait_for(lambda: _new_key(http, account.url, before), WAIT, "the new key on the actor")

        def carries_new_key(item: dict[str, Any]) -> bool:
            obj = item.get("object")
            if not isinstance(obj, dict) or obj.get("id") != account.url:
                return False
            keys = obj.get("publicKey") or obj.get("https://w3id.org/security#publicKey")
            keys = keys if isinstance(keys, list) else [keys]
            return key_id in [_oid(k) for k in keys]

        if peer.name == "fedify":
            # Fedify verified the Update (signed with the new key, which it had to fetch) and kept it.
            await async_wait_for(lambda: _received(peer, "Update", carries_new_key), WAIT,
                                 f"the actor Update with the new key at {peer.name}'s")
        else:
            # bovine refreshes its copy of the actor and lists no Update in the inbox; that its inbox
            # took the Update (it answers 401 to a signature it cannot verify) is what shows here.
            def delivered() -> bool:
                text = beta.log_text(offset)
                rotated = text.find("rotated its key")
                return rotated >= 0 and "delivered" in text[rotated:] and "to https://bovine.test/" in text[rotated:]
            await async_wait_for(delivered, WAIT, "the actor Update delivered to bovine")


async def _new_key(http: aiohttp.ClientSession, url: str, before: str) -> str | None:
    key_id = (await _document(http, url))["publicKey"]["id"]
    return str(key_id) if key_id != before else None


async def test_a_locked_account_approves_and_refuses_follow_requests(beta: PeerageServer, peer: Peer,
                                                                     social_ca: TestCA) -> None:
    approving, refusing = f"lock{peer.name}@{BETA}", f"shy{peer.name}@{BETA}"
    async with client(social_ca) as http:
        for address in (approving, refusing):
            beta.add_user(address, PASSWORD)
            await _settings(http, Account(http, address), discoverable=True, locked=True)
        owner, other = Account(http, approving), Account(http, refusing)
        assert (await _document(http, owner.url))["manuallyApprovesFollowers"] is True

        # The peer asks to follow both: the requests wait, nobody is a follower yet, no answer is sent.
        await control(peer.control, "follow", handle=f"acct:{approving}")
        await control(peer.control, "follow", handle=f"acct:{refusing}")
        await async_wait_for(lambda: _has_request(http, owner, peer.actor), WAIT, "the request to the owner")
        await async_wait_for(lambda: _has_request(http, other, peer.actor), WAIT, "the request to the other")
        assert peer.actor not in await owner.collection("followers")
        assert not await _received(peer, "Accept", lambda i: _oid(i.get("actor")) in (owner.url, other.url))

        # The owner approves: the peer gets the Accept and is a follower; the other refuses: a Reject.
        await owner.do({"type": "Accept", "object": peer.actor})
        await other.do({"type": "Reject", "object": peer.actor})
        await async_wait_for(lambda: _received(peer, "Accept", lambda i: _oid(i.get("actor")) == owner.url),
                             WAIT, f"the Accept at {peer.name}'s")
        await async_wait_for(lambda: _received(peer, "Reject", lambda i: _oid(i.get("actor")) == other.url),
                             WAIT, f"the Reject at {peer.name}'s")
        assert peer.actor in await owner.collection("followers")
        assert peer.actor not in await other.collection("followers")
        assert await _requests(http, owner) == [] and await _requests(http, other) == []

        # A post to followers reaches the approved follower.
        post = await owner.do({"type": "Note", "content": "Only for approved followers", "visibility": "followers"})
        await async_wait_for(lambda: _received(peer, "Create", lambda i: _oid(i.get("object")) == post["object"]["id"]),
                             WAIT, f"the followers-only post at {peer.name}'s")


async def _has_request(http: aiohttp.ClientSession, account: Account, actor: str) -> bool:
    return actor in await _requests(http, account)


async def test_pinned_posts_are_the_featured_collection(alpha: PeerageServer, fedify: Peer, social_ca: TestCA) -> None:
    async with client(social_ca) as http:
        alice = Account(http, ALICE)
        await control(fedify.control, "follow", handle=f"acct:{ALICE}")
        await async_wait_for(lambda: _followed_by(alice, fedify.actor), WAIT, "fred following alice")
        note = (await alice.do({"type": "Note", "content": "Pin me"}))["object"]["id"]
        featured = f"{ALICE_URL}/featured"
        assert (await _document(http, ALICE_URL))["featured"] == featured

        await alice.do({"type": "Add", "object": note, "target": featured})
        items = (await _document(http, featured))["orderedItems"]
        assert [i["id"] for i in items] == [note] and items[0]["content"]
        await async_wait_for(lambda: _received(fedify, "Add", lambda i: _oid(i.get("object")) == note),
                             WAIT, "the Add (pin) at fred's")

        await alice.do({"type": "Remove", "object": note, "target": featured})
        assert (await _document(http, featured))["orderedItems"] == []
        await async_wait_for(lambda: _received(fedify, "Remove", lambda i: _oid(i.get("object")) == note),
                             WAIT, "the Remove (unpin) at fred's")

        # Only the account's own public posts can be pinned.
        async with http.post(f"{ALICE_URL}/outbox", json={"type": "Add", "object": f"{ALICE_URL}/statuses/none",
                                                          "target": featured}, headers=alice.auth) as response:
            assert response.status == 400
