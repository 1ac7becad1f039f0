"""Short-lived SIP digest secrets a logged-in web session hands to the browser's phone (JsSIP).

This module is in charge of minting them, answering which HA1s they add to an account, and ending them.
A web page must register over SIP WebSocket without asking for the password again, and without the
account's password reaching the page: ``POST /auth/sip-credentials`` calls ``issue`` and gives the page
a random token as its digest password. Only the token's HA1s are kept (RFC 3261 §22.4 / RFC 8760 H(A1),
for the local part and for the full address as username, MD5 and SHA-256), in the ``sip_web_tokens``
table, until they expire; the token itself is never stored. ``AccountService.sip_ha1_all`` lists them
after the account's own, so the registrar and proxy accept them like an app password, and only for SIP.

Kept in the database, not in memory, so that a restart (or another node of a cluster sharing the
database) does not strand a page's phone, and so that the things that must end them can, from any
process: logging out of the web session that asked (``revoke_web_session``), revoking that session from
another browser, and a password change or account deletion (``revoke``, also run by
``peerage user passwd`` in its own process).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import delete, insert, select

from peerage.identity.address import Address
from peerage.identity.credentials import SIP_DIGEST_HASHES, sip_ha1
from peerage.identity.tables import sip_web_tokens

# A token lasts this long by default; the page fetches the next at 80% of its life (chatui/src/phone.js).
# It bounds how long a phone keeps registering after its web session ended some way this module is not
# told of (the session's idle timeout): an hour, the longest registration [sip] max_expires allows by
# default, the same order as the XMPP token's.
DEFAULT_LIFETIME = 3600.0
# Live tokens per account: a token per open tab or browser, plus a refresh overlapping its predecessor.
# Beyond this the oldest goes (its page re-fetches when refused), so a script looping on the endpoint
# cannot grow the table or the digest check's work.
MAX_TOKENS_PER_ACCOUNT = 16
# 128 bits of randomness, URL-safe (the same strength as the web session tokens).
TOKEN_BYTES = 16

_COLUMNS = {("MD5", False): "ha1_md5", ("SHA-256", False): "ha1_sha256",
            ("MD5", True): "ha1_full_md5", ("SHA-256", True): "ha1_full_sha256"}


class SipTokens:
    def __init__(self, store: Any, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    async def issue(self, address: Address, lifetime: float = DEFAULT_LIFETIME, *,
                    web_session: str | None = None) -> tuple[str, float]:
        """A new token for `address` (its SIP digest password) and its expiry (Unix time); `web_session`
        (the session token's hash) lets ``revoke_web_session`` end it with that session."""
        token = secrets.token_urlsafe(TOKEN_BYTES)
        now = self.clock()
        expires = now + lifetime
        local = {alg: sip_ha1(alg, address.local, address.domain, token) for alg in SIP_DIGEST_HASHES}
        full = {alg: sip_ha1(alg, str(address), address.domain, token) for alg in SIP_DIGEST_HASHES}
        account = str(address)
        async with self.store.begin() as conn:
            await conn.execute(delete(sip_web_tokens).where(sip_web_tokens.c.expires <= now))
            live = (await conn.execute(select(sip_web_tokens.c.id).where(sip_web_tokens.c.account == account)
                                       .order_by(sip_web_tokens.c.expires.desc()))).scalars().all()
            if len(live) >= MAX_TOKENS_PER_ACCOUNT:
                await conn.execute(delete(sip_web_tokens).where(
                    sip_web_tokens.c.id.in_(live[MAX_TOKENS_PER_ACCOUNT - 1:])))
            await conn.execute(insert(sip_web_tokens).values(
                account=account, ha1_md5=local["MD5"], ha1_sha256=local["SHA-256"],
                ha1_full_md5=full["MD5"], ha1_full_sha256=full["SHA-256"],
                web_session=web_session, created=now, expires=expires))
        return token, expires

    async def ha1s(self, account: str, algorithm: str, *, full: bool = False) -> Sequence[str]:
        """The live tokens' HA1s of `account` for `algorithm` (MD5 or SHA-256)."""
        column = _COLUMNS.get((algorithm.upper(), full))
        if column is None:
            return []
        async with self.store.begin() as conn:
            rows = (await conn.execute(select(sip_web_tokens.c[column]).where(
                sip_web_tokens.c.account == account, sip_web_tokens.c.expires > self.clock()))).scalars().all()
        return [str(h) for h in rows]

    async def issued_to(self, account: str, algorithm: str, ha1: str, *, full: bool = False) -> tuple[bool, str | None]:
        """Is ``ha1`` (one a digest response matched) a live token's, and which web session (its hash)
        asked for it: the registrar records it with the binding, so ending that session drops it."""
        column = _COLUMNS.get((algorithm.upper(), full))
        if column is None:
            return False, None
        async with self.store.begin() as conn:
            row = (await conn.execute(select(sip_web_tokens.c.web_session).where(
                sip_web_tokens.c.account == account, sip_web_tokens.c[column] == ha1))).first()
        return (False, None) if row is None else (True, row[0])

    async def revoke(self, account: str, conn: Any = None) -> int:
        """End every token of `account` (its password changed, or it was deleted); how many. With
        `conn`, inside the caller's transaction."""
        if conn is not None:
            result = await conn.execute(delete(sip_web_tokens).where(sip_web_tokens.c.account == account))
            return int(result.rowcount or 0)
        async with self.store.begin() as own:
            return await self.revoke(account, own)

    async def revoke_web_session(self, web_session: str) -> int:
        """End the tokens the web session `web_session` (its token's hash) was given; how many."""
        async with self.store.begin() as conn:
            result = await conn.execute(delete(sip_web_tokens).where(sip_web_tokens.c.web_session == web_session))
            return int(result.rowcount or 0)
