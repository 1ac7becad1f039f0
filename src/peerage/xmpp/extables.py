"""Database tables of the modern-client XMPP features: HTTP upload (``upload_``), push (``push_``),
invitations (``invite_``).

This module is in charge of declaring those tables against the shared ``peerage.store.schema``
metadata; each feature module reads and writes its own.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Float, Index, String, Table, Text

from peerage.store.schema import metadata
from peerage.xmpp.tables import JID_LENGTH

# XEP-0363: one row per slot handed out; ``blob`` is set once the PUT has stored the file.
upload_files = Table(
    "upload_files",
    metadata,
    # The slot's random id, part of its URLs (the GET URL is the capability to read the file).
    Column("slot", String(64), primary_key=True),
    Column("owner", String(JID_LENGTH), nullable=False),
    Column("filename", String(255), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("content_type", String(255), nullable=False),
    Column("created", Float, nullable=False),
    # Until then the PUT is accepted (the slot's lifetime); once uploaded, until then it is served.
    Column("expires", Float, nullable=False),
    # SHA-256 of the PUT's bearer token (hex): the token itself is never stored.
    Column("put_token_hash", String(64), nullable=False),
    # File name in the upload blob store, or NULL while the PUT has not happened.
    Column("blob", String(64), nullable=True),
    Column("uploaded", Float, nullable=True),
)
Index("upload_files_owner", upload_files.c.owner, upload_files.c.created)
Index("upload_files_expires", upload_files.c.expires)

# XEP-0357: the app servers an account has enabled push with.
push_registrations = Table(
    "push_registrations",
    metadata,
    Column("owner", String(JID_LENGTH), primary_key=True),
    Column("jid", String(JID_LENGTH), primary_key=True),
    Column("node", String(1024), primary_key=True),
    # The XEP-0004 publish-options form the client gave (its secret), serialized, or NULL.
    Column("options", Text, nullable=True),
    Column("created", Float, nullable=False),
)

# XEP-0401 / XEP-0379 invitations: one row per token, removed once used or expired.
invite_tokens = Table(
    "invite_tokens",
    metadata,
    # SHA-256 of the token (hex): the token itself is only in the link handed to the invitee.
    Column("token_hash", String(64), primary_key=True),
    # The hosted domain the account is created on.
    Column("domain", String(255), nullable=False),
    # Who invites (a local bare JID): the new account and the inviter get a mutual subscription.
    # NULL for an invitation to register without a contact.
    Column("inviter", String(JID_LENGTH), nullable=True),
    Column("created", Float, nullable=False),
    Column("expires", Float, nullable=False),
)
