"""Web sessions in the database: create at login, look up per request, list, revoke, expire.

This module is in charge of the session token's life: 32 random bytes in a cookie, stored only as their
SHA-256; a CSRF token per session; an absolute lifetime and an idle timeout; the owner's view of their
sessions (created, last seen, address, browser) and revocation of any of them.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, insert, select, update

from peerage.web.tables import web_sessions

# Bytes of randomness in a session token (OWASP's session guidance asks for at least 64 bits; 256
# makes guessing pointless and matches Django's and Mox's session keys).
TOKEN_BYTES = 32
# last_seen is written at most this often per session, so reading pages is not a write per request.
TOUCH_INTERVAL = 60.0
# Bound on what a browser's User-Agent may put in the table.
USER_AGENT_LENGTH = 256

Clock = Callable[[], float]


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class WebSession:
    public_id: str
    account: str
    csrf: str
    created: float
    last_seen: float
    expires: float
    ip: str
    user_agent: str

    def as_json(self, current: bool = False) -> dict[str, Any]:
        return {
            "id": self.public_id,
            "created": _iso(self.created),
            "lastSeen": _iso(self.last_seen),
            "expires": _iso(self.expires),
            "ip": self.ip,
            "userAgent": self.user_agent,
            "current": current,
        }


def _iso(stamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))


def _session(row: Any) -> WebSession:
    return WebSession(row.public_id, row.account, row.csrf, row.created, row.last_seen, row.expires, row.ip,
                      row.user_agent)


class SessionStore:
    def __init__(self, store: Any, lifetime: float, idle_timeout: float, clock: Clock = time.time) -> None:
        self.store = store
        self.lifetime = lifetime
        self.idle_timeout = idle_timeout
        self._clock = clock

    async def create(self, account: str, ip: str, user_agent: str) -> tuple[str, WebSession]:
        """A new session for `account`; returns the cookie token (shown once) and the session."""
        token = secrets.token_urlsafe(TOKEN_BYTES)
        now = self._clock()
        session = WebSession(secrets.token_hex(16), account, secrets.token_urlsafe(TOKEN_BYTES), now, now,
                             now + self.lifetime, ip[:64], user_agent[:USER_AGENT_LENGTH])
        async with self.store.begin() as conn:
            # Expired sessions of this account go when it logs in again, so the table stays bounded by
            # live sessions plus a few stale ones per account.
            await conn.execute(delete(web_sessions).where(web_sessions.c.account == account,
                                                          web_sessions.c.expires < now))
            await conn.execute(insert(web_sessions).values(
                token_hash=hash_token(token), public_id=session.public_id, account=account, csrf=session.csrf,
                created=now, last_seen=now, expires=session.expires, ip=session.ip, user_agent=session.user_agent,
            ))
        return token, session

    async def lookup(self, token: str) -> WebSession | None:
        """The live session this cookie token opens, or None; refreshes last_seen now and then."""
        if not token or len(token) > 128:
            return None
        digest = hash_token(token)
        now = self._clock()
        async with self.store.begin() as conn:
            row = (await conn.execute(select(web_sessions).where(web_sessions.c.token_hash == digest))).first()
            if row is None:
                return None
            if row.expires < now or row.last_seen + self.idle_timeout < now:
                await conn.execute(delete(web_sessions).where(web_sessions.c.token_hash == digest))
                return None
            if now - row.last_seen > TOUCH_INTERVAL:
                await conn.execute(update(web_sessions).where(web_sessions.c.token_hash == digest)
                                   .values(last_seen=now))
        return _session(row)

    async def end(self, token: str) -> None:
        async with self.store.begin() as conn:
            await conn.execute(delete(web_sessions).where(web_sessions.c.token_hash == hash_token(token)))

    async def list(self, account: str) -> list[WebSession]:
        now = self._clock()
        async with self.store.begin() as conn:
            rows = await conn.execute(select(web_sessions).where(web_sessions.c.account == account,
                                                                 web_sessions.c.expires >= now)
                                      .order_by(web_sessions.c.created))
            return [_session(r) for r in rows if r.last_seen + self.idle_timeout >= now]

    async def revoke(self, account: str, public_id: str) -> str | None:
        """End one of `account`'s sessions by its public id; the ended session's token hash (so what it was
        given can end with it), or None if it has none by that id."""
        async with self.store.begin() as conn:
            mine = (web_sessions.c.account == account, web_sessions.c.public_id == public_id)
            digest = (await conn.execute(select(web_sessions.c.token_hash).where(*mine))).scalar()
            if digest is None:
                return None
            await conn.execute(delete(web_sessions).where(*mine))
            return str(digest)

    async def revoke_all(self, account: str) -> int:
        async with self.store.begin() as conn:
            result = await conn.execute(delete(web_sessions).where(web_sessions.c.account == account))
            return int(result.rowcount or 0)
