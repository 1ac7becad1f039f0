"""Small clients that bind a chosen source address, so the throttle sees distinct addresses."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import smtplib
import ssl

from tests.xmpp.rawclient import RawClient


def insecure_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class XmppFrom(RawClient):
    """The raw XMPP client, connecting from ``source``."""

    def __init__(self, address: str, domain: str, source: str) -> None:
        super().__init__(address, domain)
        self.source = source

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.address, self.port,
                                                                 local_addr=(self.source, 0))


async def xmpp_login(address: str, domain: str, source: str, user: str, password: str,
                     mechanism: str = "SCRAM-SHA-256") -> str:
    """The final SASL element text of one login attempt."""
    client = XmppFrom(address, domain, source)
    await client.connect()
    try:
        await client.open_stream()
        await client.starttls()
        await client.open_stream()
        return await client.authenticate(user, password, mechanism)
    finally:
        await client.close()


class ImapFrom:
    """A line-level IMAP client over implicit TLS (port 993) from a chosen source address."""

    def __init__(self, address: str, source: str, *, server_name: str = "example.org", port: int = 993) -> None:
        self.address, self.source, self.server_name, self.port = address, source, server_name, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.greeting = b""

    async def connect(self, timeout: float = 10) -> ImapFrom:
        self.reader, self.writer = await asyncio.wait_for(asyncio.open_connection(
            self.address, self.port, ssl=insecure_context(), server_hostname=self.server_name,
            local_addr=(self.source, 0)), timeout)
        self.greeting = await self.line(timeout)
        return self

    async def line(self, timeout: float = 10) -> bytes:
        assert self.reader is not None
        return await asyncio.wait_for(self.reader.readline(), timeout)

    async def send(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.write(data)
        await self.writer.drain()

    async def command(self, tag: str, text: str, timeout: float = 30) -> bytes:
        await self.send(f"{tag} {text}\r\n".encode())
        while True:
            line = await self.line(timeout)
            if not line or line.startswith(tag.encode() + b" "):
                return line

    async def login(self, user: str, password: str, timeout: float = 30) -> bytes:
        return await self.command("a1", f'LOGIN "{user}" "{password}"', timeout)

    async def plain(self, user: str, password: str, timeout: float = 30) -> bytes:
        blob = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        return await self.command("a2", f"AUTHENTICATE PLAIN {blob}", timeout)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await self.writer.wait_closed()


async def imap_login(address: str, source: str, user: str, password: str) -> bytes:
    client = await ImapFrom(address, source).connect()
    try:
        return await client.login(user, password)
    finally:
        await client.close()


def smtp_auth(address: str, source: str, user: str, password: str, mechanism: str = "PLAIN") -> int:
    """One AUTH on submission (587, STARTTLS) from ``source``; the reply code."""
    with smtplib.SMTP(address, 587, source_address=(source, 0), timeout=30) as client:
        client.starttls(context=insecure_context())
        client.ehlo("client.example")
        if mechanism == "PLAIN":
            code, _ = client.docmd("AUTH", "PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()).decode())
        else:
            client.user, client.password = user, password
            try:
                client.auth(mechanism, getattr(client, "auth_" + mechanism.lower().replace("-", "_")))
                code = 235
            except smtplib.SMTPAuthenticationError as exc:
                code = exc.smtp_code
        return code
