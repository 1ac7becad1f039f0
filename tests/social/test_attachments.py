"""Images attached to posts, with real peers (Fedify, bovine-herd).

- An image posted from the web page's compose form (multipart, the CSRF token first) is stored by
  peerage, served at /media/… (its type from its bytes, nosniff, sandboxed) and sent as the Note's
  ActivityPub ``attachment`` (Document, mediaType, url, name): each peer receives it.
- What is refused: a file that is not an image whatever it claims, a form whose token does not come
  first or is missing, an outbox Note naming someone else's file, more than four images.
- A file an XMPP client uploads (XEP-0363) and names in a microblog entry (link rel=enclosure) is
  attached to the Note the peer receives, copied into the media store.
- A peer's post with attachments is shown with links to them (https only, never loaded by the page,
  descriptions escaped); an http: one is not linked.

Accounts live on beta.test (no XMPP there; alpha's NodeInfo count stays as test_discovery expects).
"""

from __future__ import annotations

import json
import re
import struct
import uuid
import xml.etree.ElementTree as ET
import zlib
from typing import Any

import aiohttp
import pytest
import slixmpp

from tests.harness.ca import TestCA
from tests.harness.server import PeerageServer
from tests.harness.waiting import async_wait_for
from tests.social.conftest import BETA, DELTA, DELTA_ADDRESS, PASSWORD, Peer, client
from tests.social.test_federation import Account, find
from tests.social.test_interop import control
from tests.social.test_xmpp_bridge import ATOM, NODE, SocialClient

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


async def test_a_file_uploaded_from_xmpp_is_attached_to_the_microblog_post(delta: PeerageServer, peer: Peer,
                                                                          social_ca: TestCA) -> None:
    """XEP-0363 upload, then an entry with link rel=enclosure on the microblog node (XEP-0472): the
    Note the peer receives carries the image, copied to the media store (uploads expire)."""
    address = f"uma{peer.name}@{DELTA}"
    delta.add_user(address, PASSWORD)
    image = png(3, 3)
    async with client(social_ca) as http:
        account = Account(http, address)
        async with http.post(f"https://{DELTA}/social/api/settings", json={"discoverable": True},
                             headers=account.auth) as response:
            assert response.status == 200, await response.text()
        await control(peer.control, "follow", handle=f"acct:{address}")
        await async_wait_for(lambda: _followed(account, peer.actor), WAIT, f"{peer.name} following {address}")
        xmpp = SocialClient(address)
        xmpp.register_plugin("xep_0363")
        try:
            await xmpp.login(DELTA_ADDRESS)
            slot = (await xmpp.plugin["xep_0363"].request_slot(
                slixmpp.JID(f"upload.{DELTA}"), "dot.png", len(image), content_type="image/png",
                timeout=WAIT))["http_upload_slot"]
            headers = {h["name"]: h["value"] for h in slot["put"]["headers"]}
            async with http.put(slot["put"]["url"], data=image, headers={**headers, "Content-Type": "image/png"}) as r:
                assert r.status == 201, await r.text()
            entry = ET.Element(f"{{{ATOM}}}entry")
            ET.SubElement(entry, f"{{{ATOM}}}title", {"type": "text"}).text = f"A dot from XMPP for {peer.name}"
            ET.SubElement(entry, f"{{{ATOM}}}link", {"rel": "enclosure", "href": slot["get"]["url"],
                                                     "type": "image/png", "title": "a red dot"})
            form = xmpp.plugin["xep_0004"].make_form(ftype="submit")
            form.add_field(var="FORM_TYPE", ftype="hidden", value="http://jabber.org/protocol/pubsub#publish-options")
            form.add_field(var="pubsub#access_model", value="open")
            await xmpp.plugin["xep_0060"].publish(slixmpp.JID(address), NODE, id=uuid.uuid4().hex, payload=entry,
                                                  options=form, timeout=WAIT)
            note = await async_wait_for(lambda: _peer_note(peer, f"A dot from XMPP for {peer.name}"), WAIT,
                                        f"the XMPP post at {peer.name}'s")
        finally:
            await xmpp.close()
        media = re.findall(rf"https://{re.escape(DELTA)}/media/[\w-]+/[\w.-]+", json.dumps(note))  # token_urlsafe: - and _
        assert media, note
        async with http.get(media[0]) as response:
            assert response.status == 200 and response.headers["Content-Type"] == "image/png"
            assert await response.read() == image


async def _peer_note(peer: Peer, text: str) -> dict[str, Any] | None:
    for item in await control(peer.control, "received"):
        obj = item.get("object")
        if item.get("type") == "Create" and isinstance(obj, dict) and text in str(obj.get("content")):
            return obj
    return None


async def _followed(account: Account, actor: str) -> bool:
    return actor in await account.collection("followers")


async def _has(account: Account, object_id: str) -> bool:
    return bool(find(await account.inbox(), "Create", object_id))
