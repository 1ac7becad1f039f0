"""An account's mail as JMAP sees it: ids, state strings and an in-memory summary of every message.

This module is in charge of mapping the mailbox store (shared with IMAP) onto JMAP objects:

- a Mailbox id is ``m<UIDVALIDITY>`` (UIDVALIDITY never repeats for an owner, RFC 9051 §2.3.1.1). An
  Email id is the store's per-message email id (``peerage.mail.mailbox.objectid``), which every copy of
  a message shares and a move keeps: an Email is the set of rows with one email id, and its
  ``mailboxIds`` are their mailboxes (RFC 8621 §4.1.1), so IMAP COPY puts the same Email in a second
  mailbox and MOVE (or COPY then EXPUNGE) changes its ``mailboxIds``; the change log reports an
  update. An Email's keywords are those of its most recently changed copy; JMAP sets them on all;
- the Email (and Thread) state is, per mailbox, UIDVALIDITY, HIGHESTMODSEQ and UIDNEXT; the Mailbox
  state adds a checksum of name and subscription. Every IMAP change bumps HIGHESTMODSEQ (RFC 7162), so
  JMAP state and IMAP MODSEQ agree by construction, and ``/changes`` is answered from the store's own
  MODSEQ and expunge log (``MailboxStore.changes_since``);
- the summary (``Summary``: flags, dates, size, addresses, subject, thread) of every message comes from
  the header each row carries, so sorting and filtering 10,000 messages never reads a body. The index
  is refreshed on each request from the mailboxes whose HIGHESTMODSEQ moved.

Threads: a message's thread id is the store's (computed at delivery from the first Message-ID of its
References, else In-Reply-To, else its own Message-ID; ``objectid.thread_id``).
"""

from __future__ import annotations

import asyncio
import json
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from email.header import decode_header, make_header
from email.utils import parsedate_to_datetime
from typing import Any

from peerage.mail.mailbox import MailboxInfo, MailboxStore, MessageRow
from peerage.mail.mailbox import flags as flaglib
from peerage.mail.mailbox.objectid import message_ids, thread_id
from peerage.mail.smtp.headers import HeaderFields, addresses_of

# Accounts whose index is kept in memory; the least recently used is dropped first. 10,000 messages
# summarise to roughly 10 MB, so 64 busy accounts stay well under a gigabyte.
MAX_CACHED_ACCOUNTS = 64
# Characters of body text cached per account for search: 10,000 messages of a few KiB each fit in
# about 32 MB; past that the oldest entries go and are read again when searched.
MAX_TEXT_CACHE_CHARS = 32 * 1024 * 1024

# IMAP system flags and their JMAP keywords (RFC 8621 §4.1.1).
FLAG_TO_KEYWORD = {"\\Seen": "$seen", "\\Flagged": "$flagged", "\\Answered": "$answered", "\\Draft": "$draft"}
KEYWORD_TO_FLAG = {v: k for k, v in FLAG_TO_KEYWORD.items()}


def keywords_of(flags: tuple[str, ...]) -> dict[str, bool]:
    out: dict[str, bool] = {}
    for flag in flags:
        if flag == flaglib.DELETED:
            out["$deleted"] = True
        elif flag in FLAG_TO_KEYWORD:
            out[FLAG_TO_KEYWORD[flag]] = True
        elif not flag.startswith("\\"):
            out[flag.lower()] = True
    return out


def flags_of(keywords: dict[str, bool]) -> tuple[str, ...]:
    out: list[str] = []
    for keyword, on in keywords.items():
        if not on:
            continue
        keyword = keyword.lower()
        if keyword == "$deleted":
            out.append(flaglib.DELETED)
        else:
            out.append(KEYWORD_TO_FLAG.get(keyword, keyword))
    return flaglib.normalize(out)


def decode_text(value: str | None) -> str:
    if not value:
        return ""
    if isinstance(value, str) and value.isascii() and "=?" not in value:
        # No encoded word (RFC 2047 §2 starts every one with "=?"): decode_header gives the value back
        # as one us-ascii chunk, and make_header renders that chunk as it is.
        return value
    try:
        return str(make_header(decode_header(value)))
    except Exception:
        return value


def addresses(values: list[str] | None) -> list[dict[str, Any]] | None:
    if not values:
        return None
    out = []
    for name, address in addresses_of(values):
        if not address and not name:
            continue
        out.append({"name": decode_text(name) or None, "email": address})
    return out or None


