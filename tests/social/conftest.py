"""Social acceptance fixtures: peerage hosts on 127.0.15.x serving WebFinger and ActivityPub over HTTPS.

Two `peerage serve` processes (alpha.test on 127.0.15.2, beta.test on 127.0.15.3) with certificates from
the test CA, resolving each other through the harness's LocalDNS on 127.0.15.53 (peerage's own
resolver, ``[dns]``), and trusting only the test CA (``[tls] ca_file``). ``[social]
allow_private_addresses`` lets them fetch loopback addresses, which production refuses. Test clients
reach them through a static resolver with the same names.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from tests.harness.ca import TestCA
from tests.harness.dns import LocalDNS
from tests.harness.server import PeerageServer

# The area's loopback block (127.0.15.x). PEERAGE_TEST_SOCIAL_BLOCK moves it, for a local run while
# another run (a full-suite one, whose session fixtures live as long as its worker) holds the block.
BLOCK = os.environ.get("PEERAGE_TEST_SOCIAL_BLOCK", "127.0.15")
DNS_ADDRESS = f"{BLOCK}.53"
ALPHA, ALPHA_ADDRESS = "alpha.test", f"{BLOCK}.2"
BETA, BETA_ADDRESS = "beta.test", f"{BLOCK}.3"
PASSWORD = "correct horse battery staple"
NAMES: dict[str, str] = {ALPHA: ALPHA_ADDRESS, BETA: BETA_ADDRESS}
SOCIAL = {"allow_private_addresses": True, "retry_base": 1.0}
# Seconds a peerage server gets to start (the harness's 30 s passed before the first log line at load 18+).
SERVER_START_TIMEOUT = 90.0


class StaticResolver(AbstractResolver):
    """The test's own /etc/hosts: every name the area serves, to its loopback address."""

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        address = NAMES.get(host, host)
        return [{"hostname": host, "host": address, "port": port, "family": socket.AF_INET, "proto": 0,
                 "flags": socket.AI_NUMERICHOST}]

    async def close(self) -> None:
        return None


def client(ca: TestCA, **kwargs: Any) -> aiohttp.ClientSession:
    context = ssl.create_default_context(cafile=str(ca.cert_path))
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context, resolver=StaticResolver()), **kwargs)


@pytest.fixture(scope="session")
def social_dns() -> Iterator[LocalDNS]:
    dns = LocalDNS(DNS_ADDRESS, 53).start()
    try:
        yield dns
    finally:
        dns.stop()


@pytest.fixture(scope="session")
def social_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("social-ca"))


def make_server(workdir: Path, domain: str, address: str, dns: LocalDNS, ca: TestCA,
                services: tuple[str, ...] = ("web",)) -> PeerageServer:
    cert = ca.issue(domain)
    dns.add_a(domain, address)
    server = PeerageServer(workdir, domain, address, dns=dns, services=services,
                           config={"social": SOCIAL, "web": {"http_listen": []}}, certs={domain: cert},
                           ca_file=ca.cert_path)
    return server


@pytest.fixture(scope="session")
def alpha(tmp_path_factory: pytest.TempPathFactory, social_dns: LocalDNS, social_ca: TestCA) -> Iterator[PeerageServer]:
    # alpha also serves XMPP (c2s on 127.0.15.2:5222): the microblog bridge and the gateway JIDs.
    server = make_server(tmp_path_factory.mktemp("alpha"), ALPHA, ALPHA_ADDRESS, social_dns, social_ca,
                         services=("web", "xmpp"))
    server.add_user(f"alice@{ALPHA}", PASSWORD)
    server.add_user(f"carol@{ALPHA}", PASSWORD)
    server.cli("social", "publish", f"alice@{ALPHA}")
    server.start(timeout=SERVER_START_TIMEOUT)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def beta(tmp_path_factory: pytest.TempPathFactory, social_dns: LocalDNS, social_ca: TestCA) -> Iterator[PeerageServer]:
    server = make_server(tmp_path_factory.mktemp("beta"), BETA, BETA_ADDRESS, social_dns, social_ca)
    server.add_user(f"bob@{BETA}", PASSWORD)
    server.cli("social", "publish", f"bob@{BETA}")
    server.start(timeout=SERVER_START_TIMEOUT)
    try:
        yield server
    finally:
        server.stop()


# delta.test (web and XMPP) for tests that need accounts of their own, apart from alpha's alice (whose
# followers and NodeInfo count other tests expect): test_relay.py, test_attachments.py.
DELTA, DELTA_ADDRESS = "delta.test", f"{BLOCK}.7"
NAMES[DELTA] = DELTA_ADDRESS


@pytest.fixture(scope="session")
def delta(tmp_path_factory: pytest.TempPathFactory, social_dns: LocalDNS, social_ca: TestCA) -> Iterator[PeerageServer]:
    server = make_server(tmp_path_factory.mktemp("delta"), DELTA, DELTA_ADDRESS, social_dns, social_ca,
                         services=("web", "xmpp"))
    server.add_user(f"xena@{DELTA}", PASSWORD)
    server.cli("social", "publish", f"xena@{DELTA}")
    server.start(timeout=SERVER_START_TIMEOUT)
    try:
        yield server
    finally:
        server.stop()


