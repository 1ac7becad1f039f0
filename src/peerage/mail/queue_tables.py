"""Outbound queue tables: one row per (message, recipient) waiting for delivery.

The message itself is a file under `<data_dir>/queue/` (fsynced before the row is committed); the row
says where it goes, when it is next tried and what happened last time. One row per recipient, as Mox
does, so each recipient is retried, delivered or bounced on its own schedule.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Index, Integer, String, Table, Text

from peerage.store.schema import metadata

# RFC 5321 §4.5.3.1.3: a path is at most 256 octets; an address fits well within 320.
ADDRESS_LENGTH = 320

mail_queue = Table(
    "mail_queue",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    # The queue file's name (a random hex token); several rows share it when a message has several
    # recipients. The file is removed when the last row referring to it is.
    Column("message_file", String(64), nullable=False, index=True),
    Column("mail_from", String(ADDRESS_LENGTH), nullable=False),  # "" for the null sender (DSNs)
    Column("recipient", String(ADDRESS_LENGTH), nullable=False),
    Column("recipient_domain", String(255), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("smtputf8", Boolean, nullable=False, default=False),
    # Seconds since the epoch (UTC).
    Column("queued_at", BigInteger, nullable=False),
    Column("next_attempt_at", BigInteger, nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text, nullable=False, default=""),
    Column("delay_notice_sent", Boolean, nullable=False, default=False),
)
Index("ix_mail_queue_next_attempt", mail_queue.c.next_attempt_at)
