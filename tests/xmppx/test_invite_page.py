"""The invitation's web page (XEP-0401 landing page) over HTTPS: what it shows, its CSP, the cross-site
checks on its form, and an account created through it that then logs in with a real client."""

from __future__ import annotations

import re
import ssl
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.harness import PeerageServer
from tests.xmppx.conftest import ONE_ADDRESS, Client, until
from tests.xmppx.test_upload import LoopbackResolver

CSRF_COOKIE = "__Host-invite-csrf"


@pytest.fixture
async def browser(one: PeerageServer) -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTPS client with a cookie jar, checking the server's certificate against the test CA."""
    context = ssl.create_default_context(cafile=str(one.ca_path))  # type: ignore[attr-defined]
    connector = aiohttp.TCPConnector(resolver=LoopbackResolver(), ssl=context)
    async with aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session


def csrf_of(page: str) -> str:
    found = re.search(r'name=csrf value="([^"]+)"', page)
    assert found, page
    return found.group(1)


async def test_invitation_page_creates_an_account(one: PeerageServer, browser: aiohttp.ClientSession) -> None:
    link = one.cli("invite", "create", "--inviter", "quinn@x1.test", "--web").stdout.strip()
    match = re.fullmatch(r"https://x1\.test(:\d+)?/invite/([\w-]+)", link)
    assert match, link
    token = match.group(2)
    origin = link.split("/invite/")[0]

    async with browser.get(link) as response:
        assert response.status == 200
        page = await response.text()
        csp = response.headers["Content-Security-Policy"]
        assert response.headers["Referrer-Policy"] == "no-referrer"  # the token is in the URL
        assert "no-store" in response.headers["Cache-Control"]
        cookie = response.cookies[CSRF_COOKIE]
    # No script at all on the page; forms only to itself; never framed.
    assert "default-src 'none'" in csp and "form-action 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "script-src 'self'" in csp and "<script" not in page
    assert cookie["secure"] and cookie["httponly"] and cookie["samesite"] == "Strict"
    assert "quinn@x1.test" in page
    assert f'href="xmpp:quinn@x1.test?roster;preauth={token};ibr=y"' in page
    csrf = csrf_of(page)
    assert csrf == cookie.value
    form = {"csrf": csrf, "username": "quinnsfriend", "password": "a web-chosen passphrase",
            "password2": "a web-chosen passphrase"}

    # Cross-site posts are refused: another site's Origin, or a form without the page's token.
    async with browser.post(link, data=form, headers={"Origin": "https://evil.example"}) as response:
        assert response.status == 403
    async with browser.post(link, data={**form, "csrf": "forged"}, headers={"Origin": origin}) as response:
        assert response.status == 403
    # Mistyped passwords and a weak password: the form again, with the reason; nothing created.
    async with browser.post(link, data={**form, "password2": "something else"}, headers={"Origin": origin}) as response:
        assert response.status == 400
        assert "The two passwords differ." in await response.text()
    async with browser.post(link, data={**form, "password": "short", "password2": "short"},
                            headers={"Origin": origin}) as response:
        assert response.status == 400
        assert 'value="quinnsfriend"' in await response.text()
    async with browser.post(link, data={**form, "username": "alice"}, headers={"Origin": origin}) as response:
        assert response.status == 409  # taken
    # The account is created; the page says so.
    async with browser.post(link, data=form, headers={"Origin": origin}) as response:
        assert response.status == 200
        text = await response.text()
    assert "quinnsfriend@x1.test" in text and "quinn@x1.test is in your contacts" in text

    # A real client logs in with it and finds the inviter in its roster, mutually subscribed.
    friend = await Client("quinnsfriend@x1.test", password="a web-chosen passphrase").login(ONE_ADDRESS)
    try:
        await until(lambda: friend.client_roster["quinn@x1.test"]["subscription"] == "both")
    finally:
        await friend.close()

    # Used up: the page is gone, as is any made-up token's (the same answer: nothing to learn).
    async with browser.get(link) as response:
        assert response.status == 404
        gone = await response.text()
    async with browser.get(f"{origin}/invite/made-up-token") as response:
        assert response.status == 404
        assert await response.text() == gone
    async with browser.post(link, data=form, headers={"Origin": origin}) as response:
        assert response.status == 404
