"""A minimal raw XMPP client over asyncio streams, for tests that need exact bytes on the wire.

It negotiates STARTTLS (or Direct TLS), SASL SCRAM (optionally -PLUS with channel binding) or PLAIN,
and resource binding, and otherwise lets the test send and read raw XML. slixmpp covers the normal
client behaviour; this covers malformed input, stream errors and channel binding.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import ssl

from peerage.identity.scram import scram_client_proof, tls_server_end_point
from peerage.net.tls import tls_exporter
from tests.harness.rawxml import RawXmlStream

HEADER = ("<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
          "xmlns:stream='http://etherx.jabber.org/streams' to='{domain}' version='1.0'>")


def client_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class RawClient(RawXmlStream):
    def __init__(self, address: str, domain: str, port: int = 5222, *, direct_tls: bool = False) -> None:
        super().__init__()
        self.address = address
        self.domain = domain
        self.port = port
        self.direct_tls = direct_tls
        self.jid = ""

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(
            self.address, self.port, ssl=client_context() if self.direct_tls else None,
            server_hostname=self.domain if self.direct_tls else None)

    async def open_stream(self) -> str:
        await self.send(HEADER.format(domain=self.domain))
        return await self.read_until(r"</stream:features>|<stream:features/>")

    async def starttls(self) -> None:
        await self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        await self.read_until(r"<proceed[^>]*/>")
        assert self.writer is not None
        await self.writer.start_tls(client_context(), server_hostname=self.domain)
        self.buffer = ""

    def ssl_object(self) -> ssl.SSLObject:
        assert self.writer is not None
        obj = self.writer.get_extra_info("ssl_object")
        assert obj is not None
        return obj  # type: ignore[no-any-return]

    async def authenticate(self, user: str, password: str, mechanism: str = "SCRAM-SHA-256",
                           binding: str | None = None, binding_data: bytes | None = None) -> str:
        """Run one SASL exchange; return the final <success/> or <failure/> element text."""
        if mechanism == "PLAIN":
            payload = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
            await self.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{payload}</auth>")
            return await self.read_until(r"<success[^>]*/>|<success.*?</success>|<failure.*?</failure>")
        hash_name = "SHA-256" if "SHA-256" in mechanism else "SHA-1"
        if mechanism.endswith("-PLUS"):
            assert binding is not None
            gs2 = f"p={binding},,"
            if binding_data is None:
                binding_data = self.binding_data(binding)
        else:
            gs2 = "y,," if binding == "y" else "n,,"
            binding_data = b""
        nonce = base64.b64encode(os.urandom(18)).decode()
        first_bare = f"n={user},r={nonce}"
        initial = base64.b64encode((gs2 + first_bare).encode()).decode()
        await self.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{mechanism}'>{initial}</auth>")
        answer = await self.read_until(r"<challenge[^>]*>.*?</challenge>|<failure.*?</failure>")
        if "<failure" in answer:
            return answer
        server_first = base64.b64decode(re.search(r">([^<]*)</challenge>", answer).group(1)).decode()  # type: ignore[union-attr]
        fields = dict(item.split("=", 1) for item in server_first.split(","))
        cbind = base64.b64encode(gs2.encode() + (binding_data or b"")).decode()
        without_proof = f"c={cbind},r={fields['r']}"
        auth_message = f"{first_bare},{server_first},{without_proof}".encode()
        proof, _ = scram_client_proof(hash_name, password, base64.b64decode(fields["s"]), int(fields["i"]), auth_message)
        final = base64.b64encode(f"{without_proof},p={base64.b64encode(proof).decode()}".encode()).decode()
        await self.send(f"<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{final}</response>")
        return await self.read_until(r"<success[^>]*/>|<success.*?</success>|<failure.*?</failure>")

    def binding_data(self, binding: str) -> bytes:
        obj = self.ssl_object()
        if binding == "tls-exporter":
            data = tls_exporter(obj)
            assert data is not None
            return data
        cert = obj.getpeercert(True)
        assert cert is not None
        return tls_server_end_point(cert)

    async def bind(self, resource: str = "raw") -> str:
        await self.send(f"<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                        f"<resource>{resource}</resource></bind></iq>")
        answer = await self.read_until(r"<iq[^>]*id='bind1'.*?</iq>")
        match = re.search(r"<jid>([^<]*)</jid>", answer)
        assert match, answer
        self.jid = match.group(1)
        return self.jid

    async def login(self, user: str, password: str, resource: str = "raw", mechanism: str = "SCRAM-SHA-256",
                    binding: str | None = None) -> str:
        await self.connect()
        features = await self.open_stream()
        if not self.direct_tls:
            assert "starttls" in features
            await self.starttls()
            await self.open_stream()
        result = await self.authenticate(user, password, mechanism, binding)
        assert "<success" in result, result
        features = await self.open_stream()
        assert "urn:ietf:params:xml:ns:xmpp-bind" in features
        return await self.bind(resource)
