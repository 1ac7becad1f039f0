"""ManageSieve (RFC 5804) against stock clients (sievelib's Client, sieve-connect) and against bad
input: scripts refused with their line and column, quotas, oversized literals, long quoted strings, a
client dripping bytes, cleartext authentication and the shared authentication throttle."""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import time

import pytest
from sievelib.managesieve import Client

from tests.harness import PeerageServer, require_binary
from tests.sieve.client import RawSieve
from tests.sieve.conftest import ADDRESS, AUTH_DEADLINE, PASSWORDS

GOOD = 'require ["fileinto"];\r\nif header :contains "subject" "report" {\r\n  fileinto "Reports";\r\n}\r\n'


@pytest.fixture
def sievelib_client(server: PeerageServer, test_ca, monkeypatch: pytest.MonkeyPatch):
    # sievelib verifies the certificate against the default trust store; point it at the test CA.
    monkeypatch.setenv("SSL_CERT_FILE", str(test_ca.cert_path))
    client = Client(ADDRESS, 4190, srvhostname="example.org")
    assert client.connect("bob@example.org", PASSWORDS["bob@example.org"], starttls=True, authmech="PLAIN")
    yield client
    client.logout()


def test_sievelib_manages_scripts(sievelib_client: Client) -> None:
    client = sievelib_client
    assert "fileinto" in client.get_sieve_capabilities()
    assert client.putscript("rules", GOOD)
    assert client.putscript("other", "keep;")
    active, others = client.listscripts()
    assert active is None and sorted(others) == ["other", "rules"]
    assert client.setactive("rules")
    active, others = client.listscripts()
    assert active == "rules" and others == ["other"]
    assert client.getscript("rules").strip() == GOOD.replace("\r\n", "\n").strip()  # sievelib splits lines
    assert client.checkscript("keep;")
    # RFC 5804 §2.6: a bad script is refused, and the message says where the error is.
    assert not client.putscript("broken", 'require "fileinto";\r\nfileinto "x"\r\nkeep;\r\n')
    assert b"line 3, column 1" in client.errmsg
    assert not client.checkscript('if header :is "a" { keep; }')
    assert b"line 1, column 4" in client.errmsg
    assert client.havespace("big", 1000)
    assert not client.havespace("huge", 5 * 1024 * 1024)
    assert client.errcode and client.errcode.upper().startswith(b"QUOTA")
    # The active script cannot be deleted (RFC 5804 §2.10); renaming keeps it active.
    assert not client.deletescript("rules")
    assert client.errcode == b"ACTIVE"
    assert client.renamescript("rules", "filters")
    assert not client.renamescript("missing", "x")
    active, others = client.listscripts()
    assert active == "filters"
    assert client.setactive("")
    assert client.deletescript("filters") and client.deletescript("other")
    assert client.listscripts() == (None, [])


def test_sieve_connect_uploads_lists_and_downloads(server: PeerageServer, test_ca, tmp_path) -> None:
    binary = require_binary("sieve-connect")
    script = tmp_path / "vacation.sieve"
    script.write_text('require "vacation";\nvacation :days 3 "Back on Monday.";\n')
    common = [binary, "--server", ADDRESS, "--port", "4190", "--user", "carol@example.org",
              "--tlscafile", str(test_ca.cert_path), "--tlshostname", "example.org",
              "--authmech", "PLAIN", "--passwordfd", "0"]
    password = PASSWORDS["carol@example.org"] + "\n"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*common, *args], input=password, capture_output=True, text=True, timeout=60)

    upload = run("--upload", "--localsieve", str(script), "--remotesieve", "away")
    assert upload.returncode == 0, upload.stderr
    assert run("--activate", "--remotesieve", "away").returncode == 0
    listing = run("--list")
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.splitlines() == ['"away" ACTIVE']
    back = tmp_path / "back.sieve"
    download = run("--download", "--remotesieve", "away", "--localsieve", str(back))
    assert download.returncode == 0, download.stderr
    assert back.read_text() == script.read_text()
    assert run("--deactivate").returncode == 0
    bad = tmp_path / "bad.sieve"
    bad.write_text("keep\n")
    refused = run("--upload", "--localsieve", str(bad), "--remotesieve", "bad")
    assert refused.returncode != 0
    assert "line 2, column 1" in refused.stdout + refused.stderr


