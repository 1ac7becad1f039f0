"""Chat in the browser: converse.js at /chat/ opens its XMPP session over WebSocket with the web login's
credential (credentials_url, no second password prompt); alice and bob chat in two Chromium pages, and
alice chats with dave, a slixmpp client on example.net, over s2s."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator

import pytest
import slixmpp

from tests.browser.browser import Browser
from tests.harness import PeerageServer
from tests.webchat.conftest import (
    ALICE,
    BOB,
    DAVE,
    DAVE_PASSWORD,
    ORIGIN,
    OTHER_ADDRESS,
    PASSWORD,
    PEERAGE_ADDRESS,
)

CHAT_TIMEOUT = 20.0


def wait_connected(browser: Browser) -> None:
    browser.wait_until("document.body.dataset.xmpp === 'connected'", timeout=CHAT_TIMEOUT)


def open_chat(browser: Browser, jid: str) -> None:
    link = f'a.open-chat[data-jid="{jid}"]'
    if browser.count(link):
        browser.click(link)  # in the roster (contacts, or someone who wrote first)
    else:
        # converse.js routes #converse/chat?jid=... to the chat with that address.
        browser.eval(f"location.hash = ''; location.hash = 'converse/chat?jid={jid}'")
    browser.wait_for(f'converse-chat[jid="{jid}"] textarea.chat-textarea', timeout=CHAT_TIMEOUT)


def send(browser: Browser, jid: str, text: str) -> None:
    selector = f'converse-chat[jid="{jid}"] textarea.chat-textarea'
    browser.fill(selector, text)
    browser.press("Enter", selector=selector)


def wait_message(browser: Browser, jid: str, text: str) -> None:
    """`text` from `jid` shows in the chat with it (opened here: fullscreen converse.js shows one chat at
    a time, and a new one only as an unread count in the roster)."""
    browser.wait_for(f'a.open-chat[data-jid="{jid}"]', timeout=CHAT_TIMEOUT)  # the sender, in the roster
    open_chat(browser, jid)
    browser.wait_until(
        f"[...document.querySelectorAll('converse-chat[jid=\"{jid}\"] .chat-msg__text')]"
        f".some((el) => el.textContent.includes({text!r}))", timeout=CHAT_TIMEOUT)


def test_converse_logs_in_without_a_password_prompt(alice_page: Browser, bob_page: Browser) -> None:
    for browser in (alice_page, bob_page):
        wait_connected(browser)
        # No converse login form: the session came from credentials_url.
        assert browser.count("converse-login-form input[type=password]") == 0
        browser.screenshot("chat-connected")
    events = alice_page.events()
    assert not [e for e in events["console"] if "Content Security Policy" in e["text"]], events["console"]
    assert not events["errors"], events["errors"]


def test_alice_and_bob_chat(alice_page: Browser, bob_page: Browser) -> None:
    wait_connected(alice_page)
    wait_connected(bob_page)
    open_chat(alice_page, BOB)
    send(alice_page, BOB, "hello bob, from converse")
    wait_message(bob_page, ALICE, "hello bob, from converse")
    send(bob_page, ALICE, "hi alice")
    wait_message(alice_page, BOB, "hi alice")
    alice_page.screenshot("chat-with-bob")
    bob_page.screenshot("chat-with-alice")


class Dave(slixmpp.ClientXMPP):
    def __init__(self) -> None:
        super().__init__(DAVE, DAVE_PASSWORD)
        self.started = asyncio.Event()
        self.messages: asyncio.Queue[slixmpp.Message] = asyncio.Queue()
        self.ssl_context.check_hostname = False
        self.ssl_context.verify_mode = ssl.CERT_NONE
        self.add_event_handler("session_start", self._start)
        self.add_event_handler("message", self.messages.put_nowait)

    async def _start(self, _event: object) -> None:
        self.send_presence()
        self.started.set()


@pytest.fixture
async def dave(other_peerage: PeerageServer) -> AsyncIterator[Dave]:
    client = Dave()
    client.connect(host=OTHER_ADDRESS, port=5222)
    await asyncio.wait_for(client.started.wait(), CHAT_TIMEOUT)
    yield client
    client.disconnect()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.disconnected, 5)


async def test_alice_chats_with_a_user_on_another_domain(alice_page: Browser, dave: Dave) -> None:
    await asyncio.to_thread(wait_connected, alice_page)
    dave.send_message(mto=ALICE, mbody="hello from example.net", mtype="chat")
    await asyncio.to_thread(wait_message, alice_page, DAVE, "hello from example.net")
    await asyncio.to_thread(send, alice_page, DAVE, "hello dave, over s2s")
    while True:
        message = await asyncio.wait_for(dave.messages.get(), CHAT_TIMEOUT)
        if message["body"]:
            break
    assert message["body"] == "hello dave, over s2s" and str(message["from"]).startswith(ALICE)
    await asyncio.to_thread(alice_page.screenshot, "chat-with-dave")


async def test_converse_publishes_an_omemo_device(alice_page: Browser, dave: Dave) -> None:
    """OMEMO in the page: libsignal (WebAssembly, allowed by 'wasm-unsafe-eval') made alice's keys and
    converse.js published her device list and bundle on PEP, which another server's user can read."""
    await asyncio.to_thread(wait_connected, alice_page)
    dave.register_plugin("xep_0060")
    node = "eu.siacs.conversations.axolotl.devicelist"

    async def devices() -> list[str]:
        try:
            items = await dave.plugin["xep_0060"].get_items(jid=ALICE, node=node, timeout=10)
        except slixmpp.exceptions.IqError:
            return []
        return [device.get("id") for item in items["pubsub"]["items"] for device in
                item.xml.iter("{eu.siacs.conversations.axolotl}device")]

    deadline = asyncio.get_running_loop().time() + CHAT_TIMEOUT
    found: list[str] = []
    while not found and asyncio.get_running_loop().time() < deadline:
        found = await devices()
        if not found:
            await asyncio.sleep(0.5)
    assert found, "converse.js published no OMEMO device for alice"
    events = await asyncio.to_thread(alice_page.events)
    assert not [e for e in events["console"] if "WebAssembly" in e["text"] and e["type"] == "error"], events["console"]


