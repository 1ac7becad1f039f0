"""Certificate files: checking that each domain's certificate and key load and belong together.

This module is in charge of turning a garbage PEM file, an encrypted key or a key that does not match
its certificate into a `ConfigError` naming the domain and the file, before any TLS context is built
(OpenSSL's own errors name neither), and of reporting names and expiry for `peerage check`.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from peerage.config import Config, ConfigError


@dataclass(frozen=True)
class CertificateInfo:
    domain: str
    path: Path
    names: list[str]
    not_after: datetime.datetime
    self_signed: bool

    @property
    def days_left(self) -> float:
        return (self.not_after - datetime.datetime.now(datetime.UTC)).total_seconds() / 86400


def _public(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_pair(domain: str, cert: Path, key: Path, where: str = "") -> CertificateInfo:
    """Load and check one certificate/key pair; every failure is a ConfigError saying what to do."""
    prefix = f"{where}: " if where else ""
    try:
        chain = x509.load_pem_x509_certificates(cert.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"{prefix}{domain}: certificate file {cert} does not exist") from None
    except ValueError:
        raise ConfigError(
            f"{prefix}{domain}: {cert} is not a PEM certificate (expected -----BEGIN CERTIFICATE-----); "
            "point 'cert' at the certificate chain, leaf first"
        ) from None
    try:
        private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    except FileNotFoundError:
        raise ConfigError(f"{prefix}{domain}: key file {key} does not exist") from None
    except TypeError:
        raise ConfigError(f"{prefix}{domain}: {key} is encrypted; store the key without a passphrase") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(
            f"{prefix}{domain}: {key} is not a PEM private key (expected -----BEGIN PRIVATE KEY-----)"
        ) from None
    leaf = chain[0]
    if _public(leaf.public_key()) != _public(private.public_key()):
        raise ConfigError(
            f"{prefix}{domain}: the key {key} does not belong to the certificate {cert}; "
            "use the key the certificate was issued for"
        )
    try:
        names = list(leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName))
    except x509.ExtensionNotFound:
        names = []
    return CertificateInfo(domain, cert, names, leaf.not_valid_after_utc, leaf.issuer == leaf.subject)


def check_certificates(config: Config) -> dict[str, CertificateInfo]:
    """Check every configured domain's certificate; the first problem is raised as a ConfigError."""
    found = {}
    for index, (name, domain) in enumerate(config.domains.items()):
        if domain.cert is None or domain.key is None:
            continue
        found[name] = load_pair(name, domain.cert, domain.key, f"{config.path}: [[domain]] #{index + 1}")
    return found
