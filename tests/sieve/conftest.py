"""Fixtures of the Sieve tests: a LocalDNS on 127.0.17.53 and one peerage server for example.org on
127.0.17.1 (submission 587, IMAP 143, ManageSieve 4190) with users alice, bob, carol and dave."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import LocalDNS, PeerageServer, TestCA

ADDRESS = "127.0.17.1"
DNS_ADDRESS = "127.0.17.53"
PASSWORDS = {
    "alice@example.org": "alice's long passphrase",
    "bob@example.org": "bob's own secret",
    "carol@example.org": "carol keeps hers",
    "dave@example.org": "dave writes rules",
}
# The authentication deadline of the server: short, so the slow-drip test ends quickly.
AUTH_DEADLINE = 6.0


@pytest.fixture(scope="package")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="package")
def server(tmp_path_factory: pytest.TempPathFactory, test_ca: TestCA) -> Iterator[PeerageServer]:
    dns = LocalDNS(DNS_ADDRESS, 53).start()
    dns.add_mx("example.org", 10, "mail.example.org")
    dns.add_a("mail.example.org", ADDRESS)
    cert = test_ca.issue("example.org", dns_ids=["example.org", "mail.example.org"])
    peerage = PeerageServer(
        tmp_path_factory.mktemp("peerage"), "example.org", ADDRESS, dns=dns, services=("smtp", "imap", "sieve"),
        config={
            "smtp": {"source_address": ADDRESS, "first_retry_seconds": 1.0},
            "limits": {"auth_failures_per_ip": 1, "auth_failures_per_account": 1, "auth_deadline": AUTH_DEADLINE},
            "sieve": {"redirects_per_hour": 3},
        },
        certs={"example.org": cert}, ca_file=test_ca.cert_path,
    )
    for address, password in PASSWORDS.items():
        peerage.add_user(address, password)
    peerage.start()
    try:
        yield peerage
    finally:
        peerage.stop()
        dns.stop()
