"""JMAP tables: uploaded blobs, per-account settings (identities, vacation response), submissions.

Messages themselves stay in the mailbox store's tables, shared with IMAP; these hold only what JMAP
adds. An uploaded blob is kept until ``BLOB_LIFETIME`` after its upload (RFC 8620 §6.1 asks for at
least one hour when unreferenced).
"""

from __future__ import annotations

from sqlalchemy import Column, Float, Index, Integer, LargeBinary, String, Table, Text

from peerage.store.schema import metadata

jmap_blobs = Table(
    "jmap_blobs",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("account", String(320), nullable=False),
    Column("type", String(255), nullable=False),
    Column("size", Integer, nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("created", Float, nullable=False),
)
Index("ix_jmap_blobs_account", jmap_blobs.c.account)

# One JSON document per (account, kind): kind "identity:<id>" or "vacation".
jmap_settings = Table(
    "jmap_settings",
    metadata,
    Column("account", String(320), primary_key=True),
    Column("kind", String(64), primary_key=True),
    Column("value", Text, nullable=False),
    Column("modseq", Integer, nullable=False, default=1),
)

jmap_submissions = Table(
    "jmap_submissions",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("account", String(320), nullable=False),
    Column("value", Text, nullable=False),
    Column("created", Float, nullable=False),
)
Index("ix_jmap_submissions_account", jmap_submissions.c.account)