OLGA = "olga@example.org"  # chats over BOSH (her own account and browser)


class Bob(slixmpp.ClientXMPP):
    """bob in slixmpp over TCP (his browser page is another resource)."""

    def __init__(self) -> None:
        super().__init__(f"{BOB}/tcp", PASSWORD)
        self.ssl_context.check_hostname = False
        self.ssl_context.verify_mode = ssl.CERT_NONE
        self.started = asyncio.Event()
        self.messages: asyncio.Queue[slixmpp.Message] = asyncio.Queue()
        self.add_event_handler("session_start", self._start)
        self.add_event_handler("message", self.messages.put_nowait)

    def _start(self, _event: object) -> None:
        self.send_presence()  # available: a message to the bare JID reaches this resource (RFC 6121 8.5.2.1)
        self.started.set()


async def test_converse_chats_over_bosh(peerage: PeerageServer, tmp_path_factory: pytest.TempPathFactory) -> None:
    """converse.js in BOSH mode (XEP-0206, as in a browser without WebSocket): the same login by
    credentials_url, and messages both ways with a TCP user."""
    from tests.browser.browser import require_browser
    from tests.webchat.pages import login_to_chat, open_browser

    require_browser()
    if OLGA not in (await asyncio.to_thread(peerage.cli, "user", "list", "example.org")).stdout.split():
        await asyncio.to_thread(peerage.add_user, OLGA, PASSWORD)
    offset = len(peerage.log_text())
    browser = await asyncio.to_thread(open_browser, tmp_path_factory.mktemp("olga"))
    bob = Bob()
    try:
        await asyncio.to_thread(login_to_chat, browser, OLGA)
        await asyncio.to_thread(browser.goto, f"{ORIGIN}/chat/?transport=bosh")
        await asyncio.to_thread(wait_connected, browser)
        assert await asyncio.to_thread(browser.eval, "document.body.dataset.xmppTransport") == "bosh"
        assert "BOSH session" in peerage.log_text(offset)
        bob.connect(host=PEERAGE_ADDRESS, port=5222)
        await asyncio.wait_for(bob.started.wait(), CHAT_TIMEOUT)
        bob.send_message(mto=OLGA, mbody="hello olga, over tcp", mtype="chat")
        await asyncio.to_thread(wait_message, browser, f"{BOB}", "hello olga, over tcp")
        await asyncio.to_thread(send, browser, BOB, "hello bob, over bosh")
        while True:
            message = await asyncio.wait_for(bob.messages.get(), CHAT_TIMEOUT)
            if message["body"]:
                break
        assert message["body"] == "hello bob, over bosh" and str(message["from"]).startswith(OLGA)
        events = await asyncio.to_thread(browser.events)
        assert not [e for e in events["console"] if "Content Security Policy" in e["text"]], events["console"]
    finally:
        bob.disconnect()
        await asyncio.to_thread(browser.close)
