"""XMPP over BOSH (XEP-0124/XEP-0206) at /http-bind: the same sessions as c2s and WebSocket.

A BOSH client written here from the XEPs (session creation, SASL PLAIN, the xmpp:restart, bind, long
polls) chats with a WebSocket user; a retransmitted request gets the same answer (XEP-0124 §14.3); bad
input gets the XEP-0124 §17 terminate conditions: a body that is not one (bad-request), an unknown sid or
a rid outside the window (item-not-found, and the session is over), an oversized body
(policy-violation), a domain not hosted (host-unknown); a held request with nothing to say comes back
empty after `wait`; an idle session ends after `inactivity`. A pause (§10) answers the held request and
keeps the session past `inactivity`; with acknowledgements (§9) a held response carries `ack`, a lost
response is reported and can be asked for again; a request sent again while its rid is still held gets
that rid's response (§14.3); a request naming a second stream is refused (§19). (converse.js in BOSH
mode, a real client, is in tests/webchat/test_converse.py.)"""

from __future__ import annotations

import asyncio
import base64
import xml.etree.ElementTree as ET

import aiohttp

from tests.harness.waiting import async_wait_for
from tests.websocket.conftest import BOSH_INACTIVITY, BOSH_MAX_PAUSE, DOMAIN, PASSWORD, WsServer
from tests.websocket.wsclient import q

BOSH = "http://jabber.org/protocol/httpbind"
XBOSH = "urn:xmpp:xbosh"
CLIENT = "jabber:client"
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
STREAMS = "http://etherx.jabber.org/streams"
WENDY = f"wendy@{DOMAIN}"
YVES = f"yves@{DOMAIN}"
UMA = f"uma@{DOMAIN}"
WALT = f"walt@{DOMAIN}"
XENA = f"xena@{DOMAIN}"
ZARA = f"zara@{DOMAIN}"
TIMEOUT = 20.0


