"""Storage and the account service on both SQLite and a real PostgreSQL server."""

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select

from peerage.identity.accounts import AccountError, AccountService
from peerage.identity.scram import ScramServer, scram_client_proof
from peerage.store import Store, head_revision
from peerage.store.schema import accounts


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'peerage.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    db = Store(url)
    await db.migrate()
    async with db.begin() as conn:  # each test starts from empty accounts on the shared server
        await conn.execute(accounts.delete())
    yield db
    await db.close()


async def test_migrate_is_idempotent_and_versioned(store: Store) -> None:
    await store.migrate()
    assert await store.revision() == head_revision()


async def test_sqlite_runs_in_wal_with_full_sync(tmp_path: Path) -> None:
    db = Store(f"sqlite+aiosqlite:///{tmp_path / 'p.db'}")
    await db.migrate()
    async with db.begin() as conn:
        assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"
        assert (await conn.exec_driver_sql("PRAGMA synchronous")).scalar() == 2  # FULL
    await db.close()


async def test_account_lifecycle_and_no_cleartext(store: Store) -> None:
    service = AccountService(store, ["example.org", "other.org"])
    await service.add("Alice@Example.org", "hunter2 hunter2")
    await service.add("bob@other.org", "s3cret")
    assert await service.list() == ["alice@example.org", "bob@other.org"]
    assert await service.list("other.org") == ["bob@other.org"]
    assert await service.exists("ALICE@example.org")
    assert not await service.exists("carol@example.org")
    assert await service.verify_password("alice@example.org", "hunter2 hunter2")
    assert not await service.verify_password("alice@example.org", "hunter2")
    assert not await service.verify_password("nobody@example.org", "x")
    async with store.begin() as conn:
        row = (await conn.execute(select(accounts).where(accounts.c.address == "alice@example.org"))).one()
    assert all(b"hunter2" not in (v if isinstance(v, bytes) else str(v).encode()) for v in row)
    with pytest.raises(AccountError, match="already exists"):
        await service.add("alice@example.org", "x")
    with pytest.raises(AccountError, match="not a domain this server hosts"):
        await service.add("eve@elsewhere.org", "x")
    await service.passwd("alice@example.org", "new password")
    assert await service.verify_password("alice@example.org", "new password")
    await service.delete("bob@other.org")
    assert not await service.exists("bob@other.org")
    with pytest.raises(AccountError, match="does not exist"):
        await service.delete("bob@other.org")


async def test_stored_scram_and_ha1_authenticate(store: Store) -> None:
    import base64
    import hashlib

    service = AccountService(store, ["example.org"])
    await service.add("alice@example.org", "pencil")
    assert await service.sip_ha1("alice@example.org", "MD5") == hashlib.md5(b"alice:example.org:pencil").hexdigest()
    assert await service.sip_ha1("alice@example.org", "SHA-256") == hashlib.sha256(
        b"alice:example.org:pencil").hexdigest()
    credential = await service.scram("alice@example.org", "SHA-256")
    assert credential is not None
    server = ScramServer("SHA-256", plus=False, channel_bindings={}, offered_plus=False)
    server.client_first(b"n,,n=alice,r=clientnonce")
    first = server.server_first(credential).decode()
    attrs = dict(part.split("=", 1) for part in first.split(","))
    without_proof = f"c=biws,r={attrs['r']}"
    auth = f"n=alice,r=clientnonce,{first},{without_proof}".encode()
    proof, _ = scram_client_proof("SHA-256", "pencil", base64.b64decode(attrs["s"]), int(attrs["i"]), auth)
    assert server.client_final(f"{without_proof},p={base64.b64encode(proof).decode()}".encode()).startswith(b"v=")


async def test_secrets_persist(store: Store) -> None:
    first = await store.get_secret("test-secret")
    assert len(first) == 32
    assert await store.get_secret("test-secret") == first
