"""The web session's XMPP credential: GET /auth/xmpp-credentials (converse.js credentials_url).

A logged-in browser gets {"jid", "password"}; the password is a token that SASL accepts (PLAIN,
SCRAM-SHA-1, SCRAM-SHA-256, over WebSocket and TCP) for that one account, for a bounded time, for
XMPP only (IMAP and SMTP submission refuse it), and that is stored only as hashes and SCRAM keys.
"""

from __future__ import annotations

import asyncio
import imaplib
import smtplib
import sqlite3
import ssl

import pytest

from tests.harness import async_wait_for
from tests.websocket.conftest import (
    C2S_PORT,
    CREDENTIAL_LIFETIME,
    DOMAIN,
    IMAP_PORT,
    SUBMISSION_PORT,
    WsServer,
)
from tests.websocket.wsclient import SASL, q
from tests.xmpp.conftest import Client

CREDENTIALS = "/auth/xmpp-credentials"


async def fetch_credentials(server: WsServer, account: str, closing: list[object]) -> dict[str, str]:
    web, _csrf = await server.web_login(account)
    closing.append(web)
    async with web.get(server.base + CREDENTIALS, headers={"Accept": "application/json, text/javascript",
                                                            "Sec-Fetch-Site": "same-origin"}) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Cache-Control"] == "no-store"
        assert "Access-Control-Allow-Origin" not in response.headers
        data: dict[str, str] = await response.json()
    return data


async def test_credentials_need_a_web_session(ws_server: WsServer, closing: list[object]) -> None:
    web = ws_server.web()
    closing.append(web)
    async with web.get(ws_server.base + CREDENTIALS) as response:
        assert response.status == 401
    # HTTP Basic is no web session: refused too.
    import aiohttp

    async with web.get(ws_server.base + CREDENTIALS,
                       headers={"Authorization": aiohttp.encode_basic_auth(f"ivan@{DOMAIN}", "x")}) as response:
        assert response.status == 401
    # A cross-site request (Fetch Metadata) is refused even with the cookie.
    logged_in, _ = await ws_server.web_login(f"ivan@{DOMAIN}")
    closing.append(logged_in)
    async with logged_in.get(ws_server.base + CREDENTIALS, headers={"Sec-Fetch-Site": "cross-site"}) as response:
        assert response.status == 403


async def test_token_logs_in_over_websocket_and_tcp(ws_server: WsServer, closing: list[object]) -> None:
    data = await fetch_credentials(ws_server, f"judy@{DOMAIN}", closing)
    assert data["jid"] == f"judy@{DOMAIN}" and data["password"].startswith("pxt_")
    token = data["password"]
    for scram in ("sha256", "sha1", None):
        client = await ws_server.ws().connect()
        closing.append(client)
        await client.login(data["jid"], token, scram=scram)
        assert client.jid.startswith(f"judy@{DOMAIN}/")
    # Over TCP as well (slixmpp picks SCRAM-SHA-256-PLUS there: the token's keys serve -PLUS too).
    tcp = Client(f"judy@{DOMAIN}/tcp", token)
    closing.append(tcp)
    await tcp.login(ws_server.address, C2S_PORT)
    # It is that account's only: another account's name with it fails.
    other = await ws_server.ws().connect()
    closing.append(other)
    await other.open()
    failure = await other.auth_scram(f"mallory@{DOMAIN}", token)
    assert failure.tag == q(SASL, "failure")
    # Stored as derived secrets only: the database never holds the token itself.
    db = sqlite3.connect(ws_server.server.data_dir / "peerage.db")
    try:
        rows = db.execute("SELECT * FROM login_tokens WHERE account = ?", (f"judy@{DOMAIN}",)).fetchall()
    finally:
        db.close()
    assert rows and not any(token in repr(row) or token.encode() in repr(row).encode() for row in rows)


async def test_token_is_refused_by_imap_and_smtp(ws_server: WsServer, closing: list[object]) -> None:
    data = await fetch_credentials(ws_server, f"oscar@{DOMAIN}", closing)
    context = ssl.create_default_context(cafile=str(ws_server.cert))
    context.check_hostname = False

    def imap_login() -> str:
        with imaplib.IMAP4(ws_server.address, IMAP_PORT, timeout=10) as imap:
            imap.starttls(context)
            try:
                imap.login(data["jid"], data["password"])
            except imaplib.IMAP4.error as error:
                return str(error)
            return "logged in"

    def smtp_login() -> str:
        with smtplib.SMTP(ws_server.address, SUBMISSION_PORT, timeout=10) as smtp:
            smtp.starttls(context=context)
            try:
                smtp.login(data["jid"], data["password"])
            except smtplib.SMTPAuthenticationError as error:
                return str(error.smtp_code)
            return "logged in"

    assert await asyncio.to_thread(imap_login) != "logged in"
    assert await asyncio.to_thread(smtp_login) == "535"
    # The web login refuses it as well.
    web = ws_server.web()
    closing.append(web)
    async with web.post(ws_server.base + "/login", json={"account": data["jid"], "password": data["password"]},
                        headers={"Origin": ws_server.base}) as response:
        assert response.status != 200


