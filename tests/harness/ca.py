"""TestCA: a throw-away certificate authority issuing the certificates the harness needs.

It issues CA-signed certificates with any mix of DNS-IDs, SRV-IDs (RFC 4985) and id-on-xmppAddr
(RFC 6120 §13.7.1.4) names, and self-signed ones, so tests can reproduce every XEP-0238 certificate kind.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier

ID_ON_XMPPADDR = ObjectIdentifier("1.3.6.1.5.5.7.8.5")
ID_ON_DNSSRV = ObjectIdentifier("1.3.6.1.5.5.7.8.7")


def _utf8_string(text: str) -> bytes:
    data = text.encode()
    return bytes([0x0C, len(data)]) + data  # DER UTF8String, short form (names are < 128 bytes)


def _ia5_string(text: str) -> bytes:
    data = text.encode("ascii")
    return bytes([0x16, len(data)]) + data


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


class TestCA:
    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path, name: str = "peerage test CA") -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self.name).issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.cert_path = self.directory / "ca.crt"
        self.cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def _build(self, common_name: str, dns_ids: list[str], srv_ids: list[str], xmpp_addrs: list[str],
               issuer_key: ec.EllipticCurvePrivateKey | None, issuer_name: x509.Name | None,
               key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
        now = datetime.datetime.now(datetime.UTC)
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_ids]
        sans += [x509.OtherName(ID_ON_DNSSRV, _ia5_string(s)) for s in srv_ids]
        sans += [x509.OtherName(ID_ON_XMPPADDR, _utf8_string(j)) for j in xmpp_addrs]
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer_name or subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH,
                                                  x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        if issuer_key is not None:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        return builder.sign(issuer_key or key, hashes.SHA256())

    def issue(self, name: str, *, dns_ids: list[str] | None = None, srv_ids: list[str] | None = None,
              xmpp_addrs: list[str] | None = None, self_signed: bool = False) -> tuple[Path, Path]:
        """Write NAME.crt/NAME.key; by default DNS-ID = [name]. Returns (cert_path, key_path)."""
        key = ec.generate_private_key(ec.SECP256R1())
        dns = [name] if dns_ids is None else dns_ids
        cert = self._build(name, dns, srv_ids or [], xmpp_addrs or [],
                           None if self_signed else self.key, None if self_signed else self.name, key)
        suffix = "-self" if self_signed else ""
        cert_path = self.directory / f"{name}{suffix}.crt"
        key_path = self.directory / f"{name}{suffix}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, key_path)
        return cert_path, key_path

    def self_signed(self, name: str, **kwargs: list[str]) -> tuple[Path, Path]:
        return self.issue(name, self_signed=True, **kwargs)
