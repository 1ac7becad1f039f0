"""XMPP over WebSocket (RFC 7395): the same client sessions and features as TCP.

A WebSocket client (aiohttp speaking RFC 7395) logs in with SCRAM and PLAIN, exchanges messages with a
slixmpp user on TCP, resumes its session with XEP-0198 after its WebSocket drops, and gets carbons and
its MAM archive; host-meta (XEP-0156) lists the endpoint.
"""

from __future__ import annotations

import asyncio
import json
import xml.etree.ElementTree as ET

from tests.websocket.conftest import C2S_PORT, DOMAIN, HTTPS_PORT, PASSWORD, WsServer
from tests.websocket.wsclient import BIND, CLIENT, FRAMING, SASL, SM, STREAMS, q
from tests.xmpp.conftest import Client

CARBONS = "urn:xmpp:carbons:2"
MAM = "urn:xmpp:mam:2"
FORWARD = "urn:xmpp:forward:0"


async def slixmpp_user(server: WsServer, jid: str, closing: list[object]) -> Client:
    client = Client(jid, PASSWORD)
    closing.append(client)
    return await client.login(server.address, C2S_PORT)


async def test_open_features_and_framing(ws_server: WsServer, closing: list[object]) -> None:
    client = await ws_server.ws().connect()
    closing.append(client)
    assert client.ws is not None and client.ws.protocol == "xmpp"
    await client.send(f"<open xmlns='{FRAMING}' to='{DOMAIN}' version='1.0'/>")
    opened = await client.recv()
    assert opened.tag == q(FRAMING, "open")
    assert opened.get("from") == DOMAIN and opened.get("version") == "1.0" and opened.get("id")
    features = await client.recv()
    assert features.tag == q(STREAMS, "features"), ET.tostring(features)
    mechanisms = [m.text for m in features.iter(q(SASL, "mechanism"))]
    # No channel binding over WebSocket: no -PLUS (xmpp/websocket.py).
    assert "SCRAM-SHA-256" in mechanisms and "PLAIN" in mechanisms
    assert not [m for m in mechanisms if m and m.endswith("-PLUS")]
    await client.send(f"<close xmlns='{FRAMING}'/>")
    closed = await client.recv()
    assert closed.tag == q(FRAMING, "close")
    message = await client.recv_raw()
    assert message.type.name in ("CLOSE", "CLOSED", "CLOSING") and client.ws.close_code == 1000


async def test_login_and_chat_with_a_tcp_user(ws_server: WsServer, closing: list[object]) -> None:
    alice = await ws_server.ws().connect()
    closing.append(alice)
    await alice.login(f"alice@{DOMAIN}", PASSWORD, resource="web")
    assert alice.jid == f"alice@{DOMAIN}/web"
    bob = await slixmpp_user(ws_server, f"bob@{DOMAIN}", closing)
    await alice.message(f"bob@{DOMAIN}", "hello over websocket")
    got = await bob.next_message()
    assert got["body"] == "hello over websocket" and str(got["from"]) == alice.jid
    bob.send_message(mto=alice.jid, mbody="hello over tcp", mtype="chat")
    reply = await alice.next_body()
    assert reply.findtext(q(CLIENT, "body")) == "hello over tcp"
    assert reply.get("from", "").startswith(f"bob@{DOMAIN}/")
    # The roster and disco work as on TCP (same stanza router).
    roster = await alice.iq("<query xmlns='jabber:iq:roster'/>")
    assert roster.get("type") == "result"


async def test_plain_and_scram_sha1(ws_server: WsServer, closing: list[object]) -> None:
    for scram in (None, "sha1"):
        client = await ws_server.ws().connect()
        closing.append(client)
        await client.login(f"carol@{DOMAIN}", PASSWORD, scram=scram)
        assert client.jid.startswith(f"carol@{DOMAIN}/")
    wrong = await ws_server.ws().connect()
    closing.append(wrong)
    await wrong.open()
    failure = await wrong.auth_plain(f"carol@{DOMAIN}", "wrong password")
    assert failure.tag == q(SASL, "failure") and failure.find(q(SASL, "not-authorized")) is not None


