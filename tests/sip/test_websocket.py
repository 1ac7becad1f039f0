"""SIP over WebSocket (RFC 7118), WS and WSS, against SIPp over UDP on the other side.

The WebSocket side is a small SIP client on aiohttp's WebSocket client: it registers with outbound
(a ``.invalid`` Contact, as browsers do), sends a MESSAGE to a SIPp UA, and receives a call from
SIPp (INVITE, ACK, BYE all arriving down its WebSocket, Record-Route naming ``transport=ws``).
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from peerage.sip.digest import client_authorization
from peerage.sip.message import SipMessage, make_response, parse_datagram, parse_name_addr
from tests.harness import PeerageServer, require_binary
from tests.sip.sipp import failure_report, finish, run_sipp, start_sipp

SERVER_IP = "127.0.3.160"
DOMAIN = "w.test"
PASSWORD = "websocket password"
WS_URL = f"ws://{SERVER_IP}:8080/"
WSS_URL = f"wss://{SERVER_IP}:8443/"


@pytest.fixture(scope="module")
def w_test(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PeerageServer]:
    require_binary("sipp")
    server = PeerageServer(tmp_path_factory.mktemp("w_test"), [DOMAIN], SERVER_IP, services=("sip",),
                           config={"dns": {"nameservers": ["127.0.3.250"], "port": 5353, "timeout": 0.5},
                                   "sip": {"digest_algorithms": ["MD5"],
                                           "ws_listen": [f"{SERVER_IP}:8080"],
                                           "wss_listen": [f"{SERVER_IP}:8443"]}})
    for user in ("alice", "bob", "carol"):
        server.add_user(f"{user}@{DOMAIN}", PASSWORD)
    server.start()
    yield server
    server.kill()


class WsUA:
    """A SIP user agent on one WebSocket (one SIP message per WebSocket message)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, user: str, transport: str = "WS") -> None:
        self.ws = ws
        self.user = user
        self.transport = transport
        self.host = f"{os.urandom(5).hex()}.invalid"  # RFC 7118 §5.2
        self.instance = f"urn:uuid:{os.urandom(4).hex()}-1111-4111-8111-{os.urandom(6).hex()}"
        self.cseq = 0
        self.call_id = f"{os.urandom(6).hex()}@{self.host}"

    def contact(self) -> str:
        return f"<sip:{self.user}@{self.host};transport=ws;ob>"

    def build(self, method: str, uri: str, to: str, extra: list[tuple[str, str]] | None = None,
              body: bytes = b"", call_id: str | None = None) -> SipMessage:
        self.cseq += 1
        headers = [
            ("Via", f"SIP/2.0/{self.transport} {self.host};branch=z9hG4bK-w{os.urandom(5).hex()}"),
            ("Max-Forwards", "70"),
            ("From", f"<sip:{self.user}@{DOMAIN}>;tag=w{os.urandom(3).hex()}"),
            ("To", to),
            ("Call-ID", call_id or self.call_id),
            ("CSeq", f"{self.cseq} {method}"),
            *(extra or []),
        ]
        return SipMessage.request(method, uri, headers, body)

    async def send(self, message: SipMessage) -> None:
        await self.ws.send_str(message.serialize().decode())

    async def receive(self, timeout: float = 5.0) -> SipMessage:
        frame = await self.ws.receive(timeout=timeout)
        assert frame.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY), frame
        data = frame.data.encode() if isinstance(frame.data, str) else frame.data
        return parse_datagram(data)

    async def final(self, timeout: float = 5.0) -> SipMessage:
        while True:
            message = await self.receive(timeout)
            if message.method is None and message.status >= 200:
                return message

    async def register(self) -> SipMessage:
        extra = [("Supported", "path, outbound, gruu"),
                 ("Contact", f'{self.contact()};reg-id=1;+sip.instance="<{self.instance}>"'),
                 ("Expires", "600")]
        aor = f"<sip:{self.user}@{DOMAIN}>"
        await self.send(self.build("REGISTER", f"sip:{DOMAIN}", aor, extra, call_id=f"r{self.call_id}"))
        challenge = await self.final()
        assert challenge.status == 401, challenge
        header = challenge.get_all_raw("www-authenticate")[0]
        credentials = client_authorization(header, "REGISTER", f"sip:{DOMAIN}", self.user, PASSWORD)
        await self.send(self.build("REGISTER", f"sip:{DOMAIN}", aor,
                                   [*extra, ("Authorization", credentials)], call_id=f"r{self.call_id}"))
        return await self.final()


