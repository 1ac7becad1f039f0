"""Reload without downtime: SIGHUP (and `peerage reload`) swap certificates and domains in place.

One server on 127.0.8.10 serves XMPP, SIP and mail. An XMPP chat, an IMAP IDLE and a SIP call are in
progress when the certificate files are replaced and the server is reloaded: all three carry on, and
new TLS connections to every protocol are handed the new certificate.
"""

from __future__ import annotations

import asyncio
import hashlib
import signal
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from peerage.net.tls import generate_self_signed
from tests.harness import PeerageServer, require_binary, wait_for
from tests.sip.sipp import failure_report, finish, run_sipp, start_sipp
from tests.xmpp.rawclient import RawClient

ADDRESS = "127.0.8.10"
PASSWORD = "correct horse"
SCENARIOS = Path(__file__).parent / "scenarios"
SIP_SCENARIOS = Path(__file__).parent.parent / "sip" / "scenarios"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[PeerageServer]:
    server = PeerageServer(tmp_path, ["r.test"], ADDRESS, services=("xmpp", "sip", "smtp", "imap"),
                           config={"sip": {"digest_algorithms": ["MD5", "SHA-256"]}})
    for user in ("alice", "bob"):
        server.add_user(f"{user}@r.test", PASSWORD)
    server.start()
    yield server
    server.kill()


def fingerprint(port: int, server_name: str = "r.test") -> str:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((ADDRESS, port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=server_name) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def file_fingerprint(path: Path) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(path.read_text())).hexdigest()


class Imap:
    """Just enough IMAP over TLS to sit in IDLE."""

    def __init__(self) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.sock = ctx.wrap_socket(socket.create_connection((ADDRESS, 993), timeout=10), server_hostname="r.test")
        self.file = self.sock.makefile("rb")
        assert self.file.readline().startswith(b"* OK")

    def command(self, tag: str, text: str) -> list[bytes]:
        self.sock.sendall(f"{tag} {text}\r\n".encode())
        return self.until(tag.encode() + b" ")

    def until(self, prefix: bytes) -> list[bytes]:
        lines = []
        while True:
            line = self.file.readline()
            assert line, "connection closed"
            lines.append(line)
            if line.startswith(prefix):
                return lines

    def close(self) -> None:
        self.sock.close()


def replace_certificate(server: PeerageServer) -> str:
    cert, key = server.workdir / "r.test.crt", server.workdir / "r.test.key"
    new_cert, new_key = server.workdir / "new.crt", server.workdir / "new.key"
    generate_self_signed("r.test", new_cert, new_key)
    new_key.replace(key)
    new_cert.replace(cert)
    return file_fingerprint(cert)


async def chat(sender: RawClient, receiver: RawClient, marker: str) -> None:
    await sender.send(f"<message to='{receiver.jid}' type='chat'><body>{marker}</body></message>")
    assert marker in await receiver.read_until(f"<body>{marker}</body>.*?</message>")


