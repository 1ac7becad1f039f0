"""Alembic migrations: one linear chain, empty databases and the previous release's upgraded to head.

The previous release (main at fc5df1f) created its tables straight from the metadata; its schema, as it
created it on each database, is kept in tests/store/data/ so this test does not depend on git history.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, select, text

from peerage.identity.accounts import AccountService
from peerage.store import SchemaError, Store, head_revision
from peerage.store.migrations import alembic_config
from peerage.store.schema import include_name, load_all_tables
from tests.harness.postgres import empty_database

DATA = Path(__file__).parent / "data"


@pytest.fixture(params=["sqlite", "postgresql"])
async def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of a database with no tables at all, on each engine."""
    async with empty_database(request, tmp_path, "peerage_mig") as database:
        yield database


def _differences(sync_conn) -> list:  # type: ignore[no-untyped-def]
    return list(compare_metadata(MigrationContext.configure(sync_conn, opts={"include_name": include_name}),
                                 load_all_tables()))


def test_one_linear_chain() -> None:
    script = ScriptDirectory.from_config(alembic_config())
    assert len(script.get_heads()) == 1, "migrations branch: set down_revision to the previous head"
    revisions = list(script.walk_revisions())
    assert [r.down_revision for r in revisions][-1] is None
    for rev in revisions:
        assert not isinstance(rev.down_revision, tuple), f"{rev.revision} merges branches"
        assert rev.module.__file__ is not None
        assert Path(rev.module.__file__).name.startswith(f"{rev.revision}_")


async def test_empty_database_upgrades_to_exactly_the_declared_tables(empty_url: str) -> None:
    store = Store(empty_url)
    try:
        await store.migrate()
        assert await store.revision() == head_revision()
        async with store.begin() as conn:
            assert await conn.run_sync(_differences) == [], "a table changed without a migration"
        await store.migrate()  # a second run is a no-op
        assert await store.revision() == head_revision()
    finally:
        await store.close()


async def test_database_of_the_previous_release_is_upgraded(empty_url: str) -> None:
    from peerage.xmpp.tables import xmpp_roster

    dialect = "sqlite" if empty_url.startswith("sqlite") else "postgresql"
    lines = (DATA / f"schema-fc5df1f.{dialect}.sql").read_text().splitlines()
    ddl = "\n".join(line for line in lines if not line.startswith("--"))
    statements = [s.strip() for s in ddl.split(";") if s.strip()]
    store = Store(empty_url)
    try:
        async with store.begin() as conn:
            for statement in statements:
                await conn.execute(text(statement))
            # Raw SQL with the previous release's columns: today's table may have more.
            await conn.execute(text(
                "INSERT INTO xmpp_roster (owner, contact, name, subscription, ask, approved, groups, hidden, "
                "pending_in) VALUES ('alice@old.test', 'bob@elsewhere.test', 'Bob', 'both', false, false, "
                "'Friends', false, false)"))
            # An account made with the previous schema, before any migration ran (its columns only).
            from sqlalchemy import insert

            from peerage.identity.accounts import _credential_columns
            from peerage.identity.address import parse_address
            from peerage.identity.credentials import derive_credentials
            from peerage.store.schema import accounts

            old = {k: v for k, v in _credential_columns(derive_credentials(
                parse_address("alice@old.test"), "kept across upgrades")).items() if "_full_" not in k}
            await conn.execute(insert(accounts).values(address="alice@old.test", domain="old.test", local="alice",
                                                       **old))
        assert await store.revision() is None

        await store.migrate()

        assert await store.revision() == head_revision()
        async with store.begin() as conn:
            assert await conn.run_sync(_differences) == []
            assert "schema_version" not in await conn.run_sync(lambda s: inspect(s).get_table_names())
            row = (await conn.execute(select(xmpp_roster.c.name, xmpp_roster.c.groups))).one()
        assert tuple(row) == ("Bob", "Friends")
        service = AccountService(store, ["old.test"])
        # SIP digest: `alice` still works; the full-address form arrives with the first password login.
        assert len((await service.sip_digest_ha1s("alice", "old.test", "MD5"))[1]) == 1
        assert (await service.sip_digest_ha1s("alice@old.test", "old.test", "MD5"))[1] == []
        assert await service.verify_password("alice@old.test", "kept across upgrades")
        assert len((await service.sip_digest_ha1s("alice@old.test", "old.test", "MD5"))[1]) == 1
    finally:
        await store.close()


async def test_a_newer_database_is_refused_with_advice(tmp_path: Path) -> None:
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'p.db'}")
    try:
        await store.migrate()
        async with store.begin() as conn:
            await conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
        with pytest.raises(SchemaError, match="newer than this peerage"):
            await store.migrate()
    finally:
        await store.close()
