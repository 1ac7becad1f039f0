"""Mailboxes of local users: folders, UIDs, UIDVALIDITY, flags, MODSEQ and message bodies.

``deliver`` is the entry point for local delivery (SMTP, LMTP-like internal paths): it stores one
message in a user's folder atomically and wakes IMAP sessions idling on it. ``store_for(host)`` gives
the ``MailboxStore`` shared by every service of one host.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

from peerage.mail.mailbox.store import (
    DEFAULT_FOLDERS,
    INBOX,
    MailboxError,
    MailboxExists,
    MailboxInfo,
    MailboxStore,
    MessageRow,
    NoSuchMailbox,
)

__all__ = [
    "DEFAULT_FOLDERS",
    "INBOX",
    "MailboxError",
    "MailboxExists",
    "MailboxInfo",
    "MailboxStore",
    "MessageRow",
    "NoSuchMailbox",
    "deliver",
    "mailbox_owner",
    "store_for",
]

_stores: weakref.WeakKeyDictionary[Any, MailboxStore] = weakref.WeakKeyDictionary()


def store_for(host: Any) -> MailboxStore:
    """The one ``MailboxStore`` of ``host`` (created on first use)."""
    store = _stores.get(host)
    if store is None:
        # IMAP's BODYSTRUCTURE is computed once, at delivery, and kept with the message; so is the text
        # the full-text index holds.
        from peerage.mail.imap.mime import cached_structures
        from peerage.mail.jmap.index import encode_facts
        from peerage.mail.jmap.mime import searchable_text

        store = MailboxStore(host.store.engine, host.config.data_dir, describe=cached_structures,
                             extract=searchable_text, summarize=encode_facts)
        _stores[host] = store
    return store


def mailbox_owner(address: str) -> str:
    """The key a user's mailboxes are stored under: the normalised address."""
    from peerage.identity.address import parse_address

    return str(parse_address(address))


async def deliver(
    host: Any,
    address: str,
    raw: bytes,
    folder: str = INBOX,
    flags: Sequence[str] = (),
) -> int:
    """Store ``raw`` in ``address``'s ``folder`` and return its UID.

    Atomic: a small message goes into its row, a large one's file is written and fsynced first; the
    row's commit is the durability point, so a crash leaves the message wholly in or wholly out. The folder is created if it does not exist. Sessions idling on
    the folder are notified once the commit is done.
    """
    store = store_for(host)
    owner = mailbox_owner(address)
    box = await store.get_mailbox(owner, folder)
    if box is None:
        try:
            box = await store.create_mailbox(owner, folder)
        except MailboxExists:
            box = await store.get_mailbox(owner, folder)
            assert box is not None
    uid, _ = await store.append(box.id, raw, flags)
    return uid
