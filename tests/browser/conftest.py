"""Fixtures of the browser tests (loopback block 127.0.9.0/24): a LocalDNS, a peerage server for
example.org with SMTP, IMAP and the web service (webmail at https://example.org/mail/), a Postfix for
example.net with the user carol, a loopback "tracker" that hostile mail points at, an attacker page on
another site, and a fresh Chromium per test whose screenshots land in the test's tmp dir."""

from __future__ import annotations

import email.policy
import http.server
import imaplib
import smtplib
import threading
import time
from collections.abc import Iterator
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

import pytest

from tests.browser.browser import Browser, require_browser
from tests.harness import LocalDNS, PeerageServer, TestCA, wait_for
from tests.mail.helpers import unverified_context
from tests.mail.postfix import Postfix

DNS_ADDRESS = "127.0.9.53"
PEERAGE_ADDRESS = "127.0.9.1"
POSTFIX_ADDRESS = "127.0.9.2"
CLIENT_ADDRESS = "127.0.9.100"
TRACKER_ADDRESS = "127.0.9.66"
ATTACKER_ADDRESS = "127.0.9.67"
SIDE_PORT = 8080
ALICE = "alice@example.org"
CAROL = "carol@example.net"
TARGET = "target@example.org"
PASSWORD = "correct horse battery"
# Not 443: a benchmark or a test elsewhere on this shared machine may hold the wildcard 0.0.0.0:443.
HTTPS_PORT = 8443
ORIGIN = f"https://example.org:{HTTPS_PORT}"
DELIVERY_TIMEOUT = 30.0

# The browser reaches these names only; every other name fails to resolve.
BROWSER_HOSTS = {"example.org": PEERAGE_ADDRESS, "tracker.test": TRACKER_ADDRESS, "attacker.test": ATTACKER_ADDRESS}
ALLOWED_HOSTS = [f"example.org:{HTTPS_PORT}", f"attacker.test:{SIDE_PORT}"]