def utc_date(stamp: float) -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))


def mailbox_id(uidvalidity: int) -> str:
    return f"m{uidvalidity}"


def parse_mailbox_id(value: Any) -> int | None:
    if not isinstance(value, str) or not value.startswith("m") or not value[1:].isdigit():
        return None
    return int(value[1:])


@dataclass
class Summary:
    """What queries, sorts and list views need of one message, from its header and row.

    One per stored row (a copy of a message in one mailbox). The index's ``by_id`` maps an Email id to
    one of its copies, the one standing for the Email; ``boxes`` of that one lists every mailbox the
    Email is in.
    """

    id: str  # the Email id: the store's email id, shared by every copy
    box: int  # database id of its mailbox
    uid: int
    modseq: int
    flags: tuple[str, ...]
    received: int
    size: int
    blob: str
    header: bytes
    subject: str
    sender: list[dict[str, Any]] | None
    from_: list[dict[str, Any]] | None
    to: list[dict[str, Any]] | None
    cc: list[dict[str, Any]] | None
    bcc: list[dict[str, Any]] | None
    reply_to: list[dict[str, Any]] | None
    message_id: list[str] | None
    in_reply_to: list[str] | None
    references: list[str] | None
    sent_at: str | None
    sent_stamp: float
    thread: str
    # Computed from the body the first time they are needed.
    plain: bool = False  # no encoded part and valid UTF-8: the raw body is its text
    has_attachment: bool | None = None
    preview: str | None = None
    # Every mailbox (database id) the Email is in; kept up to date on the copy standing for it.
    boxes: frozenset[int] = frozenset()

    @property
    def keywords(self) -> dict[str, bool]:
        return keywords_of(self.flags)

    def row(self) -> MessageRow:
        return MessageRow(self.uid, self.modseq, self.flags, self.received, 0, self.size, self.blob, self.header)


# The header facts of a Summary, as kept with the message (``mail_summaries``): parsing 10,000
# headers with the email package takes seconds, loading their JSON a tenth of one, so the first JMAP
# request after a start reads them instead of parsing (the cold start of the webmail). Bump the
# version when the facts change: a row with another version is summarised again.
SUMMARY_VERSION = 1


def header_facts(header: bytes | HeaderFields) -> dict[str, Any]:
    """What a Summary takes from the header block (JSON-ready); the store passes the fields it
    parsed once at delivery."""
    headers = header if isinstance(header, HeaderFields) else HeaderFields(header)
    sent_at: str | None = None
    sent_stamp: float | None = None
    date = headers.get("Date")
    if date:
        try:
            parsed = parsedate_to_datetime(str(date))
            sent_stamp = parsed.timestamp()
            sent_at = parsed.isoformat().replace("+00:00", "Z")
        except (TypeError, ValueError, IndexError, OverflowError):
            sent_at = sent_stamp = None
    return {
        "v": SUMMARY_VERSION,
        "subject": decode_text(headers.get("Subject")),
        "sender": addresses(headers.get_all("Sender")),
        "from": addresses(headers.get_all("From")),
        "to": addresses(headers.get_all("To")),
        "cc": addresses(headers.get_all("Cc")),
        "bcc": addresses(headers.get_all("Bcc")),
        "replyTo": addresses(headers.get_all("Reply-To")),
        "messageId": message_ids(headers.get("Message-ID")),
        "inReplyTo": message_ids(headers.get("In-Reply-To")),
        "references": message_ids(headers.get("References")),
        "sentAt": sent_at,
        "sentStamp": sent_stamp,
    }


def encode_facts(header: bytes | HeaderFields) -> bytes:
    """The store's ``summarize`` hook: the header facts as compact JSON, computed at delivery."""
    return json.dumps(header_facts(header), separators=(",", ":")).encode()


def cached_facts(row: MessageRow) -> dict[str, Any] | None:
    if not row.summary:
        return None
    try:
        facts = json.loads(row.summary)
    except ValueError:
        return None
    return facts if isinstance(facts, dict) and facts.get("v") == SUMMARY_VERSION else None


