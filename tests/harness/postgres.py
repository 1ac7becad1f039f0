"""A database of one's own on the test PostgreSQL server (the session's `postgres_url` fixture).

Areas share that server within a run; a test that builds tables by hand (not through the migrations)
or reads whole tables takes a fresh database beside the shared one, so it neither trips a later
`Store.migrate()` on the shared database ("relation ... already exists") nor sees other tests' rows.
"""

from __future__ import annotations

import secrets

import asyncpg
from sqlalchemy.engine import make_url


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
