"""A raw server-to-server peer for adversarial tests: it speaks the wire protocol by hand, so it can
skip verification, present a wrong dialback key, or send stanzas from a domain it never proved."""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
from pathlib import Path

from tests.harness.rawxml import RawXmlStream

READ_TIMEOUT = 15.0


class RawPeer(RawXmlStream):
    read_timeout = READ_TIMEOUT

    def __init__(self, address: str, from_domain: str, to_domain: str, port: int = 5269) -> None:
        super().__init__()
        self.address = address
        self.port = port
        self.from_domain = from_domain
        self.to_domain = to_domain

    async def connect(self) -> str:
        self.reader, self.writer = await asyncio.open_connection(self.address, self.port)
        return await self.open_stream()

    async def open_stream(self) -> str:
        await self.send("<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
                        "xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' "
                        f"from='{self.from_domain}' to='{self.to_domain}' version='1.0'>")
        return await self.read_until(r"</stream:features>|<stream:features/>")

    def stream_id(self, header: str) -> str:
        match = re.search(r"<stream:stream[^>]*\sid='([^']+)'", header)
        assert match, header
        return match.group(1)

    async def starttls(self, cert: Path | None = None, key: Path | None = None) -> str:
        await self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        await self.read_until(r"<proceed[^>]*/>")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        if cert is not None and key is not None:
            context.load_cert_chain(str(cert), str(key))
        assert self.writer is not None
        await self.writer.start_tls(context, server_hostname=self.to_domain)
        self.buffer = ""
        return await self.open_stream()

    async def sasl_external(self) -> str:
        authzid = base64.b64encode(self.from_domain.encode()).decode()
        await self.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>{authzid}</auth>")
        answer = await self.read_until(r"<success[^>]*/>|<failure.*?</failure>")
        if "<success" in answer:
            self.buffer = ""
            await self.open_stream()
        return answer
