"""Profiles over PEP: XEP-0084 avatars converted to and from vcard-temp (XEP-0398) with XEP-0153 hashes
in presence, and the PEP-only profile data clients publish: vCard4 (XEP-0292), nickname (XEP-0172) and
bookmarks (XEP-0402, with the publish-options Conversations and Gajim send)."""

from __future__ import annotations

import asyncio
import base64
import hashlib

import slixmpp

from tests.harness import PeerageServer
from tests.xmppx.conftest import LONE_ADDRESS, ONE_ADDRESS, TIMEOUT, Client, until
from tests.xmppx.test_pep_access import items, publish, raw_iq

PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwABBAEAwS2OUAAAAABJRU5ErkJggg==")
VCARD_UPDATE = "vcard-temp:x:update"


async def test_pep_avatar_becomes_the_vcard_photo(one: PeerageServer, clients: list[Client]) -> None:
    heidi = await Client("heidi@x1.test", plugins=("xep_0054", "xep_0084", "xep_0060")).login(ONE_ADDRESS)
    clients.append(heidi)
    info = await heidi.plugin["xep_0030"].get_info(jid="heidi@x1.test", timeout=TIMEOUT)
    assert "urn:xmpp:pep-vcard-conversion:0" in info["disco_info"]["features"]
    sha1 = hashlib.sha1(PNG).hexdigest()
    await heidi.plugin["xep_0084"].publish_avatar(PNG, timeout=TIMEOUT)
    await heidi.plugin["xep_0084"].publish_avatar_metadata([{"id": sha1, "type": "image/png", "bytes": len(PNG)}],
                                                          timeout=TIMEOUT)

    async def photo() -> bytes | None:
        vcard = await heidi.plugin["xep_0054"].get_vcard(slixmpp.JID("heidi@x1.test"), local=False, cached=False,
                                                         timeout=TIMEOUT)
        binval = vcard["vcard_temp"]["PHOTO"]["BINVAL"]
        return binval or None

    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while await photo() != PNG:
        assert loop.time() < deadline, "the PEP avatar did not reach vcard-temp"
        await asyncio.sleep(0.2)


async def test_vcard_photo_becomes_the_pep_avatar_and_its_hash_is_in_presence(
        one: PeerageServer, clients: list[Client]) -> None:
    ivan = await Client("ivan@x1.test", plugins=("xep_0054", "xep_0060")).login(ONE_ADDRESS)
    clients.append(ivan)
    vcard = ivan.plugin["xep_0054"].make_vcard()
    vcard["FN"] = "Ivan"
    vcard["PHOTO"]["TYPE"] = "image/png"
    vcard["PHOTO"]["BINVAL"] = PNG
    await ivan.plugin["xep_0054"].publish_vcard(vcard, timeout=TIMEOUT)
    sha1 = hashlib.sha1(PNG).hexdigest()
    reader = await Client("grace@x1.test", plugins=("xep_0060",)).login(ONE_ADDRESS)
    clients.append(reader)

    async def published() -> bool:
        got = await reader.plugin["xep_0060"].get_items(slixmpp.JID("ivan@x1.test"), "urn:xmpp:avatar:metadata",
                                                        timeout=TIMEOUT)
        return any(item["id"] == sha1 for item in got["pubsub"]["items"])

    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while not await published():
        assert loop.time() < deadline, "the vcard-temp PHOTO did not reach PEP"
        await asyncio.sleep(0.2)
    data = await reader.plugin["xep_0060"].get_items(slixmpp.JID("ivan@x1.test"), "urn:xmpp:avatar:data",
                                                     item_ids=[sha1], timeout=TIMEOUT)
    assert base64.b64decode(next(iter(data["pubsub"]["items"]))["payload"].text) == PNG
    # XEP-0153: the server puts the hash in the account's presence (seen here by its other resource).
    second = Client("ivan@x1.test/second")
    clients.append(await second.login(ONE_ADDRESS))
    ivan.send_presence(pstatus="with a picture")
    while True:
        presence = await asyncio.wait_for(second.presences.get(), TIMEOUT)
        if presence["from"] == ivan.boundjid and presence["status"] == "with a picture":
            break
    assert presence.xml.findtext(f"{{{VCARD_UPDATE}}}x/{{{VCARD_UPDATE}}}photo") == sha1


