"""The SCRAM credential lookup of every login (``AccountService.scram``): one statement that brings the
account's keys with its app passwords' and live login tokens' as alternates, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from peerage.identity.accounts import AccountService
from peerage.identity.credentials import prepare_password, scram_credential
from peerage.store import Store
from tests.harness.postgres import empty_database


@pytest.fixture(params=["sqlite", "postgresql"])
async def accounts(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AccountService]:
    async with empty_database(request, tmp_path, "peerage_scram") as url:
        store = Store(url)
        await store.migrate()
        try:
            yield AccountService(store, ["example.org"])
        finally:
            await store.close()


async def test_scram_lookup_brings_the_account_keys_and_every_alternate(accounts: AccountService) -> None:
    await accounts.add("alice@example.org", "correct horse battery staple")
    await accounts.add("bob@example.org", "another long password")
    alone = await accounts.scram("alice@example.org", "SHA-256", protocol="xmpp")
    assert alone is not None and alone.alternates == ()
    expected = scram_credential("SHA-256", prepare_password("correct horse battery staple"), alone.salt,
                                alone.iterations)
    assert (alone.stored_key, alone.server_key) == (expected.stored_key, expected.server_key)

    device = await accounts.app_password_add("alice@example.org", "phone")
    token, _ = await accounts.login_token("alice@example.org", "xmpp", 300)
    await accounts.app_password_add("bob@example.org", "laptop")  # another account's: not alice's
    for hash_name in ("SHA-1", "SHA-256"):
        credential = await accounts.scram("Alice@example.org", hash_name, protocol="xmpp")
        assert credential is not None
        keys = [scram_credential(hash_name, prepare_password(secret), credential.salt, credential.iterations)
                for secret in (device, token)]
        assert credential.alternates == tuple((k.stored_key, k.server_key) for k in keys)
        # Without a protocol, login tokens are not alternates (they are good for XMPP only).
        without = await accounts.scram("alice@example.org", hash_name)
        assert without is not None and without.alternates == credential.alternates[:1]
        assert without.stored_key == credential.stored_key

    assert await accounts.scram("carol@example.org", "SHA-256", protocol="xmpp") is None
    assert await accounts.scram("alice@elsewhere.example", "SHA-256") is None
    assert await accounts.scram("not an address", "SHA-256") is None
    assert await accounts.scram("alice@example.org", "MD5") is None