FEDIFY, FEDIFY_ADDRESS = "fedify.test", f"{BLOCK}.4"
BOVINE, BOVINE_ADDRESS = "bovine.test", f"{BLOCK}.5"
NAMES[FEDIFY] = FEDIFY_ADDRESS
NAMES[BOVINE] = BOVINE_ADDRESS
HERE = Path(__file__).resolve().parent
FEDIFY_DIR = HERE / "fedify"
BOVINE_DIR = HERE / "bovine"
# bovine-herd pins cryptography and aiosqlite below peerage's pins, so it lives in its own virtual
# environment, made by scripts/setup-test-env at the repository's root.
BOVINE_PYTHON = HERE.parents[1] / ".venv-bovine" / "bin" / "python"
PEER_START_TIMEOUT = 90.0


@dataclass
class Peer:
    """A third-party ActivityPub server: its control API, its actor and that actor's handle."""

    name: str
    control: str
    actor: str
    handle: str


def _start_peer(name: str, command: list[str], env: dict[str, str], workdir: Path, ready: str,
                cwd: Path) -> tuple[subprocess.Popen[bytes], str]:
    from tests.harness.peers import private_resolv_conf

    log_path = workdir / f"{name}.log"
    log = open(log_path, "wb")  # noqa: SIM115 - the child owns it
    process = subprocess.Popen(private_resolv_conf(command, DNS_ADDRESS, workdir), stdout=log,
                               stderr=subprocess.STDOUT, env={**os.environ, **env}, cwd=cwd)
    log.close()
    deadline = time.monotonic() + PEER_START_TIMEOUT
    while True:
        text = log_path.read_text(errors="replace")
        for line in text.splitlines():
            if line.startswith(ready):
                return process, line
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the {name} peer did not start:\n{text[-3000:]}")
        time.sleep(0.1)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


@pytest.fixture(scope="session")
def fedify(tmp_path_factory: pytest.TempPathFactory, social_dns: LocalDNS, social_ca: TestCA) -> Iterator[Peer]:
    """A Fedify server (Node 22 from the node@22 npm package, `npm ci` in tests/social/fedify) with one
    actor, fred@fedify.test, on 127.0.15.4:443."""
    from tests.harness.peers import require_binary

    node = require_binary("node (tests/social/fedify: npm ci)", str(FEDIFY_DIR / "node_modules" / ".bin" / "node"))
    if not (FEDIFY_DIR / "node_modules" / "@fedify" / "fedify").is_dir():
        require_binary("@fedify/fedify (run npm --prefix tests/social/fedify ci)")
    workdir = tmp_path_factory.mktemp("fedify")
    cert, key = social_ca.issue(FEDIFY)
    social_dns.add_a(FEDIFY, FEDIFY_ADDRESS)
    control = f"{FEDIFY_ADDRESS}:8080"
    process, _ = _start_peer("fedify", [node, str(FEDIFY_DIR / "server.mjs")], {
        "FEDIFY_DOMAIN": FEDIFY, "FEDIFY_LISTEN": f"{FEDIFY_ADDRESS}:443", "FEDIFY_CONTROL": control,
        "FEDIFY_CERT": str(cert), "FEDIFY_KEY": str(key), "NODE_EXTRA_CA_CERTS": str(social_ca.cert_path)},
        workdir, "fedify peer ready", FEDIFY_DIR)
    try:
        yield Peer("fedify", f"http://{control}", f"https://{FEDIFY}/users/fred", f"fred@{FEDIFY}")
    finally:
        _stop(process)


@pytest.fixture(scope="session")
def bovine(tmp_path_factory: pytest.TempPathFactory, social_dns: LocalDNS, social_ca: TestCA) -> Iterator[Peer]:
    """bovine-herd (PyPI, in .venv-bovine) with one actor, bea@bovine.test, on 127.0.15.5:443, served by
    hypercorn over HTTPS with the test CA's certificate."""
    from tests.harness.peers import require_binary

    python = require_binary("bovine-herd (.venv-bovine, made by scripts/setup-test-env)", str(BOVINE_PYTHON))
    workdir = tmp_path_factory.mktemp("bovine")
    cert, key = social_ca.issue(BOVINE)
    social_dns.add_a(BOVINE, BOVINE_ADDRESS)
    control = f"{BOVINE_ADDRESS}:8080"
    process, line = _start_peer("bovine", [python, str(BOVINE_DIR / "serve.py")], {
        "BOVINE_DOMAIN": BOVINE, "BOVINE_LISTEN": f"{BOVINE_ADDRESS}:443", "BOVINE_CONTROL": control,
        "BOVINE_CERT": str(cert), "BOVINE_KEY": str(key), "BOVINE_DB": str(workdir / "bovine.sqlite3"),
        "SSL_CERT_FILE": str(social_ca.cert_path), "PYTHONPATH": ""}, workdir, "bovine peer ready", workdir)
    try:
        yield Peer("bovine", f"http://{control}", line.split()[-1], f"bea@{BOVINE}")
    finally:
        _stop(process)
