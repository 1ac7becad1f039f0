"""Chromium pages for the web chat tests: fake media devices, the test's host names, a login to /chat/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.browser.browser import Browser
from tests.webchat.conftest import DOMAIN, HTTPS_PORT, ORIGIN, PASSWORD, PEERAGE_ADDRESS, SIP_WSS_PORT

# Fake camera/microphone (a beep tone), permission prompts answered yes, and ICE allowed on loopback
# addresses: every address of the test block is one, coturn's included.
MEDIA_ARGS = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
              "--allow-loopback-in-peer-connection", "--autoplay-policy=no-user-gesture-required"]
HOSTS = {DOMAIN: PEERAGE_ADDRESS}
ALLOWED = [f"{DOMAIN}:{HTTPS_PORT}", f"{DOMAIN}:{SIP_WSS_PORT}"]
PHONE_TIMEOUT = 20.0


def open_browser(workdir: Path, *, loopback: bool = True) -> Browser:
    """``loopback=False``: ICE leaves out the loopback network (Chromium's default), so candidates are
    gathered on the host's other networks only."""
    args = MEDIA_ARGS if loopback else [arg for arg in MEDIA_ARGS if arg != "--allow-loopback-in-peer-connection"]
    return Browser(workdir, hosts=HOSTS, allow_hosts=ALLOWED, width=1200, height=760, extra_args=args)


def login_to_chat(browser: Browser, account: str, password: str = PASSWORD) -> None:
    browser.goto(f"{ORIGIN}/chat/")
    browser.wait_for("#account")
    browser.fill("#account", account)
    browser.fill("#password", password)
    browser.press("Enter", selector="#password")
    browser.do("waitForURL", pattern=r"/chat/$", timeout=15000)
    browser.wait_for("#bar")


def phone_state(browser: Browser) -> str:
    return str(browser.eval("document.getElementById('phone').dataset.state"))


def wait_phone(browser: Browser, state: str, timeout: float = PHONE_TIMEOUT) -> None:
    try:
        browser.wait_until(f"document.getElementById('phone').dataset.state === '{state}'", timeout=timeout)
    except AssertionError as exc:
        status = browser.text("#phone-status")
        raise AssertionError(f"phone never reached {state!r}; it says {status!r}") from exc


def stats(browser: Browser) -> dict[str, Any] | None:
    result = browser.eval("window.peerageChat.phone.stats()")
    return result if isinstance(result, dict) else None