def summarise(box: MailboxInfo, row: MessageRow, facts: dict[str, Any] | None = None) -> Summary:
    if facts is None:
        facts = cached_facts(row) or header_facts(row.header)
    stamp = facts["sentStamp"]
    return Summary(
        id=row.email_id,
        box=box.id,
        uid=row.uid,
        modseq=row.modseq,
        flags=row.flags,
        received=row.internal_date,
        size=row.size,
        blob=row.blob,
        header=row.header,
        plain=row.plain,
        subject=facts["subject"],
        sender=facts["sender"],
        from_=facts["from"],
        to=facts["to"],
        cc=facts["cc"],
        bcc=facts["bcc"],
        reply_to=facts["replyTo"],
        message_id=facts["messageId"],
        in_reply_to=facts["inReplyTo"],
        references=facts["references"],
        sent_at=facts["sentAt"],
        sent_stamp=float(row.internal_date) if stamp is None else float(stamp),
        thread=row.thread_id or thread_id(row.header, row.email_id),
        boxes=frozenset((box.id,)),
    )


@dataclass
class BoxIndex:
    info: MailboxInfo
    emails: dict[int, Summary] = field(default_factory=dict)


def _b36(value: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    if value == 0:
        return "0"
    out = ""
    while value:
        value, rest = divmod(value, 36)
        out = digits[rest] + out
    return out


def _from_b36(value: str) -> int:
    return int(value, 36)


@dataclass(frozen=True)
class BoxState:
    uidvalidity: int
    modseq: int
    uidnext: int
    checksum: int


def encode_state(boxes: list[BoxState], with_checksum: bool) -> str:
    parts = []
    for b in sorted(boxes, key=lambda b: b.uidvalidity):
        fields = [_b36(b.uidvalidity), _b36(b.modseq), _b36(b.uidnext)]
        if with_checksum:
            fields.append(_b36(b.checksum))
        parts.append(".".join(fields))
    return "_".join(parts) or "0"


def decode_state(value: Any, with_checksum: bool) -> list[BoxState] | None:
    if not isinstance(value, str) or len(value) > 65536:
        return None
    if value == "0":
        return []
    out = []
    try:
        for part in value.split("_"):
            fields = [_from_b36(f) for f in part.split(".")]
            if len(fields) != (4 if with_checksum else 3):
                return None
            out.append(BoxState(fields[0], fields[1], fields[2], fields[3] if with_checksum else 0))
    except ValueError:
        return None
    return out


def checksum(info: MailboxInfo) -> int:
    return zlib.crc32(f"{info.name}\0{info.subscribed}\0{info.special_use}".encode())


class AccountIndex:
    def __init__(self, store: MailboxStore, owner: str) -> None:
        self.store = store
        self.owner = owner
        self.boxes: dict[int, BoxIndex] = {}
        # Email id -> the copy standing for the Email; Email id -> every copy (one per mailbox row).
        self.by_id: dict[str, Summary] = {}
        self.copies: dict[str, list[Summary]] = {}
        self._threads: dict[str, list[Summary]] | None = None
        self.lock = asyncio.Lock()
        # Lower-cased body text per email id for body/text search (ids are immutable), bounded.
        self.texts: OrderedDict[str, tuple[str, bool]] = OrderedDict()
        self._text_chars = 0
        # Email ids known to have an entry in the persistent full-text index.
        self.searchable: set[str] = set()

    def remember_text(self, email: str, entry: tuple[str, bool]) -> None:
        self.texts[email] = entry
        self._text_chars += len(entry[0])
        while self._text_chars > MAX_TEXT_CACHE_CHARS and self.texts:
            _, dropped = self.texts.popitem(last=False)
            self._text_chars -= len(dropped[0])

    def _add(self, summary: Summary, touched: set[str]) -> None:
        self.copies.setdefault(summary.id, []).append(summary)
        touched.add(summary.id)

    def _remove(self, summary: Summary, touched: set[str]) -> None:
        copies = self.copies.get(summary.id)
        if copies is not None:
            copies[:] = [c for c in copies if c is not summary]
        touched.add(summary.id)

    def _settle(self, touched: set[str]) -> None:
        """Choose again which copy stands for each touched Email, and its mailboxes."""
        for email in touched:
            copies = self.copies.get(email)
            if not copies:
                self.copies.pop(email, None)
                self.by_id.pop(email, None)
                continue
            # The most recently changed copy gives the keywords (an IMAP STORE on one copy shows).
            primary = max(copies, key=lambda c: (c.modseq, c.box))
            primary.boxes = frozenset(c.box for c in copies)
            self.by_id[email] = primary
        if touched:
            self._threads = None

    async def refresh(self) -> None:
        async with self.lock:
            touched: set[str] = set()
            infos = {info.id: info for info in await self.store.list_mailboxes(self.owner)}
            for gone in [box_id for box_id in self.boxes if box_id not in infos]:
                for summary in self.boxes.pop(gone).emails.values():
                    self._remove(summary, touched)
            for box_id, info in infos.items():
                current = self.boxes.get(box_id)
                if current is None or current.info.uidvalidity != info.uidvalidity:
                    if current is not None:
                        for summary in current.emails.values():
                            self._remove(summary, touched)
                    fresh = BoxIndex(info)
                    for summary in await self._summarise(info, await self.store.messages(box_id, None, with_header=True)):
                        fresh.emails[summary.uid] = summary
                        self._add(summary, touched)
                    self.boxes[box_id] = fresh
                    continue
                if current.info.highestmodseq != info.highestmodseq:
                    await self._apply_changes(current, info, touched)
                current.info = info
            self._settle(touched)

    async def _apply_changes(self, current: BoxIndex, info: MailboxInfo, touched: set[str]) -> None:
        changes = await self.store.changes_since(info.id, current.info.highestmodseq)
        new_uids = []
        for uid, flags, modseq in changes.changed:
            summary = current.emails.get(uid)
            if summary is None:
                new_uids.append(uid)
            else:
                summary.flags = flags
                summary.modseq = modseq
                touched.add(summary.id)
        for uid in changes.expunged:
            summary = current.emails.pop(uid, None)
            if summary is not None:
                self._remove(summary, touched)
        if new_uids:
            for summary in await self._summarise(info, await self.store.messages(info.id, new_uids, with_header=True)):
                current.emails[summary.uid] = summary
                self._add(summary, touched)

    async def _summarise(self, info: MailboxInfo, rows: list[MessageRow]) -> list[Summary]:
        """Summaries of rows, from the facts kept with each message; a message stored without them
        (before they were kept, or by a path without the hook) is parsed once and its facts saved."""
        out = []
        missing: list[tuple[str, bytes]] = []
        for row in rows:
            facts = cached_facts(row)
            if facts is None:
                facts = header_facts(row.header)
                missing.append((row.email_id, json.dumps(facts, separators=(",", ":")).encode()))
            out.append(summarise(info, row, facts))
        if missing:
            await self.store.save_summaries(missing)
        return out

    # --- views -------------------------------------------------------------------------------------

    def all(self) -> list[Summary]:
        return list(self.by_id.values())

    def in_box(self, box: BoxIndex) -> list[Summary]:
        """The Emails (their standing copies) with a copy in ``box``."""
        return [self.by_id[s.id] for s in box.emails.values() if s.id in self.by_id]

    def mailbox_by_jmap_id(self, value: Any) -> BoxIndex | None:
        uv = parse_mailbox_id(value)
        if uv is None:
            return None
        for box in self.boxes.values():
            if box.info.uidvalidity == uv:
                return box
        return None

    def box_jmap_id(self, box_id: int) -> str:
        return mailbox_id(self.boxes[box_id].info.uidvalidity)

    @property
    def threads(self) -> dict[str, list[Summary]]:
        if self._threads is None:
            threads: dict[str, list[Summary]] = {}
            for summary in self.by_id.values():
                threads.setdefault(summary.thread, []).append(summary)
            for members in threads.values():
                members.sort(key=lambda s: (s.received, s.id))
            self._threads = threads
        return self._threads

    def states(self) -> list[BoxState]:
        return [BoxState(b.info.uidvalidity, b.info.highestmodseq, b.info.uidnext, checksum(b.info))
                for b in self.boxes.values()]

    def email_state(self) -> str:
        return encode_state(self.states(), with_checksum=False)

    def mailbox_state(self) -> str:
        return encode_state(self.states(), with_checksum=True)


class IndexCache:
    """One AccountIndex per owner, bounded (least recently used goes first)."""

    def __init__(self, store: MailboxStore, limit: int = MAX_CACHED_ACCOUNTS) -> None:
        self.store = store
        self.limit = limit
        self._indexes: OrderedDict[str, AccountIndex] = OrderedDict()

    async def get(self, owner: str) -> AccountIndex:
        index = self._indexes.get(owner)
        if index is None:
            index = AccountIndex(self.store, owner)
            self._indexes[owner] = index
            while len(self._indexes) > self.limit:
                self._indexes.popitem(last=False)
        else:
            self._indexes.move_to_end(owner)
        await index.refresh()
        return index