async def test_stream_management_resumption(ws_server: WsServer, closing: list[object]) -> None:
    dave = await ws_server.ws().connect()
    closing.append(dave)
    await dave.login(f"dave@{DOMAIN}", PASSWORD, resource="tab")
    enabled = await dave.enable_sm()
    assert enabled.get("resume") == "true" and dave.sm_id
    erin = await slixmpp_user(ws_server, f"erin@{DOMAIN}", closing)
    erin.send_message(mto=dave.jid, mbody="before the drop", mtype="chat")
    first = await dave.next_body()
    assert first.findtext(q(CLIENT, "body")) == "before the drop"
    handled = dave.handled
    # The WebSocket drops without <close/>: the session waits for resumption.
    assert dave.ws is not None
    transport = dave.ws._response.connection.transport if dave.ws._response.connection else None  # type: ignore[union-attr]
    if transport is not None:
        transport.abort()
    await dave.close()
    await asyncio.sleep(0.2)
    erin.send_message(mto=dave.jid, mbody="while away", mtype="chat")
    await asyncio.sleep(0.2)
    again = await ws_server.ws().connect()
    closing.append(again)
    await again.login(f"dave@{DOMAIN}", PASSWORD, bind=False)
    await again.send(f"<resume xmlns='{SM}' previd='{dave.sm_id}' h='{handled}'/>")
    resumed = await again.recv_until(lambda e: e.tag in (q(SM, "resumed"), q(SM, "failed")))
    assert resumed.tag == q(SM, "resumed"), ET.tostring(resumed)
    late = await again.next_body()
    assert late.findtext(q(CLIENT, "body")) == "while away"
    assert late.get("to") == f"dave@{DOMAIN}/tab"


async def test_carbons_and_archive(ws_server: WsServer, closing: list[object]) -> None:
    frank_ws = await ws_server.ws().connect()
    closing.append(frank_ws)
    await frank_ws.login(f"frank@{DOMAIN}", PASSWORD, resource="web")
    enabled = await frank_ws.iq(f"<enable xmlns='{CARBONS}'/>", "set")
    assert enabled.get("type") == "result"
    frank_tcp = await slixmpp_user(ws_server, f"frank@{DOMAIN}/desk", closing)
    grace = await slixmpp_user(ws_server, f"grace@{DOMAIN}", closing)
    frank_tcp.send_message(mto=f"grace@{DOMAIN}", mbody="sent from the desk", mtype="chat")
    assert (await grace.next_message())["body"] == "sent from the desk"
    carbon = await frank_ws.recv_until(lambda e: e.find(q(CARBONS, "sent")) is not None)
    inner = carbon.find(f"{q(CARBONS, 'sent')}/{q(FORWARD, 'forwarded')}/{q(CLIENT, 'message')}")
    assert inner is not None and inner.findtext(q(CLIENT, "body")) == "sent from the desk"
    # MAM (XEP-0313) over the WebSocket finds it in the archive.
    await frank_ws.send(f"<iq xmlns='{CLIENT}' type='set' id='mam1'><query xmlns='{MAM}' queryid='q1'/></iq>")
    bodies = []
    while True:
        element = await frank_ws.recv()
        if element.tag == q(CLIENT, "iq") and element.get("id") == "mam1":
            assert element.get("type") == "result"
            break
        result = element.find(q(MAM, "result"))
        if result is not None:
            inner = result.find(f"{q(FORWARD, 'forwarded')}/{q(CLIENT, 'message')}")
            assert inner is not None
            bodies.append(inner.findtext(q(CLIENT, "body")))
    assert "sent from the desk" in bodies


async def test_host_meta_lists_the_websocket(ws_server: WsServer, closing: list[object]) -> None:
    web = ws_server.web()
    closing.append(web)
    expected = f"wss://{ws_server.address}:{HTTPS_PORT}/xmpp-websocket"
    async with web.get(ws_server.base + "/.well-known/host-meta") as response:
        assert response.status == 200
        xrd = ET.fromstring(await response.text())
    links = {link.get("rel"): link.get("href") for link in xrd.iter("{http://docs.oasis-open.org/ns/xri/xrd-1.0}Link")}
    assert links["urn:xmpp:alt-connections:websocket"] == expected
    async with web.get(ws_server.base + "/.well-known/host-meta.json") as response:
        assert response.status == 200
        data = json.loads(await response.text())
    assert {"rel": "urn:xmpp:alt-connections:websocket", "href": expected} in data["links"]
    # The link works: the endpoint it names speaks XMPP.
    client = await ws_server.ws().connect()
    closing.append(client)
    await client.login(f"heidi@{DOMAIN}", PASSWORD)
    assert client.jid.startswith(f"heidi@{DOMAIN}/")
    _ = BIND


