"""JIDs (RFC 7622) as the XMPP code handles them: split, normalise, join.

This module is in charge of turning the ``to``/``from`` text of stanzas into a canonical
(local, domain, resource) triple. Local parts and domains are normalised with
``peerage.identity.address`` (PRECIS); the result is cached because routing does this for every stanza.
"""

from __future__ import annotations

from functools import lru_cache

from peerage.identity.address import AddressError, normalize_domain, normalize_local

#: RFC 7622 section 3.4: a resourcepart is at most 1023 octets.
MAX_RESOURCE_OCTETS = 1023
#: Distinct JIDs whose normalised form is remembered. The hot path sees the same few thousand
#: addresses again and again; the bound keeps memory flat under a flood of random addresses.
JID_CACHE_SIZE = 16384


class JidError(ValueError):
    """The text is not a valid JID (the stanza gets <jid-malformed/>)."""


@lru_cache(maxsize=JID_CACHE_SIZE)
def split_jid(text: str) -> tuple[str, str, str]:
    """Return (local, domain, resource), each normalised; '' for a missing part."""
    bare, slash, resource = text.partition("/")
    if slash and not resource:
        raise JidError(f"'{text}': empty resource")
    if len(resource.encode()) > MAX_RESOURCE_OCTETS:
        raise JidError(f"'{text}': resource too long")
    local, at, domain = bare.rpartition("@")
    try:
        if domain.isascii() and domain.replace("-", "").replace(".", "").isalnum() and domain.islower():
            ndomain = domain
        else:
            ndomain = normalize_domain(domain)
        if at:
            if local.isascii() and local.isalnum() and local.islower():
                nlocal = local
            else:
                nlocal = normalize_local(local)
        else:
            nlocal = ""
    except AddressError as error:
        raise JidError(str(error)) from None
    return nlocal, ndomain, resource


@lru_cache(maxsize=JID_CACHE_SIZE)
def split_jid_bare(text: str) -> tuple[str, str, str, str]:
    """``split_jid`` plus the bare JID ``local@domain`` ('' when there is no local part).

    The stanza router needs all four for every stanza; caching the joined bare JID saves building
    it again each time."""
    local, domain, resource = split_jid(text)
    return local, domain, resource, f"{local}@{domain}" if local else ""


def bare_of(text: str) -> str:
    """Normalised bare JID (local@domain or domain) of ``text``."""
    local, domain, _ = split_jid(text)
    return f"{local}@{domain}" if local else domain


def join_jid(local: str, domain: str, resource: str = "") -> str:
    jid = f"{local}@{domain}" if local else domain
    return f"{jid}/{resource}" if resource else jid


def normalize_jid(text: str) -> str:
    return join_jid(*split_jid(text))