async def test_token_expires(ws_server: WsServer, closing: list[object]) -> None:
    data = await fetch_credentials(ws_server, f"mallory@{DOMAIN}", closing)
    loop = asyncio.get_running_loop()
    issued = loop.time()
    client = await ws_server.ws().connect()
    closing.append(client)
    await client.login(data["jid"], data["password"], scram=None)

    async def refused() -> bool:
        attempt = await ws_server.ws().connect()
        closing.append(attempt)
        await attempt.open()
        result = await attempt.auth_plain(data["jid"], data["password"])
        await attempt.close()
        return result.tag == q(SASL, "failure")

    # [xmpp.websocket] credential_lifetime is 4 s in this server: refused after it, not long before.
    await async_wait_for(refused, timeout=CREDENTIAL_LIFETIME + 6, message="the token to expire")
    assert loop.time() - issued >= CREDENTIAL_LIFETIME - 1.0


async def test_revoking_needs_csrf_and_ends_the_tokens(ws_server: WsServer, closing: list[object]) -> None:
    web, csrf = await ws_server.web_login(f"grace@{DOMAIN}")
    closing.append(web)
    async with web.get(ws_server.base + CREDENTIALS) as response:
        token = (await response.json())["password"]
    async with web.delete(ws_server.base + CREDENTIALS, headers={"Origin": ws_server.base}) as response:
        assert response.status == 403  # no X-CSRF-Token
    async with web.delete(ws_server.base + CREDENTIALS,
                          headers={"Origin": ws_server.base, "X-CSRF-Token": csrf}) as response:
        assert response.status == 200 and (await response.json())["revoked"] == 1
    client = await ws_server.ws().connect()
    closing.append(client)
    await client.open()
    result = await client.auth_plain(f"grace@{DOMAIN}", token)
    assert result.tag == q(SASL, "failure")


async def test_token_unit_clock(tmp_path: object) -> None:
    """LoginTokens with a fake clock: expiry, per-protocol, cap per account (sans network)."""
    from pathlib import Path

    from peerage.identity import tokens as tokens_module
    from peerage.identity.tokens import LoginTokens
    from peerage.store import Store

    store = Store(f"sqlite+aiosqlite:///{Path(str(tmp_path)) / 'db.sqlite'}")
    await store.migrate()
    now = [1000.0]
    tokens = LoginTokens(store, clock=lambda: now[0])
    token, expires = await tokens.issue("a@x.test", "xmpp", salt=b"s" * 16, iterations=4096, lifetime=60)
    assert expires == 1060.0
    assert await tokens.matches("a@x.test", "xmpp", token)
    assert not await tokens.matches("b@x.test", "xmpp", token)
    assert not await tokens.matches("a@x.test", "imap", token)
    assert len(await tokens.scram_keys("a@x.test", "xmpp", "SHA-256")) == 1
    now[0] = 1061.0
    assert not await tokens.matches("a@x.test", "xmpp", token)
    assert await tokens.scram_keys("a@x.test", "xmpp", "SHA-256") == []
    with pytest.raises(ValueError):
        await tokens.issue("a@x.test", "imap", salt=b"s" * 16, iterations=4096, lifetime=60)
    for _ in range(tokens_module.MAX_TOKENS_PER_ACCOUNT + 3):
        await tokens.issue("a@x.test", "xmpp", salt=b"s" * 16, iterations=4096, lifetime=60)
    assert len(await tokens.scram_keys("a@x.test", "xmpp", "SHA-1")) == tokens_module.MAX_TOKENS_PER_ACCOUNT
    await store.close()


async def test_credentials_are_rate_limited(ws_server: WsServer, closing: list[object]) -> None:
    from peerage.xmpp.websocket import CREDENTIALS_PER_MINUTE

    web, _ = await ws_server.web_login(f"peggy@{DOMAIN}")
    closing.append(web)
    statuses = []
    for _ in range(CREDENTIALS_PER_MINUTE + 1):
        async with web.get(ws_server.base + CREDENTIALS) as response:
            statuses.append(response.status)
            retry = response.headers.get("Retry-After")
    assert statuses[:-1] == [200] * CREDENTIALS_PER_MINUTE
    assert statuses[-1] == 429 and retry == "60"
