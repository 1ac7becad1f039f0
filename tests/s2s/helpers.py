"""Federation test helpers: peerage servers of a given XEP-0238 type on 127.0.2.x, their DNS, status.

Every server gets an A record, and (unless told otherwise) an ``_xmpp-server._tcp`` SRV record in the
harness's LocalDNS on 127.0.2.250; CA-issued certificates come from one TestCA that every server
trusts (``[tls] ca_file``), self-signed ones are made per server.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
from pathlib import Path
from typing import Any

from tests.harness import LocalDNS, PeerageServer, TestCA
from tests.xmpp.rawclient import RawClient

DNS_ADDRESS = "127.0.2.250"
PASSWORD = "federation test password"
#: Servers prepared (users added, started) at once by ``Federation.start_all``.
START_PARALLELISM = 3
#: Bounded wait for anything federation does on loopback (connect, TLS, dialback round trips).
FEDERATION_TIMEOUT = 20.0


class Federation:
    """Builds peerage servers for the s2s tests and reads what they report."""

    def __init__(self, workdir: Path, dns: LocalDNS, ca: TestCA) -> None:
        self.workdir = workdir
        self.dns = dns
        self.ca = ca
        self.servers: list[PeerageServer] = []

    def server(self, domain: str, address: str, *, level: str = "verified", certificate: str = "ca",
               legacy: bool = False, srv: bool = True, direct_tls_srv: bool = False,
               federation: dict[str, Any] | None = None, users: tuple[str, ...] = ("user",),
               config: dict[str, Any] | None = None, extra_domains: tuple[str, ...] = ()
               ) -> PeerageServer:
        domains = [domain, *extra_domains]
        if certificate == "ca":
            certs = {d: self.ca.issue(d) for d in domains}
        else:
            certs = {d: self.ca.self_signed(d) for d in domains}
        settings: dict[str, Any] = {"level": level, "legacy": legacy, "connect_timeout": 8.0,
                                    "bidi": False}
        settings.update(federation or {})
        server = PeerageServer(self.workdir / domain, domains, address, dns=self.dns, certs=certs,
                               ca_file=self.ca.cert_path,
                               config={"server": {"log_level": "info"},
                                       "xmpp": {"federation": settings}, **(config or {})})
        for name in domains:
            self.dns.add_a(name, address)
            if srv:
                self.dns.add_srv(f"_xmpp-server._tcp.{name}", 0, 5, 5269, name)
            if direct_tls_srv:
                self.dns.add_srv(f"_xmpps-server._tcp.{name}", 0, 5, 5270, name)
        server.users = [f"{name}@{d}" for d in domains for name in users]  # type: ignore[attr-defined]
        self.servers.append(server)
        return server

    def start_all(self, servers: list[PeerageServer] | None = None) -> None:
        """Add the users and start the servers, in parallel (each is a separate process)."""
        servers = servers if servers is not None else self.servers

        def prepare(server: PeerageServer) -> None:
            for user in server.users:  # type: ignore[attr-defined]
                server.add_user(user, PASSWORD)
            server.start()

        # A few at a time: each `user add` and start is CPU-bound (interpreter start, migrations,
        # argon2), and a dozen at once on a small, busy CI machine pushed single commands past
        # the harness's 60 s bound although the total work is the same.
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(len(servers), START_PARALLELISM)) as pool:
            for future in [pool.submit(prepare, s) for s in servers]:
                future.result()

    def stop_all(self) -> None:
        for server in self.servers:
            server.kill()


def status(server: PeerageServer) -> dict[str, Any]:
    path = server.data_dir / "status.json"
    try:
        return dict(json.loads(path.read_text()).get("s2s", {}))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def records(server: PeerageServer, direction: str, remote: str) -> list[dict[str, Any]]:
    return [r for r in status(server).get("connections", [])
            if r["direction"] == direction and r["remote"] == remote]


def best_level(server: PeerageServer, direction: str, remote: str) -> str | None:
    """The strongest level any finished negotiation in that direction reached; None if none ended."""
    order = "UPVET"
    done = [r for r in records(server, direction, remote) if r["state"] != "negotiating"]
    if not done:
        return None
    return max((r["level"] for r in done), key=order.index)


async def login(server: PeerageServer, user: str, resource: str = "test") -> RawClient:
    domain = user.split("@")[1]
    client = RawClient(server.address, domain)
    await client.login(user.split("@")[0], PASSWORD, resource)
    await client.send("<presence/>")
    return client


async def read_stanza(client: RawClient, pattern: str, timeout: float = FEDERATION_TIMEOUT) -> str:
    return await client.read_until(pattern, timeout)


def stanza_ids(text: str, prefix: str) -> list[str]:
    return re.findall(rf"id='({re.escape(prefix)}[^']*)'", text)
