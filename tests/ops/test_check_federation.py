"""`peerage check` federation items against a running server and the harness DNS: our own MTA-STS
policy fetched over HTTPS, published TLSA records against the certificates served (SMTP, XMPP), and
SIP TLS on the _sips._tcp target. 127.0.8.82-83."""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.harness import LocalDNS, PeerageServer

ADDRESS = "127.0.8.82"
DNS = "127.0.8.83"
DOMAIN = "fed.test"


def spki_digest(cert: Path) -> bytes:
    key = x509.load_pem_x509_certificate(cert.read_bytes()).public_key()
    return hashlib.sha256(key.public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)).digest()


def test_check_federation_mta_sts_dane_sip(tmp_path: Path) -> None:
    from peerage.net.tls import generate_self_signed

    cert, key = tmp_path / f"{DOMAIN}.crt", tmp_path / f"{DOMAIN}.key"
    generate_self_signed(DOMAIN, cert, key)
    with LocalDNS(DNS) as dns:
        dns.add_zone(DOMAIN)
        dns.add_a(DOMAIN, ADDRESS)
        dns.add_mx(DOMAIN, 10, DOMAIN)
        dns.add_txt(f"_mta-sts.{DOMAIN}", "v=STSv1; id=20261201")
        dns.add_a(f"mta-sts.{DOMAIN}", ADDRESS)
        dns.add_tlsa(f"_25._tcp.{DOMAIN}", 3, 1, 1, spki_digest(cert))  # right
        dns.add_tlsa(f"_5222._tcp.{DOMAIN}", 3, 1, 1, b"\x00" * 32)  # stale
        dns.add_srv(f"_sips._tcp.{DOMAIN}", 10, 0, 5061, DOMAIN)
        # The test trusts the self-signed certificate the way a CA-issued one would be trusted.
        server = PeerageServer(tmp_path, [DOMAIN], ADDRESS, dns=dns, ca_file=cert,
                               services=("xmpp", "smtp", "web", "sip"))
        server.start()
        try:
            out = server.cli("check", check=False).stdout
            # Break things: the policy record disappears, SIP's SRV points at a name with no address.
            dns.remove(f"_mta-sts.{DOMAIN}")
            dns.remove(f"_sips._tcp.{DOMAIN}")
            dns.add_srv(f"_sips._tcp.{DOMAIN}", 10, 0, 5061, f"nowhere.{DOMAIN}")
            broken = server.cli("check", check=False).stdout
        finally:
            server.stop()
    assert f"ok       https://mta-sts.{DOMAIN}/.well-known/mta-sts.txt: mode enforce, mx {DOMAIN}, id 20261201" in out
    assert f"ok       SMTP: _25._tcp.{DOMAIN} TLSA matches the certificate served on {ADDRESS}:25" in out
    assert f"PROBLEM  XMPP c2s: no TLSA record at _5222._tcp.{DOMAIN} matches the certificate served" in out
    assert f"fix: publish: _5222._tcp.{DOMAIN}. 3600 IN TLSA 3 1 1 {spki_digest(cert).hex()}" in out
    assert f"warning  XMPP s2s: no TLSA at _5269._tcp.{DOMAIN}" in out
    assert f"ok       SIP TLS {DOMAIN}:5061: TLSv1.3, certificate covers {DOMAIN}" in out
    assert f"PROBLEM  _mta-sts.{DOMAIN} TXT: no v=STSv1 record" in broken
    assert f"PROBLEM  SIP TLS nowhere.{DOMAIN}:5061: nowhere.{DOMAIN} has no address" in broken


def test_mta_sts_certificate_not_trusted(tmp_path: Path) -> None:
    with LocalDNS(DNS) as dns:
        dns.add_zone(DOMAIN)
        dns.add_mx(DOMAIN, 10, DOMAIN)
        dns.add_txt(f"_mta-sts.{DOMAIN}", "v=STSv1; id=1")
        dns.add_a(f"mta-sts.{DOMAIN}", ADDRESS)
        server = PeerageServer(tmp_path, [DOMAIN], ADDRESS, dns=dns, services=("smtp", "web"))
        server.start()
        try:
            out = server.cli("check", check=False).stdout
        finally:
            server.stop()
    assert f"PROBLEM  https://mta-sts.{DOMAIN}/.well-known/mta-sts.txt: the certificate does not verify" in out
    # The policy is still read without verification and compared.
    assert "mode enforce" in out
