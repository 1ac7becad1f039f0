"""The persistent full-text index of message bodies: SQLite FTS5, or a PostgreSQL tsvector with GIN.

One entry per message (per email id, so the copies of a message share it) holds the body's text as
the store's ``extract`` gives it (text parts, HTML reduced to text) under a token naming its owner.
Entries are written in the transaction that stores the message, or, for mail arriving over SMTP
(``MailboxStore.append_many(index_later=True)``), shortly after it in batches (``defer``): an FTS5
entry written in a transaction of its own makes each delivery's commit write a new index segment,
which measured about 1.3 ms of commit time and 0.4 ms of CPU per message (SQLite WAL with
synchronous=FULL, a 4 KiB message per commit). Every search (``match``, ``indexed_among``) first
writes what is still waiting, so a search in this process always sees every delivered message; what
a crash loses of the waiting entries, or another node has not written yet, is found by the catch-up
below. Entries are removed in the
transaction that expunges a message's last copy, so the index is as current as the mailboxes;
messages stored without an extractor (an import, before the index existed, or a deferred entry
lost in a crash) are added the first time their owner searches (``missing``/``add``).

The tables are not in the SQLAlchemy metadata: each engine has its own kind (an FTS5 virtual table
with its shadow tables; a table with a ``tsvector`` column), made by migration 0024 and left out of
schema comparisons by ``peerage.store.schema.include_name``.

Matching is by word prefix, case- and accent-insensitive (FTS5's unicode61 tokenizer with
remove_diacritics; PostgreSQL's ``simple`` configuration with ``:*`` prefixes): the way Dovecot's
FTS and Stalwart match a search term, rather than an arbitrary substring.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import unicodedata
from collections.abc import Callable, Sequence

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

TABLE = "mail_fts"
# Words per query: a search box rarely gets more than a handful; more only slows the match.
MAX_QUERY_TERMS = 16
# PostgreSQL refuses a tsvector over 1 MiB; bodies are cut to this many characters first (a word
# list of that size is far beyond what a reader searches in one message).
MAX_INDEXED_CHARS = 256 * 1024
_WORD = re.compile(r"\w+", re.UNICODE)
SQL_BATCH = 500
# Deferred entries: written once this many wait or the oldest has waited this long. Past the memory
# bound, entries are not kept (their messages are indexed by their owner's next search instead).
DEFER_BATCH = 256
DEFER_SECONDS = 1.0
MAX_DEFERRED = 4096

log = logging.getLogger(__name__)
# Gives the searchable text of a whole message (the store's ``extract``).
Extract = Callable[[bytes], str]


def owner_token(owner: str) -> str:
    """A one-word stand-in for the owner (an address would be split into several tokens)."""
    return "o" + hashlib.sha256(owner.encode()).hexdigest()[:20]


def rowid_of(email_id: str) -> int:
    """FTS5's integer key for an email id (63 bits of its hash), so a delete finds the row at once."""
    return int.from_bytes(hashlib.sha256(email_id.encode()).digest()[:8], "big") & 0x7FFFFFFFFFFFFFFF


def terms(query: str) -> list[str]:
    return _WORD.findall(fold(query))[:MAX_QUERY_TERMS]


def fold(value: str) -> str:
    """Lower case without accents ("Café" -> "cafe"), as FTS5's remove_diacritics does; PostgreSQL's
    ``simple`` configuration keeps accents, so its text and queries are folded here first."""
    decomposed = unicodedata.normalize("NFKD", value.lower())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


