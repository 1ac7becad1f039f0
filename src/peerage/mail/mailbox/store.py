"""The mailbox store: per-user folders, UIDs, UIDVALIDITY, flags, MODSEQ, and message files.

Every change is one database transaction that bumps the mailbox's HIGHESTMODSEQ and gives the changed
messages that mod-sequence (RFC 7162 §3.1), so a reader can always ask "what changed since N". UIDs
are allocated by an atomic ``UPDATE ... RETURNING`` on the mailbox row, which SQLite serialises and
PostgreSQL row-locks. A body below ``INLINE_BODY_LIMIT`` is stored in ``mail_bodies`` in the same
transaction as its message row, so the commit makes it durable; a larger one is written to a file
(and fsynced) before the row that refers to it commits.
After each commit the mailbox id is published on ``notifier`` so that IDLE sessions wake at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import String, and_, bindparam, cast, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from peerage.mail.mailbox import flags as flaglib
from peerage.mail.mailbox import objectid
from peerage.mail.mailbox.blobs import Blobs, BlobStore
from peerage.mail.mailbox.notify import MailboxNotifier
from peerage.mail.mailbox.search import FullTextIndex
from peerage.mail.smtp.headers import HeaderFields
from peerage.mail.tables import (
    INLINE_BODY_LIMIT,
    INLINE_BODY_PREFIX,
    mail_bodies,
    mail_deleted_mailboxes,
    mail_expunged,
    mail_mailboxes,
    mail_messages,
    mail_subscriptions,
    mail_summaries,
    mail_uidvalidity,
)

INBOX = "INBOX"
# RFC 6154 special-use folders every account gets on first use, with the names Dovecot's and
# Thunderbird's defaults use.
DEFAULT_FOLDERS: tuple[tuple[str, str | None], ...] = (
    (INBOX, None),
    ("Sent", "\\Sent"),
    ("Drafts", "\\Drafts"),
    ("Trash", "\\Trash"),
    ("Junk", "\\Junk"),
)
# RFC 9051 §5.1: the hierarchy delimiter this server uses.
HIERARCHY_DELIMITER = "/"
# Rows per IN (...) list: well under SQLite's 32766 bound-variable limit and PostgreSQL's 65535.
SQL_BATCH = 500
# Above this share of a mailbox, reading all rows and filtering beats IN (...) lists.
FULL_SCAN_THRESHOLD = 400

# How long what a deleted mailbox held is remembered for change logs (a JMAP client offline longer
# fetches its mail afresh, as RFC 8620 §5.2 cannotCalculateChanges allows); Cyrus keeps its deleted
# mailboxes' records for a configured period the same way (delete_mode: delayed).
DELETED_MAILBOX_LOG_DAYS = 30

# A message file this old with no row is an orphan: a delivery commits its row milliseconds after the
# file is written, so an hour leaves a wide margin even on a stalled disk.
ORPHAN_MIN_AGE = 3600.0

_HEADER_END = re.compile(rb"\r\n\r\n")
_BARE_LINE_ENDING = re.compile(rb"\r?\n")
_ENCODED_CONTENT = re.compile(rb"content-transfer-encoding:[ \t]*(base64|quoted-printable)", re.I)


class MailboxError(Exception):
    """A mailbox operation cannot be done; the message says why."""


class NoSuchMailbox(MailboxError):
    pass


class MailboxExists(MailboxError):
    pass


@dataclass(frozen=True)
class MailboxInfo:
    id: int
    owner: str
    name: str
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    special_use: str | None
    subscribed: bool


# Slots: a FETCH or a JMAP query builds one per message (10,000 for a 1:* FETCH), and a slotted
# instance is smaller and quicker to make than one with a __dict__.
@dataclass(slots=True)
class MessageRow:
    uid: int
    modseq: int
    flags: tuple[str, ...]
    internal_date: int
    internal_zone: int
    size: int
    # The body's file, or its ``mail_bodies`` name when it starts with INLINE_BODY_PREFIX.
    blob: str
    header: bytes = b""
    plain: bool = False
    structure: bytes | None = None
    basic_structure: bytes | None = None
    # The whole message once ``load_bodies`` read it (inline bodies only).
    body: bytes | None = None
    # Its stable ids (RFC 8474 EMAILID and THREADID), the same in every copy and after a move.
    email_id: str = ""
    thread_id: str = ""
    # The header facts list views need, as kept at delivery (``mail_summaries``; read with the header
    # unless left out; None if not kept).
    summary: bytes | None = None

    @property
    def inline(self) -> bool:
        return is_inline(self.blob)


def is_inline(name: str) -> bool:
    """Whether the body called ``name`` is kept in the database rather than in a file."""
    return name.startswith(INLINE_BODY_PREFIX)


def new_inline_name() -> str:
    return INLINE_BODY_PREFIX + secrets.token_hex(16)


@dataclass(frozen=True)
class Expunged:
    """One expunge record: the UID that went, when, and the ids of the message it held."""

    uid: int
    modseq: int
    email_id: str | None
    thread_id: str | None


@dataclass(frozen=True)
class Changes:
    """What changed in a mailbox after a mod-sequence."""

    changed: list[tuple[int, tuple[str, ...], int]]  # (uid, flags, modseq), uid ascending
    expunged: list[int]
    highestmodseq: int
    uidnext: int


def normalize_line_endings(raw: bytes) -> bytes:
    """IMAP messages use CRLF (RFC 9051 §2.3.4 size is of the CRLF form); fix bare LF."""
    if b"\n" not in raw.replace(b"\r\n", b""):
        return raw
    return _BARE_LINE_ENDING.sub(b"\r\n", raw)


def split_header(raw: bytes) -> bytes:
    """The header block including the blank line that ends it (all of ``raw`` if it has no body)."""
    if raw.startswith(b"\r\n"):
        return b"\r\n"
    match = _HEADER_END.search(raw)
    return raw[: match.end()] if match else raw


def is_plain(raw: bytes, header: bytes) -> bool:
    if b"=?" in header or _ENCODED_CONTENT.search(raw):
        return False
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _row(record: Any, with_header: bool, with_structure: bool = False, with_summary: bool = False) -> MessageRow:
    # By position, in the order of _ROW_COLUMNS, then the header pair, the structure pair and the
    # summary as ``messages`` adds them: a lookup by name through the row's mapping cost more than
    # the rest of building the row. Flags are split as flaglib.parse does, without the call.
    (uid, modseq, flags, internal_date, internal_zone, size, blob, email_id, thread_id) = record[:_ROW_WIDTH]
    at = _ROW_WIDTH
    header = b""
    plain = False
    if with_header:
        header, plain = record[at], bool(record[at + 1])
        at += 2
    structure = basic_structure = None
    if with_structure:
        structure, basic_structure = record[at], record[at + 1]
        at += 2
    return MessageRow(
        uid, modseq, tuple(flags.split()) if flags else (), internal_date, internal_zone, size, blob, header,
        plain, structure, basic_structure, None, email_id, thread_id, record[at] if with_summary else None,
    )


def _mailbox(record: object) -> MailboxInfo:
    r = record._mapping  # type: ignore[attr-defined]
    return MailboxInfo(
        id=r["id"],
        owner=r["owner"],
        name=r["name"],
        uidvalidity=r["uidvalidity"],
        uidnext=r["uidnext"],
        highestmodseq=r["highestmodseq"],
        special_use=r["special_use"],
        subscribed=bool(r["subscribed"]),
    )


def canonical_name(name: str) -> str:
    """INBOX is case-insensitive (RFC 9051 §5.1); every other name is kept as given."""
    if name.upper() == INBOX:
        return INBOX
    if name.upper().startswith(INBOX + HIERARCHY_DELIMITER):
        return INBOX + name[len(INBOX) :]
    return name


def _chunks(items: Sequence[int]) -> Iterable[Sequence[int]]:
    for start in range(0, len(items), SQL_BATCH):
        yield items[start : start + SQL_BATCH]


_ROW_COLUMNS = (
    mail_messages.c.uid,
    mail_messages.c.modseq,
    mail_messages.c.flags,
    mail_messages.c.internal_date,
    mail_messages.c.internal_zone,
    mail_messages.c.size,
    mail_messages.c.blob,
    mail_messages.c.email_id,
    mail_messages.c.thread_id,
)
_ROW_WIDTH = len(_ROW_COLUMNS)
_ROW_COLUMNS_WITH_HEADER = (*_ROW_COLUMNS, mail_messages.c.header, mail_messages.c.plain)
_STRUCTURE_COLUMNS = (mail_messages.c.structure, mail_messages.c.basic_structure)

# append_many's statements for SQLite, as the driver runs them (MailboxStore._store_sqlite).
_SQLITE_ALLOCATE = (
    f"UPDATE {mail_mailboxes.name} SET uidnext = uidnext + ?, highestmodseq = highestmodseq + 1 WHERE id = ? "
    "RETURNING uidnext, highestmodseq, uidvalidity, owner"
)
_SQLITE_INSERT_BODY = f"INSERT INTO {mail_bodies.name} (name, body) VALUES (?, ?)"
_SQLITE_INSERT_SUMMARY = f"INSERT INTO {mail_summaries.name} (email_id, summary) VALUES (?, ?)"
_SQLITE_INSERT_MESSAGE = (
    f"INSERT INTO {mail_messages.name} (mailbox_id, uid, modseq, flags, internal_date, internal_zone, size, blob, "
    "header, plain, structure, basic_structure, email_id, thread_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

# Computes (BODYSTRUCTURE, BODY) for a message at delivery; None when they are not cached.
Describe = Callable[[bytes], tuple[bytes, bytes]]
# Gives the searchable text of a message's body (for the full-text index) at delivery.
Extract = Callable[[bytes], str]
# Gives the header facts mail clients list (kept in ``summary``) from a header block's fields, at delivery.
Summarize = Callable[[HeaderFields], bytes]


class MailboxStore:
    """All mailboxes of all users of one host."""

    def __init__(self, engine: AsyncEngine, data_dir: Path, describe: Describe | None = None,
                 extract: Extract | None = None, summarize: Summarize | None = None) -> None:
        self.engine = engine
        self.describe = describe
        self.extract = extract
        self.summarize = summarize
        self.search = FullTextIndex(engine)
        self.sqlite = engine.dialect.name == "sqlite"
        # Files under the data directory; a cluster puts its DatabaseBlobs here at start-up.
        self.blobs: Blobs = BlobStore(Path(data_dir) / "mail" / "blobs")
        self.notifier = MailboxNotifier()
        self._defaults_done: set[str] = set()
        self._defaults_lock = asyncio.Lock()

    # -- folders ---------------------------------------------------------------------------------

    async def ensure_defaults(self, owner: str) -> None:
        """Create INBOX and the special-use folders the first time an account is used."""
        if owner in self._defaults_done:
            return
        async with self._defaults_lock:
            if owner in self._defaults_done:
                return
            with contextlib.suppress(IntegrityError):  # another process did it first
                await self._create_defaults(owner)
            self._defaults_done.add(owner)

    async def _create_defaults(self, owner: str) -> None:
        async with self.engine.begin() as conn:
            existing = {
                row[0]
                for row in await conn.execute(
                    select(mail_mailboxes.c.name).where(mail_mailboxes.c.owner == owner)
                )
            }
            if not existing:
                for name, special in DEFAULT_FOLDERS:
                    await self._insert_mailbox(conn, owner, name, special)

    async def _insert_mailbox(
        self, conn: AsyncConnection, owner: str, name: str, special_use: str | None, subscribed: bool = True
    ) -> int:
        # RFC 9051 §2.3.1.1: UIDVALIDITY must change when a name is reused; strictly above every
        # value this owner has had, and tied to the clock like Dovecot's.
        last = (
            await conn.execute(
                select(mail_uidvalidity.c.last).where(mail_uidvalidity.c.owner == owner)
            )
        ).scalar()
        uidvalidity = max(int(time.time()) & 0x7FFFFFFF, (last or 0) + 1)
        if last is None:
            await conn.execute(insert(mail_uidvalidity).values(owner=owner, last=uidvalidity))
        else:
            await conn.execute(
                update(mail_uidvalidity).where(mail_uidvalidity.c.owner == owner).values(last=uidvalidity)
            )
        result = await conn.execute(
            insert(mail_mailboxes).values(
                owner=owner,
                name=name,
                uidvalidity=uidvalidity,
                uidnext=1,
                highestmodseq=1,
                special_use=special_use,
                subscribed=subscribed,
            )
        )
        # A name subscribed to while it had no mailbox keeps its subscription (RFC 9051 §6.3.7).
        found = await conn.execute(delete(mail_subscriptions).where(
            mail_subscriptions.c.owner == owner, mail_subscriptions.c.name == name))
        if found.rowcount and not subscribed:
            await conn.execute(update(mail_mailboxes).where(
                mail_mailboxes.c.owner == owner, mail_mailboxes.c.name == name).values(subscribed=True))
        return int(result.inserted_primary_key[0])  # type: ignore[index]

    async def list_mailboxes(self, owner: str) -> list[MailboxInfo]:
        await self.ensure_defaults(owner)
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(mail_mailboxes)
                .where(mail_mailboxes.c.owner == owner)
                .order_by(mail_mailboxes.c.name)
            )
            return [_mailbox(row) for row in rows]

    async def subscribed_without_mailbox(self, owner: str) -> list[str]:
        """Names subscribed to that have no mailbox (LIST shows them \\NonExistent, RFC 5258 §3.4)."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(mail_subscriptions.c.name).where(mail_subscriptions.c.owner == owner)
                                      .order_by(mail_subscriptions.c.name))
            return [row[0] for row in rows]

    async def get_mailbox(self, owner: str, name: str) -> MailboxInfo | None:
        await self.ensure_defaults(owner)
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(mail_mailboxes).where(
                        and_(
                            mail_mailboxes.c.owner == owner,
                            mail_mailboxes.c.name == canonical_name(name),
                        )
                    )
                )
            ).first()
            return _mailbox(row) if row else None

    async def mailbox_by_id(self, mailbox_id: int) -> MailboxInfo | None:
        async with self.engine.connect() as conn:
            try:
                return _mailbox(await _mailbox_row(conn, mailbox_id))
            except NoSuchMailbox:
                return None

    async def create_mailbox(
        self, owner: str, name: str, special_use: str | None = None, *, subscribed: bool = True
    ) -> MailboxInfo:
        """Create a mailbox (and its missing parents). IMAP CREATE passes ``subscribed=False``: RFC 9051
        §6.3.4 does not subscribe; JMAP and delivery subscribe what they create, so clients show it."""
        await self.ensure_defaults(owner)
        name = canonical_name(name)
        try:
            await self._create(owner, name, special_use, subscribed)
        except IntegrityError:
            # Created at the same moment by another session or process.
            raise MailboxExists(f"mailbox {name!r} already exists") from None
        info = await self.get_mailbox(owner, name)
        assert info is not None
        return info

    async def _create(self, owner: str, name: str, special_use: str | None, subscribed: bool = True) -> None:
        async with self.engine.begin() as conn:
            exists = (
                await conn.execute(
                    select(mail_mailboxes.c.id).where(
                        and_(mail_mailboxes.c.owner == owner, mail_mailboxes.c.name == name)
                    )
                )
            ).first()
            if exists:
                raise MailboxExists(f"mailbox {name!r} already exists")
            # RFC 9051 §6.3.4: create the superior hierarchy levels that do not exist yet.
            parts = name.split(HIERARCHY_DELIMITER)
            for depth in range(1, len(parts)):
                parent = HIERARCHY_DELIMITER.join(parts[:depth])
                if not parent:
                    continue
                found = (
                    await conn.execute(
                        select(mail_mailboxes.c.id).where(
                            and_(mail_mailboxes.c.owner == owner, mail_mailboxes.c.name == parent)
                        )
                    )
                ).first()
                if not found:
                    await self._insert_mailbox(conn, owner, parent, None, subscribed)
            await self._insert_mailbox(conn, owner, name, special_use, subscribed)

    async def delete_mailbox(self, owner: str, name: str) -> None:
        name = canonical_name(name)
        if name == INBOX:
            raise MailboxError("INBOX cannot be deleted")
        info = await self.get_mailbox(owner, name)
        if info is None:
            raise NoSuchMailbox(f"no mailbox {name!r}")
        indexed = await self.search.ready()
        async with self.engine.begin() as conn:
            held = (await conn.execute(
                select(mail_messages.c.blob, mail_messages.c.email_id, mail_messages.c.uid,
                       mail_messages.c.thread_id).where(mail_messages.c.mailbox_id == info.id)
            )).all()
            # The change log outlives the mailbox: its expunge records, and its messages as expunged
            # one step after its last change.
            last = (await conn.execute(select(mail_mailboxes.c.highestmodseq).where(
                mail_mailboxes.c.id == info.id))).scalar() or info.highestmodseq
            log = [[r[0], r[1], r[2], r[3]] for r in await conn.execute(
                select(mail_expunged.c.uid, mail_expunged.c.modseq, mail_expunged.c.email_id,
                       mail_expunged.c.thread_id).where(mail_expunged.c.mailbox_id == info.id))]
            log.extend([row[2], last + 1, row[1], row[3]] for row in held)
            now = int(time.time())
            await conn.execute(delete(mail_deleted_mailboxes).where(
                mail_deleted_mailboxes.c.deleted_at < now - DELETED_MAILBOX_LOG_DAYS * 86400))
            await conn.execute(insert(mail_deleted_mailboxes).values(
                owner=owner, uidvalidity=info.uidvalidity, deleted_at=now, log=json.dumps(log)))
            blobs = [row[0] for row in held]
            await self._delete_inline_bodies(conn, blobs)
            await conn.execute(delete(mail_messages).where(mail_messages.c.mailbox_id == info.id))
            await self._forget(conn, [row[1] for row in held], indexed)
            await conn.execute(delete(mail_expunged).where(mail_expunged.c.mailbox_id == info.id))
            await conn.execute(delete(mail_mailboxes).where(mail_mailboxes.c.id == info.id))
            if info.subscribed:
                # RFC 9051 §6.3.5: DELETE leaves the name on the subscription list.
                await conn.execute(insert(mail_subscriptions).values(owner=owner, name=name))
        await asyncio.to_thread(self._remove_blobs, blobs)
        self.notifier.publish(info.id)

    async def rename_mailbox(self, owner: str, old: str, new: str) -> None:
        old, new = canonical_name(old), canonical_name(new)
        source = await self.get_mailbox(owner, old)
        if source is None:
            raise NoSuchMailbox(f"no mailbox {old!r}")
        if await self.get_mailbox(owner, new) is not None:
            raise MailboxExists(f"mailbox {new!r} already exists")
        if old == INBOX:
            # RFC 9051 §6.3.6: renaming INBOX moves its messages to the new name and leaves it empty.
            target = await self.create_mailbox(owner, new)
            uids = await self.uids(source.id)
            if uids:
                await self.move(source.id, uids, target.id)
            return
        async with self.engine.begin() as conn:
            await conn.execute(
                update(mail_mailboxes).where(mail_mailboxes.c.id == source.id).values(name=new)
            )
            prefix = old + HIERARCHY_DELIMITER
            children = await conn.execute(
                select(mail_mailboxes.c.id, mail_mailboxes.c.name).where(
                    and_(mail_mailboxes.c.owner == owner, mail_mailboxes.c.name.startswith(prefix, autoescape=True))
                )
            )
            for child_id, child_name in list(children):
                await conn.execute(
                    update(mail_mailboxes)
                    .where(mail_mailboxes.c.id == child_id)
                    .values(name=new + child_name[len(old) :])
                )

    async def set_subscribed(self, owner: str, name: str, subscribed: bool) -> None:
        """Subscribe or unsubscribe a name; one without a mailbox is remembered in mail_subscriptions
        (RFC 9051 §6.3.7). Unsubscribing a name that is subscribed nowhere raises NoSuchMailbox."""
        info = await self.get_mailbox(owner, name)
        if info is None:
            name = canonical_name(name)
            async with self.engine.begin() as conn:
                gone = await conn.execute(delete(mail_subscriptions).where(
                    mail_subscriptions.c.owner == owner, mail_subscriptions.c.name == name))
                if subscribed:
                    await conn.execute(insert(mail_subscriptions).values(owner=owner, name=name))
                elif not gone.rowcount:
                    raise NoSuchMailbox(f"no mailbox {name!r}")
            return
        async with self.engine.begin() as conn:
            await conn.execute(
                update(mail_mailboxes)
                .where(mail_mailboxes.c.id == info.id)
                .values(subscribed=subscribed)
            )

    async def status(self, mailbox_id: int) -> dict[str, int]:
        """MESSAGES, UNSEEN, DELETED, SIZE, UIDNEXT, UIDVALIDITY, HIGHESTMODSEQ of one mailbox."""
        async with self.engine.connect() as conn:
            box = await _mailbox_row(conn, mailbox_id)
            rows = (
                await conn.execute(
                    select(mail_messages.c.flags, mail_messages.c.size).where(
                        mail_messages.c.mailbox_id == mailbox_id
                    )
                )
            ).all()
        unseen = sum(1 for flags, _ in rows if "\\Seen" not in flags.split())
        deleted = sum(1 for flags, _ in rows if "\\Deleted" in flags.split())
        info = _mailbox(box)
        return {
            "MESSAGES": len(rows),
            "UNSEEN": unseen,
            "DELETED": deleted,
            "SIZE": sum(size for _, size in rows),
            "UIDNEXT": info.uidnext,
            "UIDVALIDITY": info.uidvalidity,
            "HIGHESTMODSEQ": info.highestmodseq,
        }

    # -- messages --------------------------------------------------------------------------------

    async def append(
        self,
        mailbox_id: int,
        raw: bytes,
        flags: Iterable[str] = (),
        internal_date: float | None = None,
        internal_zone: int = 0,
        durable: bool = True,
    ) -> tuple[int, int]:
        """Store one message; returns (uid, uidvalidity) once its body and row are durable."""
        result = await self.append_many(
            mailbox_id, [(raw, tuple(flags), internal_date, internal_zone)], durable
        )
        return result[0]

    async def append_many(
        self,
        mailbox_id: int,
        messages: Sequence[tuple[bytes, tuple[str, ...], float | None, int]],
        durable: bool = True,
        index_later: bool = False,
    ) -> list[tuple[int, int]]:
        """Store messages in one transaction; returns (uid, uidvalidity) of each, in order.

        Bodies below ``INLINE_BODY_LIMIT`` go into their rows; larger ones are written to files
        (fsynced) first. All are in once the commit returns, or none (orphan files aside, which
        ``collect_orphans`` removes). The full-text index entries are written in the same
        transaction, or with ``index_later`` (SMTP delivery) in a batch soon after it
        (``FullTextIndex.defer``; every search writes them first).
        """
        prepared = []
        for raw, flags, internal_date, zone in messages:
            raw = normalize_line_endings(raw)
            header = split_header(raw)
            structure: tuple[bytes | None, bytes | None] = (None, None)
            if self.describe is not None:
                try:
                    structure = self.describe(raw)
                except Exception:  # a message that defeats the parser is still stored
                    structure = (None, None)
            email_id = objectid.new_email_id()
            fields = HeaderFields(header)  # one parse for the thread id and the list-view facts
            summary = None
            if self.summarize is not None:
                with contextlib.suppress(Exception):  # a header that defeats it is summarised when read
                    summary = self.summarize(fields)
            prepared.append((raw, header, is_plain(raw, header), flags, internal_date, zone, structure,
                             email_id, objectid.thread_id(fields, email_id), summary))
        searchable: list[tuple[str, str]] = []
        defer = index_later and self.extract is not None and await self.search.ready()
        if self.extract is not None and not defer and await self.search.ready():
            for item in prepared:
                try:
                    searchable.append((item[7], self.extract(item[0])))
                except Exception:  # an unparsable body is stored, just not searchable by its text
                    continue
        large = [item[0] for item in prepared if len(item[0]) >= INLINE_BODY_LIMIT]
        written = (
            await asyncio.to_thread(self.blobs.write_many, large, durable) if large else []
        )
        files = iter(written)
        blobs = [
            next(files) if len(item[0]) >= INLINE_BODY_LIMIT else new_inline_name()
            for item in prepared
        ]
        inline = [
            {"name": name, "body": item[0]}
            for name, item in zip(blobs, prepared, strict=True)
            if is_inline(name)
        ]
        now = time.time()
        try:
            async with self.engine.begin() as conn:
                if self.sqlite:
                    uidnext, uidvalidity, owner = await self._store_sqlite(
                        conn, mailbox_id, prepared, blobs, inline, searchable, now)
                else:
                    uidnext, uidvalidity, owner = await self._store_core(
                        conn, mailbox_id, prepared, blobs, inline, searchable, now)
                first_uid = uidnext - len(prepared)
        except BaseException:
            if written:
                await asyncio.to_thread(self._remove_blobs, written)
            raise
        if defer:
            assert self.extract is not None
            self.search.defer([(item[7], owner, item[0]) for item in prepared], self.extract)
        self.notifier.publish(mailbox_id)
        return [(first_uid + index, uidvalidity) for index in range(len(prepared))]

    async def _store_core(
        self, conn: AsyncConnection, mailbox_id: int, prepared: list[Any], blobs: list[str],
        inline: list[dict[str, Any]], searchable: list[tuple[str, str]], now: float,
    ) -> tuple[int, int, str]:
        """``append_many``'s writes through SQLAlchemy Core (PostgreSQL); returns the mailbox's new
        uidnext, its UIDVALIDITY and its owner."""
        allocated = (
            await conn.execute(
                update(mail_mailboxes)
                .where(mail_mailboxes.c.id == mailbox_id)
                .values(
                    uidnext=mail_mailboxes.c.uidnext + len(prepared),
                    highestmodseq=mail_mailboxes.c.highestmodseq + 1,
                )
                .returning(
                    mail_mailboxes.c.uidnext,
                    mail_mailboxes.c.highestmodseq,
                    mail_mailboxes.c.uidvalidity,
                    mail_mailboxes.c.owner,
                )
            )
        ).first()
        if allocated is None:
            raise NoSuchMailbox("mailbox vanished")
        uidnext, modseq, uidvalidity, owner = allocated
        # The body's words are searchable from the commit that makes the message visible.
        await self.search.add(conn, [(email_id, owner, body) for email_id, body in searchable])
        first_uid = uidnext - len(prepared)
        if inline:
            await conn.execute(insert(mail_bodies), inline)
        summaries = [{"email_id": item[7], "summary": item[9]} for item in prepared if item[9] is not None]
        if summaries:
            await conn.execute(insert(mail_summaries), summaries)
        await conn.execute(
            insert(mail_messages),
            [
                {
                    "mailbox_id": mailbox_id,
                    "uid": first_uid + index,
                    "modseq": modseq,
                    "flags": flaglib.serialize(flaglib.normalize(item[3])),
                    "internal_date": int(item[4] if item[4] is not None else now),
                    "internal_zone": item[5],
                    "size": len(item[0]),
                    "blob": blobs[index],
                    "header": item[1],
                    "plain": item[2],
                    "structure": item[6][0],
                    "basic_structure": item[6][1],
                    "email_id": item[7],
                    "thread_id": item[8],
                }
                for index, item in enumerate(prepared)
            ],
        )
        return int(uidnext), int(uidvalidity), str(owner)

    async def _store_sqlite(
        self, conn: AsyncConnection, mailbox_id: int, prepared: list[Any], blobs: list[str],
        inline: list[dict[str, Any]], searchable: list[tuple[str, str]], now: float,
    ) -> tuple[int, int, str]:
        """``_store_core``'s statements as the driver's own SQL with positional parameters (SQLite):
        SQLAlchemy's compile-cache lookup and per-row parameter processing of the four Core
        statements cost more CPU per delivered message than SQLite's work on them
        (bench/smtp/profile_delivery.py). Same rows, same transaction."""
        allocated = (await conn.exec_driver_sql(_SQLITE_ALLOCATE, (len(prepared), mailbox_id))).first()
        if allocated is None:
            raise NoSuchMailbox("mailbox vanished")
        uidnext, modseq, uidvalidity, owner = tuple(allocated)
        await self.search.add(conn, [(email_id, owner, body) for email_id, body in searchable])
        first_uid = uidnext - len(prepared)
        if inline:
            await conn.exec_driver_sql(_SQLITE_INSERT_BODY, [(item["name"], item["body"]) for item in inline])
        summaries = [(item[7], item[9]) for item in prepared if item[9] is not None]
        if summaries:
            await conn.exec_driver_sql(_SQLITE_INSERT_SUMMARY, summaries)
        date = int(now)
        await conn.exec_driver_sql(_SQLITE_INSERT_MESSAGE, [
            (mailbox_id, first_uid + index, modseq, flaglib.serialize(flaglib.normalize(item[3])),
             int(item[4]) if item[4] is not None else date, item[5], len(item[0]), blobs[index], item[1],
             1 if item[2] else 0, item[6][0], item[6][1], item[7], item[8])
            for index, item in enumerate(prepared)
        ])
        return int(uidnext), int(uidvalidity), str(owner)

    async def view(self, mailbox_id: int) -> tuple[MailboxInfo, list[int], list[tuple[str, int]]]:
        """What SELECT needs: the mailbox, its UIDs, and each distinct flag text with the lowest UID
        that has it (from which the keywords in use and the first unseen message follow).

        Both come back as a few rows however large the mailbox: the UIDs joined into one string from
        the (mailbox_id, uid) index alone, the flags grouped by the database. A (uid, flags) row per
        message cost more to fetch and go through than the rest of SELECT together.
        """
        in_mailbox = mail_messages.c.mailbox_id == mailbox_id
        async with self.engine.connect() as conn:
            box = await _mailbox_row(conn, mailbox_id)
            joined = (await conn.execute(
                select(func.aggregate_strings(cast(mail_messages.c.uid, String), ",")).where(in_mailbox)
            )).scalar()
            groups = (await conn.execute(
                select(mail_messages.c.flags, func.min(mail_messages.c.uid))
                .where(in_mailbox).group_by(mail_messages.c.flags)
            )).all()
        # The aggregate's order is the database's to choose; sorting an already sorted list is cheap.
        uids = sorted(map(int, joined.split(","))) if joined else []
        return _mailbox(box), uids, [(text, lowest) for text, lowest in groups]

    async def uids(self, mailbox_id: int) -> list[int]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(mail_messages.c.uid)
                .where(mail_messages.c.mailbox_id == mailbox_id)
                .order_by(mail_messages.c.uid)
            )
            return [row[0] for row in rows]

    async def messages(
        self,
        mailbox_id: int,
        uids: Sequence[int] | None,
        with_header: bool = False,
        with_structure: bool = False,
        with_summary: bool | None = None,
    ) -> list[MessageRow]:
        """Rows for ``uids`` (all when None), in UID order, read in batches (bodies: ``read_bodies``).
        ``with_summary`` (default: as ``with_header``) joins the list-view facts (``mail_summaries``);
        IMAP, which never reads them, leaves them out."""
        columns = _ROW_COLUMNS_WITH_HEADER if with_header else _ROW_COLUMNS
        if with_structure:
            columns = (*columns, *_STRUCTURE_COLUMNS)
        summary = with_header if with_summary is None else with_summary
        if summary:
            columns = (*columns, mail_summaries.c.summary)
        base = select(*columns).where(mail_messages.c.mailbox_id == mailbox_id)
        if summary:
            base = base.select_from(mail_messages.outerjoin(
                mail_summaries, mail_summaries.c.email_id == mail_messages.c.email_id))
        async with self.engine.connect() as conn:
            if uids is None or len(uids) > FULL_SCAN_THRESHOLD:
                query = base
                if uids:
                    query = query.where(
                        mail_messages.c.uid.between(min(uids), max(uids))
                    )
                rows = [
                    _row(r, with_header, with_structure, summary)
                    for r in await conn.execute(query.order_by(mail_messages.c.uid))
                ]
                if uids is not None:
                    wanted = set(uids)
                    rows = [row for row in rows if row.uid in wanted]
                return rows
            result: list[MessageRow] = []
            for chunk in _chunks(sorted(uids)):
                result.extend(
                    _row(r, with_header, with_structure, summary)
                    for r in await conn.execute(
                        base.where(mail_messages.c.uid.in_(chunk)).order_by(mail_messages.c.uid)
                    )
                )
            return result

    def read_blob(self, name: str) -> bytes:
        return self.blobs.read(name)

    def read_body(self, row: MessageRow) -> bytes:
        """The whole message of ``row``: its inline body (which must have been loaded) or its file.

        Blocking for file bodies; raises FileNotFoundError when the file is gone, LookupError when
        an inline body was not loaded (or was expunged before it could be).
        """
        if row.inline:
            if row.body is None:
                raise LookupError(f"inline body of UID {row.uid} not loaded")
            return row.body
        return self.blobs.read(row.blob)

    async def load_bodies(self, rows: Sequence[MessageRow]) -> None:
        """Fill in ``body`` for the inline rows among ``rows`` that lack it, in batched queries.

        A row expunged meanwhile keeps ``body`` None.
        """
        missing: dict[str, list[MessageRow]] = {}
        for row in rows:
            if row.inline and row.body is None:
                missing.setdefault(row.blob, []).append(row)
        if not missing:
            return
        async with self.engine.connect() as conn:
            names = sorted(missing)
            for start in range(0, len(names), SQL_BATCH):
                for name, body in await conn.execute(
                    select(mail_bodies.c.name, mail_bodies.c.body).where(
                        mail_bodies.c.name.in_(names[start : start + SQL_BATCH])
                    )
                ):
                    for row in missing[name]:
                        row.body = bytes(body)

    async def read_bodies(self, rows: Sequence[MessageRow]) -> dict[int, bytes]:
        """Whole messages of ``rows`` by UID; a message whose body is gone maps to b""."""
        await self.load_bodies(rows)

        def read_all() -> dict[int, bytes]:
            out: dict[int, bytes] = {}
            for row in rows:
                try:
                    out[row.uid] = self.read_body(row)
                except (FileNotFoundError, LookupError):
                    out[row.uid] = b""
            return out

        if all(row.inline for row in rows):
            return read_all()
        return await asyncio.to_thread(read_all)

    async def store_flags(
        self,
        mailbox_id: int,
        uids: Sequence[int],
        mode: str,
        flags: Iterable[str],
        unchanged_since: int | None = None,
    ) -> tuple[list[tuple[int, tuple[str, ...], int]], list[int], int]:
        """Set ("set"), add ("add") or remove ("remove") flags.

        Returns ((uid, flags, modseq) for every existing message asked for, uids that failed the
        UNCHANGEDSINCE test of RFC 7162 §3.1.3, the new mod-sequence or 0 when nothing changed). All
        changed messages share one new mod-sequence, one above the mailbox's previous HIGHESTMODSEQ.
        """
        wanted = flaglib.normalize(flags)
        wanted_lower = {flag.lower() for flag in wanted}
        async with self.engine.begin() as conn:
            await self._lock(conn, mailbox_id)
            rows = await self._select_rows(conn, mailbox_id, uids)
            result: list[tuple[int, tuple[str, ...], int]] = []
            failed: list[int] = []
            updates: list[tuple[int, tuple[str, ...]]] = []
            for row in rows:
                if unchanged_since is not None and row.modseq > unchanged_since:
                    failed.append(row.uid)
                    result.append((row.uid, row.flags, row.modseq))
                    continue
                if mode == "set":
                    new = wanted
                elif mode == "add":
                    new = flaglib.normalize((*row.flags, *wanted))
                else:
                    new = tuple(f for f in row.flags if f.lower() not in wanted_lower)
                if {f.lower() for f in new} != {f.lower() for f in row.flags}:
                    updates.append((row.uid, new))
                else:
                    result.append((row.uid, row.flags, row.modseq))
            modseq = 0
            if updates:
                modseq = await self._bump_modseq(conn, mailbox_id)
                await conn.execute(
                    update(mail_messages)
                    .where(
                        and_(
                            mail_messages.c.mailbox_id == mailbox_id,
                            mail_messages.c.uid == bindparam("b_uid"),
                        )
                    )
                    .values(flags=bindparam("b_flags"), modseq=modseq),
                    [{"b_uid": uid, "b_flags": flaglib.serialize(new)} for uid, new in updates],
                )
                result.extend((uid, new, modseq) for uid, new in updates)
        if updates:
            self.notifier.publish(mailbox_id)
        result.sort()
        return result, failed, modseq

    async def expunge(self, mailbox_id: int, uids: Sequence[int] | None = None) -> list[int]:
        """Remove messages flagged \\Deleted (only among ``uids`` if given); returns their UIDs."""
        indexed = await self.search.ready()
        async with self.engine.begin() as conn:
            await self._lock(conn, mailbox_id)
            rows = await self._select_rows(conn, mailbox_id, uids)
            doomed = [row for row in rows if flaglib.DELETED in row.flags]
            if not doomed:
                return []
            modseq = await self._bump_modseq(conn, mailbox_id)
            gone = [row.uid for row in doomed]
            await self._delete_rows(conn, mailbox_id, doomed, modseq)
            await self._delete_inline_bodies(conn, [row.blob for row in doomed])
            await self._forget(conn, [row.email_id for row in doomed], indexed)
        await asyncio.to_thread(self._remove_blobs, [row.blob for row in doomed])
        self.notifier.publish(mailbox_id)
        return gone

    async def copy(
        self, source_id: int, uids: Sequence[int], target_id: int
    ) -> tuple[int, list[tuple[int, int]]]:
        """Copy messages; returns (target uidvalidity, [(source uid, target uid)])."""
        rows = await self.messages(source_id, uids, with_header=True, with_structure=True)
        await self.load_bodies(rows)
        # A message expunged since it was read is not copied.
        rows = [row for row in rows if not row.inline or row.body is not None]
        if not rows:
            box = await self.mailbox_by_id(target_id)
            return (box.uidvalidity if box else 0), []
        # Each copy gets its own inline body row; files are hard-linked.
        blobs = await asyncio.to_thread(
            lambda: [new_inline_name() if row.inline else self.blobs.link(row.blob) for row in rows]
        )
        try:
            async with self.engine.begin() as conn:
                uidvalidity, first_uid, modseq = await self._allocate(conn, target_id, len(rows))
                bodies = [
                    {"name": name, "body": row.body}
                    for name, row in zip(blobs, rows, strict=True)
                    if is_inline(name)
                ]
                if bodies:
                    await conn.execute(insert(mail_bodies), bodies)
                await conn.execute(
                    insert(mail_messages),
                    [
                        {
                            "mailbox_id": target_id,
                            "uid": first_uid + index,
                            "modseq": modseq,
                            "flags": flaglib.serialize(row.flags),
                            "internal_date": row.internal_date,
                            "internal_zone": row.internal_zone,
                            "size": row.size,
                            "blob": blobs[index],
                            "header": row.header,
                            "plain": row.plain,
                            "structure": row.structure,
                            "basic_structure": row.basic_structure,
                            # A copy is the same message (RFC 8474 §5.1: COPY keeps the EMAILID).
                            "email_id": row.email_id,
                            "thread_id": row.thread_id,
                        }
                        for index, row in enumerate(rows)
                    ],
                )
        except BaseException:
            await asyncio.to_thread(self._remove_blobs, blobs)
            raise
        self.notifier.publish(target_id)
        return uidvalidity, [(row.uid, first_uid + index) for index, row in enumerate(rows)]

    async def move(
        self, source_id: int, uids: Sequence[int], target_id: int
    ) -> tuple[int, list[tuple[int, int]]]:
        """Move messages atomically (RFC 6851): the rows change mailbox, the bodies stay put."""
        async with self.engine.begin() as conn:
            # Both rows locked in id order, so two opposite MOVEs cannot deadlock.
            for locked in sorted({source_id, target_id}):
                await self._lock(conn, locked)
            rows = await self._select_rows(conn, source_id, uids)
            if not rows:
                box = (
                    await conn.execute(
                        select(mail_mailboxes.c.uidvalidity).where(mail_mailboxes.c.id == target_id)
                    )
                ).first()
                return (box[0] if box else 0), []
            uidvalidity, first_uid, modseq = await self._allocate(conn, target_id, len(rows))
            await conn.execute(
                update(mail_messages)
                .where(
                    and_(
                        mail_messages.c.mailbox_id == source_id,
                        mail_messages.c.uid == bindparam("b_old"),
                    )
                )
                .values(mailbox_id=target_id, uid=bindparam("b_new"), modseq=modseq),
                [{"b_old": row.uid, "b_new": first_uid + i} for i, row in enumerate(rows)],
            )
            source_modseq = await self._bump_modseq(conn, source_id)
            await conn.execute(
                insert(mail_expunged),
                [
                    {"mailbox_id": source_id, "uid": row.uid, "modseq": source_modseq,
                     "email_id": row.email_id, "thread_id": row.thread_id}
                    for row in rows
                ],
            )
        self.notifier.publish(source_id)
        self.notifier.publish(target_id)
        return uidvalidity, [(row.uid, first_uid + i) for i, row in enumerate(rows)]

    async def changes_since(self, mailbox_id: int, modseq: int) -> Changes:
        async with self.engine.connect() as conn:
            box = (
                await conn.execute(
                    select(mail_mailboxes.c.highestmodseq, mail_mailboxes.c.uidnext).where(
                        mail_mailboxes.c.id == mailbox_id
                    )
                )
            ).first()
            if box is None:
                return Changes([], [], modseq, 0)
            if box[0] <= modseq:
                return Changes([], [], box[0], box[1])
            changed = [
                (row[0], flaglib.parse(row[1]), row[2])
                for row in await conn.execute(
                    select(mail_messages.c.uid, mail_messages.c.flags, mail_messages.c.modseq)
                    .where(
                        and_(
                            mail_messages.c.mailbox_id == mailbox_id,
                            mail_messages.c.modseq > modseq,
                        )
                    )
                    .order_by(mail_messages.c.uid)
                )
            ]
            expunged = sorted(
                row[0]
                for row in await conn.execute(
                    select(mail_expunged.c.uid).where(
                        and_(
                            mail_expunged.c.mailbox_id == mailbox_id,
                            mail_expunged.c.modseq > modseq,
                        )
                    )
                )
            )
            return Changes(changed, expunged, box[0], box[1])

    async def save_summaries(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Keep the header facts of messages stored without them, by email id (one already kept, by
        another session or node meanwhile, stays)."""
        if not items:
            return
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as upsert
        else:
            from sqlalchemy.dialects.sqlite import insert as upsert  # type: ignore[assignment]
        async with self.engine.begin() as conn:
            await conn.execute(upsert(mail_summaries).on_conflict_do_nothing(),
                               [{"email_id": email_id, "summary": summary} for email_id, summary in dict(items).items()])

    async def expunged_since(self, mailbox_id: int, modseq: int, until: int | None = None) -> list[Expunged]:
        """The expunge records of a mailbox with a mod-sequence above ``modseq`` (and at most ``until``),
        with the ids of the messages they held (a MOVE writes one too: the id then lives on in the
        target mailbox)."""
        query = select(mail_expunged.c.uid, mail_expunged.c.modseq, mail_expunged.c.email_id,
                       mail_expunged.c.thread_id).where(
            mail_expunged.c.mailbox_id == mailbox_id, mail_expunged.c.modseq > modseq)
        if until is not None:
            query = query.where(mail_expunged.c.modseq <= until)
        async with self.engine.connect() as conn:
            return [Expunged(int(r[0]), int(r[1]), r[2], r[3])
                    for r in await conn.execute(query.order_by(mail_expunged.c.modseq, mail_expunged.c.uid))]

    async def deleted_mailbox_log(self, owner: str, uidvalidity: int) -> list[Expunged] | None:
        """The change log of a deleted mailbox (its expunge records and its messages as expunged at
        deletion), or None when no such mailbox was deleted within DELETED_MAILBOX_LOG_DAYS."""
        async with self.engine.connect() as conn:
            value = (await conn.execute(select(mail_deleted_mailboxes.c.log).where(
                mail_deleted_mailboxes.c.owner == owner, mail_deleted_mailboxes.c.uidvalidity == uidvalidity)
            )).scalar()
        if value is None:
            return None
        return [Expunged(int(uid), int(modseq), email_id, thread_id) for uid, modseq, email_id, thread_id in json.loads(value)]

    async def collect_orphans(self, min_age: float = ORPHAN_MIN_AGE) -> int:
        """Remove message files no row refers to, left by a crash between file and commit.

        Only files older than ``min_age`` are touched, so a delivery whose file is written but
        whose row is not committed yet is never mistaken for an orphan. Returns the number removed.
        """
        blobs = self.blobs
        if not isinstance(blobs, BlobStore):
            sweep_rows = getattr(blobs, "sweep", None)
            return 0 if sweep_rows is None else int(await sweep_rows(mail_messages.c.blob, min_age))
        async with self.engine.connect() as conn:
            referenced = {row[0] for row in await conn.execute(select(mail_messages.c.blob))}

        def sweep() -> int:
            removed = 0
            now = time.time()
            root = blobs.root
            if not root.is_dir():
                return 0
            for directory in root.iterdir():
                if not directory.is_dir():
                    continue
                for path in directory.iterdir():
                    if path.name.removesuffix(".tmp") in referenced:
                        continue
                    try:
                        if now - path.stat().st_mtime < min_age:
                            continue
                        path.unlink()
                        removed += 1
                    except FileNotFoundError:
                        continue
            return removed

        return await asyncio.to_thread(sweep)

    # -- helpers ---------------------------------------------------------------------------------

    async def _select_rows(
        self, conn: AsyncConnection, mailbox_id: int, uids: Sequence[int] | None
    ) -> list[MessageRow]:
        base = select(*_ROW_COLUMNS).where(mail_messages.c.mailbox_id == mailbox_id)
        if uids is None or len(uids) > FULL_SCAN_THRESHOLD:
            query = base
            if uids:
                query = query.where(mail_messages.c.uid.between(min(uids), max(uids)))
            rows = [_row(r, False) for r in await conn.execute(query.order_by(mail_messages.c.uid))]
            if uids is not None:
                wanted = set(uids)
                rows = [row for row in rows if row.uid in wanted]
            return rows
        result: list[MessageRow] = []
        for chunk in _chunks(sorted(uids)):
            result.extend(
                _row(r, False)
                for r in await conn.execute(
                    base.where(mail_messages.c.uid.in_(chunk)).order_by(mail_messages.c.uid)
                )
            )
        return result

    async def _lock(self, conn: AsyncConnection, mailbox_id: int) -> None:
        """Take the mailbox's write lock before reading what will be changed.

        A no-op UPDATE of the mailbox row: PostgreSQL locks the row until commit, SQLite takes its
        write lock (waiting up to the busy timeout), so a read-modify-write such as +FLAGS never
        works from a stale read and loses another session's change.
        """
        await conn.execute(
            update(mail_mailboxes)
            .where(mail_mailboxes.c.id == mailbox_id)
            .values(highestmodseq=mail_mailboxes.c.highestmodseq)
        )

    async def _bump_modseq(self, conn: AsyncConnection, mailbox_id: int) -> int:
        row = (
            await conn.execute(
                update(mail_mailboxes)
                .where(mail_mailboxes.c.id == mailbox_id)
                .values(highestmodseq=mail_mailboxes.c.highestmodseq + 1)
                .returning(mail_mailboxes.c.highestmodseq)
            )
        ).first()
        if row is None:
            raise NoSuchMailbox("mailbox vanished")
        return int(row[0])

    async def _allocate(
        self, conn: AsyncConnection, mailbox_id: int, count: int
    ) -> tuple[int, int, int]:
        row = (
            await conn.execute(
                update(mail_mailboxes)
                .where(mail_mailboxes.c.id == mailbox_id)
                .values(
                    uidnext=mail_mailboxes.c.uidnext + count,
                    highestmodseq=mail_mailboxes.c.highestmodseq + 1,
                )
                .returning(
                    mail_mailboxes.c.uidvalidity,
                    mail_mailboxes.c.uidnext,
                    mail_mailboxes.c.highestmodseq,
                )
            )
        ).first()
        if row is None:
            raise NoSuchMailbox("mailbox vanished")
        return int(row[0]), int(row[1]) - count, int(row[2])

    async def _delete_rows(
        self, conn: AsyncConnection, mailbox_id: int, rows: Sequence[MessageRow], modseq: int
    ) -> None:
        uids = [row.uid for row in rows]
        for chunk in _chunks(uids):
            await conn.execute(
                delete(mail_messages).where(
                    and_(mail_messages.c.mailbox_id == mailbox_id, mail_messages.c.uid.in_(chunk))
                )
            )
        await conn.execute(
            insert(mail_expunged),
            [{"mailbox_id": mailbox_id, "uid": row.uid, "modseq": modseq, "email_id": row.email_id,
              "thread_id": row.thread_id} for row in rows],
        )

    async def _forget(self, conn: AsyncConnection, email_ids: Iterable[str], indexed: bool) -> None:
        """Drop what is kept per email id (list-view facts, full-text entry) for the ids among
        ``email_ids`` that no message row refers to any more (their last copy went)."""
        ids = sorted(set(email_ids))
        for start in range(0, len(ids), SQL_BATCH):
            chunk = ids[start:start + SQL_BATCH]
            alive = {row[0] for row in await conn.execute(
                select(mail_messages.c.email_id).distinct().where(mail_messages.c.email_id.in_(chunk)))}
            dead = [value for value in chunk if value not in alive]
            if not dead:
                continue
            await conn.execute(delete(mail_summaries).where(mail_summaries.c.email_id.in_(dead)))
            if indexed:
                await self.search.remove(conn, dead)

    async def _delete_inline_bodies(self, conn: AsyncConnection, names: Sequence[str]) -> None:
        """Delete the ``mail_bodies`` rows among ``names``, in the caller's transaction."""
        inline = [name for name in names if is_inline(name)]
        for start in range(0, len(inline), SQL_BATCH):
            await conn.execute(
                delete(mail_bodies).where(mail_bodies.c.name.in_(inline[start : start + SQL_BATCH]))
            )

    def _remove_blobs(self, names: Iterable[str]) -> None:
        """Remove the files of these bodies; inline ones go with their rows' transaction."""
        large = [name for name in names if not is_inline(name)]
        if large:
            self.blobs.remove_many(large)


async def _mailbox_row(conn: AsyncConnection, mailbox_id: int) -> Any:
    """The mailbox's row; NoSuchMailbox when it was deleted meanwhile."""
    box = (await conn.execute(select(mail_mailboxes).where(mail_mailboxes.c.id == mailbox_id))).first()
    if box is None:
        raise NoSuchMailbox("mailbox vanished")
    return box
