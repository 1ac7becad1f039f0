"""A database of one's own on the test PostgreSQL server (the session's `postgres_url` fixture).

Areas share that server within a run; a test that builds tables by hand (not through the migrations)
or reads whole tables takes a fresh database beside the shared one, so it neither trips a later
`Store.migrate()` on the shared database ("relation ... already exists") nor sees other tests' rows.
`fresh_database` and `empty_database` (either engine) give one with no tables and drop it afterwards.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine


@asynccontextmanager
async def fresh_database(server_url: str, prefix: str) -> AsyncIterator[str]:
    """The URL of a new, empty database ``<prefix>_<random>`` on the PostgreSQL server of `server_url`,
    dropped at the end, even while a connection the test left open still holds it."""
    server = make_url(server_url)
    name = f"{prefix}_{secrets.token_hex(6)}"
    admin = create_async_engine(server, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        try:
            yield server.set(database=name).render_as_string(hide_password=False)
        finally:
            async with admin.connect() as conn:
                await conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.dispose()


@asynccontextmanager
async def empty_database(request: pytest.FixtureRequest, tmp_path: Path, prefix: str) -> AsyncIterator[str]:
    """The URL of a database with no tables at all, on the engine `request.param` names ("sqlite" or
    "postgresql"): a file in `tmp_path`, or a `fresh_database` on the test PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'peerage.db'}"
        return
    async with fresh_database(request.getfixturevalue("postgres_url"), prefix) as url:
        yield url


async def own_database(url: str, prefix: str) -> str:
    """The URL of a new, empty database called ``<prefix>_<random>``; the given URL when creating one
    is not allowed."""
    parsed = make_url(url)
    name = f"{prefix}_{secrets.token_hex(4)}"
    try:
        conn = await asyncpg.connect(host=parsed.host, port=parsed.port, user=parsed.username,
                                     password=parsed.password, database=parsed.database)
    except (OSError, asyncpg.PostgresError):
        return url
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    except asyncpg.PostgresError:
        return url
    finally:
        await conn.close()
    return parsed.set(database=name).render_as_string(hide_password=False)
