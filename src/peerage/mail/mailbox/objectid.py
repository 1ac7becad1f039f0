"""Stable object ids of messages: the email id and thread id every copy of a message keeps.

An IMAP UID names a message *in one mailbox*; JMAP (RFC 8621 §4.1.1) and IMAP OBJECTID (RFC 8474 §5.1)
want an id for the message itself, the same in every mailbox it is in and unchanged by a move. The
store gives each delivered or appended message a new email id, copies it to every COPY of the message,
keeps it on a MOVE (the row changes mailbox) and writes it into the expunge record, so a reader of the
change log can tell "moved away" from "gone".

Ids are opaque ``objectid`` strings (RFC 8474 §4: 1-255 of ``A-Za-z0-9_-``): ``e`` and 24 random hex
digits for new messages. Messages stored before ids existed were given ``e<UIDVALIDITY>-<UID>``, the id
JMAP used to compute from their place, so clients that cached those ids keep them.

The thread id names a conversation as JMAP's Thread does: the first Message-ID of References (the root
of the conversation, RFC 5322 §3.6.4), else In-Reply-To, else the message's own Message-ID, else its
email id; hashed so that it is a valid objectid whatever the Message-ID holds.
"""

from __future__ import annotations

import hashlib
import re
import secrets

from peerage.mail.smtp.headers import HeaderFields

_MSGID = re.compile(r"<([^<>\s]+)>")


def new_email_id() -> str:
    """A fresh email id (96 random bits: unguessable, and no collision in any real store)."""
    return "e" + secrets.token_hex(12)


def legacy_email_id(uidvalidity: int, uid: int) -> str:
    """The id of a message stored before ids were kept (its place when the ids were introduced)."""
    return f"e{uidvalidity}-{uid}"


def message_ids(value: str | None) -> list[str] | None:
    """The ``<...>`` ids of a Message-ID, In-Reply-To or References value, in order."""
    if not value:
        return None
    found = _MSGID.findall(value)
    return found or None


def thread_root(header: bytes | HeaderFields, email_id: str) -> str:
    """The id of the conversation's first message as far as ``header`` knows it (a header block, or
    the fields the store parsed from it once for every reader at delivery)."""
    headers = header if isinstance(header, HeaderFields) else HeaderFields(header)
    own = message_ids(headers.get("Message-ID"))
    parents = message_ids(headers.get("In-Reply-To"))
    references = message_ids(headers.get("References"))
    return (references or parents or own or [email_id])[0]


def thread_id(header: bytes | HeaderFields, email_id: str) -> str:
    """The thread id of a message with this header block and email id."""
    root = thread_root(header, email_id)
    return "t" + hashlib.sha256(root.encode("utf-8", "replace")).hexdigest()[:16]