async def test_vcard4_nickname_and_bookmarks_over_pep(one: PeerageServer, clients: list[Client]) -> None:
    frank = await Client("frank@x1.test").login(ONE_ADDRESS)
    stranger = await Client("sam@x1.test").login(ONE_ADDRESS)
    clients.extend([frank, stranger])
    vcard4 = "<vcard xmlns='urn:ietf:params:xml:ns:vcard-4.0'><fn><text>Frank</text></fn></vcard>"
    reply = await raw_iq(frank, publish("urn:xmpp:vcard4", "current", vcard4, {"pubsub#access_model": "open"}))
    assert "type=\"result\"" in reply, reply
    nick = "<nick xmlns='http://jabber.org/protocol/nick'>frankie</nick>"
    reply = await raw_iq(frank, publish("http://jabber.org/protocol/nick", "current", nick,
                                        {"pubsub#access_model": "open"}))
    assert "type=\"result\"" in reply, reply
    assert "Frank" in await raw_iq(stranger, items("urn:xmpp:vcard4"), to="frank@x1.test", itype="get")
    assert "frankie" in await raw_iq(stranger, items("http://jabber.org/protocol/nick"), to="frank@x1.test",
                                     itype="get")
    # XEP-0402 section 3.2: one item per room, with these publish-options.
    bookmark = "<conference xmlns='urn:xmpp:bookmarks:1' name='Coven' autojoin='true'><nick>frank</nick></conference>"
    options: dict[str, str | list[str]] = {
        "pubsub#persist_items": "true", "pubsub#max_items": "max",
        "pubsub#send_last_published_item": "never", "pubsub#access_model": "whitelist"}
    for room in ("coven@conference.x1.test", "garden@conference.x1.test"):
        reply = await raw_iq(frank, publish("urn:xmpp:bookmarks:1", room, bookmark, options))
        assert "type=\"result\"" in reply, reply
    own = await raw_iq(frank, items("urn:xmpp:bookmarks:1"), itype="get")
    assert "coven@conference.x1.test" in own and "garden@conference.x1.test" in own
    refused = await raw_iq(stranger, items("urn:xmpp:bookmarks:1"), to="frank@x1.test", itype="get")
    assert "closed-node" in refused and "Coven" not in refused

    # XEP-0411: a XEP-0048 client sees the same bookmarks in private storage, and its changes reach PEP.
    legacy = await raw_iq(frank, "<query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'/></query>",
                          itype="get")
    assert "jid=\"coven@conference.x1.test\"" in legacy and "autojoin=\"true\"" in legacy, legacy
    assert "<nick>frank</nick>" in legacy
    reply = await raw_iq(frank, "<query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'>"
                                "<conference jid='coven@conference.x1.test' name='Coven'><nick>f</nick></conference>"
                                "<conference jid='attic@conference.x1.test' autojoin='1'/>"
                                "<url name='Project site' url='https://example.org/project'/></storage></query>")
    assert "type=\"result\"" in reply, reply
    own = await raw_iq(frank, items("urn:xmpp:bookmarks:1"), itype="get")
    assert "attic@conference.x1.test" in own and "garden@conference.x1.test" not in own, own
    assert "autojoin=\"false\"" in own  # coven is no longer autojoined
    assert "example.org" not in own  # URL bookmarks have no XEP-0402 form ...
    legacy = await raw_iq(frank, "<query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'/></query>",
                          itype="get")
    assert "url=\"https://example.org/project\"" in legacy and "name=\"Project site\"" in legacy, legacy  # ... but stay
    assert "jid=\"attic@conference.x1.test\"" in legacy
    info = await frank.plugin["xep_0030"].get_info(jid="frank@x1.test", timeout=TIMEOUT)
    assert "urn:xmpp:bookmarks-conversion:0" in info["disco_info"]["features"]


#: A second picture (a 1x1 PNG of another colour), for the avatar change.
PNG2 = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGP4z8DwHwAFAAH/iZk9HQAAAABJRU5ErkJggg==")


async def avatar_hash_from(client: Client, sender: str) -> str | None:
    """The XEP-0153 hash of the next available presence ``client`` gets from ``sender``'s bare JID."""
    while True:
        presence = await asyncio.wait_for(client.presences.get(), TIMEOUT)
        if presence["from"].bare == sender and presence["type"] in ("available", ""):
            return presence.xml.findtext(f"{{{VCARD_UPDATE}}}x/{{{VCARD_UPDATE}}}photo")


async def publish_pep_avatar(client: Client, picture: bytes) -> str:
    sha1 = hashlib.sha1(picture).hexdigest()
    await client.plugin["xep_0084"].publish_avatar(picture, timeout=TIMEOUT)
    await client.plugin["xep_0084"].publish_avatar_metadata([{"id": sha1, "type": "image/png", "bytes": len(picture)}],
                                                           timeout=TIMEOUT)
    return sha1


async def test_avatar_hash_is_rebroadcast_on_change_and_present_after_a_restart(lone: PeerageServer) -> None:
    """XEP-0153: contacts get a presence with the new hash when the avatar changes, though the client
    sends none; after a restart the account's very first presence carries the hash already."""
    server = lone
    clients: list[Client] = []
    try:
        nina = await Client("nina@z.test", plugins=("xep_0084", "xep_0060")).login(LONE_ADDRESS)
        nils = await Client("nils@z.test").login(LONE_ADDRESS)
        clients.extend((nina, nils))
        nina.send_presence(pto="nils@z.test", ptype="subscribe")  # slixmpp approves and subscribes back
        await until(lambda: nina.client_roster["nils@z.test"]["subscription"] == "both"
                    and nils.client_roster["nina@z.test"]["subscription"] == "both")
        for picture in (PNG, PNG2):
            sha1 = await publish_pep_avatar(nina, picture)
            while await avatar_hash_from(nils, "nina@z.test") != sha1:
                pass  # presences from before the change
        for client in clients:
            await client.close()
        clients.clear()
        server.stop()
        server.start()
        nils = await Client("nils@z.test").login(LONE_ADDRESS)
        clients.append(nils)
        nina = await Client("nina@z.test").login(LONE_ADDRESS)  # its initial presence, the first since the start
        clients.append(nina)
        assert await avatar_hash_from(nils, "nina@z.test") == hashlib.sha1(PNG2).hexdigest()
    finally:
        for client in clients:
            await client.close()
        if not server.running:
            server.start()
