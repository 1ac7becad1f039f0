"""Each command-line bug of issue 16, reproduced: every failure is one line on stderr, exit code 1.

Servers here listen on 127.0.8.0/24 (the operations block).
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness import PeerageServer, wait_for


def peerage(*args: str, input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "peerage", *args], capture_output=True, text=True,
                          input=input, timeout=timeout)


def one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("peerage: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def site(tmp_path: Path) -> Path:
    result = peerage("init", "ops.test", "--dir", str(tmp_path / "site"))
    assert result.returncode == 0, result.stderr
    return tmp_path / "site" / "peerage.toml"


def test_version() -> None:
    from peerage import __version__

    result = peerage("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"peerage {__version__}"


def test_listen_port_above_65535_is_refused(site: Path) -> None:
    site.write_text(site.read_text() + '\n[xmpp]\nc2s_listen = ["127.0.8.1:99999"]\n')
    for command in (("serve",), ("dns", "ops.test")):
        one_line_error(peerage("-c", str(site), *command), "[xmpp] c2s_listen[0]", "99999", "65535")


def test_password_file_missing(site: Path, tmp_path: Path) -> None:
    result = peerage("-c", str(site), "user", "add", "a@ops.test", "--password-file", str(tmp_path / "nope"))
    one_line_error(result, "--password-file", "no such file")


def test_garbage_certificate_and_mismatched_key(site: Path, tmp_path: Path) -> None:
    from peerage.net.tls import generate_self_signed

    certs = site.parent / "certs"
    original = (certs / "ops.test.crt").read_bytes()
    (certs / "ops.test.crt").write_text("this is not a certificate\n")
    one_line_error(peerage("-c", str(site), "serve"), "ops.test", "not a PEM certificate")

    (certs / "ops.test.crt").write_bytes(original)
    generate_self_signed("ops.test", tmp_path / "other.crt", tmp_path / "other.key")
    (certs / "ops.test.key").write_bytes((tmp_path / "other.key").read_bytes())
    one_line_error(peerage("-c", str(site), "serve"), "does not belong to the certificate")

    (certs / "ops.test.key").write_text("garbage\n")
    one_line_error(peerage("-c", str(site), "serve"), "not a PEM private key")


def test_user_list_of_a_domain_not_hosted(site: Path) -> None:
    one_line_error(peerage("-c", str(site), "user", "list", "nope.test"), "nope.test is not hosted here")
    assert peerage("-c", str(site), "user", "list", "ops.test").returncode == 0


def test_mail_queue_retry_and_drop_of_unknown_entries(site: Path) -> None:
    one_line_error(peerage("-c", str(site), "mail", "queue", "retry", "12345"), "no queue entry 12345")
    one_line_error(peerage("-c", str(site), "mail", "queue", "drop", "12345"), "no queue entry 12345")
    assert peerage("-c", str(site), "mail", "queue", "retry").returncode == 0  # all of none is fine


def test_verbose_serve_logs_debug(tmp_path: Path) -> None:
    server = PeerageServer(tmp_path, "debug.test", "127.0.8.2", config={"server": {"log_level": "warning"}})
    process = subprocess.Popen([sys.executable, "-m", "peerage", "-v", "-c", str(server.config_path), "serve"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        seen = []
        deadline = time.monotonic() + 30
        assert process.stdout is not None
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            seen.append(line)
            if "peerage ready" in line or not line:
                break
        assert any(" DEBUG " in line for line in seen), "".join(seen)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(15)


def test_status_file_carries_time_and_goes_away_on_stop(tmp_path: Path) -> None:
    server = PeerageServer(tmp_path, "status.test", "127.0.8.3",
                           config={"server": {"status_file": "run/status.json"}})
    status_path = tmp_path / "run" / "status.json"  # relative to the configuration file, as documented
    server.start()
    try:
        wait_for(status_path.exists, 15, "status file beside the configuration")
        status = json.loads(status_path.read_text())
        assert status["pid"] == server.process.pid  # type: ignore[union-attr]
        assert abs(status["updated_at"] - time.time()) < 60
        shown = server.cli("s2s", "status", check=False)
        assert shown.returncode == 0 and "as of" in shown.stdout, shown.stdout + shown.stderr
    finally:
        assert server.stop() == 0
    assert not status_path.exists()
    stopped = server.cli("s2s", "status", check=False)
    assert stopped.returncode == 1 and "is `peerage serve` running" in stopped.stdout


def test_status_of_a_killed_server_is_not_shown(tmp_path: Path) -> None:
    server = PeerageServer(tmp_path, "killed.test", "127.0.8.4")
    server.start()
    wait_for(lambda: (server.data_dir / "status.json").exists(), 15, "status file")
    server.kill()
    assert (server.data_dir / "status.json").exists()
    result = server.cli("s2s", "status", check=False)
    assert result.returncode == 1 and "is `peerage serve` running" in result.stdout


def test_init_listen_sets_one_address_for_every_service(tmp_path: Path) -> None:
    result = peerage("init", "listen.test", "--dir", str(tmp_path), "--listen", "127.0.8.5")
    assert result.returncode == 0, result.stderr
    config = tmp_path / "peerage.toml"
    # Ports 80/443 may be held on the wildcard address by another run on this machine; the web
    # service's inheritance is checked without binding below.
    config.write_text(config.read_text() + '\n[web]\nhttps_listen = ["127.0.8.5:8443"]\n'
                      'http_listen = ["127.0.8.5:8080"]\n')
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "peerage", "-c", str(config), "serve"],
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "peerage ready" in log.read_text() or process.poll() is not None, 60, "ready")
        text = log.read_text()
        assert "peerage ready" in text, text
        listening = [line.split(" on ", 1)[1] for line in text.splitlines() if " listening " in line]
        assert listening and all(a.startswith("127.0.8.5:") for a in listening), listening
        for port in (5222, 5269, 25, 587, 143):
            with socket.create_connection(("127.0.8.5", port), timeout=5):
                pass
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0


def test_listen_default_does_not_move_explicit_keys(tmp_path: Path) -> None:
    from peerage.config import config_from_dict

    config = config_from_dict({"server": {"listen": ["127.0.8.6", "::1"]},
                               "sip": {"tls_listen": ["127.0.8.7:5061"]}}, tmp_path / "p.toml")
    assert config.xmpp.c2s_listen == ["127.0.8.6:5222", "[::1]:5222"]
    assert config.imap.tls_listen == ["127.0.8.6:993", "[::1]:993"]
    assert config.sip.tls_listen == ["127.0.8.7:5061"]
    assert config.web.https_listen == ["127.0.8.6:443", "[::1]:443"]
    assert config.metrics.listen == []  # never moved onto a public address
