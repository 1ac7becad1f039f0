"""SIP digest usernames follow the one login-name rule: `alice` and `alice@example.org` both name the
account (RFC 7616 §3.4.4, RFC 8760), with sipsak 0.9.8 (Debian) on the default challenge. Accounts
whose password was set before the full-address HA1s were stored keep `alice` and gain the full form at
their next password change or at the first login that shows the password (PLAIN, LOGIN, the web form).
A username in another case (`Alice`) cannot match the stored HA1s and gets a 403 naming the form to use."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
from pathlib import Path

from sqlalchemy import update

from peerage.identity.accounts import AccountService, digest_account, digest_username_in_canonical_case
from peerage.store import Store
from peerage.store.schema import accounts
from tests.auth.conftest import ADDRESS, PASSWORD
from tests.auth.test_stock_clients import _private_hosts
from tests.harness import PeerageServer, require_binary

BOB = "bob@example.org"
BOB_PASSWORD = "bob-registers-as-himself-7"


def _sipsak(workdir: Path, aor: str, username: str, password: str, local: str
            ) -> subprocess.CompletedProcess[str]:
    sipsak = require_binary("sipsak")
    command = [sipsak, "-U", "-i", "-s", f"sip:{aor}", "-H", local, "--local-ip", local,
               "-u", username, "-a", password, "-C", f"sip:{aor.partition('@')[0]}@{local}:5099", "-x", "120",
               "-vvv"]
    return subprocess.run(_private_hosts(command, workdir, {"example.org": ADDRESS}),
                          capture_output=True, text=True, timeout=60)


async def test_sipsak_registers_with_the_full_address_and_the_local_part(server: PeerageServer,
                                                                       tmp_path: Path) -> None:
    for username in ("alice@example.org", "alice"):
        result = await asyncio.to_thread(_sipsak, tmp_path, "alice@example.org", username, PASSWORD, "127.0.7.30")
        assert result.returncode == 0, username + result.stdout + result.stderr
        assert f'username="{username}"' in result.stdout
        assert "SIP/2.0 200" in result.stdout and "completed successful" in result.stdout
    wrong = await asyncio.to_thread(_sipsak, tmp_path, "alice@example.org", "alice@example.org", "not it",
                                    "127.0.7.30")
    assert wrong.returncode != 0 and "SIP/2.0 200" not in wrong.stdout


async def test_full_address_must_be_the_address_of_record(server: PeerageServer, tmp_path: Path) -> None:
    # bob authenticates correctly with his full address but may not register alice's address of record.
    await asyncio.to_thread(server.add_user, BOB, BOB_PASSWORD)
    ok = await asyncio.to_thread(_sipsak, tmp_path, BOB, BOB, BOB_PASSWORD, "127.0.7.31")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    offset = server.log_path.stat().st_size
    other = await asyncio.to_thread(_sipsak, tmp_path, "alice@example.org", BOB, BOB_PASSWORD, "127.0.7.31")
    assert other.returncode != 0 and "SIP/2.0 200" not in other.stdout, other.stdout[-1500:]
    # The password was right (no failure logged): the registrar refused the address of record (403).
    assert "authentication failed" not in server.log_text(offset)


def test_digest_account_rule() -> None:
    assert digest_account("alice", "example.org") == "alice@example.org"
    assert digest_account("alice@example.org", "example.org") == "alice@example.org"
    assert digest_account("Alice@Example.ORG", "example.org") == "alice@example.org"
    assert digest_account("@", "example.org") is None


async def test_password_set_before_the_full_form_gains_it_at_the_next_change(tmp_path: Path) -> None:
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'peerage.db'}")
    await store.migrate()
    try:
        service = AccountService(store, ["example.org"])
        await service.add("alice@example.org", "an old password 1")
        # As the database holds it for a password set before migration 0010: no full-address HA1s.
        async with store.begin() as conn:
            await conn.execute(update(accounts).values(sip_ha1_full_md5=None, sip_ha1_full_sha256=None))
        address, full = await service.sip_digest_ha1s("alice@example.org", "example.org", "MD5")
        assert address == "alice@example.org" and full == []
        _, short = await service.sip_digest_ha1s("alice", "example.org", "MD5")
        assert short == [hashlib.md5(b"alice:example.org:an old password 1").hexdigest()]
        await service.passwd("alice@example.org", "a new password 2")
        _, full = await service.sip_digest_ha1s("alice@example.org", "example.org", "SHA-256")
        assert full == [hashlib.sha256(b"alice@example.org:example.org:a new password 2").hexdigest()]
        _, full = await service.sip_digest_ha1s("alice@example.org", "example.org", "MD5")
        assert full == [hashlib.md5(b"alice@example.org:example.org:a new password 2").hexdigest()]
    finally:
        await store.close()


async def test_password_set_before_the_full_form_gains_it_at_the_next_plain_login(tmp_path: Path) -> None:
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'peerage.db'}")
    await store.migrate()
    try:
        service = AccountService(store, ["example.org"])
        await service.add("alice@example.org", "an old password 1")
        async with store.begin() as conn:
            await conn.execute(update(accounts).values(sip_ha1_full_md5=None, sip_ha1_full_sha256=None))
        assert not await service.verify_password("alice@example.org", "not the password")
        _, full = await service.sip_digest_ha1s("alice@example.org", "example.org", "MD5")
        assert full == []  # a wrong password teaches nothing
        assert await service.verify_password("alice@example.org", "an old password 1")
        _, full = await service.sip_digest_ha1s("alice@example.org", "example.org", "MD5")
        assert full == [hashlib.md5(b"alice@example.org:example.org:an old password 1").hexdigest()]
        _, full = await service.sip_digest_ha1s("alice@example.org", "example.org", "SHA-256")
        assert full == [hashlib.sha256(b"alice@example.org:example.org:an old password 1").hexdigest()]
    finally:
        await store.close()


def test_digest_username_case_rule() -> None:
    assert digest_username_in_canonical_case("alice", "example.org") is None
    assert digest_username_in_canonical_case("alice@example.org", "example.org") is None
    assert digest_username_in_canonical_case("Alice", "example.org") == "alice"
    assert digest_username_in_canonical_case("alice@Example.ORG", "example.org") == "alice@example.org"
    assert digest_username_in_canonical_case("@", "example.org") is None


async def test_sipsak_with_a_capitalised_username_is_told_the_form_to_use(server: PeerageServer,
                                                                         tmp_path: Path) -> None:
    result = await asyncio.to_thread(_sipsak, tmp_path, "alice@example.org", "Alice", PASSWORD, "127.0.7.32")
    assert result.returncode != 0 and "SIP/2.0 200" not in result.stdout
    assert "403 Use the digest username alice" in result.stdout + result.stderr, result.stdout[-3000:]
