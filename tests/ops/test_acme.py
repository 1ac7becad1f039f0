"""ACME against Pebble (Debian's `pebble`, Let's Encrypt's test server): two domains get certificates
over HTTP-01 (the web service's port-80 challenge registry) and over TLS-ALPN-01 (RFC 8737, on the
HTTPS port), and the running server serves them without a restart. Pebble on 127.0.8.60, peerage on 127.0.8.61, the harness DNS on 127.0.8.62."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import socket
import ssl
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.harness import LocalDNS, PeerageServer, require_binary, wait_for

PEBBLE = "127.0.8.60"
ADDRESS = "127.0.8.61"
DNS = "127.0.8.62"
DOMAINS = ["one.acme.test", "two.acme.test"]


def pebble_tls(folder: Path, address: str = PEBBLE) -> tuple[Path, Path]:
    """A certificate for Pebble's own HTTPS, with its IP address as the name."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pebble")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "pebble.crt", folder / "pebble.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def listening() -> bool:
    try:
        socket.create_connection((PEBBLE, 14000), timeout=1).close()
    except OSError:
        return False
    return True


def served(port: int, name: str) -> x509.Certificate:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((ADDRESS, port), timeout=10) as raw, ctx.wrap_socket(raw, server_hostname=name) as tls:
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True) or b"")


@pytest.mark.timeout(240)
@pytest.mark.parametrize("challenge", ["http-01", "tls-alpn-01"])
def test_pebble_issues_for_two_domains_and_they_are_served_live(tmp_path: Path, challenge: str) -> None:
    binary = require_binary("pebble")
    cert, key = pebble_tls(tmp_path)
    (tmp_path / "pebble.json").write_text(json.dumps({"pebble": {
        "listenAddress": f"{PEBBLE}:14000", "managementListenAddress": f"{PEBBLE}:15000",
        "certificate": str(cert), "privateKey": str(key), "httpPort": 5002, "tlsPort": 5443,
        "ocspResponderURL": "", "externalAccountBindingRequired": False}}))
    with LocalDNS(DNS) as dns:
        for domain in DOMAINS:
            dns.add_zone(domain)
            dns.add_a(domain, ADDRESS)
        env = dict(os.environ, PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0", PEBBLE_AUTHZREUSE="0")
        pebble = subprocess.Popen([binary, "-config", str(tmp_path / "pebble.json"), "-dnsserver", f"{DNS}:53"],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        try:
            wait_for(listening, 30, "pebble listening")
            server = PeerageServer(tmp_path / "site", DOMAINS, ADDRESS, services=("xmpp",), config={
                "web": {"enabled": True, "https_listen": [f"{ADDRESS}:5443"], "http_listen": [f"{ADDRESS}:5002"]},
                "acme": {"directory": f"https://{PEBBLE}:14000/dir", "ca_file": str(cert), "names": [],
                         "challenge": challenge,
                         "email": "postmaster@one.acme.test"}})
            server.start()
            try:
                assert all(served(5223, d).issuer == served(5223, d).subject for d in DOMAINS[:1])
                wait_for(lambda: server.log_text().count("acme: new certificate for") >= 2, 120,
                         "two certificates from pebble")
                wait_for(lambda: "reloaded" in server.log_text(), 30, "reload")
                for domain in DOMAINS:
                    for port in (5223, 5443):
                        leaf = served(port, domain)
                        assert leaf.issuer != leaf.subject, (domain, port)
                        assert "Pebble" in leaf.issuer.rfc4514_string()
                        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                        assert domain in names.get_values_for_type(x509.DNSName)
                assert server.running
                # Nothing more to order: both are fresh.
                listed = server.cli("domain", "list").stdout
                assert listed.count("CA-issued") == 2, listed
            finally:
                server.stop()
        finally:
            pebble.terminate()
            pebble.wait(10)
