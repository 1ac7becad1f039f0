"""The MX port's early-talker test (a client that sends before the greeting is refused, as Postfix's
postscreen does) and a clean shutdown: open SMTP sessions are told `421` (RFC 5321 §3.8) and IMAP
sessions `* BYE` (RFC 9051 §7.1.5) before the connections close."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from tests.harness import LocalDNS, PeerageServer

ADDRESS = "127.0.4.9"
ALICE = "alice@example.org"
# Long enough that a greeting which did not wait for it comes well inside it on a loaded CI machine.
GREETING_DELAY = 3.0


def _server(tmp_path: Path, local_dns: LocalDNS, **smtp: object) -> PeerageServer:
    server = PeerageServer(tmp_path, "example.org", ADDRESS, dns=local_dns, services=("smtp", "imap"),
                           config={"smtp": {"greeting_delay_seconds": GREETING_DELAY, **smtp}})
    server.add_user(ALICE, "a password")
    return server


def _connect(port: int, source: str) -> socket.socket:
    sock = socket.create_connection((ADDRESS, port), timeout=10, source_address=(source, 0))
    return sock


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            chunk = sock.recv(4096)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        data += chunk
    return data


def test_early_talker_is_refused_and_a_patient_client_is_greeted(tmp_path: Path, local_dns: LocalDNS) -> None:
    with _server(tmp_path, local_dns):
        early = _connect(25, "127.0.4.110")
        early.sendall(b"EHLO spammer.example\r\nMAIL FROM:<s@spammer.example>\r\n")
        reply = _read_all(early)
        early.close()
        assert reply.startswith(b"554 5.5.1"), reply
        assert b"220" not in reply

        patient = _connect(25, "127.0.4.111")
        started = time.monotonic()
        greeting = patient.recv(4096)
        assert greeting.startswith(b"220 "), greeting
        assert time.monotonic() - started >= GREETING_DELAY - 0.1
        patient.sendall(b"QUIT\r\n")
        patient.close()

        # An address that passed is not made to wait again.
        again = _connect(25, "127.0.4.111")
        started = time.monotonic()
        assert again.recv(4096).startswith(b"220 ")
        assert time.monotonic() - started < GREETING_DELAY
        again.close()

        # Submission never waits: its clients authenticate.
        submission = _connect(587, "127.0.4.110")
        started = time.monotonic()
        assert submission.recv(4096).startswith(b"220 ")
        assert time.monotonic() - started < GREETING_DELAY
        submission.close()


def test_greeting_delay_zero_turns_the_check_off(tmp_path: Path, local_dns: LocalDNS) -> None:
    with _server(tmp_path, local_dns, greeting_delay_seconds=0):
        sock = _connect(25, "127.0.4.112")
        sock.sendall(b"EHLO eager.example\r\n")
        data = b""
        while b"250 " not in data:
            chunk = sock.recv(4096)
            assert chunk, data
            data += chunk
        assert data.startswith(b"220 ")
        sock.close()


def test_shutdown_says_421_on_smtp_and_bye_on_imap(tmp_path: Path, local_dns: LocalDNS) -> None:
    server = _server(tmp_path, local_dns).start()
    try:
        smtp = _connect(587, "127.0.4.113")
        assert smtp.recv(4096).startswith(b"220 ")
        smtp.sendall(b"EHLO client.example\r\n")
        data = b""
        while b"250 " not in data:
            data += smtp.recv(4096)
        imap = _connect(143, "127.0.4.113")
        assert imap.recv(4096).startswith(b"* OK")
        imap.sendall(b"a1 NOOP\r\n")
        assert b"a1 OK" in imap.recv(4096)
        server.stop()
        smtp_last = _read_all(smtp)
        imap_last = _read_all(imap)
        assert smtp_last.startswith(b"421 4.3.2"), smtp_last
        assert imap_last.startswith(b"* BYE"), imap_last
    finally:
        server.stop()


def test_submission_login_logs_no_deprecation_notice(tmp_path: Path, local_dns: LocalDNS) -> None:
    import smtplib

    from tests.mail.helpers import unverified_context

    with _server(tmp_path, local_dns) as server:
        with smtplib.SMTP(ADDRESS, 587, source_address=("127.0.4.114", 0), timeout=15) as client:
            client.starttls(context=unverified_context())
            client.login(ALICE, "a password")
        assert "Session.login_data is deprecated" not in server.log_text()
