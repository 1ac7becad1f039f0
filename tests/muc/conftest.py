"""Fixtures of the group-chat tests, on the muc block (127.0.11.0/24): a LocalDNS on 127.0.11.250:53,
a TestCA, two federating peerage servers and a Prosody with mod_muc, shared by the whole area.

Each peerage domain's certificate covers ``conference.DOMAIN`` too (what ``[acme] names`` asks for),
and the DNS publishes A and ``_xmpp-server._tcp`` records for the conference hosts.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import LocalDNS, PeerageServer, TestCA
from tests.muc.helpers import PASSWORD, MucProsody

DNS_ADDRESS = "127.0.11.250"
#: Bound on a server's start: two start side by side, and on a loaded shared machine (load 18)
#: the harness's 30 s default was reached before peerage had even logged its first line.
START_TIMEOUT = 90.0
ONE, TWO, PRO = "one.muc.test", "two.muc.test", "pro.muc.test"


@pytest.fixture(scope="package")
def local_dns() -> Iterator[LocalDNS]:
    dns = LocalDNS(DNS_ADDRESS, 53)
    dns.start()
    try:
        yield dns
    finally:
        dns.stop()


@pytest.fixture(scope="package")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("muc-ca"))


def _publish(dns: LocalDNS, domain: str, address: str) -> None:
    for name in (domain, f"conference.{domain}"):
        dns.add_a(name, address)
        dns.add_srv(f"_xmpp-server._tcp.{name}", 0, 5, 5269, name)


@pytest.fixture(scope="package")
def peerage_pair(tmp_path_factory: pytest.TempPathFactory, local_dns: LocalDNS, test_ca: TestCA
                 ) -> Iterator[tuple[PeerageServer, PeerageServer]]:
    workdir = Path(tmp_path_factory.mktemp("muc"))
    servers = []
    for domain, address, users in ((ONE, "127.0.11.1", ("alice", "bob")), (TWO, "127.0.11.2", ("carol",))):
        certs = {domain: test_ca.issue(domain, dns_ids=[domain, f"conference.{domain}"])}
        server = PeerageServer(workdir / domain, [domain], address, dns=local_dns, certs=certs,
                               ca_file=test_ca.cert_path,
                               config={"server": {"log_level": "info"},
                                       "xmpp": {"federation": {"level": "verified", "connect_timeout": 8.0}},
                                       # Tests send faster than people; the default limits have their own test.
                                       "muc": {"message_rate": 50.0, "message_burst": 50.0}})
        _publish(local_dns, domain, address)
        server.users = [f"{u}@{domain}" for u in users]  # type: ignore[attr-defined]
        servers.append(server)

    def prepare(server: PeerageServer) -> None:
        for user in server.users:  # type: ignore[attr-defined]
            server.add_user(user, PASSWORD)
        server.start(timeout=START_TIMEOUT)

    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            for future in [pool.submit(prepare, s) for s in servers]:
                future.result()
        yield servers[0], servers[1]
    finally:
        for server in servers:
            server.kill()


@pytest.fixture(scope="package")
def prosody(tmp_path_factory: pytest.TempPathFactory, local_dns: LocalDNS, test_ca: TestCA) -> Iterator[MucProsody]:
    cert, key = test_ca.issue(PRO, dns_ids=[PRO, f"conference.{PRO}"])
    _publish(local_dns, PRO, "127.0.11.3")
    server = MucProsody(Path(tmp_path_factory.mktemp("prosody")), PRO, "127.0.11.3", DNS_ADDRESS, cert=cert, key=key,
                        cafile=test_ca.cert_path, users={"dave": PASSWORD})
    server.start()
    try:
        yield server
    finally:
        server.stop()
