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

from sqlalchemy import event, insert, select, update
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from peerage.store.schema import load_all_tables, schema_version, server_secrets

log = logging.getLogger(__name__)

# Bumped whenever a migration below is added. Version 1 is the initial schema, created from metadata.
SCHEMA_VERSION = 1
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
        """Create missing tables and record the schema version."""
        metadata = load_all_tables()
        async with self.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
            current = (await conn.execute(select(schema_version.c.version))).scalar()
            if current is None:
                await conn.execute(insert(schema_version).values(id=1, version=SCHEMA_VERSION))
            elif current > SCHEMA_VERSION:
                raise RuntimeError(
                    f"the database schema is version {current}, newer than this peerage ({SCHEMA_VERSION}); "
                    "upgrade peerage"
                )
            elif current < SCHEMA_VERSION:
                # Numbered migrations go here, each taking the schema from N to N+1.
                await conn.execute(update(schema_version).values(version=SCHEMA_VERSION))

    async def get_secret(self, name: str, create: int = 32) -> bytes:
        """Return a persistent server secret, creating `create` random bytes on first use."""
        import os

        async with self.engine.begin() as conn:
            value = (await conn.execute(select(server_secrets.c.value).where(server_secrets.c.name == name))).scalar()
            if value is not None:
                return bytes(value)
            value = os.urandom(create)
            await conn.execute(insert(server_secrets).values(name=name, value=value))
            return value

    async def close(self) -> None:
        await self.engine.dispose()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.close()
