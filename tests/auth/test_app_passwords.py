"""Per-device app passwords: created, listed and revoked with `peerage user app-password`, accepted by
XMPP (SCRAM-SHA-256), SIP (digest), IMAP (LOGIN) and SMTP (AUTH PLAIN), refused everywhere once
revoked, and never stored in clear."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.auth.clients import imap_login, smtp_auth, xmpp_login
from tests.auth.conftest import ADDRESS, ALICE, DOMAIN, PASSWORD
from tests.harness import PeerageServer


def _sip_register(password: str) -> int:
    from tests.sip.ua import UdpUA

    ua = UdpUA("127.0.7.80", (ADDRESS, 5060), user="alice", domain=DOMAIN, password=password)
    try:
        response = ua.request_with_auth("REGISTER", f"sip:{DOMAIN}", "MD5", extra=[("Expires", "60")])
        return 0 if response is None else int(response.status)
    finally:
        ua.close()


async def _all_four(password: str, n: int) -> dict[str, bool]:
    return {
        "xmpp": "<success" in await xmpp_login(ADDRESS, DOMAIN, f"127.0.7.{81 + n}", "alice", password),
        "sip": await asyncio.to_thread(_sip_register, password) == 200,
        "imap": b"OK" in await imap_login(ADDRESS, f"127.0.7.{85 + n}", ALICE, password),
        "smtp": await asyncio.to_thread(smtp_auth, ADDRESS, f"127.0.7.{89 + n}", ALICE, password) == 235,
    }


async def test_app_password_across_all_four_protocols(server: PeerageServer) -> None:
    added = await asyncio.to_thread(server.cli, "user", "app-password", "add", ALICE, "phone")
    password = added.stdout.strip().splitlines()[-1]
    assert len(password) == 23 and password.count("-") == 3, added.stdout
    listed = await asyncio.to_thread(server.cli, "user", "app-password", "list", ALICE)
    assert listed.stdout.startswith("phone\t"), listed.stdout
    assert all((await _all_four(password, 0)).values())
    # The account's own password keeps working beside it (and a password change keeps the device's).
    assert "<success" in await xmpp_login(ADDRESS, DOMAIN, "127.0.7.97", "alice", PASSWORD)
    await asyncio.to_thread(server.cli, "user", "passwd", ALICE, "--password-file", "-",
                            input="a brand new passphrase\n")
    assert "<success" in await xmpp_login(ADDRESS, DOMAIN, "127.0.7.98", "alice", password)
    # Nothing of it in clear on disk.
    database = Path(server.data_dir) / "peerage.db"
    for path in database.parent.glob("peerage.db*"):
        assert password.encode() not in path.read_bytes()
    revoked = await asyncio.to_thread(server.cli, "user", "app-password", "revoke", ALICE, "phone")
    assert revoked.returncode == 0
    assert not any((await _all_four(password, 1)).values())
    again = await asyncio.to_thread(server.cli, "user", "app-password", "revoke", ALICE, "phone", check=False)
    assert again.returncode == 1 and "no app password called 'phone'" in again.stderr
