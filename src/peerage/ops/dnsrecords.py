"""DNS records the operator side adds to `peerage dns`: DANE (TLSA), CAA, service names, PTR.

This module is in charge of the records that follow from the certificates and the host rather than
from one protocol: TLSA "3 1 1" (DANE-EE, SHA-256 of the public key) for SMTP on port 25 (RFC 7672)
and for XMPP on 5222/5269 (RFC 7673), at the host name the SRV and MX records point to; CAA (RFC 8659)
naming the CA that may issue for the domain; CNAMEs for the XMPP service names; and the reverse
(PTR) record to ask the address's owner for, which receiving MTAs check. It also makes sure every
line parses as a zone file: long TXT strings are split into 255-octet pieces (RFC 1035 §3.3.14).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from peerage.config import Config


def spki_sha256(cert_path: Path) -> str | None:
    try:
        cert = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
    except (OSError, ValueError, IndexError):
        return None
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def records(domain: str, config: Config) -> list[str]:
    target = config.server.public_hostname or domain
    lines: list[str] = []
    entry = config.domain(domain)
    digest = spki_sha256(entry.cert) if entry is not None and entry.cert is not None else None
    from peerage.config import parse_listen

    ports = []
    if config.smtp.enabled:
        ports.append(25)  # remote MTAs always come to port 25, whatever mx_listen binds
    if config.xmpp.enabled:
        ports += [parse_listen(listen[0])[1] for listen in (config.xmpp.c2s_listen, config.xmpp.s2s_listen) if listen]
    if digest and ports:
        lines.append("; DANE-EE (3 1 1): the SHA-256 of the certificate's public key; renew with the same key,")
        lines.append("; or publish the next key's record before switching (RFC 7671 §8.1)")
        for port in ports:
            lines.append(f"_{port}._tcp.{target}. 3600 IN TLSA 3 1 1 {digest}")
    lines.append("; only this CA may issue certificates for the domain (RFC 8659); name yours if it is another")
    lines.append(f'{domain}. 3600 IN CAA 0 issue "letsencrypt.org"')
    lines.append(f'{domain}. 3600 IN CAA 0 iodef "mailto:postmaster@{domain}"')
    if config.xmpp.enabled:
        lines.append("; XMPP service names (XEP-0045 rooms, XEP-0363 uploads); the certificate covers *.{domain}"
                     .replace("{domain}", domain))
        for name in ("conference", "upload"):
            lines.append(f"{name}.{domain}. 3600 IN CNAME {target}.")
    address = config.server.public_ipv4 or "<public IPv4 address>"
    lines.append(f"; PTR: ask whoever owns {address} to point its reverse name at {target}. (mail")
    lines.append(f"; receivers check that it matches the EHLO name {config.smtp.hostname or target})")
    return lines


_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')


def zone_safe(record: str) -> str:
    """Split quoted strings longer than 255 octets; comment out records with placeholders."""
    if record.startswith(";"):
        return record
    if "<" in record and ">" in record:
        return f"; {record}   (fill in the address: set it in [server])"

    def split(match: re.Match[str]) -> str:
        text = match.group(1)
        if len(text.encode()) <= 255:
            return match.group(0)
        return " ".join(f'"{text[i:i + 255]}"' for i in range(0, len(text), 255))

    return _QUOTED.sub(split, record)
