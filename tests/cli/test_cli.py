"""The command line as an operator uses it: init, user, dns, serve and its clean shutdown."""

import signal
import socket
import subprocess
import sys
from pathlib import Path

from tests.harness import PeerageServer, wait_for


def peerage(*args: str, cwd: Path | None = None, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "peerage", *args], capture_output=True, text=True, cwd=cwd,
                          input=input, timeout=60)


def test_init_user_and_dns(tmp_path: Path) -> None:
    result = peerage("init", "Example.test", "--dir", str(tmp_path / "site"))
    assert result.returncode == 0, result.stderr
    assert "user add alice@example.test" in result.stdout
    config = tmp_path / "site" / "peerage.toml"
    assert config.exists() and (tmp_path / "site" / "certs" / "example.test.crt").exists()
    assert peerage("init", "example.test", "--dir", str(tmp_path / "site")).returncode == 1

    added = peerage("--config", str(config), "user", "add", "alice@example.test", "--password-file", "-",
                    input="correct horse\n")
    assert added.returncode == 0, added.stderr
    secret = tmp_path / "pw"
    secret.write_text("another one\n")
    assert peerage("-c", str(config), "user", "add", "bob@example.test", "--password-file", str(secret)).returncode == 0
    listed = peerage("-c", str(config), "user", "list")
    assert listed.stdout.split() == ["alice@example.test", "bob@example.test"]
    assert b"correct horse" not in (tmp_path / "site" / "data" / "peerage.db").read_bytes()

    duplicate = peerage("-c", str(config), "user", "add", "alice@example.test", "--password-file", str(secret))
    assert duplicate.returncode == 1 and "already exists" in duplicate.stderr
    foreign = peerage("-c", str(config), "user", "add", "eve@evil.test", "--password-file", str(secret))
    assert foreign.returncode == 1 and "not a domain this server hosts" in foreign.stderr
    invalid = peerage("-c", str(config), "user", "add", "a%b@example.test", "--password-file", str(secret))
    assert invalid.returncode == 1 and "not allowed" in invalid.stderr
    assert peerage("-c", str(config), "user", "del", "bob@example.test").returncode == 0
    assert peerage("-c", str(config), "user", "list").stdout.split() == ["alice@example.test"]
    assert peerage("-c", str(config), "user", "passwd", "alice@example.test", "--password-file",
                   str(secret)).returncode == 0

    dns = peerage("-c", str(config), "dns", "example.test")
    assert dns.returncode == 0, dns.stderr
    for record in ("_xmpp-client._tcp.example.test.", "_xmpps-client._tcp.example.test.",
                   "_xmpp-server._tcp.example.test.", "_xmpps-server._tcp.example.test."):
        assert record in dns.stdout


def test_config_error_names_key(tmp_path: Path) -> None:
    config = tmp_path / "peerage.toml"
    config.write_text('[[domain]]\nname = "a.test"\n[xmpp]\nc2s_port = 5222\n')
    result = peerage("-c", str(config), "serve")
    assert result.returncode == 1
    assert "[xmpp] unknown key 'c2s_port'" in result.stderr
    assert "Traceback" not in result.stderr


def test_config_from_environment(tmp_path: Path) -> None:
    assert peerage("init", "env.test", "--dir", str(tmp_path)).returncode == 0
    import os

    result = subprocess.run([sys.executable, "-m", "peerage", "user", "list"], capture_output=True, text=True,
                            env={**os.environ, "PEERAGE_CONFIG": str(tmp_path / "peerage.toml")}, timeout=60)
    assert result.returncode == 0, result.stderr


def test_serve_logs_listeners_and_stops_on_sigterm(tmp_path: Path) -> None:
    server = PeerageServer(tmp_path, "serve.test", "127.0.0.61", services=("xmpp",))
    server.start()
    try:
        assert "listening" in server.log_text()
        with socket.create_connection(("127.0.0.61", 5222), timeout=5):
            pass
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        wait_for(lambda: server.process is not None and server.process.poll() is not None, 15, "clean exit")
        assert server.process.returncode == 0
        assert "shutting down" in server.log_text()
    finally:
        server.kill()


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    blocker.bind(("127.0.0.62", 5222))
    blocker.listen()
    try:
        server = PeerageServer(tmp_path, "busy.test", "127.0.0.62", services=("xmpp",))
        result = server.cli("serve", check=False)
        assert result.returncode == 1
        assert "cannot listen on 127.0.0.62:5222 ([xmpp] c2s_listen)" in result.stderr
    finally:
        blocker.close()