async def test_csi_and_pep_over_websocket(ws_server: WsServer, closing: list[object]) -> None:
    """XEP-0352 holds presence for an inactive WebSocket client; XEP-0163 publish and fetch work."""
    ivan = await ws_server.ws().connect()
    closing.append(ivan)
    await ivan.login(f"ivan@{DOMAIN}", PASSWORD, resource="tab")
    assert ivan.features is not None and ivan.features.find("{urn:xmpp:csi:0}csi") is not None
    await ivan.enable_sm()
    await ivan.send("<inactive xmlns='urn:xmpp:csi:0'/>")
    judy = await slixmpp_user(ws_server, f"judy@{DOMAIN}/desk", closing)
    judy.send_presence(pto=ivan.jid, pstatus="directed while inactive")
    # judy's ping answered means her presence was routed (a stream is handled in order); ivan's <r/>
    # is answered at once: had the presence not been held, it would have come before that <a/>.
    await judy.plugin["xep_0199"].ping(jid=DOMAIN, timeout=10)
    await ivan.send(f"<r xmlns='{SM}'/>")
    first = await ivan.recv_until(lambda e: e.tag == q(SM, "a") or (
        e.tag == q(CLIENT, "presence") and e.get("from", "").startswith(f"judy@{DOMAIN}")))
    assert first.tag == q(SM, "a"), ET.tostring(first)
    await ivan.send("<active xmlns='urn:xmpp:csi:0'/>")
    held = await ivan.recv_until(lambda e: e.tag == q(CLIENT, "presence") and e.get("from", "").startswith(f"judy@{DOMAIN}"))
    assert held.findtext(q(CLIENT, "status")) == "directed while inactive"
    # PEP: publish an item on the account's own node and read it back.
    pubsub = "http://jabber.org/protocol/pubsub"
    published = await ivan.iq(f"<pubsub xmlns='{pubsub}'><publish node='urn:xmpp:test:ws'><item id='one'>"
                              "<entry xmlns='urn:xmpp:test:ws'>over websocket</entry></item></publish></pubsub>", "set")
    assert published.get("type") == "result", ET.tostring(published)
    items = await ivan.iq(f"<pubsub xmlns='{pubsub}'><items node='urn:xmpp:test:ws'/></pubsub>", "get",
                          to=f"ivan@{DOMAIN}")
    assert items.get("type") == "result"
    entry = items.find(f".//{{{pubsub}}}item/{{urn:xmpp:test:ws}}entry")
    assert entry is not None and entry.text == "over websocket"


async def test_in_band_registration_over_websocket(ws_server: WsServer, closing: list[object]) -> None:
    # XEP-0077 before authentication works on a WebSocket stream as on TCP (the same pre-auth IQs).
    import secrets

    client = await ws_server.ws().connect()
    closing.append(client)
    features = await client.open()
    assert features.find("{http://jabber.org/features/iq-register}register") is not None
    form = await client.iq("<query xmlns='jabber:iq:register'/>")
    assert form.get("type") == "result", ET.tostring(form)
    assert form.find("{jabber:iq:register}query/{jabber:iq:register}password") is not None
    user, password = f"newcomer{secrets.token_hex(3)}", "a long enough password 42"
    done = await client.iq(f"<query xmlns='jabber:iq:register'><username>{user}</username>"
                           f"<password>{password}</password></query>", iq_type="set")
    assert done.get("type") == "result", ET.tostring(done)
    again = await ws_server.ws().connect()
    closing.append(again)
    await again.login(f"{user}@{DOMAIN}", password)
    assert again.jid.startswith(f"{user}@{DOMAIN}/")
