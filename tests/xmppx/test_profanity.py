"""profanity (Debian 0.13.1) as a real user's client: chat here and over s2s, a group chat it creates,
an HTTP upload it makes, and OMEMO with a slixmpp-omemo contact; and it logs no warning about the server.

profanity is driven through its terminal (``tests/xmppx/profanity.py``); it finds the server by DNS
(SRV) and verifies its certificates against the test CA, for XMPP and for HTTPS.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import slixmpp

from tests.harness import PeerageServer
from tests.xmppx.conftest import DNS_ADDRESS, ONE_ADDRESS, PASSWORD, TIMEOUT, TWO_ADDRESS, Client, until
from tests.xmppx.profanity import Profanity
from tests.xmppx.test_upload import LoopbackResolver

pytest.importorskip("slixmpp_omemo")

from tests.xmppx.test_omemo import OLDMEMO, OmemoClient


@pytest.fixture
async def profanity(one: PeerageServer, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Profanity]:
    jid = request.param
    client = Profanity(tmp_path, jid, PASSWORD, DNS_ADDRESS, one.ca_path)  # type: ignore[attr-defined]
    client.start()
    try:
        # Found by SRV, TLS verified (tls.policy=force), SASL, bind, stream management.
        await client.wait_log(r"logged in successfully", timeout=TIMEOUT)
        await client.wait_log(r"RECV: <enabled [^>]*xmlns=\"urn:xmpp:sm:3\"", timeout=TIMEOUT)
        yield client
    finally:
        client.stop()


class MucClient(Client):
    def __init__(self, jid: str) -> None:
        super().__init__(jid, plugins=("xep_0045",))


def assert_no_problems(client: Profanity) -> None:
    problems = client.problems()
    assert not problems, "profanity logged:\n" + "\n".join(problems)


@pytest.mark.parametrize("profanity", ["paula@x1.test"], indirect=True)
async def test_profanity_chats_joins_a_room_and_uploads(
        profanity: Profanity, one: PeerageServer, clients: list[Client]) -> None:
    local, remote = MucClient("peter@x1.test"), MucClient("yann@y.test")
    clients.extend((local, remote))
    await asyncio.gather(local.login(ONE_ADDRESS), remote.login(TWO_ADDRESS))
    # The server's services, as profanity sees them at login: disco#items lists both, each answers.
    await profanity.wait_log(r"RECV: <iq [^>]*from=\"upload.x1.test\"[^>]*type=\"result\"|"
                             r"RECV: <iq [^>]*type=\"result\"[^>]*from=\"upload.x1.test\"")

    # One-to-one chat, here and over s2s, both ways.
    for peer in (local, remote):
        peer_jid = peer.boundjid.bare
        await profanity.do(f"/msg {peer_jid} hello {peer_jid} from profanity", rf"SENT: <message[^>]*to=\"{peer_jid}\"")
        received = await peer.next_message(timeout=TIMEOUT)
        assert received["body"] == f"hello {peer_jid} from profanity"
        assert received["from"].bare == profanity.jid
        peer.send_message(mto=profanity.jid, mbody=f"{peer_jid} answers", mtype="chat")
        await profanity.wait_message(from_jid=peer_jid, message=f"{peer_jid} answers", type="chat")
        profanity.type("/close")

    # A room profanity creates (XEP-0045 section 10.1: locked until the owner accepts the default
    # configuration, which is profanity's /room accept), joined by a local and a remote occupant.
    room = "profroom@conference.x1.test"
    await profanity.do(f"/join {room} nick paula", r"RECV: <presence[^>]*from=\"" + re.escape(room) +
                       r"/paula\"[^>]*>.*<status code=\"201\"/>")
    await profanity.do("/room accept", r"RECV: <iq [^>]*type=\"result\"[^>]*from=\"" + re.escape(room) + r"\"/>")
    for peer, nick in ((local, "peter"), (remote, "yann")):
        await peer.plugin["xep_0045"].join_muc_wait(slixmpp.JID(room), nick, maxstanzas=0, timeout=TIMEOUT)
        await profanity.wait_log(r"RECV: <presence[^>]*from=\"" + re.escape(f"{room}/{nick}") + '"')
    await profanity.do("hello room", r"RECV: <message[^>]*type=\"groupchat\"[^>]*from=\"" + re.escape(room))
    for peer in (local, remote):
        received = await peer.next_message(timeout=TIMEOUT)
        assert (received["type"], received["body"], received["from"].resource) == ("groupchat", "hello room", "paula")
    remote.send_message(mto=room, mbody="hello from y.test", mtype="groupchat")
    await profanity.wait_message(from_jid=room, message="hello from y.test", type="muc")

    # An upload, shared in the room: profanity asks upload.x1.test for a slot, PUTs the file with libcurl
    # over verified HTTPS, and posts the URL (with jabber:x:oob); an occupant downloads the same bytes.
    content = b"notes for the room, uploaded by profanity\n" * 20
    upload = Path(profanity.home) / "notes.txt"
    upload.write_bytes(content)
    await profanity.do(f"/sendfile {upload}", r"SENT: <message[^>]*type=\"groupchat\"[^>]*>.*jabber:x:oob", timeout=TIMEOUT)
    shared = await local.next_message(timeout=TIMEOUT)
    while shared["body"] == "hello from y.test":  # the remote occupant's line, reflected to everyone
        shared = await local.next_message(timeout=TIMEOUT)
    url = shared["body"]
    assert url.startswith("https://x1.test/upload/") and url.endswith("/notes.txt"), url
    assert shared.xml.find("{jabber:x:oob}x/{jabber:x:oob}url").text == url  # type: ignore[union-attr]
    context = ssl.create_default_context(cafile=str(one.ca_path))  # type: ignore[attr-defined]
    connector = aiohttp.TCPConnector(resolver=LoopbackResolver(), ssl=context)
    async with aiohttp.ClientSession(connector=connector) as http, http.get(url) as response:
        assert response.status == 200
        assert await response.read() == content

    await profanity.do("/close", r"RECV: <presence[^>]*type=\"unavailable\"[^>]*from=\"" + re.escape(room) + "/paula")
    assert_no_problems(profanity)


@pytest.mark.parametrize("profanity", ["piet@x1.test"], indirect=True)
async def test_profanity_omemo_with_a_slixmpp_omemo_contact(profanity: Profanity) -> None:
    contact = OmemoClient("pia@x1.test")
    try:
        await contact.login(ONE_ADDRESS)
        await asyncio.wait_for(contact.omemo_ready.wait(), 90)
        contact_jid = contact.boundjid.bare
        # Mutual presence subscription, as users do before OMEMO: profanity's device list is published
        # with the default (presence) access model, so only subscribers may read it.
        await profanity.do(f"/sub request {contact_jid}", r"RECV: <presence[^>]*type=\"subscribed\"")
        await profanity.wait_log(r"RECV: <presence[^>]*type=\"subscribe\"")
        await profanity.do(f"/sub allow {contact_jid}", r"SENT: <presence[^>]*type=\"subscribed\"")
        await until(lambda: contact.client_roster[profanity.jid]["subscription"] == "both", timeout=TIMEOUT)

        # profanity makes its identity and publishes its device list and bundle through PEP.
        await profanity.do("/omemo gen", r"RECV: <iq [^>]*type=\"result\"[^>]*><pubsub [^>]*><publish "
                           r"node=\"eu.siacs.conversations.axolotl.devicelist\"", timeout=60)
        await profanity.do("/omemo trustmode blind", r"Input received")
        await contact.device_list_from(profanity.jid, "eu.siacs.conversations.axolotl.devicelist")

        # profanity encrypts to the contact's device (read from the contact's PEP nodes) ...
        # (profanity refuses to send until its session with the device is built from the bundle.)
        await profanity.do(f"/omemo start {contact_jid}", r"\[OMEMO\] (create session with|session with) "
                           + re.escape(contact_jid) + r" device \d+")
        await profanity.do("a secret from profanity", r"SENT: <message[^>]*><encrypted xmlns=\"" + OLDMEMO)
        received = await contact.encrypted_message(OLDMEMO)
        assert "a secret from profanity" not in str(received)
        decrypted, sender = await contact.plugin["xep_0384"].decrypt_message(received)
        assert decrypted["body"] == "a secret from profanity"
        assert sender.bare_jid == profanity.jid
        # ... and decrypts the contact's answer.
        answer = contact.make_message(mto=slixmpp.JID(profanity.jid), mtype="chat", mbody="the encrypted answer")
        encrypted, errors = await contact.plugin["xep_0384"].encrypt_message(answer, slixmpp.JID(profanity.jid))
        assert encrypted is not None and not errors, errors
        encrypted.send()
        row = await profanity.wait_message(from_jid=contact_jid, message="the encrypted answer")
        assert row["encryption"] == "omemo"
        sent = await profanity.wait_message(from_jid=profanity.jid, message="a secret from profanity")
        assert sent["encryption"] == "omemo"
        assert_no_problems(profanity)
    finally:
        await contact.close()
