"""Secure mode ([social] authorized_fetch, Mastodon's AUTHORIZED_FETCH): collections need a signed GET
from a server that is not blocked; the actor, which carries the key, stays fetchable unsigned."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from peerage.social import keys, signatures
from tests.harness.ca import TestCA
from tests.harness.dns import LocalDNS
from tests.harness.server import PeerageServer
from tests.social.conftest import BETA, BLOCK, NAMES, SERVER_START_TIMEOUT, SOCIAL, client

pytestmark = pytest.mark.timeout(240)  # includes the module's server starts, on a loaded CI machine
GAMMA, GAMMA_ADDRESS = "gamma.test", f"{BLOCK}.6"
NAMES[GAMMA] = GAMMA_ADDRESS


@pytest.fixture(scope="module")
def gamma(tmp_path_factory: pytest.TempPathFactory, social_dns: LocalDNS, social_ca: TestCA) -> Iterator[PeerageServer]:
    cert = social_ca.issue(GAMMA)
    social_dns.add_a(GAMMA, GAMMA_ADDRESS)
    server = PeerageServer(tmp_path_factory.mktemp("gamma"), GAMMA, GAMMA_ADDRESS, dns=social_dns, services=("web",),
                           config={"social": {**SOCIAL, "authorized_fetch": True}, "web": {"http_listen": []}},
                           certs={GAMMA: cert}, ca_file=social_ca.cert_path)
    server.add_user(f"dave@{GAMMA}", "correct horse battery staple")
    server.cli("social", "publish", f"dave@{GAMMA}")
    server.start(timeout=SERVER_START_TIMEOUT)
    try:
        yield server
    finally:
        server.stop()


async def test_collections_need_a_signed_get(gamma: PeerageServer, beta: PeerageServer, social_ca: TestCA) -> None:
    outbox = f"https://{GAMMA}/users/dave/outbox"
    ap = {"Accept": "application/activity+json"}
    key = keys.load(beta.data_dir, f"bob@{BETA}", "main-key")
    assert key is not None
    async with client(social_ca) as http:
        async with http.get(f"https://{GAMMA}/users/dave", headers=ap) as response:
            assert response.status == 200  # the key must stay reachable
        async with http.get(outbox, headers=ap) as response:
            assert response.status == 401
        signed = signatures.sign_cavage("GET", outbox, key.private_key, f"https://{BETA}/users/bob#main-key")
        async with http.get(outbox, headers={**ap, **signed}) as response:
            assert response.status == 200, await response.text()
        forger = keys.generate(gamma.workdir, "forger@nowhere.test")
        forged = signatures.sign_cavage("GET", outbox, forger.private_key, f"https://{BETA}/users/bob#main-key")
        async with http.get(outbox, headers={**ap, **forged}) as response:
            assert response.status == 401
