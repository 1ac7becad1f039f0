"""An in-process peerage host serving IMAP on 127.0.5.x, with a user and a TLS certificate.

The host runs in the test's event loop, so tests can deliver through ``peerage.mail.mailbox.deliver``
and watch an IDLE session receive it; blocking clients (imaplib, IMAPClient) run in threads.
"""

from __future__ import annotations

import itertools
import os
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from peerage.config import config_from_dict
from peerage.mail.imap.service import ImapService
from peerage.net.tls import generate_self_signed
from peerage.server import Host

DOMAIN = "example.org"
USER = "alice@example.org"
PASSWORD = "correct horse battery staple"
OTHER_USER = "bob@example.org"
# Each test gets its own address in the IMAP block, so sockets in TIME_WAIT never collide.
_addresses = itertools.cycle(range(10, 250))
_offset = os.getpid() % 200


@dataclass
class ImapHost:
    host: Host
    service: Any
    address: str
    cert: Path
    workdir: Path

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.cert))
        context.check_hostname = False
        return context


def next_address() -> str:
    return f"127.0.5.{(next(_addresses) + _offset) % 240 + 10}"


async def start_host(
    workdir: Path, extra: dict[str, Any] | None = None, address: str | None = None
) -> ImapHost:
    address = address or next_address()
    cert, key = workdir / f"{DOMAIN}.crt", workdir / f"{DOMAIN}.key"
    if not cert.exists():
        generate_self_signed(DOMAIN, cert, key)
    raw: dict[str, Any] = {
        "server": {"data_dir": str(workdir / "data")},
        "domain": [{"name": DOMAIN, "cert": str(cert), "key": str(key)}],
        "xmpp": {"enabled": False},
        "sip": {"enabled": False},
        "smtp": {"enabled": False},
        "imap": {"enabled": True, "listen": [f"{address}:143"], "tls_listen": [f"{address}:993"]},
        "sieve": {"listen": []},  # no ManageSieve on the wildcard 0.0.0.0:4190 default
    }
    for section, values in (extra or {}).items():
        raw.setdefault(section, {}).update(values)
    config = config_from_dict(raw, workdir / "peerage.toml")
    host = Host(config)
    await host.open()
    for user in (USER, OTHER_USER):
        if not await host.accounts.exists(user):
            await host.accounts.add(user, PASSWORD)
    service: Any
    if raw["smtp"].get("enabled"):
        # The whole mail side (SMTP, which starts IMAP itself), as `peerage serve` runs it.
        from peerage.mail.service import MailService

        service = MailService()
    else:
        service = ImapService()
    await service.start(host)
    return ImapHost(host, service, address, cert, workdir)


async def stop_host(imap: ImapHost) -> None:
    await imap.service.stop()
    await imap.host.store.close()


@pytest.fixture
async def imap(tmp_path: Path) -> AsyncIterator[ImapHost]:
    server = await start_host(tmp_path)
    try:
        yield server
    finally:
        await stop_host(server)
