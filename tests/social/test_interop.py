"""Interop with real ActivityPub servers run locally: a Fedify server (tests/social/fedify/server.mjs) and
bovine-herd (tests/social/bovine/serve.py). Each one's actor follows alice@alpha.test and she follows it;
posts, replies, likes, boosts and deletes arrive both ways. Each side verifies the other's signatures:
Fedify takes RFC 9421, bovine refuses it and gets draft-cavage (peerage's double-knocking)."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.harness.ca import TestCA
from tests.harness.server import PeerageServer
from tests.harness.waiting import async_wait_for
from tests.social.conftest import ALPHA, Peer, client
from tests.social.test_federation import Account, find

pytestmark = [pytest.mark.interop, pytest.mark.timeout(180)]
ALICE = f"alice@{ALPHA}"
ALICE_URL = f"https://{ALPHA}/users/alice"


async def control(base: str, action: str, **payload: Any) -> Any:
    async with aiohttp.ClientSession() as http:
        if not payload and action in ("received", "followers"):
            async with http.get(f"{base}/{action}") as response:
                return await response.json()
        async with http.post(f"{base}/{action}", json=payload) as response:
            assert response.status == 200, await response.text()
            return await response.json()


def of_type(items: list[dict[str, Any]], kind: str, object_id: str) -> list[dict[str, Any]]:
    def oid(value: Any) -> Any:
        return value.get("id") if isinstance(value, dict) else value
    return [i for i in items if i.get("type") == kind and oid(i.get("object")) == object_id]


@pytest.fixture(params=["fedify", "bovine"])
def peer(request: pytest.FixtureRequest) -> Peer:
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


async def test_follow_post_like_boost_delete_with_a_real_peer(alpha: PeerageServer, peer: Peer,
                                                              social_ca: TestCA) -> None:
    base = peer.control
    async with client(social_ca) as http:
        alice = Account(http, ALICE)
        # fred follows alice (Fedify finds her by WebFinger) and gets her Accept.
        await control(base, "follow", handle=f"acct:{ALICE}")
        await async_wait_for(lambda: _has(alice, "followers", peer.actor), 30, "fred in alice's followers")
        await async_wait_for(lambda: _received(base, "Accept"), 30, f"alice's Accept at {peer.name}")
        # alice follows fred; Fedify accepts.
        await alice.do({"type": "Follow", "object": f"acct:{peer.handle}"})
        await async_wait_for(lambda: _has(alice, "following", peer.actor), 30, "fred's Accept at alice's")
        # The peer's own followers list may be written after it sent its Accept: waited for, not read once.
        await async_wait_for(lambda: _peer_followers_has(base, ALICE_URL), 30, f"alice in {peer.name}'s followers")

        # alice posts, mentioning fred: Fedify receives and verifies it.
        mine = await alice.do({"type": "Note", "content": f"Hi @{peer.handle} from #peerage"})
        note_id = mine["object"]["id"]
        await async_wait_for(lambda: _received(base, "Create", note_id), 30, "alice's post at fred's")

        # fred posts to alice, replies to her, likes and boosts her post.
        theirs = await control(base, "post", content="<p>Hello alice</p>", to=f"acct:{ALICE}")
        await async_wait_for(lambda: _inbox(alice, "Create", theirs["id"]), 30, "fred's post at alice's")
        reply = await control(base, "post", content="<p>A reply</p>", to=f"acct:{ALICE}", inReplyTo=note_id)
        arrived = await async_wait_for(lambda: _inbox(alice, "Create", reply["id"]), 30, "fred's reply")
        assert arrived[0]["object"]["inReplyTo"] == note_id
        await control(base, "like", object=note_id, to=f"acct:{ALICE}")
        await control(base, "announce", object=note_id, to=f"acct:{ALICE}")
        await async_wait_for(lambda: _inbox(alice, "Like", note_id), 30, "fred's like")
        await async_wait_for(lambda: _inbox(alice, "Announce", note_id), 30, "fred's boost")

        # alice likes and boosts fred's post (peerage fetches it from Fedify to find its author).
        await alice.do({"type": "Like", "object": theirs["id"]})
        await alice.do({"type": "Announce", "object": theirs["id"]})
        await async_wait_for(lambda: _received(base, "Like", theirs["id"]), 30, "alice's like at fred's")
        await async_wait_for(lambda: _received(base, "Announce", theirs["id"]), 30, "alice's boost at fred's")

        # Deletes both ways.
        await control(base, "delete", object=theirs["id"], to=f"acct:{ALICE}")
        await async_wait_for(lambda: _inbox_lacks(alice, "Create", theirs["id"]), 30, "fred's Delete")
        await alice.do({"type": "Delete", "object": note_id})
        await async_wait_for(lambda: _received(base, "Delete", note_id), 30, "alice's Delete at fred's")


async def _peer_followers_has(base: str, actor: str) -> bool:
    return actor in await control(base, "followers")


async def _has(account: Account, collection: str, actor: str) -> bool:
    return actor in await account.collection(collection)


async def _inbox(account: Account, kind: str, object_id: str) -> list[dict[str, Any]]:
    return find(await account.inbox(), kind, object_id)


async def _inbox_lacks(account: Account, kind: str, object_id: str) -> bool:
    return not find(await account.inbox(), kind, object_id)


async def _received(base: str, kind: str, object_id: str | None = None) -> bool:
    items = await control(base, "received")
    if object_id is None:
        return any(i.get("type") == kind for i in items)
    return bool(of_type(items, kind, object_id))
