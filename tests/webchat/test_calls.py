"""Calls in the browser: two Chromium pages log in as alice and bob at /chat/ (one login, no second
password), their JsSIP phones register over SIP WSS with the web session's short-lived SIP credential,
and alice calls bob with media forced through coturn (iceTransportPolicy 'relay'): RTP arrives on both
sides (getStats), DTMF goes across, both sides end cleanly; then bob calls alice, who declines, and a
call bob hangs up himself."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.browser.browser import Browser
from tests.harness import wait_for
from tests.webchat.conftest import ALICE
from tests.webchat.pages import phone_state, stats, wait_phone

MEDIA_TIMEOUT = 20.0


@pytest.fixture
def shots(alice_page: Browser, bob_page: Browser) -> Iterator[tuple[Browser, Browser]]:
    yield alice_page, bob_page
    for name, browser in (("alice", alice_page), ("bob", bob_page)):
        browser.screenshot(f"end-{name}")


def place_call(caller: Browser, callee: Browser, who: str) -> None:
    caller.fill("#callee", who)
    caller.click("#call")
    wait_phone(callee, "ringing")
    caller.screenshot("calling")
    callee.screenshot("ringing")


def test_alice_calls_bob_through_the_relay_with_dtmf_and_hang_up(shots: tuple[Browser, Browser]) -> None:
    alice, bob = shots
    place_call(alice, bob, "bob")
    assert ALICE in bob.text("#caller")
    bob.click("#answer")
    wait_phone(alice, "in-call")
    wait_phone(bob, "in-call")

    def flowing(browser: Browser) -> dict[str, object] | None:
        report = stats(browser)
        return report if report and report["bytesReceived"] and report["localCandidateType"] else None

    for browser in (alice, bob):
        report = wait_for(lambda b=browser: flowing(b), MEDIA_TIMEOUT, "RTP bytes received")
        assert report["localCandidateType"] == "relay", report
        assert report["packetsReceived"] > 0
    alice.screenshot("in-call")
    for tone in ("1", "2", "#"):
        alice.click(f'#keypad button[data-tone="{tone}"]')
    bob.wait_until("document.getElementById('dtmf-heard').textContent === 'heard 12#'")
    alice.click("#hangup")
    wait_phone(alice, "ended")
    wait_phone(bob, "ended")
    assert alice.eval("window.peerageChat.phone.state.lastEnd") == {"how": "ended", "originator": "local",
                                                                    "cause": "Terminated"}
    assert bob.eval("window.peerageChat.phone.state.lastEnd") == {"how": "ended", "originator": "remote",
                                                                  "cause": "Terminated"}
    # Both phones stay registered and ready for the next call.
    assert not alice.eval("document.getElementById('call').disabled")


def test_bob_calls_alice_who_declines_then_answers_and_bob_hangs_up(shots: tuple[Browser, Browser]) -> None:
    alice, bob = shots
    place_call(bob, alice, "alice@example.org")
    alice.click("#decline")
    wait_phone(bob, "ended")
    assert bob.eval("window.peerageChat.phone.state.lastEnd.cause") == "Rejected"
    place_call(bob, alice, "alice")
    alice.click("#answer")
    wait_phone(bob, "in-call")
    wait_phone(alice, "in-call")
    bob.click("#hangup")
    wait_phone(alice, "ended")
    assert alice.eval("window.peerageChat.phone.state.lastEnd.originator") == "remote"
    assert phone_state(bob) == "ended"


def test_a_refused_registration_fetches_a_new_sip_credential(shots: tuple[Browser, Browser]) -> None:
    """The server forgets the page's SIP token (here: revoked, as after a restart): the next REGISTER is
    refused, and the page gets a fresh token from its web session and registers again, unprompted."""
    _alice, bob = shots
    revoked = bob.eval("fetch('/auth/sip-credentials', {method: 'DELETE', headers: {'X-CSRF-Token': "
                       "document.getElementById('logout-csrf').value}}).then((r) => r.json())")
    assert revoked["revoked"] >= 1
    refused = bob.eval("window.peerageChat.phone.state.refused")
    bob.eval("window.peerageChat.phone.state.ua.register()")
    # refused (the old token is gone), then a new one fetched and accepted
    bob.wait_until(f"window.peerageChat.phone.state.refused === {refused + 1}")
    wait_phone(bob, "registered")
    assert "ready as" in bob.text("#phone-status")
