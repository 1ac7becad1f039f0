"""The persistent full-text index of message bodies: SQLite FTS5, or a PostgreSQL tsvector with GIN.

One entry per message (per email id, so the copies of a message share it) holds the body's text as
the store's ``extract`` gives it (text parts, HTML reduced to text) under a token naming its owner.
Entries are written in the transaction that stores the message and removed in the one that expunges
its last copy, so the index is as current as the mailboxes; messages stored without an extractor
(an import, or before the index existed) are added the first time their owner searches
(``missing``/``add``).

The tables are not in the SQLAlchemy metadata: each engine has its own kind (an FTS5 virtual table
with its shadow tables; a table with a ``tsvector`` column), made by migration 0024 and left out of
schema comparisons by ``peerage.store.schema.include_name``.

Matching is by word prefix, case- and accent-insensitive (FTS5's unicode61 tokenizer with
remove_diacritics; PostgreSQL's ``simple`` configuration with ``:*`` prefixes): the way Dovecot's
FTS and Stalwart match a search term, rather than an arbitrary substring.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Sequence

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

    async def add(self, conn: AsyncConnection, entries: Sequence[tuple[str, str, str]]) -> None:
        """Index (email id, owner, body text) entries in the caller's transaction (a present id is kept)."""
        if not entries:
            return
        if self.postgres:
            await conn.execute(text(
                f"INSERT INTO {TABLE} (email_id, owner, document) "
                "VALUES (:email_id, :owner, to_tsvector('simple', :body)) ON CONFLICT (email_id) DO NOTHING"),
                [{"email_id": e, "owner": owner_token(o), "body": fold(b[:MAX_INDEXED_CHARS])}
                 for e, o, b in entries])
            return
        await conn.execute(text(
            f"INSERT OR IGNORE INTO {TABLE} (rowid, email_id, owner, body) VALUES (:rowid, :email_id, :owner, :body)"),
            [{"rowid": rowid_of(e), "email_id": e, "owner": owner_token(o), "body": b[:MAX_INDEXED_CHARS]}
             for e, o, b in entries])

    async def remove_unreferenced(self, conn: AsyncConnection, email_ids: Iterable[str]) -> None:
        """Drop the entries of these ids that no message row refers to any more (the last copy went)."""
        ids = sorted(set(email_ids))
        for start in range(0, len(ids), SQL_BATCH):
            chunk = ids[start:start + SQL_BATCH]
            names = ", ".join(f":e{n}" for n in range(len(chunk)))
            params = {f"e{n}": value for n, value in enumerate(chunk)}
            alive = {row[0] for row in await conn.execute(
                text(f"SELECT DISTINCT email_id FROM mail_messages WHERE email_id IN ({names})"), params)}
            dead = [value for value in chunk if value not in alive]
            if not dead:
                continue
            if self.postgres:
                await conn.execute(text(f"DELETE FROM {TABLE} WHERE email_id = :e"), [{"e": e} for e in dead])
            else:
                await conn.execute(text(f"DELETE FROM {TABLE} WHERE rowid = :r"), [{"r": rowid_of(e)} for e in dead])

    async def indexed_among(self, email_ids: Sequence[str]) -> set[str]:
        """Those of ``email_ids`` that have an entry (looked up by key, in batches)."""
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
