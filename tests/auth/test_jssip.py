"""JsSIP (the browser SIP library) registers on the default digest challenge (MD5 then SHA-256 in one
401) over SIP WebSocket (RFC 7118), run under Node with the `ws` package as its WebSocket, and sends a
MESSAGE to a second registered JsSIP user agent. tests/auth/jssip holds the script and its lockfile
(`npm --prefix tests/auth/jssip ci`, done by scripts/setup-test-env). Under CI a missing node or npm
module is a failure, elsewhere a skip."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.auth.conftest import DOMAIN, PASSWORD, make_server
from tests.harness import PeerageServer

JSSIP = Path(__file__).parent / "jssip"
SERVER_IP = "127.0.7.2"
WS_URL = f"ws://{SERVER_IP}:8080/"
BOB_PASSWORD = "bob uses jssip too 4"


def _node() -> str:
    node = shutil.which("node")
    missing = None if node else "node is not installed"
    if node and not (JSSIP / "node_modules" / "jssip").is_dir():
        missing = "npm modules missing: run npm --prefix tests/auth/jssip ci"
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(missing)
        pytest.skip(missing)
    assert node is not None
    return node


@pytest.fixture(scope="module")
def ws_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PeerageServer]:
    _node()
    # The default digest challenge: no digest_* setting.
    server = make_server(tmp_path_factory.mktemp("jssip"), {"sip": {"ws_listen": [f"{SERVER_IP}:8080"]}},
                         address=SERVER_IP, services=("sip",))
    server.add_user(f"alice@{DOMAIN}", PASSWORD)
    server.add_user(f"bob@{DOMAIN}", BOB_PASSWORD)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_jssip_registers_on_the_default_challenge_and_sends_a_message(ws_server: PeerageServer) -> None:
    node = _node()
    offset = ws_server.log_path.stat().st_size
    result = subprocess.run([node, str(JSSIP / "register.js"), WS_URL, DOMAIN, "alice", PASSWORD, "bob",
                             BOB_PASSWORD, "20000"], capture_output=True, text=True, timeout=40, cwd=JSSIP,
                            env=dict(os.environ, DEBUG="JsSIP:Transport"))  # logs each SIP message
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    detail = result.stdout + result.stderr[-2000:] + ws_server.log_text(offset)[-2000:]
    assert {"event": "registered", "user": "alice", "status": 200} in events, detail
    assert {"event": "registered", "user": "bob", "status": 200} in events, detail
    assert {"event": "messageReceived", "body": "hello from JsSIP"} in events, detail
    assert result.returncode == 0, detail
    assert "authentication failed" not in ws_server.log_text(offset)
    # Its User-Agent ("JsSIP 3.13.8") got MD5 alone ([sip] digest_md5_only_user_agents).
    trace = result.stdout + result.stderr
    assert "WWW-Authenticate: Digest" in trace and "algorithm=MD5" in trace, detail
    assert "algorithm=SHA-256" not in trace


def test_jssip_answers_the_proxy_challenge_of_an_unregistered_message(ws_server: PeerageServer) -> None:
    # alice sends without registering: her WebSocket flow carries no authenticated registration, so the
    # proxy challenges the MESSAGE (407) with the User-Agent rule (MD5 alone for JsSIP), and JsSIP, which
    # keeps only the last Proxy-Authenticate header, must find MD5 there.
    node = _node()
    offset = ws_server.log_path.stat().st_size
    result = subprocess.run([node, str(JSSIP / "register.js"), WS_URL, DOMAIN, "alice", PASSWORD, "bob",
                             BOB_PASSWORD, "20000", "unregistered"], capture_output=True, text=True, timeout=40,
                            cwd=JSSIP, env=dict(os.environ, DEBUG="JsSIP:Transport"))
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    detail = result.stdout + result.stderr[-3000:] + ws_server.log_text(offset)[-2000:]
    assert {"event": "registered", "user": "bob", "status": 200} in events, detail
    assert not any(e.get("event") == "registered" and e.get("user") == "alice" for e in events), detail
    assert {"event": "messageSent", "status": 200} in events, detail
    assert {"event": "messageReceived", "body": "hello from JsSIP"} in events, detail
    assert result.returncode == 0, detail
    trace = result.stdout + result.stderr
    assert "SIP/2.0 407" in trace and "Proxy-Authenticate: Digest" in trace, detail
    assert "Proxy-Authorization: Digest" in trace and "algorithm=SHA-256" not in trace, detail
    assert "authentication failed" not in ws_server.log_text(offset)