class Bosh:
    def __init__(self, server: WsServer, http: aiohttp.ClientSession) -> None:
        self.url = server.base + "/http-bind"
        self.http = http
        self.rid = 4000
        self.sid = ""

    async def post(self, text: str | bytes, timeout: float = TIMEOUT) -> ET.Element:
        data = text.encode() if isinstance(text, str) else text
        async with self.http.post(self.url, data=data, headers={"Content-Type": "text/xml; charset=utf-8"},
                                  timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            assert response.status == 200, await response.text()
            return ET.fromstring(await response.read())

    def body(self, inner: str = "", **attrs: str) -> str:
        self.rid += 1
        extra = "".join(f" {k.replace('__', ':')}='{v}'" for k, v in attrs.items())
        return (f"<body xmlns='{BOSH}' xmlns:xmpp='{XBOSH}' rid='{self.rid}' sid='{self.sid}'{extra}>"
                f"{inner}</body>")

    async def create(self, wait: int = 5, ack: bool = False) -> ET.Element:
        self.rid += 1
        acks = " ack='1'" if ack else ""
        answer = await self.post(f"<body xmlns='{BOSH}' xmlns:xmpp='{XBOSH}' rid='{self.rid}' to='{DOMAIN}' "
                                 f"xml:lang='en' wait='{wait}' hold='1' ver='1.6' xmpp:version='1.0'{acks}/>")
        self.sid = answer.get("sid") or ""
        self.created = answer
        return answer

    def messages(self, answer: ET.Element) -> list[str]:
        return [str(m.findtext(q(CLIENT, "body"))) for m in answer.iter(q(CLIENT, "message"))]

    async def until(self, predicate: object, inner: str = "") -> ET.Element:
        """Send `inner` (then empty polls) until a response has a child for which `predicate` holds."""
        deadline = asyncio.get_running_loop().time() + TIMEOUT
        while asyncio.get_running_loop().time() < deadline:
            answer = await self.post(self.body(inner))
            inner = ""
            assert answer.get("type") != "terminate", ET.tostring(answer)
            for child in answer:
                if predicate(child):  # type: ignore[operator]
                    return child
        raise AssertionError("no such element within the bound")

    async def login(self, account: str, ack: bool = False) -> str:
        created = await self.create(ack=ack)
        assert created.get("requests") == "2" and created.get("hold") == "1"
        assert created.get(q(XBOSH, "restartlogic")) == "true"
        mechanisms = [m.text for m in created.iter(q(SASL, "mechanism"))]
        assert "PLAIN" in mechanisms, ET.tostring(created)
        token = base64.b64encode(f"\0{account}\0{PASSWORD}".encode()).decode()
        await self.until(lambda e: e.tag == q(SASL, "success"),
                         f"<auth xmlns='{SASL}' mechanism='PLAIN'>{token}</auth>")
        restarted = await self.post(self.body(xmpp__restart="true"))
        features = restarted.find(q(STREAMS, "features"))
        assert features is not None and features.find("{urn:ietf:params:xml:ns:xmpp-bind}bind") is not None
        bound = await self.until(lambda e: e.tag == q(CLIENT, "iq") and e.get("id") == "b1",
                                 "<iq xmlns='jabber:client' type='set' id='b1'><bind "
                                 "xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>bosh</resource></bind></iq>")
        return str(bound.findtext(".//{urn:ietf:params:xml:ns:xmpp-bind}jid"))


async def test_bosh_login_chat_retransmission_and_terminate(ws_server: WsServer, closing: list[object]) -> None:
    http = ws_server.web()
    closing.append(http)
    # XEP-0156: host-meta names the endpoint (rel urn:xmpp:alt-connections:xbosh), and the test uses it.
    async with http.get(ws_server.base + "/.well-known/host-meta.json") as response:
        links = {link["rel"]: link.get("href") for link in (await response.json(content_type=None))["links"]}
    assert links["urn:xmpp:alt-connections:xbosh"].endswith(f":{ws_server.base.rsplit(':', 1)[1]}/http-bind")
    wendy = Bosh(ws_server, http)
    jid = await wendy.login(WENDY)
    assert jid == f"{WENDY}/bosh"
    yves = await ws_server.ws().connect()
    closing.append(yves)
    await yves.login(YVES, PASSWORD, resource="ws")
    # A long poll is held until yves's message arrives.
    poll = asyncio.ensure_future(wendy.post(wendy.body("<presence xmlns='jabber:client'/>")))
    await yves.message(jid, "hello over websocket")
    answer = await asyncio.wait_for(poll, TIMEOUT)
    texts = [m.findtext(q(CLIENT, "body")) for m in answer.iter(q(CLIENT, "message"))]
    while "hello over websocket" not in texts:
        answer = await wendy.post(wendy.body())
        texts = [m.findtext(q(CLIENT, "body")) for m in answer.iter(q(CLIENT, "message"))]
    # The same request again (a broken connection, XEP-0124 §14.3) gets the same answer.
    again = await wendy.post(f"<body xmlns='{BOSH}' rid='{wendy.rid}' sid='{wendy.sid}'/>")
    assert ET.tostring(again) == ET.tostring(answer)
    # wendy writes back, over BOSH
    await wendy.post(wendy.body(f"<message xmlns='jabber:client' to='{YVES}/ws' type='chat'>"
                                "<body>hello over bosh</body></message>"))
    reply = await yves.next_body()
    assert reply.findtext(q(CLIENT, "body")) == "hello over bosh" and reply.get("from") == jid
    # A held request with nothing to say comes back empty after wait (5 s here).
    empty = await wendy.post(wendy.body())
    assert empty.get("type") is None and empty.find(q(CLIENT, "message")) is None
    # The client ends the session; the sid is then unknown.
    ended = await wendy.post(wendy.body(type="terminate"))
    assert ended.get("type") == "terminate" and ended.get("condition") is None
    gone = await wendy.post(wendy.body())
    assert gone.get("type") == "terminate" and gone.get("condition") == "item-not-found"


async def test_bosh_bad_input(ws_server: WsServer, closing: list[object]) -> None:
    http = ws_server.web()
    closing.append(http)
    client = Bosh(ws_server, http)
    for junk in ("this is not xml", "<body xmlns='urn:wrong' rid='1' to='ws.test'/>", "<body xmlns='" + BOSH + "'/>",
                 f"<body xmlns='{BOSH}' rid='x' to='{DOMAIN}'/>", f"<body xmlns='{BOSH}' rid='1' to='{DOMAIN}'>"):
        answer = await client.post(junk)
        assert (answer.get("type"), answer.get("condition")) == ("terminate", "bad-request"), junk
    unknown = await client.post(f"<body xmlns='{BOSH}' rid='7' sid='no-such-session'/>")
    assert unknown.get("condition") == "item-not-found"
    not_hosted = await client.post(f"<body xmlns='{BOSH}' rid='7' to='elsewhere.example' wait='5' hold='1'/>")
    assert not_hosted.get("condition") == "host-unknown"
    # One stream per session (§19): none is offered, and a request naming one ends the session.
    created = await client.create()
    assert created.get("stream") is None
    other = await client.post(client.body(stream="second"))
    assert (other.get("type"), other.get("condition")) == ("terminate", "item-not-found")
    assert (await client.post(client.body())).get("condition") == "item-not-found"
    # A rid outside the window ends the session (XEP-0124 §14.1).
    await client.create()
    client.rid += 5
    jump = await client.post(f"<body xmlns='{BOSH}' rid='{client.rid}' sid='{client.sid}'/>")
    assert jump.get("condition") == "item-not-found"
    after = await client.post(client.body())
    assert after.get("condition") == "item-not-found"
    # An oversized body: policy-violation, and that session is over too.
    await client.create()
    huge = client.body("<message xmlns='jabber:client'><body>" + "x" * 300_000 + "</body></message>")
    too_big = await client.post(huge)
    assert too_big.get("condition") == "policy-violation"
    assert (await client.post(client.body())).get("condition") == "item-not-found"
    # The server still serves a normal BOSH login.
    fine = Bosh(ws_server, http)
    assert (await fine.login(YVES)).startswith(YVES)
    await fine.post(fine.body(type="terminate"))


async def test_an_idle_bosh_session_ends(ws_server: WsServer, closing: list[object]) -> None:
    http = ws_server.web()
    closing.append(http)
    client = Bosh(ws_server, http)
    offset = len(ws_server.server.log_text())
    await client.create()
    # Nothing is sent: after [xmpp.bosh] inactivity the server ends it (and says so in its log).
    await async_wait_for(lambda: f"BOSH session {client.sid} inactive" in ws_server.server.log_text(offset),
                         BOSH_INACTIVITY + TIMEOUT, "the idle session to end")
    answer = await client.post(client.body())
    assert answer.get("condition") == "item-not-found"


async def test_a_bosh_pause_outlives_inactivity(ws_server: WsServer, closing: list[object]) -> None:
    http = ws_server.web()
    closing.append(http)
    uma = Bosh(ws_server, http)
    jid = await uma.login(UMA)
    assert uma.created.get("maxpause") == str(BOSH_MAX_PAUSE)  # §10: pausing is offered
    walt = await ws_server.ws().connect()
    closing.append(walt)
    await walt.login(WALT, PASSWORD, resource="ws")
    # A held request, then a pause (rid order puts the pause second): both come back, the pause's
    # without payload (§10).
    held = asyncio.ensure_future(uma.post(uma.body()))
    paused = await uma.post(uma.body(pause="20"))
    assert paused.get("type") is None and len(paused) == 0, ET.tostring(paused)
    assert (await asyncio.wait_for(held, TIMEOUT)).get("type") is None
    # A message arrives during the pause; no request comes for longer than inactivity (5 s), which
    # without the pause ends the session (test_an_idle_bosh_session_ends).
    offset = len(ws_server.server.log_text())
    await walt.message(jid, "while you were away")
    await asyncio.sleep(BOSH_INACTIVITY + 2)
    assert f"BOSH session {uma.sid} inactive" not in ws_server.server.log_text(offset)
    # The session is there, with the message kept for it.
    await uma.until(lambda e: e.tag == q(CLIENT, "message") and e.findtext(q(CLIENT, "body")) == "while you were away")
    # The next request ended the pause: the session ends after inactivity again, not after 20 s.
    await async_wait_for(lambda: f"BOSH session {uma.sid} inactive" in ws_server.server.log_text(offset),
                         BOSH_INACTIVITY + TIMEOUT, "the idle session to end")
    assert f"BOSH session {uma.sid} inactive for {BOSH_INACTIVITY} s" in ws_server.server.log_text(offset)


async def test_bosh_acknowledgements(ws_server: WsServer, closing: list[object]) -> None:
    http = ws_server.web()
    closing.append(http)
    xena = Bosh(ws_server, http)
    first_rid = xena.rid + 1
    await xena.login(XENA, ack=True)
    assert xena.created.get("ack") == str(first_rid)  # §9.1: the server will acknowledge
    # A held request is answered when a later one comes in, acknowledging that one (§9.1).
    first = asyncio.ensure_future(xena.post(xena.body()))
    one = xena.rid
    second = asyncio.ensure_future(xena.post(xena.body()))
    two = xena.rid
    answer_one = await asyncio.wait_for(first, TIMEOUT)
    assert answer_one.get("ack") == str(two), ET.tostring(answer_one)
    third = asyncio.ensure_future(xena.post(xena.body(ack=str(one))))
    three = xena.rid
    answer_two = await asyncio.wait_for(second, TIMEOUT)
    assert answer_two.get("ack") == str(three)
    # The client says it has had responses only up to `one` when sending `four`: with two requests
    # outstanding at most, the response to `two` was lost. The next response reports it (§9.2) ...
    fourth = asyncio.ensure_future(xena.post(xena.body(ack=str(one))))
    answer_three = await asyncio.wait_for(third, TIMEOUT)
    assert answer_three.get("report") == str(two), ET.tostring(answer_three)
    assert int(answer_three.get("time") or "-1") >= 0
    # ... and, unacknowledged, it is still there to be asked for again, three requests later.
    again = await xena.post(f"<body xmlns='{BOSH}' rid='{two}' sid='{xena.sid}'/>")
    assert ET.tostring(again) == ET.tostring(answer_two)
    ended = await xena.post(xena.body(type="terminate"))
    assert ended.get("type") == "terminate" and ended.get("condition") is None
    await asyncio.wait_for(fourth, TIMEOUT)


async def test_a_request_resent_while_held_gets_its_response(ws_server: WsServer, closing: list[object]) -> None:
    http = ws_server.web()
    closing.append(http)
    walt = Bosh(ws_server, http)
    jid = await walt.login(WALT)
    zara = await ws_server.ws().connect()
    closing.append(zara)
    await zara.login(ZARA, PASSWORD, resource="ws")
    # The client gives up on a held request's HTTP connection and sends the same request again
    # (XEP-0124 §14.3): both are answered with that rid's response, and the session goes on.
    request = walt.body()
    original = asyncio.ensure_future(walt.post(request))
    resent = asyncio.ensure_future(walt.post(request))
    await zara.message(jid, "one answer for both")
    first, second = await asyncio.wait_for(asyncio.gather(original, resent), TIMEOUT)
    assert first.get("type") is None and second.get("type") is None, (ET.tostring(first), ET.tostring(second))
    assert ET.tostring(first) == ET.tostring(second)
    texts = walt.messages(first)
    while "one answer for both" not in texts:  # the message may come just after that response
        texts = walt.messages(await walt.post(walt.body()))
    await walt.post(walt.body(f"<message xmlns='jabber:client' to='{ZARA}/ws' type='chat'><body>still here</body>"
                              "</message>"))
    assert (await zara.next_body()).findtext(q(CLIENT, "body")) == "still here"
    await walt.post(walt.body(type="terminate"))
