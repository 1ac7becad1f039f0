"""Fixtures of the mail tests: a LocalDNS on 127.0.4.53 and a peerage server for example.org on
127.0.4.1 (MX 25, submission 587 and 465), with users alice and bob."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import LocalDNS, PeerageServer, TestCA
from tests.mail.helpers import DNS_ADDRESS, PEERAGE_ADDRESS, POSTFIX_ADDRESS

PASSWORDS = {
    "alice@example.org": "correct horse battery",
    "bob@example.org": "bob's own secret",
    "target@example.org": "never guessed",
}


def publish_peerage_domain(dns: LocalDNS, server: PeerageServer | None = None) -> None:
    dns.add_mx("example.org", 10, "mail.example.org")
    dns.add_a("mail.example.org", PEERAGE_ADDRESS)
    dns.add_txt("example.org", "v=spf1 ip4:127.0.4.0/24 -all")
    dns.add_txt("_dmarc.example.org", "v=DMARC1; p=reject")
    if server is not None:
        from peerage.mail.auth.dkim import load_keys

        keys = load_keys(server.data_dir, "example.org")
        assert keys is not None, "peerage has no DKIM keys for example.org"
        for name, value in keys.dns_records():
            dns.add_txt(name, value)


def publish_other_domain(dns: LocalDNS) -> None:
    dns.add_mx("example.net", 10, "mx.example.net")
    dns.add_a("mx.example.net", POSTFIX_ADDRESS)
    dns.add_txt("example.net", "v=spf1 ip4:127.0.4.2 -all")
    dns.add_txt("_dmarc.example.net", "v=DMARC1; p=none")


@pytest.fixture(scope="module")
def local_dns() -> Iterator[LocalDNS]:
    dns = LocalDNS(DNS_ADDRESS, 53).start()
    try:
        yield dns
    finally:
        dns.stop()


@pytest.fixture(scope="module")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("ca"))


def make_peerage(workdir: Path, dns: LocalDNS, ca: TestCA, config: dict[str, dict[str, object]] | None = None) -> PeerageServer:
    cert = ca.issue("example.org", dns_ids=["example.org", "mail.example.org"])
    base: dict[str, dict[str, object]] = {
        "smtp": {"source_address": PEERAGE_ADDRESS, "first_retry_seconds": 1.0},
        "limits": {"auth_failures_per_ip": 3, "auth_failures_per_account": 3},
    }
    for key, value in (config or {}).items():
        base.setdefault(key, {}).update(value)
    server = PeerageServer(
        workdir, "example.org", PEERAGE_ADDRESS, dns=dns, services=("smtp",), config=base,
        certs={"example.org": cert}, ca_file=ca.cert_path,
    )
    return server


@pytest.fixture(scope="module")
def peerage(tmp_path_factory: pytest.TempPathFactory, local_dns: LocalDNS, test_ca: TestCA) -> Iterator[PeerageServer]:
    server = make_peerage(tmp_path_factory.mktemp("peerage"), local_dns, test_ca)
    for address, password in PASSWORDS.items():
        server.add_user(address, password)
    # `peerage user add` does not create DKIM keys; `init` does. Create them as init would.
    from peerage.mail.auth.dkim import generate_keys

    generate_keys(server.data_dir, "example.org")
    publish_peerage_domain(local_dns, server)
    publish_other_domain(local_dns)
    server.start()
    try:
        yield server
    finally:
        server.stop()