def test_authentication_needs_tls_and_goes_through_the_throttle(server: PeerageServer, test_ca) -> None:
    raw = RawSieve(source="127.0.17.101", ca=test_ca.cert_path)
    assert any(line.startswith(b'"SASL" ""') for line in raw.greeting)  # nothing offered in clear
    assert b'"STARTTLS"' in raw.greeting
    assert raw.login("bob@example.org", PASSWORDS["bob@example.org"])[-1].startswith(b"NO (ENCRYPT-NEEDED)")
    capabilities = raw.starttls()
    assert any(line.startswith(b'"SASL" "') and b"PLAIN" in line for line in capabilities)
    assert b'"STARTTLS"' not in capabilities
    # [limits] auth_failures_per_ip = 1: the second failure waits, the third attempt is refused.
    # (A connection each, so the waits never meet the short authentication deadline of this server.)
    codes = [raw.login("bob@example.org", "wrong")[-1]]
    raw.close()
    for _ in range(2):
        again = RawSieve(source="127.0.17.101", ca=test_ca.cert_path)
        again.starttls()
        codes.append(again.login("bob@example.org", "wrong")[-1])
        again.close()
    assert codes[0].startswith(b"NO") and not codes[0].startswith(b"NO (TRYLATER)")
    assert codes[-1].startswith(b"NO (TRYLATER)"), codes
    # The throttle is the one every protocol shares: IMAP from that address is refused too.
    imap = socket.create_connection((ADDRESS, 143), 15, source_address=("127.0.17.101", 0))
    imap.recv(4096)
    imap.sendall(b"a STARTTLS\r\n")
    assert imap.recv(4096).startswith(b"a OK")
    tls = ssl.create_default_context(cafile=str(test_ca.cert_path)).wrap_socket(imap, server_hostname="example.org")
    tls.sendall(b'b LOGIN "bob@example.org" "' + PASSWORDS["bob@example.org"].replace("'", "'").encode() + b'"\r\n')
    answer = b""
    while b"b " not in answer:
        answer += tls.recv(4096)
    assert b"b NO" in answer and b"UNAVAILABLE" in answer, answer
    tls.close()


def test_bad_input(server: PeerageServer, test_ca) -> None:
    raw = RawSieve(source="127.0.17.102", ca=test_ca.cert_path)
    raw.starttls()
    assert raw.login("bob@example.org", PASSWORDS["bob@example.org"])[-1].startswith(b"OK")
    # A script over the size limit: read, refused with QUOTA/MAXSIZE, and the session goes on.
    size = 1024 * 1024 + 1
    raw.send(b'PUTSCRIPT "big" {%d+}\r\n' % size + b"#" * size + b"\r\n")
    assert raw.response()[-1].startswith(b"NO (QUOTA/MAXSIZE)")
    raw.send(b"NOOP\r\n")
    assert raw.response()[-1].startswith(b"OK")
    # A quoted string over 1024 octets (RFC 5804 §4) and malformed commands: NO, not a crash.
    raw.send(b'PUTSCRIPT "' + b"n" * 2000 + b'" "keep;"\r\n')
    assert raw.response()[-1].startswith(b"NO")
    raw.send(b"PUTSCRIPT {12x}\r\n")
    assert raw.response()[-1].startswith(b"NO")
    raw.send(b'GETSCRIPT "missing"\r\n')
    assert raw.response()[-1].startswith(b"NO (NONEXISTENT)")
    raw.send(b'PUTSCRIPT "bad\x01name" "keep;"\r\n')
    assert raw.response()[-1].startswith(b"NO")
    # A literal far beyond any script: the connection is closed rather than read for ever.
    raw.send(b'PUTSCRIPT "huge" {999999999+}\r\n')
    assert raw.response()[-1].startswith(b"BYE")
    assert raw.closed()


def test_too_many_bad_commands_end_the_session(server: PeerageServer) -> None:
    raw = RawSieve(source="127.0.17.103")
    answers = []
    for _ in range(12):
        raw.send(b"FROBNICATE\r\n")
        answers.append(raw.response()[-1])
        if answers[-1].startswith(b"BYE"):
            break
    assert answers[0].startswith(b"NO") and answers[-1].startswith(b"BYE")


def test_a_slow_drip_is_cut_at_the_authentication_deadline(server: PeerageServer) -> None:
    raw = RawSieve(source="127.0.17.104")
    started = time.monotonic()
    answer = b""
    late = 8  # seconds a loaded CI machine may be late with the cut; the drip lasts longer
    for byte in b'AUTHENTICATE "PLAIN" "' + b"A" * 200:
        try:
            raw.send(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            break
        time.sleep(0.1)
        if time.monotonic() - started > AUTH_DEADLINE + late:
            break
    with contextlib.suppress(ConnectionError, OSError):
        answer = b"\n".join(raw.response())
    elapsed = time.monotonic() - started
    assert elapsed < AUTH_DEADLINE + late
    assert answer.startswith(b"BYE") or raw.closed()


def test_logout(server: PeerageServer) -> None:
    raw = RawSieve(source="127.0.17.105")
    raw.send(b"LOGOUT\r\n")
    assert raw.response()[-1].startswith(b"OK")
    assert raw.closed()


def test_unauthenticate_then_log_in_as_someone_else(sievelib_client: Client) -> None:
    """RFC 5804 §2.14.1 with sievelib: UNAUTHENTICATE ends bob's login on the same TLS connection;
    script commands are refused until alice logs in, and then they see alice's scripts."""
    client = sievelib_client
    assert client.putscript("bobs", "keep;")
    send = client._Client__send_command  # type: ignore[attr-defined]
    assert send("UNAUTHENTICATE")[0] == "OK"
    assert send("LISTSCRIPTS")[0] == "NO"
    assert send("UNAUTHENTICATE")[0] == "NO"  # not authenticated any more
    assert client._Client__authenticate("alice@example.org", PASSWORDS["alice@example.org"],  # type: ignore[attr-defined]
                                        authmech="PLAIN")
    active, others = client.listscripts()  # alice's scripts, not bob's
    assert active != "bobs" and "bobs" not in others
    assert send("UNAUTHENTICATE")[0] == "OK"
    assert client._Client__authenticate("bob@example.org", PASSWORDS["bob@example.org"],  # type: ignore[attr-defined]
                                        authmech="PLAIN")
    assert client.deletescript("bobs")
