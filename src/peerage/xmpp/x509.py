"""Certificate identity checks for XMPP servers (RFC 6125 / RFC 9525, RFC 6120 section 13.7, RFC 7590).

This module is in charge of deciding whether a certificate speaks for an XMPP domain and whether it
chains to the configured trust anchors. Identities are read from the subjectAltName extension only:

- DNS-ID (dNSName), with a wildcard allowed only as the whole left-most label (RFC 9525 section 6.3);
- SRV-ID (otherName id-on-dnsSRV, RFC 4985) for the ``_xmpp-server`` / ``_xmpps-server`` services;
- XmppAddr (otherName id-on-xmppAddr, RFC 6120 section 13.7.1.4), an exact domain.

The Common Name is never used (RFC 9525 section 6.2.1 removes the CN-ID fallback). Chain validation
uses ``cryptography.x509.verification`` against the CA bundle from ``[tls] ca_file`` (or the system
store); it never looks at names, which is this module's job. No sockets here.
"""

from __future__ import annotations

import datetime
import ssl
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509 import verification
from cryptography.x509.oid import ObjectIdentifier

ID_ON_XMPPADDR = ObjectIdentifier("1.3.6.1.5.5.7.8.5")
ID_ON_DNSSRV = ObjectIdentifier("1.3.6.1.5.5.7.8.7")
#: SRV services an XMPP server certificate may name (RFC 6120 section 13.7.1.2.1, XEP-0368).
SERVER_SRV_SERVICES = ("_xmpp-server", "_xmpps-server")
#: Longest chain accepted: leaf, a few intermediates, root. cryptography's default is 8; Mozilla's
#: web PKI never needs more than 4.
MAX_CHAIN_DEPTH = 8

# DER universal tags used inside otherName values.
_UTF8_STRING = 0x0C
_IA5_STRING = 0x16


@dataclass(frozen=True)
class Identities:
    dns_ids: tuple[str, ...] = ()
    srv_ids: tuple[str, ...] = ()
    xmpp_addrs: tuple[str, ...] = ()

    def describe(self) -> str:
        parts = [f"DNS:{d}" for d in self.dns_ids] + [f"SRV:{s}" for s in self.srv_ids]
        parts += [f"xmppAddr:{x}" for x in self.xmpp_addrs]
        return ", ".join(parts) or "no subjectAltName identities"


def _der_string(value: bytes, expected_tag: int) -> str | None:
    """Decode a DER UTF8String / IA5String (short or long length form); None if it is not one."""
    if len(value) < 2 or value[0] != expected_tag:
        return None
    length = value[1]
    offset = 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or len(value) < 2 + count:
            return None
        length = int.from_bytes(value[2:2 + count], "big")
        offset = 2 + count
    body = value[offset:offset + length]
    if len(body) != length:
        return None
    try:
        return body.decode("utf-8" if expected_tag == _UTF8_STRING else "ascii")
    except UnicodeDecodeError:
        return None


def _normalise_domain(name: str) -> str:
    name = name.strip().rstrip(".").lower()
    try:
        return name.encode("idna").decode("ascii") if not name.isascii() else name
    except UnicodeError:
        return name


def identities(certificate: x509.Certificate) -> Identities:
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return Identities()
    dns_ids = tuple(_normalise_domain(n) for n in san.get_values_for_type(x509.DNSName))
    srv_ids: list[str] = []
    xmpp_addrs: list[str] = []
    for other in san.get_values_for_type(x509.OtherName):
        if other.type_id == ID_ON_DNSSRV:
            text = _der_string(other.value, _IA5_STRING)
            if text:
                srv_ids.append(text.lower().rstrip("."))
        elif other.type_id == ID_ON_XMPPADDR:
            text = _der_string(other.value, _UTF8_STRING)
            if text:
                xmpp_addrs.append(_normalise_domain(text))
    return Identities(dns_ids, tuple(srv_ids), tuple(xmpp_addrs))


def _dns_id_matches(pattern: str, domain: str) -> bool:
    if pattern == domain:
        return True
    # RFC 9525 section 6.3: "*" only as the complete left-most label, matching exactly one label.
    if pattern.startswith("*.") and "*" not in pattern[2:]:
        head, _, rest = domain.partition(".")
        return bool(head) and rest == pattern[2:] and rest.count(".") >= 1
    return False


def match_domain(ids: Identities, domain: str) -> str | None:
    """The identity that makes the certificate valid for XMPP server ``domain``, or None."""
    domain = _normalise_domain(domain)
    for srv in ids.srv_ids:
        service, _, name = srv.partition(".")
        if service in SERVER_SRV_SERVICES and _normalise_domain(name) == domain:
            return f"SRV-ID {srv}"
    for addr in ids.xmpp_addrs:
        if addr == domain:  # no wildcards in XmppAddr (RFC 6120 section 13.7.1.4)
            return f"XmppAddr {addr}"
    for pattern in ids.dns_ids:
        if _dns_id_matches(pattern, domain):
            return f"DNS-ID {pattern}"
    return None


