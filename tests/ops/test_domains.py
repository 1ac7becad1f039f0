"""`peerage domain add|list|del` on a running server: the new domain is served at once, by every
protocol, with its certificate and DKIM keys; deleting it stops that. Server on 127.0.8.30."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
from pathlib import Path

from tests.harness import PeerageServer
from tests.xmpp.rawclient import RawClient

ADDRESS = "127.0.8.30"
PASSWORD = "correct horse"


def peerage(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "peerage", "-c", str(config), *args], capture_output=True,
                          text=True, timeout=60)


def served_names(port: int, server_name: str) -> list[str]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((ADDRESS, port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=server_name) as tls:
        der = tls.getpeercert(binary_form=True)
    from cryptography import x509

    cert = x509.load_der_x509_certificate(der or b"")
    return list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                .get_values_for_type(x509.DNSName))


async def test_domain_add_is_live_and_del_removes_it(tmp_path: Path) -> None:
    server = PeerageServer(tmp_path, ["first.test"], ADDRESS, services=("xmpp", "smtp", "imap"))
    server.start()
    try:
        added = peerage(server.config_path, "domain", "add", "Second.test")
        assert added.returncode == 0, added.stderr
        assert "the running server reloaded: second.test is served now" in added.stdout
        assert (tmp_path / "certs" / "second.test.crt").exists()
        assert list((server.data_dir).rglob("*second.test*")), "DKIM keys for the new domain"
        assert "second.test" in peerage(server.config_path, "domain", "list").stdout
        assert "first.test" in served_names(993, "first.test")
        assert "second.test" in served_names(993, "second.test")
        assert "second.test" in served_names(5223, "second.test")

        # Accounts and logins work for it straight away, without a restart.
        server.add_user("carol@second.test", PASSWORD)
        client = RawClient(ADDRESS, "second.test")
        await client.login("carol", PASSWORD, resource="r")
        await client.send("<message to='carol@second.test/r' type='chat'><body>mine</body></message>")
        assert "mine" in await client.read_until("<body>mine</body>")
        await client.close()
        dns = peerage(server.config_path, "dns", "second.test")
        assert dns.returncode == 0 and "DKIM" in dns.stdout and "peerage init" not in dns.stdout

        again = peerage(server.config_path, "domain", "add", "second.test")
        assert again.returncode == 0 and "already configured" in again.stdout
        assert server.config_path.read_text().count('name = "second.test"') == 1

        busy = peerage(server.config_path, "domain", "del", "second.test")
        assert busy.returncode == 1 and "still has 1 accounts" in busy.stderr
        assert peerage(server.config_path, "user", "del", "carol@second.test").returncode == 0
        removed = peerage(server.config_path, "domain", "del", "second.test")
        assert removed.returncode == 0, removed.stderr
        assert "second.test" not in server.config_path.read_text()
        assert "second.test" not in served_names(993, "second.test")  # the default certificate now
        assert peerage(server.config_path, "domain", "del", "first.test").returncode == 1  # the last one
    finally:
        server.stop()


def test_domain_add_offline_and_advice(tmp_path: Path) -> None:
    assert subprocess.run([sys.executable, "-m", "peerage", "init", "one.test", "--dir", str(tmp_path)],
                          capture_output=True, timeout=60).returncode == 0
    config = tmp_path / "peerage.toml"
    missing = peerage(config, "dns", "two.test")
    assert missing.returncode == 1 and "peerage domain add two.test" in missing.stderr
    again = subprocess.run([sys.executable, "-m", "peerage", "init", "two.test", "--dir", str(tmp_path)],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "domain add two.test" in again.stderr
    added = peerage(config, "domain", "add", "two.test")
    assert added.returncode == 0 and "no server is running" in added.stdout
    assert peerage(config, "dns", "two.test").returncode == 0
    # A certificate the operator brings is checked first.
    (tmp_path / "bad.crt").write_text("junk\n")
    bad = peerage(config, "domain", "add", "three.test", "--cert", str(tmp_path / "bad.crt"), "--key",
                  str(tmp_path / "certs" / "two.test.key"))
    assert bad.returncode == 1 and "not a PEM certificate" in bad.stderr
    assert "three.test" not in config.read_text()
