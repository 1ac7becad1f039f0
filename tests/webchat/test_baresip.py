"""The browser phone and baresip (Debian's, registered over UDP): the browser calls baresip through the
proxy (baresip answers on its own) and hangs up; then baresip calls the browser, which answers, and
baresip hangs up. baresip offers DTLS-SRTP with ICE, as WebRTC requires. The test asserts the
signalling (INVITE, 200, ACK, BYE on both legs) and media both ways: bytes received and sent in the
browser's getStats(), DTLS-SRTP completed and RTP arriving in baresip's log. For the media, baresip
runs in a network namespace of its own (tests/webchat/netns.py: bound to a loopback address, baresip
1.0 offers the host's LAN address instead, which the test's TURN relay refuses); without root the
namespace cannot be made and the media is only reported."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser.browser import Browser
from tests.harness import PeerageServer, require_binary, wait_for
from tests.webchat.conftest import (
    ALICE,
    BLOCK,
    DAVE,
    DAVE_PASSWORD,
    ERIN,
    NETNS_ADDRESS,
    NETNS_HOST_ADDRESS,
    OTHER_ADDRESS,
    PEERAGE_ADDRESS,
    _page,
)
from tests.webchat.coturn import Coturn
from tests.webchat.netns import NetworkNamespace, reason_unavailable
from tests.webchat.pages import stats, wait_phone

BARESIP_ADDRESS = f"{BLOCK}.20"
DAVE_ADDRESS = f"{BLOCK}.21"
BARESIP_PORT = 5070
CONTROL_PORT = 4444
CAROL = "carol@example.org"
CAROL_PASSWORD = "carol-uses-baresip-7"  # no space: baresip account lines split on them


def baresip_config(directory: Path, address: str, account: str, password: str, proxy: str,
                   interface: str) -> None:
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
        # Where the media address comes from: an interface name (in the namespace), else an address.
        f"net_interface\t\t{interface}\n"
        "rtp_ports\t\t40000-40100\n"
        "rtcp_mux\t\tyes\n")  # WebRTC insists on RTCP multiplexed with RTP (RFC 8834 §4.5)
    (directory / "accounts").write_text(
        f"<sip:{account}>;auth_pass={password};outbound=\"sip:{proxy}:5060\";"
        "answermode=auto;regint=600;mediaenc=dtls_srtp;medianat=ice\n")
    (directory / "contacts").write_text("")


class Baresip:
    def __init__(self, workdir: Path, address: str, account: str, password: str, proxy: str,
                 namespace: NetworkNamespace | None = None) -> None:
        self.binary = require_binary("baresip")
        self.workdir = workdir
        self.address = address
        self.namespace = namespace
        self.log = workdir / "baresip.log"
        baresip_config(workdir / "config", address, account, password, proxy,
                       namespace.link if namespace is not None else address)
        argv = [self.binary, "-f", str(workdir / "config"), "-s", "-v"]
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(namespace.command(argv) if namespace is not None else argv, stdout=out,
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
    """carol@example.org on baresip, in a network namespace of its own when the test may make one."""
    peerage.add_user(CAROL, CAROL_PASSWORD)
    namespace = None if reason_unavailable() else NetworkNamespace(NETNS_HOST_ADDRESS, NETNS_ADDRESS)
    try:
        if namespace is not None:
            namespace.start()
        address = NETNS_ADDRESS if namespace is not None else BARESIP_ADDRESS
        yield from run_baresip(Baresip(tmp_path_factory.mktemp("baresip"), address, CAROL, CAROL_PASSWORD,
                                       PEERAGE_ADDRESS, namespace))
    finally:
        if namespace is not None:
            namespace.stop()


@pytest.fixture(scope="module")
def dave_baresip(other_peerage: PeerageServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Baresip]:
    """dave@example.net on baresip, registered with example.net's own proxy."""
    yield from run_baresip(Baresip(tmp_path_factory.mktemp("dave"), DAVE_ADDRESS, DAVE, DAVE_PASSWORD,
                                   OTHER_ADDRESS))


@pytest.fixture(scope="module")
def erin_page(peerage: PeerageServer, coturn: Coturn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    """A Chromium for erin@example.org without the loopback network in its ICE: one relay candidate.
    With loopback, Chromium gathers a relay candidate on lo and another on eth0; as the controlling
    agent it keeps the nominated pair of lowest network cost (lo), while baresip 1.0, controlled, keeps
    the nominated pair of highest priority (RFC 8445 §8.1.1), the other one, and its DTLS-SRTP
    answers one remote address only ("dtls already accepted"): the handshake never completed."""
    yield from _page(tmp_path_factory, ERIN, loopback=False)


def run_baresip(phone: Baresip) -> Iterator[Baresip]:
    try:
        wait_for(lambda: ("200 OK" in phone.text() and "REGISTER" in phone.text()) or phone.process.poll() is not None,
                 15, "baresip registered over UDP")
        assert phone.process.poll() is None, phone.text()[-3000:]
        yield phone
    finally:
        phone.stop()


def assert_media(browser: Browser, phone: Baresip, before: int) -> dict[str, object] | None:
    """RTP both ways, once DTLS-SRTP is up: the browser received and sent audio bytes (getStats), and
    baresip says the same (its DTLS-SRTP completed and RTP arrived). Without a namespace of its own
    baresip offers the host's LAN address, which the test's TURN relay refuses: only reported then."""
    def flowing() -> dict[str, object] | None:
        report = stats(browser)
        return report if report and report["bytesReceived"] and report["bytesSent"] else None

    if phone.namespace is None:
        print("media not asserted:", reason_unavailable(), stats(browser))
        return None
    try:
        report = wait_for(flowing, 15, "RTP both ways between the browser and baresip")
    except AssertionError as exc:
        raise AssertionError(f"{stats(browser)}; baresip: {phone.text()[before:][-3000:]}") from exc
    wait_for(lambda: "incoming rtp for 'audio' established" in phone.text()[before:], 10, "RTP at baresip")
    assert "DTLS-SRTP complete" in phone.text()[before:]
    return report


def test_browser_calls_baresip_and_hangs_up(erin_page: Browser, baresip: Baresip) -> None:
    before = len(baresip.text())
    erin_page.fill("#callee", "carol")
    erin_page.click("#call")
    wait_phone(erin_page, "in-call")
    erin_page.screenshot("in-call-with-baresip")
    print("media with baresip:", assert_media(erin_page, baresip, before))
    erin_page.click("#hangup")
    wait_phone(erin_page, "ended")
    wait_for(lambda: "BYE sip:" in baresip.text()[before:], 10, "the BYE at baresip")
    assert erin_page.eval("window.peerageChat.phone.state.lastEnd.originator") == "local"
    erin_page.screenshot("after-baresip-call")


def test_baresip_calls_the_browser(erin_page: Browser, baresip: Baresip) -> None:
    before = len(baresip.text())
    baresip.command("dial", f"sip:{ERIN}")
    wait_phone(erin_page, "ringing")
    assert CAROL in erin_page.text("#caller")
    erin_page.screenshot("baresip-ringing")
    erin_page.click("#answer")
    wait_phone(erin_page, "in-call")
    print("media with baresip:", assert_media(erin_page, baresip, before))
    baresip.command("hangup")
    wait_phone(erin_page, "ended")
    assert erin_page.eval("window.peerageChat.phone.state.lastEnd") == {"how": "ended", "originator": "remote",
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
