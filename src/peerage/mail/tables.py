"""Mailbox tables: folders, message metadata and the expunge log that QRESYNC reads.

A message body below ``INLINE_BODY_LIMIT`` is kept in the database (``mail_bodies``), committed in
the same transaction as its message row, so that commit is the one durable write; a larger one lives
as a file under the data directory (see ``peerage.mail.mailbox.blobs``). Either way ``blob`` names it.
The message table holds what IMAP needs without opening them: UID, MODSEQ, flags, internal date, size, the raw
header block (so FETCH of headers, ENVELOPE and header SEARCH never touch the disk), the parsed
BODYSTRUCTURE, and whether a plain byte search over the file is exact.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from peerage.store.schema import metadata

# RFC 5321 §4.5.3.1.3: a path is at most 256 octets; an address fits well within 320.
ADDRESS_LENGTH = 320
# Dovecot limits a mailbox name to 255 characters per hierarchy level (MAILBOX_LIST_NAME_MAX_LENGTH
# is 4096 for the full path); 1024 is ample for real folder trees.
MAILBOX_NAME_LENGTH = 1024
# RFC 8474 §4: an objectid is 1 to 255 characters; ours are under 40.
OBJECT_ID_LENGTH = 64

# Bodies smaller than this are stored inline in the database row, larger ones as files. SQLite's
# "Internal Versus External BLOBs" measurements (https://sqlite.org/intern-v-extern-blob.html) find
# BLOBs read faster from the database than from separate files up to about 50-100 KiB with 4-8 KiB
# pages, and SQLite reads and writes 10 KiB blobs about 35% faster than the file system; above
# that, files win. Mail is mostly a few KiB, so nearly every message gets one durable write (the
# WAL commit) instead of a file create, fsync and directory fsync (about 1 ms of system time per
# message on ext4, against about 0.02 ms in a batched WAL commit). Dovecot's mdbox avoids the same
# per-file cost by appending many messages to one file (rotated at mdbox_rotate_size, 10 MB), while
# its Maildir/sdbox and Mox keep one file per message; a row is this store's equivalent of mdbox's
# shared file. PostgreSQL TOASTs such values out of line on its own (bytea holds up to 1 GB).
INLINE_BODY_LIMIT = 64 * 1024
# How the name of a body kept in ``mail_bodies`` starts; file names are plain hex, never with ":".
INLINE_BODY_PREFIX = "db:"

mail_mailboxes = Table(
    "mail_mailboxes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("owner", String(ADDRESS_LENGTH), nullable=False),
    Column("name", String(MAILBOX_NAME_LENGTH), nullable=False),
    Column("uidvalidity", BigInteger, nullable=False),
    # The next UID to assign (RFC 9051 §2.3.1.1); only ever grows.
    Column("uidnext", BigInteger, nullable=False),
    # RFC 7162 §3.1.2: the highest mod-sequence of any change in the mailbox, including expunges.
    Column("highestmodseq", BigInteger, nullable=False),
    # RFC 6154 attribute such as "\\Sent", or NULL.
    Column("special_use", String(32)),
    Column("subscribed", Boolean, nullable=False, default=True),
    UniqueConstraint("owner", "name", name="uq_mail_mailboxes_owner_name"),
)

# Subscriptions to names that have no mailbox (RFC 9051 §6.3.7: SUBSCRIBE may name a mailbox that
# does not exist, and DELETE does not remove a name from the subscription list, §6.3.5). A name's
# subscription lives here while it has no mailbox, and in mail_mailboxes.subscribed while it has one.
mail_subscriptions = Table(
    "mail_subscriptions",
    metadata,
    Column("owner", String(ADDRESS_LENGTH), primary_key=True),
    Column("name", String(1024), primary_key=True),
)

# The last UIDVALIDITY handed out per user; it outlives deleted mailboxes, so a re-created name never
# gets a value it had before (RFC 9051 §2.3.1.1).
mail_uidvalidity = Table(
    "mail_uidvalidity",
    metadata,
    Column("owner", String(ADDRESS_LENGTH), primary_key=True),
    Column("last", BigInteger, nullable=False),
)

mail_messages = Table(
    "mail_messages",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "mailbox_id",
        Integer,
        ForeignKey("mail_mailboxes.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("uid", BigInteger, nullable=False),
    Column("modseq", BigInteger, nullable=False),
    # Space-separated system flags and keywords, as IMAP spells them.
    Column("flags", Text, nullable=False, default=""),
    # Seconds since the epoch (UTC) and the zone offset in minutes it was given in.
    Column("internal_date", BigInteger, nullable=False),
    Column("internal_zone", Integer, nullable=False, default=0),
    Column("size", BigInteger, nullable=False),
    # The body's name: a file below the data directory, or a ``mail_bodies`` row when it starts with
    # INLINE_BODY_PREFIX.
    Column("blob", String(64), nullable=False),
    Column("header", LargeBinary, nullable=False),
    # True when the message has no encoded words, no base64/quoted-printable part and is valid UTF-8,
    # so a case-insensitive search over the raw bytes gives the same answer as decoding the MIME.
    Column("plain", Boolean, nullable=False, default=False),
    # FETCH BODYSTRUCTURE and BODY answers, computed once at delivery (NULL if not computed).
    Column("structure", LargeBinary),
    Column("basic_structure", LargeBinary),
    # The message's own id (RFC 8474 EMAILID, the JMAP Email id) and its conversation's (THREADID):
    # the same in every copy, kept by MOVE (see peerage.mail.mailbox.objectid).
    Column("email_id", String(OBJECT_ID_LENGTH), nullable=False),
    Column("thread_id", String(OBJECT_ID_LENGTH), nullable=False),
    UniqueConstraint("mailbox_id", "uid", name="uq_mail_messages_mailbox_uid"),
)
Index("ix_mail_messages_mailbox_modseq", mail_messages.c.mailbox_id, mail_messages.c.modseq)
# Finding the other copies of a message (is this expunge its last copy? IMAP SEARCH EMAILID).
Index("ix_mail_messages_email_id", mail_messages.c.email_id)

# What a mail client's list view needs from a message's header (decoded subject, addresses, dates,
# ids) as JSON, by email id (the same for every copy), computed at delivery so that a cold JMAP index
# never parses 10,000 headers; absent until computed (peerage.mail.jmap.index.header_facts). Not a
# column of mail_messages: at about 330 bytes it nearly doubled the rows that SELECT and STORE walk
# and rewrite (bench/RESULTS.md, 2026-12-01), and only JMAP reads it. Removed with the last copy.
mail_summaries = Table(
    "mail_summaries",
    metadata,
    Column("email_id", String(OBJECT_ID_LENGTH), primary_key=True),
    Column("summary", LargeBinary, nullable=False),
)

# Bodies below INLINE_BODY_LIMIT, by name. A table of their own keeps message rows small: SELECT,
# STORE and FETCH of headers walk thousands of message rows, and with the body inline each would fill
# a page of its own (SQLite keeps a row's first few KiB on its B-tree page). A name, not the message
# id, is the key, so MOVE (which renumbers rows) never touches bodies, and COPY gives each copy its own.
mail_bodies = Table(
    "mail_bodies",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("body", LargeBinary, nullable=False),
)

# One row per expunged UID, kept for QRESYNC's VANISHED (EARLIER) (RFC 7162 §3.2.10).
mail_expunged = Table(
    "mail_expunged",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "mailbox_id",
        Integer,
        ForeignKey("mail_mailboxes.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("uid", BigInteger, nullable=False),
    Column("modseq", BigInteger, nullable=False),
    # The expunged message's email and thread ids, so a change log can tell a move (the id lives on
    # elsewhere) from a removal; NULL in records written before ids were kept.
    Column("email_id", String(OBJECT_ID_LENGTH)),
    Column("thread_id", String(OBJECT_ID_LENGTH)),
)
Index("ix_mail_expunged_mailbox_modseq", mail_expunged.c.mailbox_id, mail_expunged.c.modseq)

# What a deleted mailbox held, for the change logs that outlive it (JMAP Email/changes across a
# Mailbox/set destroy or IMAP DELETE): its expunge records and its last messages as one expunge at
# deletion, as JSON [[uid, modseq, email_id, thread_id], ...]. Kept DELETED_MAILBOX_LOG_DAYS.
mail_deleted_mailboxes = Table(
    "mail_deleted_mailboxes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("owner", String(ADDRESS_LENGTH), nullable=False),
    Column("uidvalidity", BigInteger, nullable=False),
    Column("deleted_at", BigInteger, nullable=False),
    Column("log", Text, nullable=False),
)
Index("ix_mail_deleted_mailboxes_owner", mail_deleted_mailboxes.c.owner, mail_deleted_mailboxes.c.uidvalidity)
