"""Fixtures of the web chat tests (loopback block 127.0.14.0/24): a LocalDNS, coturn with the TURN REST
shared secret, a peerage server for example.org (XMPP, SIP with WSS, the web service with /chat/, and
[turn] pointing at the coturn), and the accounts the tests use."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.browser import Browser, require_browser
from tests.harness import LocalDNS, PeerageServer, TestCA
from tests.webchat.coturn import Coturn

# The area's loopback block. PEERAGE_TEST_WEBCHAT_BLOCK moves it, for a local run while another run
# (a CI run taking no area locks) holds 127.0.14; CI uses the default.
BLOCK = os.environ.get("PEERAGE_TEST_WEBCHAT_BLOCK", "127.0.14")
DNS_ADDRESS = f"{BLOCK}.53"
PEERAGE_ADDRESS = f"{BLOCK}.1"
OTHER_ADDRESS = f"{BLOCK}.2"
TURN_ADDRESS = f"{BLOCK}.3"
CLIENT_ADDRESS = f"{BLOCK}.100"
DOMAIN = "example.org"
OTHER_DOMAIN = "example.net"
ALICE = "alice@example.org"
BOB = "bob@example.org"
ERIN = "erin@example.org"  # the browser that calls baresip and takes its calls (test_baresip.py)
DAVE = "dave@example.net"  # on the other peerage domain (XMPP s2s, SIP peering)
DAVE_PASSWORD = "dave-uses-baresip-9"  # no space: baresip account lines split on them
PASSWORD = "correct horse battery"
# Not 443: a benchmark elsewhere on this shared machine may hold the wildcard 0.0.0.0:443.
HTTPS_PORT = 8443
SIP_WSS_PORT = 7443
ORIGIN = f"https://{DOMAIN}:{HTTPS_PORT}"
TURN_PORT = 3478
# The network namespace test_baresip.py runs baresip in (tests/webchat/netns.py): two addresses of the
# benchmarking range (RFC 2544, never routed), the area block's third octet as its own. coturn relays
# to it as to a loopback peer.
NETNS_HOST_ADDRESS = f"198.18.{BLOCK.split('.')[2]}.1"
NETNS_ADDRESS = f"198.18.{BLOCK.split('.')[2]}.2"
# Short, so a test sees the push that replaces credentials and the expiry of the old ones (the floor
# [turn] credential_lifetime accepts is 10 s). 20 s: the push comes at 80 % of it, and 4 s before the
# expiry is a margin a loaded CI machine keeps (2 s was not).
CREDENTIAL_LIFETIME = 20


@pytest.fixture(scope="session")
def turn_secret() -> str:
    return secrets.token_hex(24)


@pytest.fixture(scope="session")
def local_dns() -> Iterator[LocalDNS]:
    dns = LocalDNS(DNS_ADDRESS, 53).start()
    try:
        yield dns
    finally:
        dns.stop()


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="session")
def coturn(tmp_path_factory: pytest.TempPathFactory, turn_secret: str) -> Iterator[Coturn]:
    server = Coturn(tmp_path_factory.mktemp("coturn"), TURN_ADDRESS, turn_secret, DOMAIN, port=TURN_PORT,
                    allowed_peers=(NETNS_ADDRESS,)).start()
    try:
        yield server
    finally:
        server.stop()


def turn_section(workdir: Path, secret: str) -> dict[str, Any]:
    secret_file = workdir / "turn-secret"
    secret_file.write_text(secret + "\n")
    os.chmod(secret_file, 0o600)
    return {
        "servers": [f"stun:{TURN_ADDRESS}:{TURN_PORT}", f"turn:{TURN_ADDRESS}:{TURN_PORT}?transport=udp",
                    f"turn:{TURN_ADDRESS}:{TURN_PORT}?transport=tcp"],
        "secret_file": str(secret_file), "credential_lifetime": CREDENTIAL_LIFETIME,
    }


@pytest.fixture(scope="session")
def peerage(tmp_path_factory: pytest.TempPathFactory, local_dns: LocalDNS, test_ca: TestCA, coturn: Coturn,
            turn_secret: str) -> Iterator[PeerageServer]:
    workdir = tmp_path_factory.mktemp("peerage")
    cert = test_ca.issue(DOMAIN, dns_ids=[DOMAIN])
    config: dict[str, Any] = {
        "web": {"https_listen": [f"{PEERAGE_ADDRESS}:{HTTPS_PORT}"], "http_listen": []},
        "sip": {"wss_listen": [f"{PEERAGE_ADDRESS}:{SIP_WSS_PORT}"], "tcp_listen": [], "tls_listen": []},
        "turn": turn_section(workdir, turn_secret),
        # The credential tests make refused logins on purpose; throttling them would only slow the area.
        "limits": {"auth_failures_per_ip": 1000, "auth_failures_per_account": 1000},
    }
    server = PeerageServer(workdir, DOMAIN, PEERAGE_ADDRESS, dns=local_dns, services=("xmpp", "sip", "web"),
                           config=config, certs={DOMAIN: cert}, ca_file=test_ca.cert_path)
    for account in (ALICE, BOB, ERIN):
        server.add_user(account, PASSWORD)
    local_dns.add_a(DOMAIN, PEERAGE_ADDRESS)
    local_dns.add_srv("_xmpp-client._tcp." + DOMAIN, 0, 5, 5222, DOMAIN)
    local_dns.add_srv("_xmpp-server._tcp." + DOMAIN, 0, 5, 5269, DOMAIN)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def other_peerage(tmp_path_factory: pytest.TempPathFactory, local_dns: LocalDNS, test_ca: TestCA,
                  peerage: PeerageServer) -> Iterator[PeerageServer]:
    """example.net: XMPP and SIP (UDP), found through DNS like any other provider."""
    workdir = tmp_path_factory.mktemp("other")
    cert = test_ca.issue(OTHER_DOMAIN, dns_ids=[OTHER_DOMAIN])
    config: dict[str, Any] = {"sip": {"tcp_listen": [], "tls_listen": []}, "limits": {"auth_failures_per_ip": 1000}}
    server = PeerageServer(workdir, OTHER_DOMAIN, OTHER_ADDRESS, dns=local_dns, services=("xmpp", "sip"),
                           config=config, certs={OTHER_DOMAIN: cert}, ca_file=test_ca.cert_path)
    server.add_user(DAVE, DAVE_PASSWORD)
    local_dns.add_a(OTHER_DOMAIN, OTHER_ADDRESS)
    local_dns.add_srv("_xmpp-server._tcp." + OTHER_DOMAIN, 0, 5, 5269, OTHER_DOMAIN)
    for domain in (DOMAIN, OTHER_DOMAIN):  # SIP peering over UDP (RFC 3263 NAPTR, then SRV)
        local_dns.add_naptr(domain, 10, 10, "s", "SIP+D2U", "", f"_sip._udp.{domain}")
        local_dns.add_srv(f"_sip._udp.{domain}", 10, 0, 5060, domain)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _page(tmp_path_factory: pytest.TempPathFactory, account: str, *, loopback: bool = True) -> Iterator[Browser]:
    from tests.webchat.pages import login_to_chat, open_browser, wait_phone

    require_browser()
    browser = open_browser(tmp_path_factory.mktemp(account.split("@")[0]), loopback=loopback)
    try:
        login_to_chat(browser, account)
        # Relay only: media goes through coturn, and never to an address outside the loopback block.
        browser.click("#relay")
        wait_phone(browser, "registered")
        yield browser
    finally:
        browser.close()


@pytest.fixture(scope="session")
def alice_page(peerage: PeerageServer, coturn: Coturn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    """A Chromium logged in at /chat/ as alice, phone registered; shared by the browser tests."""
    yield from _page(tmp_path_factory, ALICE)


@pytest.fixture(scope="session")
def bob_page(peerage: PeerageServer, coturn: Coturn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    yield from _page(tmp_path_factory, BOB)
