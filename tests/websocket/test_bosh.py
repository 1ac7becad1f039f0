"""XMPP over BOSH (XEP-0124/XEP-0206) at /http-bind: the same sessions as c2s and WebSocket.

A BOSH client written here from the XEPs (session creation, SASL PLAIN, the xmpp:restart, bind, long
polls) chats with a WebSocket user; a retransmitted request gets the same answer (XEP-0124 §14.3); bad
input gets the XEP-0124 §17 terminate conditions: a body that is not one (bad-request), an unknown sid or
a rid outside the window (item-not-found, and the session is over), an oversized body
(policy-violation), a domain not hosted (host-unknown); a held request with nothing to say comes back
empty after `wait`; an idle session ends after `inactivity`. (converse.js in BOSH mode, a real client,
is in tests/webchat/test_converse.py.)"""

from __future__ import annotations

import asyncio
import base64
import xml.etree.ElementTree as ET

import aiohttp

from tests.harness.waiting import async_wait_for
from tests.websocket.conftest import BOSH_INACTIVITY, DOMAIN, PASSWORD, WsServer
from tests.websocket.wsclient import q

BOSH = "http://jabber.org/protocol/httpbind"
XBOSH = "urn:xmpp:xbosh"
CLIENT = "jabber:client"
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
STREAMS = "http://etherx.jabber.org/streams"
WENDY = f"wendy@{DOMAIN}"
YVES = f"yves@{DOMAIN}"
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

    async def create(self, wait: int = 5) -> ET.Element:
        self.rid += 1
        answer = await self.post(f"<body xmlns='{BOSH}' xmlns:xmpp='{XBOSH}' rid='{self.rid}' to='{DOMAIN}' "
                                 f"xml:lang='en' wait='{wait}' hold='1' ver='1.6' xmpp:version='1.0'/>")
        self.sid = answer.get("sid") or ""
        return answer

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

    async def login(self, account: str) -> str:
        created = await self.create()
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
