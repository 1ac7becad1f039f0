"""Storage: the async SQLAlchemy engine, sessions, and schema migrations.

This module is in charge of opening the database named by the configuration (SQLite in the data folder
by default, PostgreSQL through asyncpg when `database.url` says so), applying migrations, and handing out
sessions. SQLite runs in WAL mode with `synchronous=FULL`: a commit is on disk before it returns, which
is what "durable before acknowledged" needs (https://sqlite.org/pragma.html#pragma_synchronous).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import Connection, event, insert, select
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from peerage.store.schema import server_secrets

log = logging.getLogger(__name__)

# pg_advisory_xact_lock key serialising migrations across processes ("peer" in ASCII).
MIGRATION_LOCK_KEY = 0x70656572
# SQLite waits this long for a lock held by another connection before failing (Django uses 5 s).
SQLITE_BUSY_TIMEOUT_MS = 10000


class Store:
    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {"echo": echo}
        if not self.is_sqlite:
            kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with self._sessions() as session:
            yield session

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """A connection in a transaction, committed on exit."""
        async with self.engine.begin() as conn:
            yield conn

    async def migrate(self) -> None:
        """Bring the database to the head revision of the migration chain (a no-op when it is there)."""
        async with self.engine.begin() as conn:
            if not self.is_sqlite:
                # Two processes starting at once (serve and a `user add`) take turns; the lock ends with
                # the transaction.
                await conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")
            await conn.run_sync(_upgrade)

    async def revision(self) -> str | None:
        """The revision the database is at (None before the first migration)."""
        from alembic.runtime.migration import MigrationContext

        async with self.engine.connect() as conn:
            return await conn.run_sync(lambda sync: MigrationContext.configure(sync).get_current_revision())

    async def get_secret(self, name: str, create: int = 32) -> bytes:
        """Return a persistent server secret, creating `create` random bytes on first use."""
        import os

        from sqlalchemy.exc import IntegrityError

        try:
            async with self.engine.begin() as conn:
                value = (await conn.execute(select(server_secrets.c.value).where(server_secrets.c.name == name))).scalar()
                if value is not None:
                    return bytes(value)
                value = os.urandom(create)
                await conn.execute(insert(server_secrets).values(name=name, value=value))
                return value
        except IntegrityError:
            # another cluster node sharing this database created it at the same moment: use theirs
            async with self.engine.begin() as conn:
                value = (await conn.execute(select(server_secrets.c.value).where(server_secrets.c.name == name))).scalar()
            assert value is not None, name  # the row that made our insert fail
            return bytes(value)

    async def close(self) -> None:
        await self.engine.dispose()


class SchemaError(Exception):
    """The database cannot be used by this version of peerage; the message says what to do."""


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    from peerage.store.migrations import alembic_config

    return str(ScriptDirectory.from_config(alembic_config()).get_current_head())


def _upgrade(sync_conn: Connection) -> None:
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from peerage.store.migrations import alembic_config

    config = alembic_config(sync_conn)
    script = ScriptDirectory.from_config(config)
    current = MigrationContext.configure(sync_conn).get_current_revision()
    if current == script.get_current_head():
        return
    if current is not None and current not in {rev.revision for rev in script.walk_revisions()}:
        raise SchemaError(
            f"the database is at schema revision {current}, newer than this peerage knows "
            f"(head {script.get_current_head()}); run the newer peerage, or restore a backup made before upgrading"
        )
    from sqlalchemy import inspect

    if current is None and not inspect(sync_conn).get_table_names():
        log.debug("creating the database schema at revision %s", script.get_current_head())
    else:
        log.info("upgrading the database schema from %s to %s", current or "the release before migrations",
                 script.get_current_head())
    command.upgrade(config, "head")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.close()
