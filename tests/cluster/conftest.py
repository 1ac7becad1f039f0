"""Fixtures for the cluster tests: three peerage nodes on 127.0.16.1-3 over one PostgreSQL and one
nats-server, behind DNS SRV records (127.0.16.53), and a receiving MX for remote mail (127.0.16.20).

Everything is started once per module (the nodes take seconds to start); the tests use distinct
accounts. Nodes heartbeat every 0.5 s and are declared dead after 4 s, so failover fits the tests
while a node of a busy machine (load 20 on 2 cores) that misses a few heartbeats is not taken for dead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import LocalDNS, PeerageServer, TestCA, require_binary
from tests.sip.sipp import kill_leftovers

DOMAIN = "cluster.test"
REMOTE_DOMAIN = "remote.test"
PASSWORD = "correct horse battery staple"
NODES = {"n1": "127.0.16.1", "n2": "127.0.16.2", "n3": "127.0.16.3"}
NATS_ADDRESS, NATS_PORT = "127.0.16.10", 4222
DNS_ADDRESS = "127.0.16.53"
SINK_ADDRESS = "127.0.16.20"
#: A separate XMPP server (its own PostgreSQL-less peerage) for the federation tests.
REMOTE_XMPP_ADDRESS = "127.0.16.40"
#: A second domain on that server: its s2s lease is taken by the node killed under load.
REMOTE2_DOMAIN = "remote2.test"
REMOTE_USERS = [f"zoe@{REMOTE_DOMAIN}", f"ned@{REMOTE2_DOMAIN}"]
HEARTBEAT, NODE_TIMEOUT = 0.5, 4.0
#: The per-user room limits, lowered so a test reaches them in a few stanzas (each other test's
#: users stay under them: two rooms joined, two owned, three created).
ROOM_LIMITS = {"max_rooms_joined": 2, "max_rooms_owned": 2, "max_room_creations_per_hour": 3}
#: The registry bound the tests hold the cluster to: a dead node's sessions are gone within this.
REGISTRY_BOUND = NODE_TIMEOUT + 2 * HEARTBEAT
USERS = [f"{name}@{DOMAIN}" for name in
         ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory", "olivia",
          "sipalice", "sipbob", "sipcarol", "sipdave", "sipnina", "rita", "sam", "peppa", "pedro", "fiona", "gus", "pam",
          "rowan", "sasha", "tina", "uma", "bella", "upton", "lena", "leo", "keyla",
          *(f"mutual{pair}{side}" for pair in range(1, 7) for side in "ab"))]


def _wait_port(address: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex((address, port)) == 0:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listening on {address}:{port} after {timeout} s")
        time.sleep(0.05)


class NatsServer:
    """Debian's nats-server (with JetStream), on loopback, with its store in a temp folder."""

    def __init__(self, workdir: Path, address: str = NATS_ADDRESS) -> None:
        self.binary = require_binary("nats-server")
        self.workdir = workdir
        self.address = address
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"nats://{address}:{NATS_PORT}"

    def start(self) -> None:
        log = open(self.workdir / "nats.log", "ab")  # noqa: SIM115 - the child owns it
        self.process = subprocess.Popen(
            [self.binary, "-a", self.address, "-p", str(NATS_PORT), "-js", "-sd", str(self.workdir / "js"),
             "-n", "peerage-test"], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        _wait_port(self.address, NATS_PORT, 10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None


async def _add_users(database_url: str, users: list[str]) -> None:
    from peerage.identity.accounts import AccountService
    from peerage.store import Store

    store = Store(database_url)
    try:
        accounts = AccountService(store, [DOMAIN])
        for user in users:
            await accounts.add(user, PASSWORD)
    finally:
        await store.close()


async def _create_database(url: str, name: str) -> None:
    import asyncpg

    plain = url.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(plain)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


class ClusterUnderTest:
    def __init__(self, workdir: Path, database_url: str, nats: NatsServer, dns: LocalDNS) -> None:
        self.workdir = workdir
        # one CA for the cluster's certificate and the remote XMPP server's, so federation verifies
        self.ca = TestCA(workdir / "ca")
        cluster_cert = self.ca.issue(DOMAIN)
        self.database_url = database_url
        self.nats = nats
        self.dns = dns
        self.nodes: dict[str, PeerageServer] = {}
        for name, address in NODES.items():
            config: dict[str, Any] = {
                "server": {"log_level": "info"},
                "database": {"url": database_url},
                "cluster": {"node": name, "nats_urls": [nats.url], "heartbeat_interval": HEARTBEAT,
                            "node_timeout": NODE_TIMEOUT},
                "smtp": {"first_retry_seconds": 1.0, "source_address": address, "hostname": f"{name}.{DOMAIN}"},
                # SIPp answers MD5 challenges only
                "sip": {"digest_algorithms": ["MD5"]},
                "muc": dict(ROOM_LIMITS),
            }
            self.nodes[name] = PeerageServer(workdir / name, [DOMAIN], address, dns=dns,
                                             services=("xmpp", "smtp", "imap", "web", "sip"), config=config,
                                             certs={DOMAIN: cluster_cert}, ca_file=self.ca.cert_path)
        self.remote = PeerageServer(workdir / "remote", [REMOTE_DOMAIN, REMOTE2_DOMAIN], REMOTE_XMPP_ADDRESS, dns=dns,
                                    services=("xmpp",), config={"server": {"log_level": "info"}},
                                    certs={domain: self.ca.issue(domain) for domain in (REMOTE_DOMAIN, REMOTE2_DOMAIN)},
                                    ca_file=self.ca.cert_path)

    def address(self, name: str) -> str:
        return NODES[name]

    async def status(self, wait: float = 0.5) -> dict[str, dict[str, Any]]:
        """What every live node answers to ``peerage cluster status`` (over NATS, as the CLI asks)."""
        from peerage.cluster.cli import gather

        return {str(a["node"]): a for a in await gather([self.nats.url], wait, registry=True)}

    async def status_of(self, names: tuple[str, ...], timeout: float = 10.0) -> dict[str, dict[str, Any]]:
        """The status of every node in ``names`` (asked again until each has answered: a busy node
        may answer after one round's wait)."""
        answers: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(Exception):
                answers = await self.status()
            if set(names) <= set(answers):
                return answers
            if time.monotonic() > deadline:
                raise AssertionError(f"nodes {sorted(set(names) - set(answers))} did not answer within {timeout} s")
            await asyncio.sleep(0.1)

    async def wait_registry(self, predicate: Any, timeout: float = 10.0, what: str = "registry state") -> None:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(Exception):
                if predicate(await self.status(0.3)):
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} not reached within {timeout} s: {json.dumps(await self.status())}")
            await asyncio.sleep(0.1)


@pytest.fixture(autouse=True)
def _reap_sipp() -> Iterator[None]:
    """No SIPp process outlives the test that started it."""
    yield
    kill_leftovers()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, postgres_url: str) -> Iterator[ClusterUnderTest]:
    workdir = tmp_path_factory.mktemp("cluster")
    name = f"cluster_{secrets.token_hex(4)}"
    asyncio.run(_create_database(postgres_url, name))
    database_url = postgres_url.rsplit("/", 1)[0] + "/" + name
    nats = NatsServer(workdir)
    nats.start()
    dns = LocalDNS(DNS_ADDRESS, 53)
    dns.add_zone(DOMAIN)
    for index, (node, address) in enumerate(NODES.items()):
        dns.add_a(f"{node}.{DOMAIN}", address)
        dns.add_srv(f"_xmpp-client._tcp.{DOMAIN}", 10, 10 + index, 5222, f"{node}.{DOMAIN}")
        dns.add_srv(f"_sip._udp.{DOMAIN}", 10, 10 + index, 5060, f"{node}.{DOMAIN}")
        dns.add_srv(f"_xmpp-server._tcp.{DOMAIN}", 10, 10 + index, 5269, f"{node}.{DOMAIN}")
        dns.add_mx(DOMAIN, 10, f"{node}.{DOMAIN}")
    dns.add_zone(REMOTE_DOMAIN)
    dns.add_mx(REMOTE_DOMAIN, 10, f"mx.{REMOTE_DOMAIN}")
    dns.add_a(f"mx.{REMOTE_DOMAIN}", SINK_ADDRESS)
    dns.add_a(f"xmpp.{REMOTE_DOMAIN}", REMOTE_XMPP_ADDRESS)
    dns.add_srv(f"_xmpp-server._tcp.{REMOTE_DOMAIN}", 0, 5, 5269, f"xmpp.{REMOTE_DOMAIN}")
    dns.add_zone(REMOTE2_DOMAIN)
    dns.add_srv(f"_xmpp-server._tcp.{REMOTE2_DOMAIN}", 0, 5, 5269, f"xmpp.{REMOTE_DOMAIN}")
    dns.start()
    under_test = ClusterUnderTest(workdir, database_url, nats, dns)
    try:
        first = under_test.nodes["n1"]
        first.add_user(USERS[0], PASSWORD)  # creates the schema, as an operator's first command does
        asyncio.run(_add_users(database_url, USERS[1:]))
        for user in REMOTE_USERS:
            under_test.remote.add_user(user, PASSWORD)
        # Three nodes start at once on a machine that may be busy: a longer bound than one start needs.
        starting = [threading.Thread(target=server.start, kwargs={"timeout": 90.0})
                    for server in [*under_test.nodes.values(), under_test.remote]]
        for thread in starting:
            thread.start()
        for thread in starting:
            thread.join(120)
        assert all(server.running for server in under_test.nodes.values()), "a node did not start"
        assert under_test.remote.running, "the remote XMPP server did not start"
        asyncio.run(under_test.wait_registry(
            lambda status: all(len(s.get("peers", [])) == 2 for s in status.values()) and len(status) == 3,
            what="three nodes seeing each other"))
        yield under_test
    finally:
        for server in [*under_test.nodes.values(), under_test.remote]:
            with contextlib.suppress(Exception):
                server.stop() if server.running else server.kill()
        nats.stop()
        dns.stop()
