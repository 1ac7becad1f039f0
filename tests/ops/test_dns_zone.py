"""`peerage dns` output is a zone file (dnspython's parser reads it) with TLSA, CAA and names."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import dns.rdatatype
import dns.zone
from cryptography import x509
from cryptography.hazmat.primitives import serialization


def test_dns_output_parses_as_a_zone_with_tlsa_and_caa(tmp_path: Path) -> None:
    def run(*args: str) -> str:
        result = subprocess.run([sys.executable, "-m", "peerage", *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    run("init", "zone.test", "--dir", str(tmp_path))
    text = run("-c", str(tmp_path / "peerage.toml"), "dns", "zone.test")
    zone = dns.zone.from_text(text, origin="zone.test.", relativize=False, check_origin=False)

    cert = x509.load_pem_x509_certificate((tmp_path / "certs" / "zone.test.crt").read_bytes())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    for port in (25, 5222, 5269):
        (tlsa,) = zone.find_rdataset(f"_{port}._tcp.zone.test.", dns.rdatatype.TLSA)
        assert (tlsa.usage, tlsa.selector, tlsa.mtype) == (3, 1, 1)
        assert tlsa.cert == hashlib.sha256(spki).digest()
    caa = {r.tag: r.value for r in zone.find_rdataset("zone.test.", dns.rdatatype.CAA)}
    assert caa[b"issue"] == b"letsencrypt.org"
    for name in ("conference", "upload", "autoconfig", "mta-sts"):
        assert zone.get_rdataset(f"{name}.zone.test.", dns.rdatatype.CNAME) is not None, name
    # The RSA DKIM key is longer than one TXT string may be: split, and whole again when joined.
    (dkim,) = zone.find_rdataset("rsa2048._domainkey.zone.test.", dns.rdatatype.TXT)
    assert len(dkim.strings) > 1 and b"".join(dkim.strings).startswith(b"v=DKIM1; k=rsa; p=")
    # No public address configured: the A/AAAA lines are comments saying what to set.
    assert zone.get_rdataset("zone.test.", dns.rdatatype.A) is None
    assert "; zone.test. 3600 IN A <public IPv4 address>" in text and "PTR" in text
