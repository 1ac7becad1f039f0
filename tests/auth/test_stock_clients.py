"""Stock clients on their defaults against the default configuration, each the real Debian package:
neomutt (gsasl) sends mail on submission with no authenticator configured."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from pathlib import Path

from tests.auth.clients import ImapFrom
from tests.auth.conftest import ADDRESS, ALICE, PASSWORD
from tests.harness import PeerageServer, require_binary


def _neomutt_send(server: PeerageServer, workdir: Path, subject: str) -> subprocess.CompletedProcess[str]:
    neomutt = require_binary("neomutt")
    home = workdir / "home"
    home.mkdir(exist_ok=True)
    cert = Path(server.workdir / "example.org.crt")
    muttrc = workdir / "muttrc"
    # Only what sending needs: where to submit, who we are, and trust in the test certificate. No
    # smtp_authenticators: neomutt then lets gsasl pick from what the server lists.
    muttrc.write_text(
        f'set smtp_url = "smtp://alice%40example.org@{ADDRESS}:587/"\n'
        f'set smtp_pass = "{PASSWORD}"\n'
        f'set from = "{ALICE}"\n'
        "set ssl_starttls = yes\n"
        "set ssl_force_tls = yes\n"
        f'set certificate_file = "{cert}"\n'
        "set ssl_verify_host = no\n"
        f'set folder = "{home}/Mail"\n'
        "set record = \"\"\n"
        "set copy = no\n"
    )
    env = dict(os.environ, HOME=str(home), TERM="dumb")
    return subprocess.run(
        [neomutt, "-n", "-F", str(muttrc), "-s", subject, "--", ALICE],
        input="Sent by neomutt on its defaults.\n", capture_output=True, text=True, env=env, timeout=60,
    )


async def test_neomutt_sends_on_submission_defaults(server: PeerageServer, tmp_path: Path) -> None:
    offset = server.log_path.stat().st_size
    result = await asyncio.to_thread(_neomutt_send, server, tmp_path, "neomutt defaults")
    log = server.log_text(offset)
    assert result.returncode == 0, result.stdout + result.stderr + log[-3000:]
    assert "authentication failed" not in log
    client = await ImapFrom(ADDRESS, "127.0.7.25").connect()
    try:
        assert b"OK" in await client.login(ALICE, PASSWORD)
        assert b"OK" in await client.command("s1", "SELECT INBOX")
        await client.send(b's2 SEARCH SUBJECT "neomutt defaults"\r\n')
        found = await client.line()
        assert found.startswith(b"* SEARCH ") and len(found.split()) > 2, found
    finally:
        await client.close()


def _private_hosts(command: list[str], workdir: Path, names: dict[str, str]) -> list[str]:
    """Run ``command`` seeing a hosts file that maps ``names`` (sipsak resolves the URI's host itself)."""
    require_binary("unshare")
    hosts = workdir / "hosts"
    hosts.write_text("127.0.0.1 localhost " + os.uname().nodename + "\n"
                     + "".join(f"{address} {name}\n" for name, address in names.items()))
    script = f'mount --bind {hosts} /etc/hosts && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *command]


def _sipsak_register(workdir: Path, password: str) -> subprocess.CompletedProcess[str]:
    sipsak = require_binary("sipsak")
    command = [sipsak, "-U", "-i", "-s", "sip:alice@example.org", "-H", "127.0.7.26", "--local-ip", "127.0.7.26",
               "-u", "alice", "-a", password, "-C", "sip:alice@127.0.7.26:5099", "-x", "120", "-vvv"]
    return subprocess.run(_private_hosts(command, workdir, {"example.org": ADDRESS}),
                          capture_output=True, text=True, timeout=60)


async def test_sipsak_registers_on_the_default_challenge(server: PeerageServer, tmp_path: Path) -> None:
    result = await asyncio.to_thread(_sipsak_register, tmp_path, PASSWORD)
    assert result.returncode == 0, result.stdout + result.stderr
    # One 401 carries both challenges, MD5 first (RFC 8760 §2.4); sipsak answers the first.
    assert re.search(r"WWW-Authenticate: Digest [^\n]*algorithm=MD5[^\n]*\n"
                     r"WWW-Authenticate: Digest [^\n]*algorithm=SHA-256", result.stdout), result.stdout
    assert "SIP/2.0 200" in result.stdout and "completed successful" in result.stdout
    wrong = await asyncio.to_thread(_sipsak_register, tmp_path, "not it")
    assert wrong.returncode != 0


async def test_sha256_stays_available_in_the_same_challenge(server: PeerageServer) -> None:
    from tests.sip.ua import UdpUA

    def run() -> int:
        ua = UdpUA("127.0.7.28", (ADDRESS, 5060), user="alice", domain="example.org", password=PASSWORD)
        try:
            response = ua.request_with_auth("REGISTER", "sip:example.org", "SHA-256", extra=[("Expires", "60")])
            assert response is not None
            return int(response.status)
        finally:
            ua.close()

    assert await asyncio.to_thread(run) == 200


BOB = "bob@example.org"
BOB_PASSWORD = "bob-has-no-spaces-9"  # baresip account lines split on spaces


def _baresip_register(server: PeerageServer, workdir: Path) -> str:
    binary = require_binary("baresip")
    config = workdir / "baresip"
    config.mkdir()
    (config / "config").write_text(
        "poll_method\t\tepoll\n"
        "sip_listen\t\t127.0.7.27:5070\n"
        "audio_player\t\taufile,/dev/null\n"
        "audio_source\t\tausine,440\n"
        "audio_alert\t\taufile,/dev/null\n"
        "module_path\t\t/usr/lib/baresip/modules\n"
        "module\t\t\tg711.so\n"
        "module\t\t\tausine.so\n"
        "module\t\t\taufile.so\n"
        "module_app\t\taccount.so\n"
        "module_app\t\tmenu.so\n"
        "dns_server\t\t127.0.7.53:53\n"  # nothing answers: the outbound proxy is an address
        "net_interface\t\t127.0.7.27\n")
    (config / "accounts").write_text(
        f"<sip:{BOB};transport=udp>;auth_pass={BOB_PASSWORD};outbound=\"sip:{ADDRESS}:5060;transport=udp\";"
        "regint=120\n")
    (config / "contacts").write_text("")
    result = subprocess.run([binary, "-f", str(config), "-v", "-s", "-t", "5"], capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, timeout=30)
    return result.stdout + result.stderr


async def test_baresip_registers_on_the_default_challenge(server: PeerageServer, tmp_path: Path) -> None:
    await asyncio.to_thread(server.add_user, BOB, BOB_PASSWORD)
    offset = server.log_path.stat().st_size
    output = await asyncio.to_thread(_baresip_register, server, tmp_path)
    assert "SIP/2.0 200 OK" in output and "Register: " not in output, output[-3000:]
    # It was offered MD5 alone (libre gives up on any other algorithm); everyone else gets both.
    assert "algorithm=SHA-256" not in output and "algorithm=MD5" in output
    assert "authentication failed" not in server.log_text(offset)


def test_smtp_auth_login_behind_tls_only(server: PeerageServer) -> None:
    swaks = require_binary("swaks")
    base = [swaks, "--server", ADDRESS, "--port", "587", "--from", ALICE, "--to", ALICE,
            "--auth", "LOGIN", "--auth-user", "alice", "--auth-password", PASSWORD,
            "--header", "Subject: swaks AUTH LOGIN", "--body", "hi", "--local-interface", "127.0.7.29"]
    ok = subprocess.run([*base, "--tls"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "235 2.7.0" in ok.stdout, ok.stdout + ok.stderr
    assert re.search(r"250-AUTH [^\n]*LOGIN", ok.stdout)
    # Without TLS no mechanism is offered at all (and submission requires STARTTLS first).
    plain = subprocess.run(base, capture_output=True, text=True, timeout=60)
    assert plain.returncode != 0 and "235 2.7.0" not in plain.stdout