class SideServer:
    """A plain HTTP server on a loopback address: records every request it gets and answers from `pages`."""

    def __init__(self, address: str, port: int, pages: dict[str, tuple[str, bytes]] | None = None) -> None:
        self.hits: list[str] = []
        self.pages = pages or {}
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.hits.append(self.path)
                content_type, body = owner.pages.get(self.path.split("?")[0], ("image/gif", b"GIF89a"))
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                owner.hits.append("POST " + self.path)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer((address, port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> SideServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="session")
def browser_tools() -> tuple[str, str]:
    return require_browser()


@pytest.fixture(scope="module")
def local_dns() -> Iterator[LocalDNS]:
    dns = LocalDNS(DNS_ADDRESS, 53).start()
    try:
        yield dns
    finally:
        dns.stop()


@pytest.fixture(scope="module")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def peerage(tmp_path_factory: pytest.TempPathFactory, local_dns: LocalDNS, test_ca: TestCA,
            browser_tools: tuple[str, str]) -> Iterator[PeerageServer]:
    from peerage.mail.auth.dkim import generate_keys, load_keys

    cert = test_ca.issue("example.org", dns_ids=["example.org", "mail.example.org"])
    config: dict[str, Any] = {
        "smtp": {"source_address": PEERAGE_ADDRESS, "first_retry_seconds": 1.0},
        "web": {"https_listen": [f"{PEERAGE_ADDRESS}:{HTTPS_PORT}"], "http_listen": [f"{PEERAGE_ADDRESS}:8081"]},
        # Per account, so the throttle test's victim does not lock the other tests' alice out.
        "limits": {"auth_failures_per_ip": 1000, "auth_failures_per_account": 3},
    }
    server = PeerageServer(tmp_path_factory.mktemp("peerage"), "example.org", PEERAGE_ADDRESS, dns=local_dns,
                           services=("smtp", "imap", "web"), config=config, certs={"example.org": cert},
                           ca_file=test_ca.cert_path)
    server.add_user(ALICE, PASSWORD)
    server.add_user(TARGET, PASSWORD)
    generate_keys(server.data_dir, "example.org")
    local_dns.add_mx("example.org", 10, "mail.example.org")
    local_dns.add_a("mail.example.org", PEERAGE_ADDRESS)
    local_dns.add_a("example.org", PEERAGE_ADDRESS)
    local_dns.add_txt("example.org", "v=spf1 ip4:127.0.9.0/24 -all")
    local_dns.add_txt("_dmarc.example.org", "v=DMARC1; p=reject")
    keys = load_keys(server.data_dir, "example.org")
    assert keys is not None
    for name, value in keys.dns_records():
        local_dns.add_txt(name, value)
    local_dns.add_mx("example.net", 10, "mx.example.net")
    local_dns.add_a("mx.example.net", POSTFIX_ADDRESS)
    local_dns.add_txt("example.net", "v=spf1 ip4:127.0.9.0/24 -all")
    local_dns.add_txt("_dmarc.example.net", "v=DMARC1; p=none")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def postfix(tmp_path_factory: pytest.TempPathFactory, local_dns: LocalDNS, test_ca: TestCA,
            peerage: PeerageServer) -> Iterator[Postfix]:
    cert = test_ca.issue("mx.example.net")
    server = Postfix(tmp_path_factory.mktemp("postfix"), domain="example.net", hostname="mx.example.net",
                     address=POSTFIX_ADDRESS, dns_address=DNS_ADDRESS, users=["carol"], cert=cert)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def tracker() -> Iterator[SideServer]:
    server = SideServer(TRACKER_ADDRESS, SIDE_PORT).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def browser(tmp_path: Path, browser_tools: tuple[str, str]) -> Iterator[Browser]:
    with Browser(tmp_path / "browser", hosts=BROWSER_HOSTS, allow_hosts=ALLOWED_HOSTS) as b:
        try:
            yield b
        finally:
            b.screenshot("end")


def deliver(message: EmailMessage | bytes, sender: str, recipients: list[str], *,
            host: str = PEERAGE_ADDRESS) -> None:
    """Hand a message to an MX on port 25 (peerage's, or Postfix's to relay it)."""
    data = message if isinstance(message, bytes) else message.as_bytes(policy=email.policy.SMTP)
    with smtplib.SMTP(host, 25, source_address=(CLIENT_ADDRESS, 0), timeout=30) as client:
        client.ehlo("client.example.net")
        if client.has_extn("starttls"):
            client.starttls(context=unverified_context())
            client.ehlo("client.example.net")
        assert client.sendmail(sender, recipients, data) == {}


def make_message(subject: str, body: str = "Hello Alice.", *, sender: str = CAROL, html: str | None = None) -> EmailMessage:
    message = EmailMessage()
    message["From"] = f"Carol <{sender}>"
    message["To"] = f"Alice <{ALICE}>"
    message["Subject"] = subject
    message["Date"] = formatdate(time.time())
    message["Message-ID"] = make_msgid(domain="example.net")
    message.set_content(body)
    if html is not None:
        message.add_alternative(html, subtype="html")
    return message


def imap_login() -> imaplib.IMAP4_SSL:
    client = imaplib.IMAP4_SSL(PEERAGE_ADDRESS, 993, ssl_context=unverified_context(), timeout=30)
    client.login(ALICE, PASSWORD)
    return client


def imap_find(folder: str, subject: str) -> list[bytes]:
    """UIDs of messages in `folder` whose subject contains `subject`."""
    client = imap_login()
    try:
        status, _ = client.select(f'"{folder}"')
        if status != "OK":
            return []
        status, data = client.uid("SEARCH", "SUBJECT", f'"{subject}"')
        return data[0].split() if status == "OK" and data and data[0] else []
    finally:
        client.logout()


def imap_flags(folder: str, uid: bytes) -> str:
    client = imap_login()
    try:
        client.select(f'"{folder}"')
        status, data = client.uid("FETCH", uid, "(FLAGS)")
        return str(data[0]) if status == "OK" else ""
    finally:
        client.logout()


def login(browser: Browser, password: str = PASSWORD, *, account: str = ALICE, expect_mail: bool = True) -> None:
    browser.goto(f"{ORIGIN}/mail/")
    browser.wait_for("#account")
    browser.fill("#account", account)
    browser.fill("#password", password)
    # The answer is a navigation after an argon2id check: on a loaded machine that takes its time.
    browser.press("Enter", selector="#password", timeout=30000)
    if expect_mail:
        browser.wait_for(".app .list", timeout=30)


def wait_row(browser: Browser, subject: str, timeout: float = 30.0) -> None:
    browser.wait_for(f'.row[data-subject="{subject}"]', timeout=timeout)


def wait_delivered(server: PeerageServer, subject: str, folder: str = "INBOX") -> None:
    wait_for(lambda: imap_find(folder, subject) or None, DELIVERY_TIMEOUT, f"{subject!r} in {folder}")


def type_at_editor_start(browser: Browser, text: str) -> None:
    """Put the caret at the start of the compose editor and type `text` there."""
    browser.eval("""(() => { const el = document.getElementById('compose-body'); el.focus();
        const r = document.createRange(); r.setStart(el.firstChild || el, 0); r.collapse(true);
        const s = getSelection(); s.removeAllRanges(); s.addRange(r); })()""")
    browser.type(text)
