"""peerage.identity.sip_tokens: the web session's short-lived SIP digest secrets, kept as HA1s in the database."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path

from sqlalchemy import select

from peerage.identity.address import parse_address
from peerage.identity.sip_tokens import MAX_TOKENS_PER_ACCOUNT, SipTokens
from peerage.identity.tables import sip_web_tokens
from peerage.store import Store

ALICE = parse_address("alice@example.org")


def _md5(token: str) -> str:
    return hashlib.md5(f"alice:example.org:{token}".encode()).hexdigest()


def _with_store(tmp_path: Path, body: Callable[[Store], Awaitable[None]]) -> None:
    async def run() -> None:
        store = Store(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
        await store.migrate()
        try:
            await body(store)
        finally:
            await store.engine.dispose()

    asyncio.run(run())


def test_tokens_add_their_ha1s_until_they_expire_and_never_store_the_token(tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        now = [1000.0]
        tokens = SipTokens(store, clock=lambda: now[0])
        token, expires = await tokens.issue(ALICE, lifetime=60)
        assert expires == 1060
        assert await tokens.ha1s("alice@example.org", "md5") == [_md5(token)]
        assert await tokens.ha1s("alice@example.org", "SHA-256", full=True) == [
            hashlib.sha256(f"alice@example.org:example.org:{token}".encode()).hexdigest()]
        assert await tokens.ha1s("bob@example.org", "MD5") == []
        assert await tokens.ha1s("alice@example.org", "SHA-512-256") == []
        async with store.begin() as conn:
            rows = (await conn.execute(select(sip_web_tokens))).all()
        assert len(rows) == 1 and token not in repr(tuple(rows[0]))
        # A second instance on the same database (a restart, another node) knows the token.
        assert await SipTokens(store, clock=lambda: now[0]).ha1s("alice@example.org", "MD5") == [_md5(token)]
        now[0] = 1061
        assert await tokens.ha1s("alice@example.org", "MD5") == []

    _with_store(tmp_path, body)


def test_tokens_are_bounded_per_account_and_revocable(tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        clock = [1000.0]

        def tick() -> float:
            clock[0] += 1
            return clock[0]

        tokens = SipTokens(store, clock=tick)
        issued = [(await tokens.issue(ALICE))[0] for _ in range(MAX_TOKENS_PER_ACCOUNT + 3)]
        assert len(set(issued)) == len(issued)
        live = await tokens.ha1s("alice@example.org", "MD5")
        assert len(live) == MAX_TOKENS_PER_ACCOUNT
        assert _md5(issued[0]) not in live  # the oldest went
        assert _md5(issued[-1]) in live
        assert await tokens.revoke("alice@example.org") == MAX_TOKENS_PER_ACCOUNT
        assert await tokens.ha1s("alice@example.org", "MD5") == []

    _with_store(tmp_path, body)


def test_a_web_session_ends_its_own_tokens_only(tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        tokens = SipTokens(store)
        await tokens.issue(ALICE, web_session="session-a")
        other, _ = await tokens.issue(ALICE, web_session="session-b")
        assert await tokens.revoke_web_session("session-a") == 1
        assert await tokens.ha1s("alice@example.org", "MD5") == [_md5(other)]
        assert await tokens.revoke_web_session("session-a") == 0

    _with_store(tmp_path, body)
