"""An RFC 7395 client for the tests: aiohttp's WebSocket client speaking XMPP framing.

It opens the stream with <open/>, authenticates with PLAIN or SCRAM-SHA-1/-256 (RFC 5802, written
here from the RFC so the tests check the server against an independent implementation), binds, and
then sends and receives one element per message. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import ssl
import xml.etree.ElementTree as ET
from typing import Any

import aiohttp

FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
BIND = "urn:ietf:params:xml:ns:xmpp-bind"
SM = "urn:xmpp:sm:3"
STREAMS = "http://etherx.jabber.org/streams"
CLIENT = "jabber:client"
TIMEOUT = 30.0  # one server round trip on a loaded 2-core CI machine; a reply that comes sooner returns sooner


def q(ns: str, name: str) -> str:
    return f"{{{ns}}}{name}"


class WsXmpp:
    def __init__(self, url: str, domain: str, *, ssl_context: ssl.SSLContext, origin: str | None = None,
                 protocols: tuple[str, ...] = ("xmpp",)) -> None:
        self.url = url
        self.domain = domain
        self.ssl_context = ssl_context
        self.origin = origin
        self.protocols = protocols
        self.session: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.jid = ""
        self.features: ET.Element | None = None
        self.sm_id = ""
        self.handled = 0  # XEP-0198 stanzas received

    async def connect(self) -> WsXmpp:
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.ssl_context))
        headers = {"Origin": self.origin} if self.origin else {}
        self.ws = await self.session.ws_connect(self.url, protocols=self.protocols, headers=headers,
                                                timeout=aiohttp.ClientWSTimeout(ws_close=5.0), autoping=True)
        return self

    async def close(self) -> None:
        if self.ws is not None and not self.ws.closed:
            await self.ws.close()
        if self.session is not None:
            await self.session.close()

    # --- raw messages ----------------------------------------------------------------------------
    async def send(self, text: str) -> None:
        assert self.ws is not None
        await self.ws.send_str(text)

    async def send_together(self, texts: list[str]) -> None:
        """One text message per item, all in one write (one TLS record), so the server reads them in
        one go; masked with a fresh key each, as RFC 6455 section 5.3 asks of clients."""
        assert self.ws is not None
        frames = []
        for text in texts:
            payload = text.encode()
            size = len(payload)
            head = bytes((0x81, 0x80 | size)) if size < 126 else bytes((0x81, 0x80 | 126)) + size.to_bytes(2, "big")
            key = secrets.token_bytes(4)
            frames.append(head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload)))
        transport = self.ws._writer.transport
        transport.write(b"".join(frames))

    async def recv_raw(self, timeout: float = TIMEOUT) -> aiohttp.WSMessage:
        assert self.ws is not None
        return await asyncio.wait_for(self.ws.receive(), timeout)

    async def recv(self, timeout: float = TIMEOUT) -> ET.Element:
        message = await self.recv_raw(timeout)
        assert message.type is aiohttp.WSMsgType.TEXT, f"expected a text message, got {message!r}"
        element = ET.fromstring(message.data)
        if element.tag in (q(CLIENT, "message"), q(CLIENT, "presence"), q(CLIENT, "iq")):
            self.handled += 1
        return element

    async def recv_until(self, predicate: Any, timeout: float = TIMEOUT) -> ET.Element:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            element = await self.recv(max(0.05, deadline - loop.time()))
            if predicate(element):
                return element

    # --- the stream ------------------------------------------------------------------------------
    async def open(self) -> ET.Element:
        await self.send(f"<open xmlns='{FRAMING}' to='{self.domain}' version='1.0'/>")
        opened = await self.recv()
        assert opened.tag == q(FRAMING, "open"), ET.tostring(opened)
        features = await self.recv()
        assert features.tag == q(STREAMS, "features"), ET.tostring(features)
        self.features = features
        return features

    def mechanisms(self) -> list[str]:
        assert self.features is not None
        return [m.text or "" for m in self.features.iter(q(SASL, "mechanism"))]

    async def auth_plain(self, user: str, password: str) -> ET.Element:
        payload = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        await self.send(f"<auth xmlns='{SASL}' mechanism='PLAIN'>{payload}</auth>")
        return await self.recv()

    async def auth_scram(self, user: str, password: str, hash_name: str = "sha256") -> ET.Element:
        mechanism = {"sha256": "SCRAM-SHA-256", "sha1": "SCRAM-SHA-1"}[hash_name]
        nonce = secrets.token_urlsafe(18)
        first_bare = f"n={user},r={nonce}"
        await self.send(f"<auth xmlns='{SASL}' mechanism='{mechanism}'>"
                        f"{base64.b64encode(('n,,' + first_bare).encode()).decode()}</auth>")
        challenge = await self.recv()
        if challenge.tag != q(SASL, "challenge"):
            return challenge
        server_first = base64.b64decode(challenge.text or "").decode()
        fields = dict(part.split("=", 1) for part in server_first.split(","))
        assert fields["r"].startswith(nonce)
        salted = hashlib.pbkdf2_hmac(hash_name, password.encode(), base64.b64decode(fields["s"]), int(fields["i"]))
        client_key = hmac.digest(salted, b"Client Key", hash_name)
        stored = hashlib.new(hash_name, client_key).digest()
        final_bare = f"c=biws,r={fields['r']}"
        auth_message = f"{first_bare},{server_first},{final_bare}".encode()
        signature = hmac.digest(stored, auth_message, hash_name)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        final = f"{final_bare},p={base64.b64encode(proof).decode()}"
        await self.send(f"<response xmlns='{SASL}'>{base64.b64encode(final.encode()).decode()}</response>")
        result = await self.recv()
        if result.tag == q(SASL, "success"):
            server_key = hmac.digest(salted, b"Server Key", hash_name)
            expected = base64.b64encode(hmac.digest(server_key, auth_message, hash_name)).decode()
            assert base64.b64decode(result.text or "").decode() == f"v={expected}", "server signature"
        return result

    async def login(self, user: str, password: str, *, resource: str = "", scram: str | None = "sha256",
                    bind: bool = True) -> WsXmpp:
        await self.open()
        result = await (self.auth_scram(user, password, scram) if scram else self.auth_plain(user, password))
        assert result.tag == q(SASL, "success"), ET.tostring(result)
        await self.open()
        if bind:
            await self.bind(resource)
        return self

    async def bind(self, resource: str = "") -> str:
        inner = f"<resource>{resource}</resource>" if resource else ""
        await self.send(f"<iq xmlns='{CLIENT}' type='set' id='bind1'><bind xmlns='{BIND}'>{inner}</bind></iq>")
        reply = await self.recv_until(lambda e: e.tag == q(CLIENT, "iq") and e.get("id") == "bind1")
        jid = reply.find(f"{q(BIND, 'bind')}/{q(BIND, 'jid')}")
        assert jid is not None and jid.text, ET.tostring(reply)
        self.jid = jid.text
        self.handled = 0
        return self.jid

    async def enable_sm(self) -> ET.Element:
        await self.send(f"<enable xmlns='{SM}' resume='true'/>")
        enabled = await self.recv_until(lambda e: e.tag in (q(SM, "enabled"), q(SM, "failed")))
        assert enabled.tag == q(SM, "enabled"), ET.tostring(enabled)
        self.sm_id = enabled.get("id", "")
        self.handled = 0
        return enabled

    async def iq(self, body: str, iq_type: str = "get", to: str = "", timeout: float = TIMEOUT) -> ET.Element:
        ident = secrets.token_hex(4)
        target = f" to='{to}'" if to else ""
        await self.send(f"<iq xmlns='{CLIENT}' type='{iq_type}' id='{ident}'{target}>{body}</iq>")
        return await self.recv_until(lambda e: e.tag == q(CLIENT, "iq") and e.get("id") == ident, timeout)

    async def message(self, to: str, body: str, ident: str = "") -> None:
        ident = ident or secrets.token_hex(4)
        await self.send(f"<message xmlns='{CLIENT}' to='{to}' type='chat' id='{ident}'><body>{body}</body></message>")

    async def next_body(self, timeout: float = TIMEOUT) -> ET.Element:
        return await self.recv_until(lambda e: e.tag == q(CLIENT, "message") and e.find(q(CLIENT, "body")) is not None,
                                     timeout)
