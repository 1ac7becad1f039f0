"""The social web pages in headless Chromium (playwright-core, as tests/browser drives it), with Fedify.

alice signs in through the one login, follows fred@fedify.test by address, posts from the compose form
(fred receives it), sees fred's post in her timeline (its HTML flattened: a hostile tag stays text),
likes it (fred receives the Like), and finds fred's like of her post on the notifications page. The
pages carry the web service's CSP (no script at all) and every form post needs the CSRF token from the
same origin.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.browser.browser import Browser
from tests.harness.ca import TestCA
from tests.harness.server import PeerageServer
from tests.harness.waiting import async_wait_for
from tests.social.conftest import ALPHA, ALPHA_ADDRESS, BETA, PASSWORD, Peer, client
from tests.social.test_federation import Account
from tests.social.test_interop import control, of_type

pytestmark = [pytest.mark.interop, pytest.mark.timeout(180)]
ALICE = f"alice@{ALPHA}"
ORIGIN = f"https://{ALPHA}"
WAIT = 30.0


async def _received(peer: Peer, kind: str, predicate: Any) -> list[dict[str, Any]]:
    return [i for i in await control(peer.control, "received") if i.get("type") == kind and predicate(i)]


def _oid(value: Any) -> Any:
    return value.get("id") if isinstance(value, dict) else value


async def test_csp_csrf_and_the_login_guard(alpha: PeerageServer, social_ca: TestCA) -> None:
    async with client(social_ca) as http:
        async with http.get(f"{ORIGIN}/social/", allow_redirects=False) as response:
            assert response.status == 302 and response.headers["Location"].startswith("/login?next=")
        async with http.post(f"{ORIGIN}/login", json={"account": ALICE, "password": PASSWORD},
                             headers={"Origin": ORIGIN}) as response:
            assert response.status == 200, await response.text()
        async with http.get(f"{ORIGIN}/social/") as response:
            assert response.status == 200
            csp = response.headers["Content-Security-Policy"]
            page = await response.text()
        script_src = re.search(r"script-src ([^;]*)", csp)
        assert script_src and "unsafe" not in script_src.group(1) and "frame-ancestors 'none'" in csp
        assert "<script" not in page
        token = re.search(r'name=csrf value="([^"]+)"', page)
        assert token
        # A form post without the token, or from another origin, changes nothing.
        for headers, data in (({"Origin": ORIGIN}, {"content": "no token"}),
                              ({"Origin": "https://evil.test"}, {"content": "cross-site", "csrf": token.group(1)})):
            async with http.post(f"{ORIGIN}/social/compose", data=data, headers=headers,
                                 allow_redirects=False) as response:
                assert response.status == 403
        async with http.get(f"https://{ALPHA}/users/alice/outbox", headers={"Accept": "application/activity+json"}) as r:
            contents = [i["object"]["content"] for i in (await r.json(content_type=None))["orderedItems"]
                        if isinstance(i.get("object"), dict)]
        assert not any("no token" in c or "cross-site" in c for c in contents)


async def test_timeline_compose_follow_and_notifications_in_a_browser(
        alpha: PeerageServer, fedify: Peer, social_ca: TestCA, tmp_path: Path) -> None:
    async with client(social_ca) as http:
        alice = Account(http, ALICE)
        browser = Browser(tmp_path / "chromium", hosts={ALPHA: ALPHA_ADDRESS}, allow_hosts=[ALPHA])
        try:
            browser.goto(f"{ORIGIN}/social/")
            browser.wait_for("#account")
            browser.fill("#account", ALICE)
            browser.fill("#password", PASSWORD)
            browser.press("Enter", selector="#password")
            browser.do("waitForURL", pattern=r"/social/$", timeout=15000)

            # fred follows alice (so her post goes to him: this test does not lean on test_interop's follow).
            await control(fedify.control, "follow", handle=f"acct:{ALICE}")
            await async_wait_for(lambda: _in(alice, "followers", fedify.actor), WAIT, "fred in alice's followers")
            # Follow fred by address; his Accept makes it "accepted".
            browser.fill("#handle", fedify.handle)
            browser.click("#follow button")
            browser.wait_for("#notice")
            assert "asked to follow" in browser.text("#notice")
            await async_wait_for(lambda: _in(alice, "following", fedify.actor), WAIT, "fred's Accept")
            browser.goto(f"{ORIGIN}/social/")
            assert "accepted" in browser.text("#following")

            # Compose: a public post with a content warning reaches fred.
            browser.fill("#summary", "browser test")
            browser.fill("#content", "Hello from the browser #peerage")
            browser.click("#compose button")
            browser.wait_for("#notice")
            assert browser.text("#notice") == "posted"
            post_id = str(browser.eval("document.querySelector('#timeline article').dataset.id"))
            assert "Hello from the browser" in browser.text("#timeline article .content")
            created = await async_wait_for(lambda: _received(fedify, "Create", lambda i: _oid(i.get("object")) == post_id),
                                           WAIT, "the browser post at fred's")
            assert created[0]["object"].get("summary") == "browser test"

            # fred's post (with a hostile tag) shows in the timeline as text; alice likes it.
            theirs = await control(fedify.control, "post", content='<p>Hi <img src=x onerror="alert(1)"> alice</p>',
                                   to=f"acct:{ALICE}")
            await async_wait_for(lambda: _has_create(alice, theirs["id"]), WAIT, "fred's post at alice's")
            browser.goto(f"{ORIGIN}/social/")
            article = f'#timeline article[data-id="{theirs["id"]}"]'
            browser.wait_for(article)
            assert "Hi" in browser.text(f"{article} .content") and browser.count("#timeline img") == 0
            browser.click(f'{article} button[data-action="like"]')
            browser.wait_for("#notice")
            assert browser.text("#notice") == "liked"
            await async_wait_for(lambda: _received(fedify, "Like", lambda i: _oid(i.get("object")) == theirs["id"]),
                                 WAIT, "alice's Like at fred's")

            # fred likes her browser post: the notifications page shows it.
            await control(fedify.control, "like", object=post_id, to=f"acct:{ALICE}")
            await async_wait_for(lambda: _has_like(alice, post_id), WAIT, "fred's like at alice's")
            browser.goto(f"{ORIGIN}/social/notifications")
            browser.wait_for('#notifications li[data-kind="Like"]')
            assert fedify.actor in browser.text('#notifications li[data-kind="Like"]')

            # No policy violation and no script error on any page.
            events = browser.events()
            problems = [e for e in events.get("console", []) if e.get("type") == "error"
                        and "favicon" not in e.get("text", "")] + events.get("errors", [])
            assert not problems, problems
        finally:
            browser.close()


async def _in(account: Account, collection: str, actor: str) -> bool:
    return actor in await account.collection(collection)


async def _has_create(account: Account, object_id: str) -> bool:
    return bool(of_type(await account.inbox(), "Create", object_id))


async def _has_like(account: Account, object_id: str) -> bool:
    return bool(of_type(await account.inbox(), "Like", object_id))



async def test_the_timeline_and_notifications_page_back(beta: PeerageServer, social_ca: TestCA) -> None:
    """More posts than a page: the newest 40, then an "Older" link to the rest, nothing twice."""
    address = f"pager@{BETA}"
    beta.add_user(address, PASSWORD)
    origin = f"https://{BETA}"
    async with client(social_ca) as http:
        account = Account(http, address)
        async with http.post(f"{origin}/social/api/settings", json={"discoverable": True},
                             headers=account.auth) as response:
            assert response.status == 200, await response.text()
        posted = [(await account.do({"type": "Note", "content": f"Post number {n}"}))["object"]["id"]
                  for n in range(45)]
        async with http.post(f"{origin}/login", json={"account": address, "password": PASSWORD},
                             headers={"Origin": origin}) as response:
            assert response.status == 200, await response.text()
        seen: list[str] = []
        url = f"{origin}/social/"
        pages = 0
        while url:
            async with http.get(url) as response:
                assert response.status == 200
                page = await response.text()
            pages += 1
            seen += re.findall(r'<article data-id="([^"]+)"', page)
            older = re.search(r'<a id=older rel=next href="([^"]+)"', page)
            url = f"{origin}{older.group(1)}" if older else ""
            assert pages <= 3
        assert pages == 2
        assert seen == list(reversed(posted))  # newest first, each once
        async with http.get(f"{origin}/social/?before=not-a-number") as response:
            assert response.status == 200  # an odd cursor is the first page, not an error