def is_self_signed(certificate: x509.Certificate) -> bool:
    if certificate.issuer != certificate.subject:
        return False
    try:
        certificate.verify_directly_issued_by(certificate)
    except (ValueError, TypeError, Exception):
        return False
    return True


@dataclass(frozen=True)
class ChainResult:
    ok: bool
    reason: str


class TrustStore:
    """The CA bundle peers' certificates must chain to for the trusted level."""

    def __init__(self, ca_file: Path | None) -> None:
        self.ca_file = ca_file
        certs: list[x509.Certificate] = []
        if ca_file is not None:
            certs = x509.load_pem_x509_certificates(Path(ca_file).read_bytes())
        else:
            paths = ssl.get_default_verify_paths()
            for candidate in (paths.cafile, paths.openssl_cafile):
                if candidate and Path(candidate).is_file():
                    # Some system roots have non-positive serial numbers, which cryptography warns about.
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
                        try:
                            certs = x509.load_pem_x509_certificates(Path(candidate).read_bytes())
                        except ValueError:
                            certs = []
                    break
        self.anchors = certs
        self._store = verification.Store(certs) if certs else None

    def verify(self, leaf: x509.Certificate, intermediates: Iterable[x509.Certificate] = (),
               now: datetime.datetime | None = None) -> ChainResult:
        if self._store is None:
            return ChainResult(False, "no trust anchors are configured ([tls] ca_file)")
        if is_self_signed(leaf) and leaf not in self.anchors:
            return ChainResult(False, "the certificate is self-signed")
        builder = verification.PolicyBuilder().store(self._store).max_chain_depth(MAX_CHAIN_DEPTH)
        if now is not None:
            builder = builder.time(now)
        # Server certificates are used in both TLS roles on s2s, and many carry only serverAuth (or
        # only clientAuth): names are checked by ``match_domain``, so the end-entity policy accepts
        # any extension set here and the CA policy stays the web PKI one.
        builder = builder.extension_policies(
            ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(),
            ee_policy=verification.ExtensionPolicy.permit_all())
        try:
            builder.build_client_verifier().verify(leaf, list(intermediates))
        except verification.VerificationError as error:
            return ChainResult(False, f"the chain does not verify: {error}")
        return ChainResult(True, "chains to a trusted CA")


@dataclass(frozen=True)
class CertificateCheck:
    """Everything an operator (and the policy) needs to know about a peer's certificate."""

    present: bool
    chain_ok: bool = False
    chain_reason: str = "no certificate presented"
    matched: str | None = None
    identities: Identities = field(default_factory=Identities)
    self_signed: bool = False
    subject: str = ""
    issuer: str = ""
    not_after: str = ""

    @property
    def trusted(self) -> bool:
        """Chains to the trust list and names the domain: good enough for T and SASL EXTERNAL."""
        return self.present and self.chain_ok and self.matched is not None

    def explain(self, domain: str) -> str:
        if not self.present:
            return "no certificate was presented"
        name = (f"names {domain} ({self.matched})" if self.matched
                else f"does not name {domain}; it names {self.identities.describe()} "
                     "(the Common Name is never used)")
        return f"{self.chain_reason}; {name}"


def check_certificate(der: bytes | None, domain: str, trust: TrustStore,
                      intermediates: Iterable[bytes] = ()) -> CertificateCheck:
    if not der:
        return CertificateCheck(False)
    try:
        certificate = x509.load_der_x509_certificate(der)
    except ValueError as error:
        return CertificateCheck(True, False, f"unreadable certificate: {error}")
    chain = [x509.load_der_x509_certificate(d) for d in intermediates]
    result = trust.verify(certificate, chain)
    ids = identities(certificate)
    return CertificateCheck(
        True, result.ok, result.reason, match_domain(ids, domain), ids, is_self_signed(certificate),
        certificate.subject.rfc4514_string(), certificate.issuer.rfc4514_string(),
        certificate.not_valid_after_utc.isoformat())


def own_certificate_trusted(cert_path: Path | None, trust: TrustStore) -> bool:
    """Whether our own certificate chains to the trust list (``CertificateKind.CA_ISSUED``)."""
    if cert_path is None:
        return False
    try:
        certs = x509.load_pem_x509_certificates(Path(cert_path).read_bytes())
    except (OSError, ValueError):
        return False
    return bool(certs) and trust.verify(certs[0], certs[1:]).ok
