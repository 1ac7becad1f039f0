"""DANE for SMTP (RFC 7672): match a server certificate against its TLSA records.

This module is in charge of the sans-I/O matching rules. The queue asks `host.dns` for
`_25._tcp.<mx>` TLSA records; when there are usable ones, TLS is required and the certificate must
match one of them. DANE-EE (usage 3) binds the leaf certificate, without name checks (RFC 7672 §3.1.1);
DANE-TA (usage 2) is matched against the leaf as well, the one certificate Python's ssl exposes for
the peer, so a TA-only record set fails closed. PKIX usages 0 and 1 are unusable in SMTP (§3.1.3).
"""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from peerage.net.dns import Tlsa  # the resolver's record type, shared with the queue

USAGE_DANE_TA = 2
USAGE_DANE_EE = 3
SELECTOR_FULL_CERT = 0
SELECTOR_SPKI = 1
MATCH_EXACT = 0
MATCH_SHA256 = 1
MATCH_SHA512 = 2


def usable(records: list[Tlsa]) -> list[Tlsa]:
    """RFC 7672 §2.2: only DANE-TA and DANE-EE with known selectors and matching types count."""
    return [
        r
        for r in records
        if r.usage in (USAGE_DANE_TA, USAGE_DANE_EE)
        and r.selector in (SELECTOR_FULL_CERT, SELECTOR_SPKI)
        and r.mtype in (MATCH_EXACT, MATCH_SHA256, MATCH_SHA512)
    ]


def matches(certificate_der: bytes, records: list[Tlsa]) -> bool:
    """True when the leaf certificate matches one usable record."""
    try:
        certificate = x509.load_der_x509_certificate(certificate_der)
    except ValueError:
        return False
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for record in usable(records):
        selected = certificate_der if record.selector == SELECTOR_FULL_CERT else spki
        if record.mtype == MATCH_SHA256:
            selected = hashlib.sha256(selected).digest()
        elif record.mtype == MATCH_SHA512:
            selected = hashlib.sha512(selected).digest()
        if selected == record.data:
            return True
    return False
