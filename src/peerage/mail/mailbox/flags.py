"""IMAP flag spelling: system flags in their canonical case, keywords kept as given, no duplicates."""

from __future__ import annotations

from collections.abc import Iterable

SEEN = "\\Seen"
ANSWERED = "\\Answered"
FLAGGED = "\\Flagged"
DELETED = "\\Deleted"
DRAFT = "\\Draft"
RECENT = "\\Recent"
# RFC 9051 §2.3.2: the system flags a client may set.
SYSTEM_FLAGS = (SEEN, ANSWERED, FLAGGED, DELETED, DRAFT)
_CANONICAL = {flag.lower(): flag for flag in SYSTEM_FLAGS}
# Keywords the mailbox advertises in FLAGS besides the system flags (RFC 5788 registry, used by
# Thunderbird and K-9 for junk filtering and forwarding).
WELL_KNOWN_KEYWORDS = ("$Forwarded", "$Junk", "$NotJunk", "$MDNSent", "$Phishing")


def canonical(flag: str) -> str:
    return _CANONICAL.get(flag.lower(), flag)


def normalize(flags: Iterable[str]) -> tuple[str, ...]:
    """Canonical, de-duplicated (case-insensitively, RFC 9051 §2.3.2), \\Recent dropped."""
    seen: dict[str, str] = {}
    for flag in flags:
        if not flag or flag.lower() == "\\recent":
            continue
        seen.setdefault(flag.lower(), canonical(flag))
    return tuple(seen.values())


def parse(text: str) -> tuple[str, ...]:
    return tuple(text.split()) if text else ()


def serialize(flags: Iterable[str]) -> str:
    return " ".join(flags)


def has(flags: Iterable[str], flag: str) -> bool:
    lowered = flag.lower()
    return any(item.lower() == lowered for item in flags)
