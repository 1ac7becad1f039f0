"""Fixtures for the modern-XMPP tests: two federated peerage servers on the xmppx block (127.0.12.x).

``one`` hosts x1.test and x2.test on 127.0.12.2 with XMPP and the web service (HTTP upload);
``two`` hosts y.test on 127.0.12.3, federated with ``one`` through the LocalDNS on 127.0.12.250
and certificates from one TestCA. Both start once for the whole area (the package's tests share
them; each test uses its own accounts so they do not see each other's traffic).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import LocalDNS, PeerageServer, TestCA
from tests.s2s.helpers import Federation
from tests.xmpp.conftest import Client as XmppClient

DNS_ADDRESS = "127.0.12.250"
ONE_ADDRESS = "127.0.12.2"
TWO_ADDRESS = "127.0.12.3"
PASSWORD = "federation test password"
TIMEOUT = 20.0
#: Small upload limits, so the tests reach them without moving megabytes.
UPLOAD_MAX_FILE = 64 * 1024
UPLOAD_QUOTA = 160 * 1024
UPLOAD_SLOTS_PER_MINUTE = 10
REGISTRATIONS_PER_IP = 3
PUSH_MAX_ERRORS = 2
ONE_USERS = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy",
             "omar", "olga", "pat", "quinn", "ruth", "sam", "tom", "uma", "vic", "walt",
             "paula", "peter", "piet", "pia", "rita", "rolf", "rosa", "nora", "ned", "lena", "max", "mona", "nico")
TWO_USERS = ("yara", "yuri", "yves", "yoko", "yann", "yasmin", "yusuf")


#: Bound on adding the accounts: each costs a password hash, and at load 28 on the shared two cores
#: 66 of them took more than 120 s.
ADD_USERS_TIMEOUT = 300

#: Adds every account in one process (one `peerage user add` each costs a Python start-up).
ADD_USERS = """
import asyncio, sys
from peerage.cli import _with_accounts
from peerage.config import load_config

config = load_config(sys.argv[1], check_files=False)
password = sys.stdin.readline().rstrip("\\n")

async def add(accounts):
    for address in sys.argv[2:]:
        await accounts.add(address, password)

asyncio.run(_with_accounts(config, add))
"""


def start(server: PeerageServer) -> None:
    subprocess.run([sys.executable, "-c", ADD_USERS, str(server.config_path), *server.users],  # type: ignore[attr-defined]
                   input=PASSWORD + "\n", text=True, check=True, timeout=ADD_USERS_TIMEOUT)
    server.start(timeout=60)


@pytest.fixture(scope="package")
def xmppx_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PeerageServer, PeerageServer]]:
    dns = LocalDNS(DNS_ADDRESS, 53)
    dns.start()
    workdir = Path(tmp_path_factory.mktemp("xmppx"))
    ca = TestCA(workdir / "ca")
    federation = Federation(workdir, dns, ca)
    config: dict[str, Any] = {
        "xmpp": {"upload": {"max_file_size": UPLOAD_MAX_FILE, "quota": UPLOAD_QUOTA,
                            "slots_per_minute": UPLOAD_SLOTS_PER_MINUTE},
                 "push": {"include_sender": True, "max_errors": PUSH_MAX_ERRORS},
                 "contact": {"support": ["xmpp:support@{domain}", "https://{domain}/help"]}},
    }
    one = federation.server("x1.test", ONE_ADDRESS, level="encrypted", users=ONE_USERS,
                            extra_domains=("x2.test",), config={**config, "web": {"enabled": True}})
    one.users = [f"{user}@x1.test" for user in ONE_USERS]  # type: ignore[attr-defined]  # no test logs in on x2.test
    # y.test has open registration (XEP-0077), x1.test the default (by invitation only).
    two_config = {**config, "xmpp": {**config["xmpp"], "registration": {
        "enabled": True, "per_ip_per_hour": REGISTRATIONS_PER_IP}}}
    two = federation.server("y.test", TWO_ADDRESS, level="encrypted", users=TWO_USERS, config=two_config)
    for service in ("upload.x1.test", "upload.x2.test", "conference.x1.test"):  # hosted service JIDs, over s2s
        dns.add_a(service, ONE_ADDRESS)
        dns.add_srv(f"_xmpp-server._tcp.{service}", 0, 5, 5269, service)
    for server in (one, two):
        server.ca_path = ca.cert_path  # type: ignore[attr-defined]
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(start, (one, two)))
        yield one, two
    finally:
        federation.stop_all()
        dns.stop()


#: z.test: a lone server (no federation) the tests may restart or fill up without disturbing the others.
LONE_ADDRESS = "127.0.12.4"
LONE_USERS = ("nina", "nils", "noor")
#: Its upload limits: two accounts' files fill the server-wide quota, which is below two per-account ones.
LONE_UPLOAD = {"max_file_size": 64 * 1024, "quota": 128 * 1024, "total_quota": 160 * 1024}


@pytest.fixture(scope="package")
def lone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PeerageServer]:
    server = PeerageServer(Path(tmp_path_factory.mktemp("lone")), ["z.test"], LONE_ADDRESS, services=("xmpp", "web"),
                           config={"server": {"log_level": "info"}, "xmpp": {"upload": LONE_UPLOAD}})
    server.users = [f"{user}@z.test" for user in LONE_USERS]  # type: ignore[attr-defined]
    start(server)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="package")
def one(xmppx_servers: tuple[PeerageServer, PeerageServer]) -> PeerageServer:
    return xmppx_servers[0]


@pytest.fixture(scope="package")
def two(xmppx_servers: tuple[PeerageServer, PeerageServer]) -> PeerageServer:
    return xmppx_servers[1]


class Client(XmppClient):
    """The XMPP area's slixmpp client, with this area's password and longer bounds (two federating
    servers on a busy machine)."""

    connect_timeout = TIMEOUT
    message_timeout = TIMEOUT

    def __init__(self, jid: str, password: str = PASSWORD, plugins: tuple[str, ...] = ()) -> None:
        super().__init__(jid, password, plugins)


@pytest.fixture
async def clients() -> AsyncIterator[list[Client]]:
    """Clients appended here are disconnected at the end of the test."""
    created: list[Client] = []
    yield created
    for client in created:
        await client.close()


async def until(predicate: Any, timeout: float = TIMEOUT) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.05)
