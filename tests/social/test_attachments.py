"""Images attached to posts, with real peers (Fedify, bovine-herd).

- An image posted from the web page's compose form (multipart, the CSRF token first) is stored by
  peerage, served at /media/… (its type from its bytes, nosniff, sandboxed) and sent as the Note's
  ActivityPub ``attachment`` (Document, mediaType, url, name): each peer receives it.
- What is refused: a file that is not an image whatever it claims, a form whose token does not come
  first or is missing, an outbox Note naming someone else's file, more than four images.
- A peer's post with attachments is shown with links to them (https only, never loaded by the page,
  descriptions escaped); an http: one is not linked.

Accounts live on beta.test (no XMPP there; alpha's NodeInfo count stays as test_discovery expects).
"""

from __future__ import annotations

import re
import struct
import zlib
from typing import Any

import aiohttp
import pytest

from tests.harness.ca import TestCA
from tests.harness.server import PeerageServer
from tests.harness.waiting import async_wait_for
from tests.social.conftest import BETA, PASSWORD, Peer, client
from tests.social.test_federation import Account, find
from tests.social.test_interop import control

pytestmark = [pytest.mark.interop, pytest.mark.timeout(180)]
ORIGIN = f"https://{BETA}"
WAIT = 30.0


def png(width: int = 2, height: int = 2) -> bytes:
    """A small red PNG (RFC 2083), made here so the test carries no binary file."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


async def _account(http: aiohttp.ClientSession, beta: PeerageServer, address: str) -> tuple[Account, str]:
    """A published account on beta, logged in on the web: (account, its CSRF token)."""
    beta.add_user(address, PASSWORD)
    account = Account(http, address)
    async with http.post(f"{ORIGIN}/social/api/settings", json={"discoverable": True},
                         headers=account.auth) as response:
        assert response.status == 200, await response.text()
    async with http.post(f"{ORIGIN}/login", json={"account": address, "password": PASSWORD},
                         headers={"Origin": ORIGIN}) as response:
        assert response.status == 200, await response.text()
    async with http.get(f"{ORIGIN}/social/") as response:
        token = re.search(r'name=csrf value="([^"]+)"', await response.text())
    assert token
    return account, token.group(1)


def _form(fields: list[tuple[str, Any]]) -> aiohttp.FormData:
    form = aiohttp.FormData()
    for name, value in fields:
        if isinstance(value, tuple):
            form.add_field(name, value[1], filename=value[0], content_type=value[2])
        else:
            form.add_field(name, value)
    return form


async def _compose(http: aiohttp.ClientSession, fields: list[tuple[str, Any]]) -> tuple[int, str]:
    async with http.post(f"{ORIGIN}/social/compose", data=_form(fields), headers={"Origin": ORIGIN},
                         allow_redirects=False) as response:
        return response.status, response.headers.get("Location", "")


async def _outbox(http: aiohttp.ClientSession, account: Account) -> list[dict[str, Any]]:
    async with http.get(f"{account.url}/outbox", headers={"Accept": "application/activity+json"}) as response:
        return [i["object"] for i in (await response.json(content_type=None))["orderedItems"]
                if isinstance(i.get("object"), dict)]


async def _peer_got(peer: Peer, url: str) -> bool:
    for item in await control(peer.control, "received"):
        if item.get("type") == "Create" and isinstance(item.get("object"), dict) and url in str(item["object"]):
            return True
    return False


@pytest.fixture(params=["fedify", "bovine"])
def peer(request: pytest.FixtureRequest) -> Peer:
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


async def test_an_image_posted_on_the_web_page_reaches_the_peer(beta: PeerageServer, peer: Peer,
                                                                social_ca: TestCA) -> None:
    address = f"pix{peer.name}@{BETA}"
    image = png()
    async with client(social_ca) as http:
        account, csrf = await _account(http, beta, address)
        await control(peer.control, "follow", handle=f"acct:{address}")
        await async_wait_for(lambda: _followed(account, peer.actor), WAIT, f"{peer.name} following {address}")
        status, location = await _compose(http, [
            ("csrf", csrf), ("content", f"A picture for {peer.name}"), ("visibility", "public"),
            ("alt", "A red square"), ("image", ("red.png", image, "application/octet-stream"))])
        assert status == 303 and "notice=posted" in location, location
        note = next(n for n in await _outbox(http, account) if f"A picture for {peer.name}" in str(n.get("content")))
        [attachment] = note["attachment"]
        assert attachment["type"] == "Document" and attachment["mediaType"] == "image/png"  # from its bytes
        assert attachment["name"] == "A red square"
        url = attachment["url"]
        assert url.startswith(f"{ORIGIN}/media/")
        async with http.get(url) as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "image/png"
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            assert "sandbox" in response.headers["Content-Security-Policy"]
            assert await response.read() == image
        await async_wait_for(lambda: _peer_got(peer, url), WAIT, f"the post with its image at {peer.name}'s")
        # The page shows our own image from our origin, with its description.
        async with http.get(f"{ORIGIN}/social/") as response:
            page = await response.text()
        assert f'<img src="{url.removeprefix(ORIGIN)}" alt="A red square"' in page


async def test_what_is_not_an_attachment_is_refused(beta: PeerageServer, social_ca: TestCA) -> None:
    async with client(social_ca) as http:
        account, csrf = await _account(http, beta, f"pixrefused@{BETA}")
        before = len(await _outbox(http, account))
        # Not an image, whatever its name and type say.
        status, location = await _compose(http, [("csrf", csrf), ("content", "Fake picture"),
                                                 ("image", ("fake.png", b"<svg onload=alert(1)>", "image/png"))])
        assert status == 303 and "only+PNG" in location, location
        # The token after the file, or none: refused before the file is read.
        status, _ = await _compose(http, [("content", "Late token"), ("image", ("red.png", png(), "image/png")),
                                          ("csrf", csrf)])
        assert status == 403
        status, _ = await _compose(http, [("content", "No token"), ("image", ("red.png", png(), "image/png"))])
        assert status == 403
        # Five images are one too many.
        status, location = await _compose(http, [("csrf", csrf), ("content", "Five"),
                                                 *[("image", (f"{n}.png", png(), "image/png")) for n in range(5)]])
        assert status == 303 and "at+most+4" in location, location
        # Through the outbox: only the account's own files.
        for attachment in ([{"type": "Document", "url": "https://fedify.test/x.png"}],
                           [{"type": "Document", "url": f"{ORIGIN}/upload/nope/x.png"}]):
            async with http.post(f"{account.url}/outbox", json={"type": "Note", "content": "Borrowed",
                                                                "attachment": attachment},
                                 headers={"X-CSRF-Token": csrf, "Origin": ORIGIN}) as response:
                assert response.status == 400, await response.text()
        assert len(await _outbox(http, account)) == before


async def test_a_peers_attachments_are_linked_safely(beta: PeerageServer, fedify: Peer, social_ca: TestCA) -> None:
    address = f"gallery@{BETA}"
    async with client(social_ca) as http:
        account, _ = await _account(http, beta, address)
        post = await control(fedify.control, "post", content="<p>Look at these</p>", to=f"acct:{address}",
                             attachments=[{"url": "https://fedify.test/media/pic.png", "mediaType": "image/png",
                                           "name": "Fred's <b>pic</b>"},
                                          {"url": "http://fedify.test/insecure.png", "mediaType": "image/png",
                                           "name": "insecure"}])
        await async_wait_for(lambda: _has(account, post["id"]), WAIT, "fred's post with attachments")
        async with http.get(f"{ORIGIN}/social/") as response:
            page = await response.text()
        assert ('<a class=attachment href="https://fedify.test/media/pic.png" '
                'rel="noopener noreferrer nofollow ugc" target=_blank>Fred&#x27;s &lt;b&gt;pic&lt;/b&gt;</a>') in page
        assert "http://fedify.test/insecure.png" not in page
        assert '<img src="https://' not in page


async def _followed(account: Account, actor: str) -> bool:
    return actor in await account.collection("followers")


async def _has(account: Account, object_id: str) -> bool:
    return bool(find(await account.inbox(), "Create", object_id))
