"""Profiles over PEP: XEP-0084 avatars converted to and from vcard-temp (XEP-0398) with XEP-0153 hashes
in presence, and the PEP-only profile data clients publish: vCard4 (XEP-0292), nickname (XEP-0172) and
bookmarks (XEP-0402, with the publish-options Conversations and Gajim send)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import xml.etree.ElementTree as ET

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


class BookmarkClient(Client):
    """A client with XEP-0048 over PEP (slixmpp's ``xep_0048`` with ``storage_method='xep_0223'``, the way
    Gajim and Conversations kept bookmarks before XEP-0402), announcing ``storage:bookmarks+notify``
    and ``urn:xmpp:bookmarks:1+notify`` in its caps."""

    def __init__(self, jid: str) -> None:
        super().__init__(jid, plugins=("xep_0115", "xep_0060", "xep_0163", "xep_0048"))
        self.plugin["xep_0048"].storage_method = "xep_0223"
        self.send_initial_presence = False
        #: pubsub event notifications, by node
        self.events: dict[str, asyncio.Queue[ET.Element]] = {LEGACY: asyncio.Queue(), BOOKMARKS2: asyncio.Queue()}
        # slixmpp raises one event per item (publish or retract), each with the whole message.
        self.add_event_handler("pubsub_publish", self._event)
        self.add_event_handler("pubsub_retract", self._event)
        self._last: slixmpp.Message | None = None

    def _event(self, message: slixmpp.Message) -> None:
        if message is self._last:
            return
        self._last = message
        items = message.xml.find(f"{{{PUBSUB_EVENT}}}event/{{{PUBSUB_EVENT}}}items")
        if items is not None and items.get("node") in self.events:
            self.events[items.get("node", "")].put_nowait(items)

    async def _on_start(self, event: object) -> None:
        # As in test_omemo: +notify interests declared once the JID is bound, then caps broadcast.
        await self.get_roster()
        for node in (LEGACY, BOOKMARKS2):
            self.plugin["xep_0163"].add_interest(node)
        await self.plugin["xep_0115"].update_caps(broadcast=True)
        self.started.set()

    async def next_event(self, node: str) -> ET.Element:
        return await asyncio.wait_for(self.events[node].get(), TIMEOUT)


LEGACY = "storage:bookmarks"
BOOKMARKS2 = "urn:xmpp:bookmarks:1"
PUBSUB_EVENT = "http://jabber.org/protocol/pubsub#event"
BOOKMARK2_OPTIONS: dict[str, str | list[str]] = {
    "pubsub#persist_items": "true", "pubsub#max_items": "max",
    "pubsub#send_last_published_item": "never", "pubsub#access_model": "whitelist"}


def legacy_rooms(items: ET.Element) -> dict[str, ET.Element]:
    """The conferences of a storage:bookmarks notification's ``current`` item, by room JID."""
    item = items.find(f"{{{PUBSUB_EVENT}}}item")
    assert item is not None and item.get("id") == "current", ET.tostring(items)
    return {c.get("jid", ""): c for c in item.iter(f"{{{LEGACY}}}conference")}


