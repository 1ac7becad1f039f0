"""The life of the credentials a web session gives the chat page: logging out ends that session's XMPP
and SIP tokens (and only that session's); revoking a session from another browser ends its tokens too;
a password change (``peerage user passwd``, another process) ends every web session and every token of
the account; SIP tokens live in the database as HA1s, so a restart does not strand a registered phone."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import slixmpp
from sqlalchemy import create_engine, text

from tests.harness import LocalDNS, PeerageServer, TestCA
from tests.sip.ua import UdpUA
from tests.webchat.conftest import (
    ALICE,
    BLOCK,
    CLIENT_ADDRESS,
    DOMAIN,
    HTTPS_PORT,
    ORIGIN,
    PASSWORD,
    PEERAGE_ADDRESS,
    SIP_WSS_PORT,
)
from tests.webchat.test_chat_page import Web

GRACE = "grace@example.org"  # logs out and is revoked (her own account: the browser tests' alice is untouched)
FRANK = "frank@example.org"  # changes his password
FRANK_PASSWORD = "frank changes his password 1"
NEW_PASSWORD = "frank's new password is long 2"
# A server of its own for the restart test, so the shared one (and the browsers on it) keep running.
RESTART_ADDRESS = f"{BLOCK}.4"


def register(token: str, user: str = "alice", server: tuple[str, int] = (PEERAGE_ADDRESS, 5060)) -> int:
    """REGISTER over UDP with `token` as the digest password; the final status (0: no answer)."""
    ua = UdpUA(CLIENT_ADDRESS, server, user, DOMAIN, token)
    try:
        response = ua.request_with_auth("REGISTER", f"sip:{DOMAIN}", extra=[("Expires", "0")])
        return 0 if response is None else response.status
    finally:
        ua.close()


async def xmpp_login(account: str, password: str) -> bool:
    """Does slixmpp (SCRAM over TCP) open a session with `password`?"""
    client = slixmpp.ClientXMPP(account, password)
    client.ssl_context.check_hostname = False
    client.ssl_context.verify_mode = ssl.CERT_NONE
    outcome = client.loop.create_future()
    client.add_event_handler("failed_auth", lambda _: outcome.done() or outcome.set_result(False))
    client.add_event_handler("session_start", lambda _: outcome.done() or outcome.set_result(True))
    client.connect(host=PEERAGE_ADDRESS, port=5222)
    try:
        return bool(await asyncio.wait_for(outcome, 20))
    finally:
        client.disconnect()


async def xmpp_token(web: Web) -> str:
    async with web.client.get(ORIGIN + "/auth/xmpp-credentials", headers={"Accept": "application/json"}) as response:
        assert response.status == 200, await response.text()
        return str((await response.json())["password"])


async def logged_in(web: Web) -> bool:
    async with web.client.get(ORIGIN + "/auth/session") as response:
        return response.status == 200


@pytest.fixture
async def webs(peerage: PeerageServer) -> AsyncIterator[list[Web]]:
    made: list[Web] = []
    yield made
    for item in made:
        await item.client.close()


def ensure_user(peerage: PeerageServer, account: str, password: str) -> None:
    if account not in peerage.cli("user", "list", DOMAIN).stdout.split():
        peerage.add_user(account, password)


async def test_logout_ends_that_sessions_xmpp_and_sip_tokens_only(peerage: PeerageServer, webs: list[Web]) -> None:
    await asyncio.to_thread(ensure_user, peerage, GRACE, PASSWORD)
    first, second, third = [await Web().login(GRACE) for _ in range(3)]
    webs.extend([first, second, third])
    first_sip = str((await first.sip_credentials())["password"])
    first_xmpp = await xmpp_token(first)
    second_sip = str((await second.sip_credentials())["password"])
    second_xmpp = await xmpp_token(second)
    assert await asyncio.to_thread(register, first_sip, "grace") == 200
    assert await xmpp_login(GRACE, first_xmpp)

    async with first.client.post(ORIGIN + "/logout", headers={"Origin": ORIGIN, "X-CSRF-Token": first.csrf}) as response:
        assert response.status == 204
    assert not await logged_in(first)
    assert await asyncio.to_thread(register, first_sip, "grace") == 401
    assert not await xmpp_login(GRACE, first_xmpp)
    # The other session's tokens are untouched ...
    assert await asyncio.to_thread(register, second_sip, "grace") == 200
    assert await xmpp_login(GRACE, second_xmpp)

    # ... until it is revoked from another browser (the sessions list's DELETE).
    async with third.client.get(ORIGIN + "/auth/sessions") as response:
        sessions = (await response.json())["sessions"]
    others = [s["id"] for s in sessions if not s["current"]]
    assert len(others) == 1  # the second session (the first logged out)
    for session_id in others:
        async with third.client.delete(ORIGIN + f"/auth/sessions/{session_id}",
                                       headers={"Origin": ORIGIN, "X-CSRF-Token": third.csrf}) as response:
            assert response.status == 204
    assert not await logged_in(second)
    assert await asyncio.to_thread(register, second_sip, "grace") == 401
    assert not await xmpp_login(GRACE, second_xmpp)
    assert await logged_in(third)


async def test_a_password_change_ends_every_session_and_token(peerage: PeerageServer, webs: list[Web]) -> None:
    await asyncio.to_thread(ensure_user, peerage, FRANK, FRANK_PASSWORD)
    browsers = [await Web().login(FRANK, FRANK_PASSWORD) for _ in range(2)]
    webs.extend(browsers)
    sip = [str((await b.sip_credentials())["password"]) for b in browsers]
    xmpp = [await xmpp_token(b) for b in browsers]
    assert [await asyncio.to_thread(register, t, "frank") for t in sip] == [200, 200]

    await asyncio.to_thread(peerage.cli, "user", "passwd", FRANK, "--password-file", "-", input=NEW_PASSWORD + "\n")

    assert [await logged_in(b) for b in browsers] == [False, False]
    assert [await asyncio.to_thread(register, t, "frank") for t in sip] == [401, 401]
    for token in xmpp:
        assert not await xmpp_login(FRANK, token)
    assert not await xmpp_login(FRANK, FRANK_PASSWORD)
    # The new password opens everything again, the old one nothing.
    fresh = Web()
    webs.append(fresh)
    async with fresh.client.post(ORIGIN + "/login", json={"account": FRANK, "password": FRANK_PASSWORD},
                                 headers={"Origin": ORIGIN}) as response:
        assert response.status == 401
    await fresh.login(FRANK, NEW_PASSWORD)
    assert await asyncio.to_thread(register, str((await fresh.sip_credentials())["password"]), "frank") == 200
    # Put frank back, so the test can run again on the same server.
    await asyncio.to_thread(peerage.cli, "user", "passwd", FRANK, "--password-file", "-", input=FRANK_PASSWORD + "\n")


@pytest.fixture
def restartable(tmp_path: Path, local_dns: LocalDNS, test_ca: TestCA) -> Iterator[PeerageServer]:
    cert = test_ca.issue(DOMAIN, dns_ids=[DOMAIN])
    config: dict[str, Any] = {
        "web": {"https_listen": [f"{RESTART_ADDRESS}:{HTTPS_PORT}"], "http_listen": []},
        "sip": {"wss_listen": [f"{RESTART_ADDRESS}:{SIP_WSS_PORT}"], "tcp_listen": [], "tls_listen": []},
        "limits": {"auth_failures_per_ip": 1000},
    }
    server = PeerageServer(tmp_path, DOMAIN, RESTART_ADDRESS, dns=local_dns, services=("sip", "web"),
                           config=config, certs={DOMAIN: cert}, ca_file=test_ca.cert_path)
    server.add_user(ALICE, PASSWORD)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _wait_listening(address: tuple[str, int], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(address, timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


async def test_sip_tokens_survive_a_restart_stored_as_hashes_only(restartable: PeerageServer) -> None:
    from tests.webchat.test_chat_page import tls

    class Fixed(aiohttp.abc.AbstractResolver):
        async def resolve(self, host: str, port: int = 0, family: int = 0) -> list[dict[str, object]]:
            return [{"hostname": host, "host": RESTART_ADDRESS, "port": port, "family": 2, "proto": 0, "flags": 0}]

        async def close(self) -> None:
            return None

    web = Web()
    await web.client.close()
    web.client = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls(), resolver=Fixed()),
                                       cookie_jar=aiohttp.CookieJar(unsafe=True))
    try:
        await web.login(ALICE)
        token = str((await web.sip_credentials())["password"])
        sip = (RESTART_ADDRESS, 5060)
        assert await asyncio.to_thread(register, token, "alice", sip) == 200
        # Only HA1s are on disk: the token appears nowhere in the database file.
        database = restartable.data_dir / "peerage.db"
        paths = [p for p in restartable.data_dir.rglob("*") if p.is_file() and p.name.startswith(database.name)]
        assert paths and not any(token.encode() in p.read_bytes() for p in paths)
        engine = create_engine(f"sqlite:///{database}")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM sip_web_tokens WHERE account = :a"),
                                {"a": ALICE}).scalar() == 1
        engine.dispose()

        restartable.stop()
        restartable.start()
        _wait_listening((RESTART_ADDRESS, HTTPS_PORT))
        assert await asyncio.to_thread(register, token, "alice", sip) == 200
        assert await logged_in(web)  # the web session, in the database too, lives on
    finally:
        await web.client.close()
    assert os.path.exists(database)
