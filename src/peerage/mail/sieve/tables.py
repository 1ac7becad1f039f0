"""Sieve tables: each account's scripts (one of them active) and the vacation response memory.

``sieve_scripts`` holds the scripts ManageSieve (RFC 5804) stores, by name, as their UTF-8 text; at
most one per account is active (RFC 5804 §1.1). ``sieve_vacation_replies`` remembers to whom an
automatic reply went, per handle, until when no further reply may go (RFC 5230 §4.1 and §4.2); Sieve
vacation and the JMAP VacationResponse (RFC 8621 §8) both use it, so a restart does not make either
answer the same sender again.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, Float, Index, LargeBinary, String, Table

from peerage.store.schema import metadata

sieve_scripts = Table(
    "sieve_scripts",
    metadata,
    Column("account", String(320), primary_key=True),
    Column("name", String(1024), primary_key=True),
    Column("content", LargeBinary, nullable=False),
    Column("active", Boolean, nullable=False, default=False),
    Column("updated", Float, nullable=False),
)
Index("ix_sieve_scripts_active", sieve_scripts.c.active)

sieve_vacation_replies = Table(
    "sieve_vacation_replies",
    metadata,
    Column("account", String(320), primary_key=True),
    Column("handle", String(64), primary_key=True),  # a digest of the vacation's handle
    Column("sender", String(320), primary_key=True),
    Column("expires", Float, nullable=False),
)
Index("ix_sieve_vacation_replies_expires", sieve_vacation_replies.c.expires)
