"""An in-process peerage host serving the web (HTTPS and HTTP) on 127.0.6.x, with users and a certificate.

The host runs in the test's event loop; clients are aiohttp sessions trusting the self-signed
certificate (and, for JMAP, jmapc in a thread). With ``mail=True`` the mail service (SMTP, IMAP) runs
too, so JMAP and IMAP share the same mailbox store as `peerage serve` runs them.
"""

from __future__ import annotations

import itertools
import os
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import pytest

from peerage.config import config_from_dict
from peerage.net.tls import generate_self_signed
from peerage.server import Host
from peerage.web.service import WebService

DOMAIN = "example.org"
USER = "alice@example.org"
PASSWORD = "correct horse battery staple"
OTHER_USER = "bob@example.org"
_addresses = itertools.cycle(range(10, 250))
# Not 443/80: a `peerage serve` elsewhere on the machine with the default [web] listens on 0.0.0.0:443,
# which would take these ports on every loopback address too.
HTTPS_PORT = 6443
HTTP_PORT = 6080
_offset = os.getpid() % 200


def next_address() -> str:
    return f"127.0.6.{(next(_addresses) + _offset) % 240 + 10}"


@dataclass
class WebHost:
    host: Host
    services: list[Any]
    address: str
    cert: Path
    workdir: Path
    web: WebService
    sessions: list[aiohttp.ClientSession] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"https://{self.address}:{HTTPS_PORT}"

    @property
    def http_base(self) -> str:
        return f"http://{self.address}:{HTTP_PORT}"

    @property
    def origin(self) -> str:
        return self.base

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.cert))
        context.check_hostname = False
        return context

    def client(self, **kwargs: Any) -> aiohttp.ClientSession:
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self.client_context()),
            cookie_jar=aiohttp.CookieJar(unsafe=True), **kwargs,
        )
        self.sessions.append(session)
        return session

    async def login(self, account: str = USER, password: str = PASSWORD) -> tuple[aiohttp.ClientSession, str]:
        """A client logged in through the JSON form of /login, and its CSRF token."""
        client = self.client()
        async with client.post(self.base + "/login", json={"account": account, "password": password},
                               headers={"Origin": self.origin}) as response:
            assert response.status == 200, await response.text()
            data = await response.json()
        return client, data["csrf"]


async def start_host(workdir: Path, *, mail: bool = False, extra: dict[str, Any] | None = None,
                     address: str | None = None, before_web: Any = None,
                     more_domains: list[dict[str, str]] | None = None) -> WebHost:
    address = address or next_address()
    cert, key = workdir / f"{DOMAIN}.crt", workdir / f"{DOMAIN}.key"
    if not cert.exists():
        generate_self_signed(DOMAIN, cert, key)
    raw: dict[str, Any] = {
        "server": {"data_dir": str(workdir / "data")},
        "domain": [{"name": DOMAIN, "cert": str(cert), "key": str(key)}, *(more_domains or [])],
        "dns": {"nameservers": ["127.0.0.1"], "port": 1, "timeout": 0.5},
        "xmpp": {"enabled": False},
        "sip": {"enabled": False},
        "smtp": {"enabled": mail, "mx_listen": [f"{address}:25"], "submission_listen": [f"{address}:587"],
                 "submissions_listen": [f"{address}:465"]},
        "imap": {"enabled": mail, "listen": [f"{address}:143"], "tls_listen": [f"{address}:993"]},
        "sieve": {"listen": []},  # no ManageSieve on the wildcard 0.0.0.0:4190 default
        "web": {"https_listen": [f"{address}:{HTTPS_PORT}"], "http_listen": [f"{address}:{HTTP_PORT}"]},
    }
    for section, values in (extra or {}).items():
        raw.setdefault(section, {}).update(values)
    config = config_from_dict(raw, workdir / "peerage.toml")
    host = Host(config)
    await host.open()
    for user in (USER, OTHER_USER):
        if not await host.accounts.exists(user):
            await host.accounts.add(user, PASSWORD)
    services: list[Any] = []
    if mail:
        from peerage.mail.service import MailService

        mail_service = MailService()
        await mail_service.start(host)
        services.append(mail_service)
    if before_web is not None:
        before_web(host)  # e.g. register routes, as a protocol service does in its start()
    web = WebService()
    await web.start(host)
    services.append(web)
    host.services = services
    return WebHost(host, services, address, cert, workdir, web)


async def stop_host(server: WebHost) -> None:
    for session in server.sessions:
        await session.close()
    for service in reversed(server.services):
        await service.stop()
    await server.host.store.close()


@pytest.fixture
async def webhost(tmp_path: Path) -> AsyncIterator[WebHost]:
    server = await start_host(tmp_path)
    try:
        yield server
    finally:
        await stop_host(server)


@pytest.fixture
async def mailhost(tmp_path: Path) -> AsyncIterator[WebHost]:
    """Web plus the mail service (SMTP, IMAP, JMAP) sharing one mailbox store."""
    server = await start_host(tmp_path, mail=True)
    try:
        yield server
    finally:
        await stop_host(server)


class Jmap:
    """A minimal JMAP client for protocol tests: Basic auth, one account."""

    USING: ClassVar[list[str]] = ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail", "urn:ietf:params:jmap:submission",
             "urn:ietf:params:jmap:vacationresponse"]

    def __init__(self, server: WebHost, user: str = USER, password: str = PASSWORD) -> None:
        self.server = server
        self.client = server.client(headers={"Authorization": aiohttp.encode_basic_auth(user, password)})
        self.account = ""

    async def session(self) -> dict[str, Any]:
        async with self.client.get(self.server.base + "/.well-known/jmap") as response:
            assert response.status == 200, await response.text()
            data: dict[str, Any] = await response.json()
        self.account = data["primaryAccounts"]["urn:ietf:params:jmap:mail"]
        return data

    async def raw(self, body: Any, **kwargs: Any) -> tuple[int, Any]:
        data = body if isinstance(body, bytes) else None
        async with self.client.post(self.server.base + "/jmap/api", data=data,
                                    json=None if data is not None else body, **kwargs) as response:
            text = await response.text()
            try:
                import json

                return response.status, json.loads(text)
            except ValueError:
                return response.status, text

    async def call(self, *calls: tuple[str, dict[str, Any]]) -> list[list[Any]]:
        if not self.account:
            await self.session()
        method_calls = []
        for n, (name, args) in enumerate(calls):
            method_calls.append([name, {"accountId": self.account, **args}, f"c{n}"])
        status, data = await self.raw({"using": self.USING, "methodCalls": method_calls})
        assert status == 200, data
        return list(data["methodResponses"])

    async def one(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        (response,) = await self.call((name, args))
        assert response[0] == name, response
        return dict(response[1])

    async def mailbox(self, role: str) -> str:
        boxes = (await self.one("Mailbox/get", {"ids": None}))["list"]
        return next(b["id"] for b in boxes if b["role"] == role)
