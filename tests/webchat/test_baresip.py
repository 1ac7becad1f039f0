"""The browser phone and baresip (Debian's, registered over UDP): the browser calls baresip through the
proxy (baresip answers on its own) and hangs up; then baresip calls the browser, which answers, and
baresip hangs up. baresip offers DTLS-SRTP with ICE, as WebRTC requires; the test asserts the
signalling (INVITE, 200, ACK, BYE on both legs) and reports whether media flowed."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser.browser import Browser
from tests.harness import PeerageServer, require_binary, wait_for
from tests.webchat.conftest import ALICE, BLOCK, DAVE, DAVE_PASSWORD, OTHER_ADDRESS, PEERAGE_ADDRESS
from tests.webchat.pages import stats, wait_phone

BARESIP_ADDRESS = f"{BLOCK}.20"
DAVE_ADDRESS = f"{BLOCK}.21"
BARESIP_PORT = 5070
CONTROL_PORT = 4444
CAROL = "carol@example.org"
CAROL_PASSWORD = "carol-uses-baresip-7"  # no space: baresip account lines split on them


def baresip_config(directory: Path, address: str, account: str, password: str, proxy: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config").write_text(
        "poll_method\t\tepoll\n"
        f"sip_listen\t\t{address}:{BARESIP_PORT}\n"
        "audio_player\t\taufile,/dev/null\n"
        "audio_source\t\tausine,440\n"
        "ausrc_srate\t\t48000\n"
        "ausrc_channels\t\t2\n"
        "audio_alert\t\taufile,/dev/null\n"
        "module_path\t\t/usr/lib/baresip/modules\n"
        "module\t\t\tg711.so\n"
        "module\t\t\topus.so\n"
        "module\t\t\tausine.so\n"
        "module\t\t\taufile.so\n"
        "module\t\t\tdtls_srtp.so\n"
        "module\t\t\tice.so\n"
        "module_app\t\taccount.so\n"
        "module_app\t\tmenu.so\n"
        "module_app\t\tctrl_tcp.so\n"
        f"ctrl_tcp_listen\t\t{address}:{CONTROL_PORT}\n"
        f"net_interface\t\t{address}\n"
        "rtp_ports\t\t40000-40100\n"
        "rtcp_mux\t\tyes\n")  # WebRTC insists on RTCP multiplexed with RTP (RFC 8834 §4.5)
    (directory / "accounts").write_text(
        f"<sip:{account}>;auth_pass={password};outbound=\"sip:{proxy}:5060\";"
        "answermode=auto;regint=600;mediaenc=dtls_srtp;medianat=ice\n")
    (directory / "contacts").write_text("")


class Baresip:
    def __init__(self, workdir: Path, address: str, account: str, password: str, proxy: str) -> None:
        self.binary = require_binary("baresip")
        self.workdir = workdir
        self.address = address
        self.log = workdir / "baresip.log"
        baresip_config(workdir / "config", address, account, password, proxy)
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen([self.binary, "-f", str(workdir / "config"), "-s", "-v"], stdout=out,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def command(self, command: str, params: str = "") -> None:
        """One ctrl_tcp command (a netstring of JSON, baresip's modules/ctrl_tcp)."""
        body = json.dumps({"command": command, "params": params, "token": "t"}).encode()
        with socket.create_connection((self.address, CONTROL_PORT), timeout=5) as sock:
            sock.sendall(str(len(body)).encode() + b":" + body + b",")
            sock.recv(4096)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(5)


@pytest.fixture(scope="module")
def baresip(peerage: PeerageServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Baresip]:
    peerage.add_user(CAROL, CAROL_PASSWORD)
    yield from run_baresip(Baresip(tmp_path_factory.mktemp("baresip"), BARESIP_ADDRESS, CAROL, CAROL_PASSWORD,
                                   PEERAGE_ADDRESS))


@pytest.fixture(scope="module")
def dave_baresip(other_peerage: PeerageServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Baresip]:
    """dave@example.net on baresip, registered with example.net's own proxy."""
    yield from run_baresip(Baresip(tmp_path_factory.mktemp("dave"), DAVE_ADDRESS, DAVE, DAVE_PASSWORD,
                                   OTHER_ADDRESS))


def run_baresip(phone: Baresip) -> Iterator[Baresip]:
    try:
        wait_for(lambda: ("200 OK" in phone.text() and "REGISTER" in phone.text()) or phone.process.poll() is not None,
                 15, "baresip registered over UDP")
        assert phone.process.poll() is None, phone.text()[-3000:]
        yield phone
    finally:
        phone.stop()


def media_report(browser: Browser) -> dict[str, object] | None:
    try:
        return wait_for(lambda: (s := stats(browser)) and s["bytesReceived"] and s, 8, "RTP from baresip")
    except AssertionError:
        return stats(browser)


def test_browser_calls_baresip_and_hangs_up(alice_page: Browser, baresip: Baresip) -> None:
    before = len(baresip.text())
    alice_page.fill("#callee", "carol")
    alice_page.click("#call")
    wait_phone(alice_page, "in-call")
    alice_page.screenshot("in-call-with-baresip")
    report = media_report(alice_page)
    print("media from baresip:", report)
    alice_page.click("#hangup")
    wait_phone(alice_page, "ended")
    wait_for(lambda: "BYE sip:" in baresip.text()[before:], 10, "the BYE at baresip")
    assert alice_page.eval("window.peerageChat.phone.state.lastEnd.originator") == "local"
    alice_page.screenshot("after-baresip-call")


def test_baresip_calls_the_browser(alice_page: Browser, baresip: Baresip) -> None:
    before = len(baresip.text())
    baresip.command("dial", f"sip:{ALICE}")
    wait_phone(alice_page, "ringing")
    assert CAROL in alice_page.text("#caller")
    alice_page.screenshot("baresip-ringing")
    alice_page.click("#answer")
    wait_phone(alice_page, "in-call")
    print("media from baresip:", media_report(alice_page))
    baresip.command("hangup")
    wait_phone(alice_page, "ended")
    assert alice_page.eval("window.peerageChat.phone.state.lastEnd") == {"how": "ended", "originator": "remote",
                                                                         "cause": "Terminated"}
    assert "INVITE sip:" in baresip.text()[before:]


def test_browser_calls_a_user_on_another_sip_domain(alice_page: Browser, dave_baresip: Baresip) -> None:
    """alice@example.org calls dave@example.net: example.org's proxy finds example.net through NAPTR and
    SRV (RFC 3263) and hands the call over without any account there (peering); dave's baresip answers."""
    before = len(dave_baresip.text())
    alice_page.fill("#callee", DAVE)
    alice_page.click("#call")
    wait_phone(alice_page, "in-call")
    assert DAVE in alice_page.text("#phone-status")
    alice_page.screenshot("in-call-with-example-net")
    alice_page.click("#hangup")
    wait_phone(alice_page, "ended")
    text = dave_baresip.text()[before:]
    wait_for(lambda: "BYE sip:" in dave_baresip.text()[before:], 10, "the BYE at dave's baresip")
    assert f"From: <sip:{ALICE}>" in text
