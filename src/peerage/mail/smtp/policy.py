"""Sans-I/O address and content policy for SMTP: which paths are acceptable and which bodies are safe.

This module is in charge of the decisions that keep peerage from being an open relay and from being
used for SMTP smuggling. It never touches the network: the server hands it strings and bytes and gets
back a verdict with the protocol-correct reply.
"""

from __future__ import annotations

from dataclasses import dataclass

# RFC 5321 §4.5.3.1.1: the maximum local part is 64 octets; Postfix enforces the same by default.
MAX_LOCAL_PART_OCTETS = 64
# RFC 5321 §4.5.3.1.2: the maximum domain is 255 octets.
MAX_DOMAIN_OCTETS = 255
# RFC 5321 §4.5.3.1.3: the maximum path (including the angle brackets' content) is 256 octets.
MAX_PATH_OCTETS = 256

# Characters that older MTAs interpreted as routing inside a local part: the percent hack
# (user%foreign@us), UUCP bang paths (foreign!user@us) and an embedded at-sign. Postfix's
# allow_untrusted_routing=no refuses exactly these for untrusted clients.
ROUTING_CHARACTERS = frozenset("%!@")
# RFC 5321 §6.3: a message with too many Received fields is looping; Postfix's hopcount_limit is 50.
MAX_HOPS = 50

RELAY_DENIED = "550 5.7.1 Relay access denied"
BAD_ADDRESS = "553 5.1.3 Bad recipient address syntax"
BAD_SENDER = "553 5.1.7 Bad sender address syntax"
NO_SUCH_USER = "550 5.1.1 No such user here"


class PathRefused(ValueError):
    """The path cannot be accepted; `reply` is the SMTP reply to send."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


@dataclass(frozen=True, slots=True)
class Mailbox:
    """A plain `local@domain`, free of routing tricks, with the domain in lower case."""

    local: str
    domain: str

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"


def parse_mailbox(path: str, *, refusal: str = BAD_ADDRESS) -> Mailbox:
    """Split an SMTP path (without angle brackets) into a plain mailbox, or raise `PathRefused`.

    Refused: source routes (`@relay:user@dom`, RFC 5321 §4.1.2 says to ignore them, but accepting
    them invites relay abuse), quoted local parts (`"user@foreign"@us`), the percent hack, bang
    paths, empty parts, over-long parts, and domains with a trailing dot or an empty label.
    """
    if len(path.encode("utf-8", "surrogateescape")) > MAX_PATH_OCTETS:
        raise PathRefused(refusal)
    if path.startswith("@") or ":" in path:
        # A source route, or a colon, which has no place in a dot-atom local part.
        raise PathRefused(RELAY_DENIED)
    local, sep, domain = path.rpartition("@")
    if not sep or not local or not domain:
        raise PathRefused(refusal)
    if local.startswith('"') or '"' in local or "\\" in local:
        raise PathRefused(RELAY_DENIED)
    if ROUTING_CHARACTERS.intersection(local):
        raise PathRefused(RELAY_DENIED)
    if len(local.encode("utf-8", "surrogateescape")) > MAX_LOCAL_PART_OCTETS:
        raise PathRefused(refusal)
    if local.startswith(".") or local.endswith(".") or ".." in local:
        raise PathRefused(refusal)
    if any(ch.isspace() or ord(ch) < 0x20 or ch in "()<>[],;" for ch in local):
        raise PathRefused(refusal)
    if domain.endswith(".") or domain.startswith(".") or ".." in domain:
        raise PathRefused(RELAY_DENIED)
    if len(domain.encode("utf-8", "surrogateescape")) > MAX_DOMAIN_OCTETS:
        raise PathRefused(refusal)
    if domain.startswith("["):
        # Address literals (RFC 5321 §4.1.3) name a host, never one of our domains.
        raise PathRefused(RELAY_DENIED)
    if any(ch.isspace() or ch in "()<>[],;:\\\"!%@" for ch in domain):
        raise PathRefused(refusal)
    return Mailbox(local, domain.lower())


def has_bare_line_ending(data: bytes) -> bool:
    """True when `data` holds a CR or LF that is not part of a CRLF pair.

    SMTP smuggling (CVE-2023-51764/51765/51766) hides a second message behind `<LF>.<LF>` or
    `<CR>.<CR>` that one server ends DATA on and another does not. RFC 5321 §2.3.8 allows only CRLF;
    Postfix 3.9's smtpd_forbid_bare_newline refuses such mail, and so do we.
    """
    pairs = data.count(b"\r\n")
    return data.count(b"\n") != pairs or data.count(b"\r") != pairs


def count_received(data: bytes) -> int:
    """How many Received fields the header section holds (the loop detector of RFC 5321 §6.3)."""
    end = data.find(b"\r\n\r\n")
    head = b"\r\n" + (data[: end + 2] if end >= 0 else data).lower()
    return head.count(b"\r\nreceived:")
