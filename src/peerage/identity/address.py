"""Addresses: `local@domain`, normalised the way XMPP, SIP and SMTP all accept.

This module is in charge of turning what a user or a peer typed into the one canonical form under which
an account is stored. The local part follows RFC 7622 §3.3 (PRECIS UsernameCaseMapped, RFC 8265), which
also keeps it valid as a SIP user part and an SMTP local part once the characters SIP and SMTP reserve
are excluded. The domain follows RFC 7622 §3.2: IDNA2008 U-labels lower-cased, no trailing dot.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

import precis_i18n

# RFC 7622 §3.3.1 forbids these in a localpart; we also exclude characters that would need escaping in a
# SIP URI user part or quoting in an SMTP local part (RFC 5321 §4.1.2 dot-string), so that one address
# works in all three protocols: the characters `%`, `!` and `'` are the classic relay tricks.
_FORBIDDEN_LOCAL = set('"&\'/:<>@ %!,;\\[]()`')
# RFC 7622 §3.3.1 and RFC 6122: 1023 bytes for each part; SMTP limits local parts to 64 octets
# (RFC 5321 §4.5.3.1.1), the tightest of the three, so we use it.
MAX_LOCAL_OCTETS = 64
# RFC 1035 §2.3.4: 255 octets for a domain name, 63 per label.
MAX_DOMAIN_OCTETS = 253
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_USERNAME = precis_i18n.get_profile("UsernameCaseMapped")


class AddressError(ValueError):
    """The text is not a valid address; the message says why."""


@dataclass(frozen=True, slots=True)
class Address:
    local: str
    domain: str

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"

    @property
    def sip_uri(self) -> str:
        return f"sip:{self.local}@{self.domain}"


def normalize_domain(text: str) -> str:
    """Return the canonical form of a domain name (lower-case, IDNA U-labels, no trailing dot)."""
    domain = text.strip()
    if domain.endswith("."):
        domain = domain[:-1]
    if not domain:
        raise AddressError("the domain is empty")
    if domain.startswith("[") or is_ip_literal(domain):
        raise AddressError(f"'{text}' is an IP address; accounts live under domain names")
    try:
        ascii_form = domain.encode("idna").decode("ascii").lower()
    except UnicodeError as exc:
        raise AddressError(f"'{text}' is not a valid domain name: {exc}") from None
    if len(ascii_form) > MAX_DOMAIN_OCTETS:
        raise AddressError(f"'{text}' is longer than {MAX_DOMAIN_OCTETS} octets")
    for label in ascii_form.split("."):
        if not _LABEL.match(label):
            raise AddressError(
                f"'{text}' is not a valid domain name: label '{label}' must be 1-63 letters, digits "
                "or hyphens, not starting or ending with a hyphen"
            )
    return domain.lower() if ascii_form.isascii() and domain.isascii() else ascii_form.encode().decode("idna")


def normalize_local(text: str) -> str:
    """Return the canonical local part (RFC 7622 §3.3, PRECIS UsernameCaseMapped)."""
    if not text:
        raise AddressError("the local part (before the @) is empty")
    bad = sorted(set(text) & _FORBIDDEN_LOCAL)
    if bad:
        raise AddressError(
            f"the local part '{text}' contains {', '.join(repr(c) for c in bad)}, which are not allowed "
            "in an address that must work for XMPP, SIP and mail"
        )
    try:
        local = _USERNAME.enforce(text)
    except UnicodeEncodeError as exc:
        raise AddressError(f"the local part '{text}' is not allowed by PRECIS (RFC 8265): {exc.reason}") from None
    if len(local.encode()) > MAX_LOCAL_OCTETS:
        raise AddressError(f"the local part '{text}' is longer than {MAX_LOCAL_OCTETS} octets")
    if local.startswith(".") or local.endswith(".") or ".." in local:
        raise AddressError(f"the local part '{text}' may not start or end with a dot or contain '..'")
    return local


def parse_address(text: str) -> Address:
    """Parse `local@domain` (a `sip:` or `xmpp:` prefix is accepted) into its canonical form."""
    value = text.strip()
    for scheme in ("sip:", "sips:", "xmpp:", "mailto:"):
        if value.lower().startswith(scheme):
            value = value[len(scheme):]
            break
    local, at, domain = value.rpartition("@")
    if not at:
        raise AddressError(f"'{text}' is not an address: expected local@domain, e.g. alice@example.org")
    return Address(normalize_local(local), normalize_domain(domain))


def is_ip_literal(text: str) -> bool:
    """True for an IPv4 or IPv6 address, bracketed or not."""
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True
