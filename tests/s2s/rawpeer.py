"""A raw server-to-server peer for adversarial tests: it speaks the wire protocol by hand, so it can
skip verification, present a wrong dialback key, or send stanzas from a domain it never proved."""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
from pathlib import Path

READ_TIMEOUT = 15.0


class RawPeer:
    def __init__(self, address: str, from_domain: str, to_domain: str, port: int = 5269) -> None:
        self.address = address
        self.port = port
        self.from_domain = from_domain
        self.to_domain = to_domain
        self.buffer = ""
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

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

    async def send(self, data: str) -> None:
        assert self.writer is not None
        self.writer.write(data.encode())
        await self.writer.drain()

    async def read_until(self, pattern: str, timeout: float = READ_TIMEOUT) -> str:
        assert self.reader is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            match = re.search(pattern, self.buffer, re.S)
            if match:
                consumed, self.buffer = self.buffer[:match.end()], self.buffer[match.end():]
                return consumed
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {pattern!r}; have {self.buffer[-500:]!r}")
            chunk = await asyncio.wait_for(self.reader.read(65536), remaining)
            if not chunk:
                raise ConnectionError(f"closed while waiting for {pattern!r}; have {self.buffer[-500:]!r}")
            self.buffer += chunk.decode("utf-8", "replace")

    async def read_to_eof(self, timeout: float = READ_TIMEOUT) -> str:
        assert self.reader is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"the stream was not closed; have {self.buffer[-500:]!r}")
            try:
                chunk = await asyncio.wait_for(self.reader.read(65536), remaining)
            except (ConnectionError, ssl.SSLError):
                chunk = b""
            if not chunk:
                text, self.buffer = self.buffer, ""
                return text
            self.buffer += chunk.decode("utf-8", "replace")

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()
            self.writer = None
