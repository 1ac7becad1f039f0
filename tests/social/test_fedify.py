"""Interop with a real ActivityPub server built on Fedify (tests/social/fedify/server.mjs): fred@fedify.test
follows alice@alpha.test and she follows him; posts, replies, likes, boosts and deletes arrive both ways.
Fedify verifies peerage's signatures (RFC 9421, draft-cavage) and peerage verifies Fedify's."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.harness.ca import TestCA
from tests.harness.server import PeerageServer
from tests.harness.waiting import async_wait_for
from tests.social.conftest import ALPHA, FEDIFY, client
from tests.social.test_federation import Account, find

pytestmark = [pytest.mark.interop, pytest.mark.timeout(180)]
ALICE = f"alice@{ALPHA}"
ALICE_URL = f"https://{ALPHA}/users/alice"
FRED_URL = f"https://{FEDIFY}/users/fred"


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


async def test_fedify_and_peerage_follow_post_like_boost_delete(alpha: PeerageServer, fedify: str,
                                                               social_ca: TestCA) -> None:
    async with client(social_ca) as http:
        alice = Account(http, ALICE)
        # fred follows alice (Fedify finds her by WebFinger) and gets her Accept.
        await control(fedify, "follow", handle=f"acct:{ALICE}")
        await async_wait_for(lambda: _has(alice, "followers", FRED_URL), 30, "fred in alice's followers")
        await async_wait_for(lambda: _received(fedify, "Accept"), 30, "alice's Accept at fred's")
        # alice follows fred; Fedify accepts.
        await alice.do({"type": "Follow", "object": f"acct:fred@{FEDIFY}"})
        await async_wait_for(lambda: _has(alice, "following", FRED_URL), 30, "fred's Accept at alice's")
        assert ALICE_URL in await control(fedify, "followers")

        # alice posts, mentioning fred: Fedify receives and verifies it.
        mine = await alice.do({"type": "Note", "content": f"Hi @fred@{FEDIFY} from #peerage"})
        note_id = mine["object"]["id"]
        await async_wait_for(lambda: _received(fedify, "Create", note_id), 30, "alice's post at fred's")

        # fred posts to alice, replies to her, likes and boosts her post.
        theirs = await control(fedify, "post", content="<p>Hello alice</p>", to=f"acct:{ALICE}")
        await async_wait_for(lambda: _inbox(alice, "Create", theirs["id"]), 30, "fred's post at alice's")
        reply = await control(fedify, "post", content="<p>A reply</p>", to=f"acct:{ALICE}", inReplyTo=note_id)
        arrived = await async_wait_for(lambda: _inbox(alice, "Create", reply["id"]), 30, "fred's reply")
        assert arrived[0]["object"]["inReplyTo"] == note_id
        await control(fedify, "like", object=note_id, to=f"acct:{ALICE}")
        await control(fedify, "announce", object=note_id, to=f"acct:{ALICE}")
        await async_wait_for(lambda: _inbox(alice, "Like", note_id), 30, "fred's like")
        await async_wait_for(lambda: _inbox(alice, "Announce", note_id), 30, "fred's boost")

        # alice likes and boosts fred's post (peerage fetches it from Fedify to find its author).
        await alice.do({"type": "Like", "object": theirs["id"]})
        await alice.do({"type": "Announce", "object": theirs["id"]})
        await async_wait_for(lambda: _received(fedify, "Like", theirs["id"]), 30, "alice's like at fred's")
        await async_wait_for(lambda: _received(fedify, "Announce", theirs["id"]), 30, "alice's boost at fred's")

        # Deletes both ways.
        await control(fedify, "delete", object=theirs["id"], to=f"acct:{ALICE}")
        await async_wait_for(lambda: _inbox_lacks(alice, "Create", theirs["id"]), 30, "fred's Delete")
        await alice.do({"type": "Delete", "object": note_id})
        await async_wait_for(lambda: _received(fedify, "Delete", note_id), 30, "alice's Delete at fred's")


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
