"""Web tables: browser sessions and TOTP second factors.

A session row is found by the SHA-256 of its cookie token, so a copy of the database does not hand out
logged-in sessions; the token itself exists only in the browser's cookie. ``public_id`` names a session
to its owner (list and revoke) without revealing anything that would let it be used.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Float, Index, String, Table

from peerage.store.schema import metadata

web_sessions = Table(
    "web_sessions",
    metadata,
    Column("token_hash", String(64), primary_key=True),  # hex SHA-256 of the cookie token
    Column("public_id", String(32), nullable=False, unique=True),
    Column("account", String(320), nullable=False),
    Column("csrf", String(64), nullable=False),
    Column("created", Float, nullable=False),  # seconds since the epoch
    Column("last_seen", Float, nullable=False),
    Column("expires", Float, nullable=False),
    Column("ip", String(64), nullable=False, default=""),
    Column("user_agent", String(256), nullable=False, default=""),
)
Index("ix_web_sessions_account", web_sessions.c.account)

# RFC 6238 second factor, one per account. ``enabled`` is false until the user has proved with a first
# code that their authenticator holds the secret; ``last_step`` stops a code being used twice.
web_totp = Table(
    "web_totp",
    metadata,
    Column("account", String(320), primary_key=True),
    Column("secret", String(64), nullable=False),  # base32, as authenticator apps take it
    Column("enabled", Boolean, nullable=False, default=False),
    Column("last_step", BigInteger, nullable=False, default=0),
)