class FullTextIndex:
    """The body index of one database (all owners)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.postgres = engine.dialect.name == "postgresql"
        self._ready: bool | None = None
        # Messages stored with ``index_later``: (email id, owner, raw message, extractor).
        self._deferred: list[tuple[str, str, bytes, Extract]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._flush_lock = asyncio.Lock()
        # Set when DEFER_BATCH entries wait (or the oldest has waited DEFER_SECONDS).
        self._full = asyncio.Event()

    async def ready(self) -> bool:
        """Whether the index table exists (a database made by the migrations has it; tables made by
        hand for one test may not). Asked once; without it, searches scan bodies as before."""
        if self._ready is None:
            async with self.engine.connect() as conn:
                if self.postgres:
                    found = (await conn.execute(text(f"SELECT to_regclass('{TABLE}')"))).scalar()
                else:
                    found = (await conn.execute(text(
                        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = :n"), {"n": TABLE})).scalar()
            self._ready = found is not None
        return self._ready

    async def add(self, conn: AsyncConnection, entries: Sequence[tuple[str, str, str]],
                  only_existing: bool = False) -> None:
        """Index (email id, owner, body text) entries in the caller's transaction (a present id is kept).
        With ``only_existing``, an entry is written only while a message row has its email id."""
        if not entries:
            return
        if self.postgres:
            exists = " WHERE EXISTS (SELECT 1 FROM mail_messages WHERE email_id = :email_id)" if only_existing else ""
            await conn.execute(text(
                f"INSERT INTO {TABLE} (email_id, owner, document) "
                f"SELECT CAST(:email_id AS VARCHAR), CAST(:owner AS VARCHAR), to_tsvector('simple', CAST(:body AS TEXT)){exists} "
                "ON CONFLICT (email_id) DO NOTHING"),
                [{"email_id": e, "owner": owner_token(o), "body": fold(b[:MAX_INDEXED_CHARS])}
                 for e, o, b in entries])
            return
        # SQLite: the driver's own executemany with positional parameters; SQLAlchemy's per-row
        # parameter processing of a text() statement was about a quarter of a million instructions per
        # delivered message (bench/smtp/profile_delivery.py).
        exists = " WHERE EXISTS (SELECT 1 FROM mail_messages WHERE email_id = ?)" if only_existing else ""
        await conn.exec_driver_sql(
            f"INSERT OR IGNORE INTO {TABLE} (rowid, email_id, owner, body) SELECT ?, ?, ?, ?{exists}",
            [(rowid_of(e), e, owner_token(o), b[:MAX_INDEXED_CHARS], *((e,) if only_existing else ()))
             for e, o, b in entries])

    def defer(self, entries: Sequence[tuple[str, str, bytes]], extract: Extract) -> None:
        """Index (email id, owner, raw message) entries soon, in a batch of their own (``flush``)."""
        room = MAX_DEFERRED - len(self._deferred)
        if room < len(entries):
            log.warning("full-text index: %d deferred entries not kept (over %d); the next search indexes them",
                        len(entries) - max(room, 0), MAX_DEFERRED)
        self._deferred.extend((e, o, raw, extract) for e, o, raw in entries[:max(room, 0)])
        if len(self._deferred) >= DEFER_BATCH:
            self._full.set()
        if self._deferred and (self._flusher is None or self._flusher.done()):
            self._flusher = asyncio.get_running_loop().create_task(self._flush_later(), name="fts-deferred")

    async def _flush_later(self) -> None:
        # Woken by ``defer`` once a batch is full, or by the timer: one wake-up per batch instead of
        # polling every 50 ms while entries wait.
        self._full.clear()
        if len(self._deferred) < DEFER_BATCH:
            timer = asyncio.get_running_loop().call_later(DEFER_SECONDS, self._full.set)
            try:
                await self._full.wait()
            finally:
                timer.cancel()
        try:
            await self.flush()
        except Exception:  # the entries' messages are indexed by the next search's catch-up instead
            log.exception("writing deferred full-text index entries failed")
        if self._deferred:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_later(), name="fts-deferred")

    async def flush(self) -> None:
        """Write every deferred entry now (batches of SQL_BATCH, one transaction each). An entry whose
        message was expunged meanwhile is not written."""
        async with self._flush_lock:
            while self._deferred:
                batch, self._deferred = self._deferred[:SQL_BATCH], self._deferred[SQL_BATCH:]

                def texts(batch: list[tuple[str, str, bytes, Extract]] = batch) -> list[tuple[str, str, str]]:
                    out = []
                    for email_id, owner, raw, extract in batch:
                        try:
                            out.append((email_id, owner, extract(raw)))
                        except Exception:  # an unparsable body is stored, just not searchable by its text
                            continue
                    return out

                entries = await asyncio.to_thread(texts)
                async with self.engine.begin() as conn:
                    await self.add(conn, entries, only_existing=True)

    async def close(self) -> None:
        """Write what is deferred and stop the background writer (at service stop)."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._flusher
            self._flusher = None
        await self.flush()

    async def _before_read(self) -> None:
        # Also when the background writer has taken a batch and not committed it yet: flush waits
        # for it (the lock), so no entry is in flight when the search reads.
        if self._deferred or self._flush_lock.locked():
            try:
                await self.flush()
            except Exception:  # what was not written is found missing by the catch-up of JMAP's search
                log.exception("writing deferred full-text index entries before a search failed")

    async def remove(self, conn: AsyncConnection, email_ids: Sequence[str]) -> None:
        """Drop the entries of these ids (the store has found that their last copy went)."""
        if not email_ids:
            return
        if self.postgres:
            await conn.execute(text(f"DELETE FROM {TABLE} WHERE email_id = :e"), [{"e": e} for e in email_ids])
        else:
            await conn.execute(text(f"DELETE FROM {TABLE} WHERE rowid = :r"), [{"r": rowid_of(e)} for e in email_ids])

    async def indexed_among(self, email_ids: Sequence[str]) -> set[str]:
        """Those of ``email_ids`` that have an entry (looked up by key, in batches)."""
        await self._before_read()
        found: set[str] = set()
        async with self.engine.connect() as conn:
            for start in range(0, len(email_ids), SQL_BATCH):
                chunk = email_ids[start:start + SQL_BATCH]
                if self.postgres:
                    names = ", ".join(f":e{n}" for n in range(len(chunk)))
                    rows = await conn.execute(text(f"SELECT email_id FROM {TABLE} WHERE email_id IN ({names})"),
                                              {f"e{n}": value for n, value in enumerate(chunk)})
                else:
                    names = ", ".join(str(rowid_of(value)) for value in chunk)
                    rows = await conn.execute(text(f"SELECT email_id FROM {TABLE} WHERE rowid IN ({names})"))
                found.update(row[0] for row in rows)
        return found

    async def insert(self, entries: Sequence[tuple[str, str, str]]) -> None:
        """``add`` in a transaction of its own (the first search's catch-up)."""
        for start in range(0, len(entries), SQL_BATCH):
            async with self.engine.begin() as conn:
                await self.add(conn, entries[start:start + SQL_BATCH])

    async def match(self, owner: str, query: str) -> set[str] | None:
        """Email ids of ``owner`` whose body has every word of ``query`` (as a word prefix); None when
        the query has no word at all (the caller then matches nothing by body)."""
        words = terms(query)
        if not words:
            return None
        await self._before_read()
        async with self.engine.connect() as conn:
            if self.postgres:
                tsquery = " & ".join(f"{w}:*" for w in words)
                rows = await conn.execute(text(
                    f"SELECT email_id FROM {TABLE} WHERE owner = :o AND document @@ to_tsquery('simple', :q)"),
                    {"o": owner_token(owner), "q": tsquery})
            else:
                phrase = " AND ".join('"' + w.replace('"', '""') + '"*' for w in words)
                rows = await conn.execute(text(f"SELECT email_id FROM {TABLE} WHERE {TABLE} MATCH :q"),
                                          {"q": f"owner:{owner_token(owner)} AND body:({phrase})"})
            return {row[0] for row in rows}
