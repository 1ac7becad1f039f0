"""Short-lived login tokens: what a logged-in browser hands its XMPP client instead of the password.

This module is in charge of issuing, checking and ending the tokens ``GET /auth/xmpp-credentials``
returns (the web page's chat client logs in with the account's address and this token, so the user is
not asked for a second password). A token is good for one protocol only (``xmpp``: IMAP, SMTP, SIP and
the web login never accept it), for one account, until it expires (``[xmpp.websocket]
credential_lifetime``, 5 minutes by default), and may be used for any number of logins until then:
converse.js fetches a fresh one for every connection it opens, XEP-0198 resumption included.

Nothing on disk opens a session: a row keeps the SHA-256 of the token (256 random bits, so a fast hash
is enough, as for app passwords) for PLAIN, and SCRAM-SHA-1/SHA-256 keys derived from it under the
account's own salt and iteration count, so the account's one server-first message serves the token too
(``ScramCredential.alternates``), SCRAM-*-PLUS included. The identity layer's SASL engine therefore
needs no mechanism of its own: PLAIN and every SCRAM mechanism accept the token like a password, and
only the lookups (``AccountService.scram`` / ``verify_password`` with ``protocol=``) add it.

XEP-0484 (FAST) would give the same without a web round trip, but converse.js 14 (strophe.js 4) speaks
neither SASL2 nor FAST; ``{"jid", "password"}`` is what its ``credentials_url`` setting reads.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Integer, LargeBinary, Select, and_, cast, delete, insert, literal, null, select

from peerage.identity.credentials import SCRAM_HASHES, prepare_password, scram_credential
from peerage.identity.tables import login_tokens

#: Random bytes in a token: 256 bits, as the web session cookie (peerage.web.sessions.TOKEN_BYTES).
TOKEN_BYTES = 32
#: Every token starts with this, so an ordinary password never costs a token lookup and a leaked token
#: is recognisable in a log or a paste (GitHub's ``ghp_`` prefixes serve the same purpose).
TOKEN_PREFIX = "pxt_"
#: Protocols a token may be issued for.
PROTOCOLS = frozenset({"xmpp"})
#: Default and largest lifetime, in seconds. A browser client asks for a new token at each connection,
#: so minutes are plenty; an hour is the most an operator may set (OAuth access tokens of the big
#: providers live one hour).
DEFAULT_LIFETIME = 300.0
MAX_LIFETIME = 3600.0
#: Live tokens kept per account and protocol; issuing one more drops the oldest. A page reconnecting
#: every few seconds for the whole lifetime stays under it (300 s / 15 s = 20 tabs' worth).
MAX_TOKENS_PER_ACCOUNT = 32

Clock = Callable[[], float]


def looks_like_token(password: str) -> bool:
    return password.startswith(TOKEN_PREFIX) and len(password) < 128


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class LoginTokens:
    """The ``login_tokens`` table: issue, check (PLAIN), SCRAM keys, revoke."""

    def __init__(self, store: Any, clock: Clock = time.time) -> None:
        self.store = store
        self._clock = clock

    async def issue(self, account: str, protocol: str, *, salt: bytes, iterations: int, lifetime: float,
                    web_session: str | None = None) -> tuple[str, float]:
        """A new token for ``account`` on ``protocol``; returns it (shown once) and its expiry time."""
        import asyncio

        if protocol not in PROTOCOLS:
            raise ValueError(f"no login tokens for {protocol}")
        lifetime = max(1.0, min(lifetime, MAX_LIFETIME))
        token = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
        prepared = prepare_password(token)
        keys = await asyncio.to_thread(
            lambda: {name: scram_credential(name, prepared, salt, iterations) for name in SCRAM_HASHES})
        now = self._clock()
        expires = now + lifetime
        async with self.store.begin() as conn:
            mine = and_(login_tokens.c.account == account, login_tokens.c.protocol == protocol)
            await conn.execute(delete(login_tokens).where(login_tokens.c.expires < now))
            live = (await conn.execute(select(login_tokens.c.id).where(mine)
                                       .order_by(login_tokens.c.expires.desc()))).scalars().all()
            if len(live) >= MAX_TOKENS_PER_ACCOUNT:
                await conn.execute(delete(login_tokens).where(
                    login_tokens.c.id.in_(live[MAX_TOKENS_PER_ACCOUNT - 1:])))
            await conn.execute(insert(login_tokens).values(
                account=account, protocol=protocol, token_sha256=_digest(token),
                scram_sha1_stored_key=keys["SHA-1"].stored_key, scram_sha1_server_key=keys["SHA-1"].server_key,
                scram_sha256_stored_key=keys["SHA-256"].stored_key,
                scram_sha256_server_key=keys["SHA-256"].server_key,
                web_session=web_session, created=now, expires=expires))
        return token, expires

    async def matches(self, account: str, protocol: str, token: str) -> bool:
        """PLAIN: is ``token`` a live token of ``account`` for ``protocol``?"""
        if not looks_like_token(token):
            return False
        async with self.store.begin() as conn:
            row = (await conn.execute(select(login_tokens.c.id).where(
                login_tokens.c.account == account, login_tokens.c.protocol == protocol,
                login_tokens.c.token_sha256 == _digest(token), login_tokens.c.expires >= self._clock()))).first()
        return row is not None

    async def scram_keys(self, account: str, protocol: str, hash_name: str) -> list[tuple[bytes, bytes]]:
        """(stored_key, server_key) of ``account``'s live tokens for ``protocol``."""
        prefix = {"SHA-1": "scram_sha1", "SHA-256": "scram_sha256"}.get(hash_name)
        if prefix is None:
            return []
        async with self.store.begin() as conn:
            rows = (await conn.execute(self.scram_keys_query(account, protocol, prefix))).all()
        return [(bytes(r[-2]), bytes(r[-1])) for r in rows]

    def scram_keys_query(self, account: Any, protocol: Any, prefix: str, *, kind: int | None = None,
                         now: Any = None) -> Select[Any]:
        """The SELECT of ``scram_keys`` (``prefix`` is ``scram_sha1`` or ``scram_sha256``); with ``kind``,
        the rows lead with that constant and two NULLs (salt, iterations), to be one part of
        ``AccountService.scram``'s UNION ALL. ``account``, ``protocol`` and ``now`` (default: the
        clock now) may be bind parameters, for a statement built once and run with values."""
        keys = (login_tokens.c[f"{prefix}_stored_key"], login_tokens.c[f"{prefix}_server_key"])
        columns: tuple[Any, ...] = keys if kind is None else (
            literal(kind), cast(null(), LargeBinary), cast(null(), Integer), *keys)
        return select(*columns).where(
            login_tokens.c.account == account, login_tokens.c.protocol == protocol,
            login_tokens.c.expires >= (self._clock() if now is None else now))

    def now(self) -> float:
        """The clock token expiry is compared with."""
        return self._clock()

    async def web_session_of(self, account: str, protocol: str, key: bytes | str) -> str | None:
        """The web session that was given the live token a login just used: ``key`` is the SCRAM
        stored key its proof matched, or (PLAIN) the token itself. None for no token, or no session."""
        if isinstance(key, str):
            match = login_tokens.c.token_sha256 == _digest(key)
        else:
            match = (login_tokens.c.scram_sha1_stored_key == key) | (login_tokens.c.scram_sha256_stored_key == key)
        async with self.store.begin() as conn:
            row = (await conn.execute(select(login_tokens.c.web_session).where(
                login_tokens.c.account == account, login_tokens.c.protocol == protocol, match))).first()
        return None if row is None else row[0]

    async def revoke_web_session(self, web_session: str) -> int:
        """End the tokens a web session asked for (it logged out or was revoked)."""
        async with self.store.begin() as conn:
            result = await conn.execute(delete(login_tokens).where(login_tokens.c.web_session == web_session))
            return int(result.rowcount or 0)

    async def revoke_account(self, account: str) -> int:
        async with self.store.begin() as conn:
            result = await conn.execute(delete(login_tokens).where(login_tokens.c.account == account))
            return int(result.rowcount or 0)
