"""The test browser's own bounds: a wait given N seconds waits up to N seconds in the driver (not
playwright's 10 s default), and a short one fails as soon as its bound passes."""

from __future__ import annotations

import time

import pytest

from tests.browser.browser import Browser, BrowserError

PAGE = "data:text/html,<title>bounds</title><p id=p>waiting</p>"


def test_wait_bounds_reach_the_driver(browser: Browser) -> None:
    browser.goto(PAGE)
    # Longer than playwright's own 10 s cap: true only after 11 s, and waited for.
    browser.eval("window.t0 = Date.now(); setTimeout(() => { window.late = true; "
                 "document.getElementById('p').className = 'late'; }, 11000)")
    browser.wait_until("window.late === true", timeout=16)
    assert browser.eval("Date.now() - window.t0") >= 11000
    browser.wait_for("#p.late", timeout=1)
    # Shorter: a 1 s bound ends after about 1 s with the driver's own timeout error.
    started = time.monotonic()
    with pytest.raises(BrowserError, match="1000ms"):
        browser.wait_until("window.never === true", timeout=1)
    with pytest.raises(BrowserError, match="1000ms"):
        browser.wait_for("#never", timeout=1)
    assert time.monotonic() - started < 8