@pytest.mark.timeout(180)
async def test_sighup_keeps_chat_idle_and_call_up_and_serves_the_new_certificate(
        server: PeerageServer, tmp_path: Path) -> None:
    require_binary("sipp")
    old = file_fingerprint(server.workdir / "r.test.crt")
    ports = {"xmpp direct TLS": 5223, "imaps": 993, "smtps": 465, "sips": 5061}
    for port in ports.values():
        assert fingerprint(port) == old

    alice, bob = RawClient(ADDRESS, "r.test", 5223, direct_tls=True), RawClient(ADDRESS, "r.test")
    await alice.login("alice", PASSWORD, resource="w")
    await bob.login("bob", PASSWORD, resource="w")
    await chat(alice, bob, "before")
    imap = await asyncio.to_thread(Imap)
    assert (await asyncio.to_thread(imap.command, "a1", f"LOGIN alice@r.test \"{PASSWORD}\""))[-1].startswith(b"a1 OK")
    await asyncio.to_thread(imap.command, "a2", "SELECT INBOX")
    imap.sock.sendall(b"a3 IDLE\r\n")
    assert (await asyncio.to_thread(imap.until, b"+"))[-1].startswith(b"+")

    # A SIP call (bob registered via SIPp, alice calls him) that is still up while the server reloads.
    register = run_sipp(tmp_path, str(SIP_SCENARIOS / "register.xml"), local_ip="127.0.8.11", port=5070,
                        server=f"{ADDRESS}:5060", service="bob", keys={"domain": "r.test"},
                        extra=["-au", "bob", "-ap", PASSWORD])
    assert register.returncode == 0, failure_report(tmp_path, register)
    uas = start_sipp(tmp_path, str(SIP_SCENARIOS / "uas_call.xml"), local_ip="127.0.8.11", port=5070,
                     server=None, extra=["-d", "0"])
    uac = await asyncio.to_thread(
        lambda: start_sipp(tmp_path, str(SCENARIOS / "uac_long_call.xml"), local_ip="127.0.8.12", port=5071,
                           server=f"{ADDRESS}:5060", service="bob",
                           keys={"domain": "r.test", "caller": "alice", "caller_domain": "visitor.test"}))
    await asyncio.sleep(1.5)  # the call is established (INVITE/200/ACK) and in its 5 s pause

    new = replace_certificate(server)
    assert new != old
    offset = len(server.log_text())
    assert server.process is not None
    server.process.send_signal(signal.SIGHUP)
    await asyncio.to_thread(wait_for, lambda: "reloaded" in server.log_text(offset), 15, "reloaded")
    assert server.running

    # Everything in progress carries on.
    await chat(alice, bob, "after")
    await chat(bob, alice, "and back")
    imap.sock.sendall(b"DONE\r\n")
    assert (await asyncio.to_thread(imap.until, b"a3 "))[-1].startswith(b"a3 OK")
    assert (await asyncio.to_thread(imap.command, "a4", "NOOP"))[-1].startswith(b"a4 OK")
    code, err = await asyncio.to_thread(finish, uac)
    assert code == 0, failure_report(tmp_path, (code, err))
    assert (await asyncio.to_thread(finish, uas))[0] == 0
    # The open connections still use the certificate they started with.
    assert hashlib.sha256(alice.ssl_object().getpeercert(True) or b"").hexdigest() == old

    # New connections get the new certificate, on every protocol.
    for name, port in ports.items():
        assert fingerprint(port) == new, name
    imap.close()
    await alice.close()
    await bob.close()


def test_peerage_reload_reports_live_and_restart_settings(server: PeerageServer) -> None:
    config = server.config_path.read_text().replace('log_level = "debug"', 'log_level = "info"')
    # A setting that needs a restart, next to a live one.
    config = config.replace("[xmpp]\n", "[xmpp]\nmax_offline_messages = 7\n", 1)
    server.config_path.write_text(config)
    result = server.cli("reload", check=False)
    assert result.returncode == 0, result.stderr
    assert "[server] log_level" in result.stdout
    assert "needs a restart to take effect: [xmpp] max_offline_messages" in result.stdout
    assert "need a restart" in server.log_text()

    # A broken certificate changes nothing, and says so; the server goes on with the old one.
    cert = server.workdir / "r.test.crt"
    good = cert.read_bytes()
    cert.write_text("not a certificate\n")
    failed = server.cli("reload", check=False)
    assert failed.returncode == 1 and "keeps its running configuration" in failed.stderr, failed.stderr
    assert "not a PEM certificate" in failed.stderr and "Traceback" not in failed.stderr
    assert server.running and "reload failed" in server.log_text()
    assert fingerprint(5223) == hashlib.sha256(ssl.PEM_cert_to_DER_cert(good.decode())).hexdigest()
    cert.write_bytes(good)
    assert server.cli("reload").returncode == 0

    # A file that does not parse is refused before the server is even signalled.
    server.config_path.write_text(config + "\n[xmpp]\nbroken = 1\n")
    refused = server.cli("reload", check=False)
    assert refused.returncode == 1 and "not valid TOML" in refused.stderr
    assert server.running


def test_reload_without_a_server_is_one_line(tmp_path: Path) -> None:
    server = PeerageServer(tmp_path, ["none.test"], "127.0.8.13")
    result = server.cli("reload", check=False)
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "no running peerage" in result.stderr
