"""`peerage dns DOMAIN` prints the mail records: MX, SPF, both DKIM keys, DMARC, MTA-STS, TLS-RPT and
the RFC 6186 / RFC 8314 service records."""

from __future__ import annotations

import base64
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.harness import PeerageServer


def test_dns_command_prints_mail_records(tmp_path: Path) -> None:
    server = PeerageServer(tmp_path, "example.org", "127.0.4.9", services=("smtp", "sieve"))
    from peerage.mail.auth.dkim import generate_keys, load_keys

    generate_keys(server.data_dir, "example.org")
    output = server.cli("dns", "example.org").stdout
    lines = output.splitlines()
    assert any(" IN MX 10 " in line and line.startswith("example.org.") for line in lines)
    assert 'example.org. 3600 IN TXT "v=spf1 mx -all"' in output
    keys = load_keys(server.data_dir, "example.org")
    assert keys is not None
    rsa_line = next(line for line in lines if line.startswith("rsa2048._domainkey.example.org."))
    ed_line = next(line for line in lines if line.startswith("ed25519._domainkey.example.org."))
    rsa_value = "".join(part for part in rsa_line.split('"')[1::2])
    assert rsa_value == f"v=DKIM1; k=rsa; p={keys.rsa_public_b64}"
    public = serialization.load_der_public_key(base64.b64decode(keys.rsa_public_b64))
    assert isinstance(public, rsa.RSAPublicKey) and public.key_size == 2048
    assert f"k=ed25519; p={keys.ed25519_public_b64}" in ed_line
    assert len(base64.b64decode(keys.ed25519_public_b64)) == 32
    for prefix, needle in (
        ("_dmarc.example.org.", "v=DMARC1; p=reject"),
        ("_mta-sts.example.org.", "v=STSv1; id="),
        ("_smtp._tls.example.org.", "v=TLSRPTv1; rua=mailto:"),
        ("_submission._tcp.example.org.", "IN SRV 0 1 587 "),
        ("_submissions._tcp.example.org.", "IN SRV 0 1 465 "),
        ("_imap._tcp.example.org.", "IN SRV 0 1 143 "),
        ("_imaps._tcp.example.org.", "IN SRV 0 1 993 "),
        ("_sieve._tcp.example.org.", "IN SRV 0 1 4190 "),
    ):
        assert any(line.startswith(prefix) and needle in line for line in lines), prefix
    assert "mode: enforce" in output


def test_init_generates_both_dkim_keys(tmp_path: Path) -> None:
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "peerage", "init", "example.org", "--dir", str(tmp_path)],
                   check=True, capture_output=True, timeout=60)
    assert list(tmp_path.rglob("dkim/example.org/rsa2048.pem"))
    assert list(tmp_path.rglob("dkim/example.org/ed25519.pem"))