async def test_xep0048_bookmarks_over_pep_are_the_xep0402_ones(one: PeerageServer, clients: list[Client]) -> None:
    """XEP-0411 for the legacy PEP node: a XEP-0048-over-PEP client, a XEP-0402 client and private
    storage see one list, and each change reaches the other kind of client as a notification."""
    modern = await BookmarkClient("lena@x1.test/modern").login(ONE_ADDRESS)
    clients.append(modern)
    room = "<conference xmlns='urn:xmpp:bookmarks:1' name='Coven' autojoin='true'><nick>lena</nick></conference>"
    reply = await raw_iq(modern, publish(BOOKMARKS2, "coven@conference.x1.test", room, BOOKMARK2_OPTIONS))
    assert "type=\"result\"" in reply, reply

    # The legacy client's caps ask for storage:bookmarks: its last item (built from XEP-0402) arrives
    # on its presence, as for any PEP node (XEP-0163 section 4.3.2).
    legacy = await BookmarkClient("lena@x1.test/legacy").login(ONE_ADDRESS)
    clients.append(legacy)
    rooms = legacy_rooms(await legacy.next_event(LEGACY))
    assert rooms["coven@conference.x1.test"].get("autojoin") == "true", rooms
    got = await legacy.plugin["xep_0048"].get_bookmarks(timeout=TIMEOUT)
    conferences = got["pubsub"]["items"]["item"]["bookmarks"]["conferences"]
    assert [(str(c["jid"]), c["name"], c["nick"]) for c in conferences] == [("coven@conference.x1.test", "Coven", "lena")]

    # The legacy client publishes its whole list (slixmpp's XEP-0223 publish-options): the XEP-0402
    # node follows, rooms dropped from the list are retracted, and the modern client is told.
    bookmarks = slixmpp.plugins.xep_0048.Bookmarks()
    bookmarks.add_conference("attic@conference.x1.test", "lena", name="Attic", autojoin=True)
    bookmarks.add_url("https://example.org/lena", name="Lena's page")
    await legacy.plugin["xep_0048"].set_bookmarks(bookmarks, timeout=TIMEOUT)
    seen: dict[str, str] = {}  # item id -> the last event about it
    while seen.get("coven@conference.x1.test") != "retract":
        for child in await modern.next_event(BOOKMARKS2):
            seen[child.get("id", "")] = child.tag.rpartition("}")[2]
    assert seen.get("attic@conference.x1.test") == "item", seen
    own = await raw_iq(modern, items(BOOKMARKS2), itype="get")
    assert "attic@conference.x1.test" in own and "coven@conference" not in own and "autojoin=\"true\"" in own, own
    private = await raw_iq(modern, "<query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'/></query>",
                           itype="get")
    assert "jid=\"attic@conference.x1.test\"" in private and "https://example.org/lena" in private, private

    # A XEP-0402 publish is announced on the legacy node, once, with the whole list (URLs kept).
    garden = "<conference xmlns='urn:xmpp:bookmarks:1' name='Garden' autojoin='false'/>"
    reply = await raw_iq(modern, publish(BOOKMARKS2, "garden@conference.x1.test", garden, BOOKMARK2_OPTIONS))
    assert "type=\"result\"" in reply, reply
    while True:
        notified = await legacy.next_event(LEGACY)
        if "garden@conference.x1.test" in legacy_rooms(notified):
            break
    assert set(legacy_rooms(notified)) == {"attic@conference.x1.test", "garden@conference.x1.test"}
    assert notified.find(f".//{{{LEGACY}}}url") is not None, ET.tostring(notified)
    # ... and so is a XEP-0402 retraction.
    reply = await raw_iq(modern, f"<pubsub xmlns='http://jabber.org/protocol/pubsub'><retract node='{BOOKMARKS2}' "
                                 "notify='true'><item id='attic@conference.x1.test'/></retract></pubsub>")
    assert "type=\"result\"" in reply, reply
    while "attic@conference.x1.test" in legacy_rooms(await legacy.next_event(LEGACY)):
        pass

    # The legacy node is the owner's alone, and keeps its fixed configuration.
    stranger = await Client("sam@x1.test/bookmarks").login(ONE_ADDRESS)
    clients.append(stranger)
    refused = await raw_iq(stranger, items(LEGACY), to="lena@x1.test", itype="get")
    assert "closed-node" in refused and "Garden" not in refused, refused
    open_node = publish(LEGACY, "current", "<storage xmlns='storage:bookmarks'/>", {"pubsub#access_model": "open"})
    assert "precondition-not-met" in await raw_iq(legacy, open_node)
    # Cleaning up the legacy node (what a client moving to XEP-0402 does) leaves the XEP-0402 copy.
    reply = await raw_iq(legacy, f"<pubsub xmlns='http://jabber.org/protocol/pubsub#owner'><delete node='{LEGACY}'/>"
                                 "</pubsub>")
    assert "type=\"result\"" in reply, reply
    assert "garden@conference.x1.test" in await raw_iq(modern, items(BOOKMARKS2), itype="get")
