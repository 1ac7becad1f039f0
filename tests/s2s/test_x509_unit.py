"""Unit tests of RFC 6125/9525 identity checks: DNS-ID, SRV-ID, XmppAddr, never the CN."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from peerage.xmpp.x509 import (
    Identities,
    TrustStore,
    check_certificate,
    identities,
    match_domain,
    own_certificate_trusted,
)
from tests.harness import TestCA


def _der(path: Path) -> bytes:
    return x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("ca"))


def test_dns_id(ca: TestCA) -> None:
    cert, _ = ca.issue("dns.example")
    check = check_certificate(_der(cert), "dns.example", TrustStore(ca.cert_path))
    assert check.trusted and check.matched == "DNS-ID dns.example"


def test_srv_id_only(ca: TestCA) -> None:
    cert, _ = ca.issue("srv.example", dns_ids=[], srv_ids=["_xmpp-server.srv.example"])
    check = check_certificate(_der(cert), "srv.example", TrustStore(ca.cert_path))
    assert check.trusted and check.matched == "SRV-ID _xmpp-server.srv.example"
    assert not check_certificate(_der(cert), "other.example", TrustStore(ca.cert_path)).trusted


def test_xmppaddr_only(ca: TestCA) -> None:
    cert, _ = ca.issue("addr.example", dns_ids=[], xmpp_addrs=["addr.example"])
    check = check_certificate(_der(cert), "ADDR.example.", TrustStore(ca.cert_path))
    assert check.trusted and check.matched == "XmppAddr addr.example"


def test_common_name_is_never_used(ca: TestCA) -> None:
    cert, _ = ca.issue("cn-only.example", dns_ids=[])
    check = check_certificate(_der(cert), "cn-only.example", TrustStore(ca.cert_path))
    assert check.chain_ok and check.matched is None and not check.trusted
    assert "Common Name is never used" in check.explain("cn-only.example")


def test_wildcards_cover_one_left_label_only() -> None:
    ids = Identities(dns_ids=("*.example.org",))
    assert match_domain(ids, "chat.example.org") == "DNS-ID *.example.org"
    assert match_domain(ids, "example.org") is None
    assert match_domain(ids, "a.b.example.org") is None
    assert match_domain(Identities(dns_ids=("*.org",)), "example.org") is None
    assert match_domain(Identities(dns_ids=("c*.example.org",)), "chat.example.org") is None
    assert match_domain(Identities(xmpp_addrs=("*.example.org",)), "a.example.org") is None
    assert match_domain(Identities(srv_ids=("_sip._tcp.example.org",)), "example.org") is None


def test_self_signed_does_not_chain(ca: TestCA) -> None:
    cert, _ = ca.self_signed("self.example")
    check = check_certificate(_der(cert), "self.example", TrustStore(ca.cert_path))
    assert check.self_signed and not check.chain_ok and check.matched and not check.trusted
    assert "self-signed" in check.chain_reason


def test_other_ca_does_not_chain(ca: TestCA, tmp_path: Path) -> None:
    other = TestCA(tmp_path / "other", "another CA")
    cert, _ = other.issue("elsewhere.example")
    check = check_certificate(_der(cert), "elsewhere.example", TrustStore(ca.cert_path))
    assert not check.chain_ok and not check.trusted


def test_no_certificate() -> None:
    check = check_certificate(None, "x.example", TrustStore(None))
    assert not check.present and not check.trusted


def test_own_certificate_kind(ca: TestCA) -> None:
    trust = TrustStore(ca.cert_path)
    assert own_certificate_trusted(ca.issue("mine.example")[0], trust)
    assert not own_certificate_trusted(ca.self_signed("mine2.example")[0], trust)
    assert not own_certificate_trusted(None, trust)


def test_identities_reads_all_kinds(ca: TestCA) -> None:
    cert, _ = ca.issue("all.example", dns_ids=["all.example"], srv_ids=["_xmpps-server.all.example"],
                       xmpp_addrs=["all.example"])
    ids = identities(x509.load_pem_x509_certificate(cert.read_bytes()))
    assert ids.dns_ids == ("all.example",)
    assert ids.srv_ids == ("_xmpps-server.all.example",)
    assert ids.xmpp_addrs == ("all.example",)
