"""The one login in a real browser: the form, the cookie's attributes, throttling of wrong passwords, and
CSRF: a state change from another site is refused and the session cookie never goes cross-site."""

from __future__ import annotations

import json

from tests.browser.browser import Browser
from tests.browser.conftest import (
    ALICE,
    ATTACKER_ADDRESS,
    ORIGIN,
    SIDE_PORT,
    TARGET,
    SideServer,
    login,
)
from tests.harness import PeerageServer


def test_login_sets_a_strict_host_only_cookie_and_opens_the_webmail(peerage: PeerageServer, browser: Browser) -> None:
    login(browser, expect_mail=False)
    browser.do("waitForURL", pattern=r"/mail/", timeout=30000)
    browser.screenshot("after-login")
    cookies = browser.do("cookies", urls=[ORIGIN])
    session = [c for c in cookies if c["name"].startswith("__Host-")]
    assert session, cookies
    assert session[0]["httpOnly"] and session[0]["secure"] and session[0]["sameSite"] == "Strict"
    who = browser.eval("fetch('/auth/session').then(r => r.json())")
    assert who["account"] == ALICE and who["csrf"]
    headers = browser.eval("fetch('/mail/').then(r => r.headers.get('content-security-policy'))")
    assert "script-src 'self'" in headers and "frame-ancestors 'none'" in headers and "unsafe-eval" not in headers


def test_wrong_password_is_refused_then_throttled(peerage: PeerageServer, browser: Browser) -> None:
    pages = []
    for attempt in range(10):
        login(browser, password=f"wrong {attempt}", account=TARGET, expect_mail=False)
        browser.wait_for("#password")
        pages.append(browser.eval("document.body.innerText"))
        if "too many failed logins" in pages[-1]:
            break
    browser.screenshot("throttled")
    assert "Wrong address or password" in pages[0]
    assert "too many failed logins" in pages[-1], pages[-1]
    # The throttle (3 failures here) stops this account from this address within twice its limit.
    assert len(pages) <= 7, len(pages)
    # Even the right password is turned away while the throttle holds.
    login(browser, account=TARGET, expect_mail=False)
    browser.wait_for("#password")
    assert "too many failed logins" in browser.eval("document.body.innerText")
    assert browser.eval("fetch('/auth/session').then(r => r.status)") == 401


def test_cross_site_state_change_is_refused_and_the_cookie_stays_home(peerage: PeerageServer, browser: Browser) -> None:
    attack = f"""<!doctype html><html><body>
<form id=f method=post action="{ORIGIN}/logout" target=sink><input name=x value=1></form>
<iframe name=sink></iframe>
<script>
window.results = {{}};
fetch("{ORIGIN}/jmap/api", {{method: "POST", credentials: "include", mode: "no-cors",
  headers: {{"Content-Type": "text/plain"}},
  body: JSON.stringify({{using: ["urn:ietf:params:jmap:core"], methodCalls: [["Mailbox/get", {{}}, "0"]]}})}})
  .then(r => window.results.api = r.type, e => window.results.api = "error " + e);
fetch("{ORIGIN}/auth/session", {{credentials: "include"}})
  .then(r => window.results.session = r.status, e => window.results.session = "blocked");
document.getElementById("f").submit();
</script></body></html>""".encode()
    attacker = SideServer(ATTACKER_ADDRESS, SIDE_PORT, {"/": ("text/html", attack)}).start()
    try:
        login(browser, expect_mail=False)
        browser.do("waitForURL", pattern=r"/mail/", timeout=30000)
        browser.events()
        browser.do("open", name="attacker", url=f"http://attacker.test:{SIDE_PORT}/")
        browser.do("waitForFunction", page="attacker", expression="window.results && 'api' in window.results && 'session' in window.results",
                   timeout=30000)
        browser.eval("new Promise(r => setTimeout(r, 1000))", page="attacker")
        results = browser.eval("window.results", page="attacker")
        browser.screenshot("attacker")
        events = browser.events()
    finally:
        attacker.stop()
    to_us = [r for r in events["requests"] if r["page"] == "attacker" and r["url"].startswith(ORIGIN)]
    assert {r["url"].split(ORIGIN)[1] for r in to_us} >= {"/jmap/api", "/logout", "/auth/session"}, to_us
    # SameSite=Strict: not one cross-site request carried the session cookie.
    assert not any(r.get("cookie") for r in to_us), json.dumps(to_us, indent=1)
    # The attacker learnt nothing: CORS hides the answers.
    assert results["session"] == "blocked", results
    # And nothing changed: the session is still alive in our own tab.
    who = browser.eval("fetch('/auth/session').then(r => r.status)")
    assert who == 200
    # A same-origin request with the cookie but without the session's CSRF token is refused too.
    status = browser.eval(
        "fetch('/logout', {method: 'POST', headers: {'X-CSRF-Token': 'wrong'}}).then(r => r.status)")
    assert status == 403
    assert browser.eval("fetch('/auth/session').then(r => r.status)") == 200