async def test_handshake_needs_the_sip_subprotocol(w_test: PeerageServer) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await session.ws_connect(WS_URL, protocols=("xmpp",))
        assert info.value.status == 400
        async with session.ws_connect(WS_URL, protocols=("sip",)) as ws:
            assert ws.protocol == "sip"


async def test_register_message_and_call_over_websocket(w_test: PeerageServer, tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as session, session.ws_connect(WS_URL, protocols=("sip",)) as ws:
        alice = WsUA(ws, "alice")
        registered = await alice.register()
        assert registered.status == 200, registered
        assert "outbound" in [v.strip() for v in registered.get_all("require")]
        contact = parse_name_addr(registered.get("contact") or "")
        assert contact.uri.endswith(".invalid;transport=ws;ob")
        # received on the Via: the transport stamps WebSocket requests like any others
        assert registered.top_via().params.get("received")

        # alice (WebSocket) -> bob (SIPp over UDP): MESSAGE
        register = await loop.run_in_executor(None, lambda: run_sipp(
            tmp_path, "register.xml", local_ip="127.0.3.161", port=5090, server=f"{SERVER_IP}:5060",
            service="bob", keys={"domain": DOMAIN}, extra=["-au", "bob", "-ap", PASSWORD]))
        assert register.returncode == 0, failure_report(tmp_path, register)
        uas = start_sipp(tmp_path, "uas_message.xml", local_ip="127.0.3.161", port=5090, server=None)
        message = alice.build("MESSAGE", f"sip:bob@{DOMAIN}", f"<sip:bob@{DOMAIN}>",
                              [("Content-Type", "text/plain")], b"hello over WebSocket",
                              call_id=f"m{alice.call_id}")
        await alice.send(message)
        answer = await alice.final()
        assert answer.status == 200, answer
        assert (await loop.run_in_executor(None, finish, uas))[0] == 0

        # SIPp over UDP -> alice (WebSocket): INVITE, ACK and BYE all come down the WebSocket
        uac = loop.run_in_executor(None, lambda: run_sipp(
            tmp_path, "uac_call.xml", local_ip="127.0.3.162", port=5091, server=f"{SERVER_IP}:5060",
            service="alice", keys={"domain": DOMAIN, "caller": "carol", "caller_domain": "visitor.test"}))
        invite = await alice.receive(10)
        assert invite.method == "INVITE", invite
        assert invite.top_via().transport == "WS"
        routes = invite.get_all("record-route")
        assert any("transport=ws" in route for route in routes), routes
        ringing = make_response(invite, 180, to_tag="wsua")
        await alice.send(ringing)
        ok = make_response(invite, 200, to_tag="wsua")
        for route in routes:
            ok.add("Record-Route", route)
        ok.add("Contact", alice.contact())
        ok.add("Content-Type", "application/sdp")
        ok.body = b"v=0\r\no=- 1 1 IN IP4 127.0.3.163\r\ns=-\r\nc=IN IP4 127.0.3.163\r\nt=0 0\r\n" \
                  b"m=audio 6000 RTP/AVP 0\r\n"
        await alice.send(ok)
        ack = await alice.receive(10)
        assert ack.method == "ACK", ack
        bye = await alice.receive(10)
        assert bye.method == "BYE", bye
        await alice.send(make_response(bye, 200))
        result = await uac
        assert result.returncode == 0, failure_report(tmp_path, result)


async def test_register_over_secure_websocket(w_test: PeerageServer) -> None:
    context = ssl.create_default_context(cafile=str(w_test.workdir / f"{DOMAIN}.crt"))
    context.check_hostname = False  # the certificate names w.test, we dial its address
    async with aiohttp.ClientSession() as session, \
            session.ws_connect(WSS_URL, protocols=("sip",), ssl=context) as ws:
        bob = WsUA(ws, "bob", transport="WSS")
        registered = await bob.register()
        assert registered.status == 200, registered
        assert registered.top_via().transport == "WSS"
