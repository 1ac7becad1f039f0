"""What a single node keeps under its data directory, in PostgreSQL for every node of a cluster.

This module is in charge of two stores, chosen by ``peerage.cluster.Cluster`` at start-up in place
of the single node's files:

- ``DatabaseBlobs``: the ``BlobStore`` interface (write, link, read, remove) over ``cluster_blobs``,
  one instance per kind (``mail`` bodies of ``INLINE_BODY_LIMIT`` and more, ``upload`` files of
  XEP-0363, ``media`` of local posts). Like the files, its methods are blocking and are called from
  worker threads (``asyncio.to_thread``); each runs its statement on the event loop's engine and
  waits for it, so the loop itself never waits on the database for a body. The row commits before
  ``write`` returns, so a body is durable before the row referring to it is committed, as a
  fsynced file is. The bodies are bytea: the largest is bounded by ``[smtp] max_message_size``,
  ``[imap] append_limit``, ``[web] max_upload_size`` or ``[xmpp.upload] max_file_size``, far below
  bytea's 1 GB, so large objects are not needed. A body written before the node joined a cluster
  (or while clusters kept ``data_dir`` on shared storage) is still a file: with ``fallback`` (the single node's ``BlobStore``) such a body is read,
  linked and removed as a file, so upgrading loses none.
- ``SharedKeys``: private keys as PEM in ``cluster_keys``. ``get_or_create`` inserts a new key
  with ``ON CONFLICT DO NOTHING`` and reads back whichever key won, so nodes starting at once all
  end up with the one key (the DKIM key DNS publishes, an account's actor key). ``with_keys``
  gives commands (``peerage dns``, ``peerage domain add``) the same rows.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy import delete, exists, func, insert, literal, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from peerage.cluster.tables import cluster_blobs, cluster_keys
from peerage.mail.mailbox.blobs import BlobStore

#: Seconds a call from a worker thread waits for the database.
BLOB_TIMEOUT = 60.0

T = TypeVar("T")


class DatabaseBlobs:
    """Bodies of one kind in ``cluster_blobs``; blocking methods for worker threads."""

    def __init__(self, engine: AsyncEngine, kind: str, loop: asyncio.AbstractEventLoop,
                 fallback: BlobStore | None = None) -> None:
        self.engine = engine
        self.kind = kind
        self.loop = loop
        #: Where bodies written before the cluster are: files, read when no row has the name.
        self.fallback = fallback

    def _run(self, coroutine: Any) -> Any:
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            coroutine.close()
            # Waiting here would block the very loop that runs the statement.
            raise RuntimeError("DatabaseBlobs is called from worker threads, not the event loop")
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(BLOB_TIMEOUT)

    def write(self, data: bytes, durable: bool = True) -> str:
        return self.write_many([data], durable)[0]

    def write_many(self, items: list[bytes], durable: bool = True) -> list[str]:
        names = [secrets.token_hex(16) for _ in items]
        if items:
            self._run(self._write(names, items))
        return names

    async def _write(self, names: list[str], items: list[bytes]) -> None:
        now = int(time.time())
        async with self.engine.begin() as conn:
            await conn.execute(insert(cluster_blobs), [
                {"kind": self.kind, "name": name, "data": data, "created_at": now}
                for name, data in zip(names, items, strict=True)])

    def link(self, name: str, durable: bool = True) -> str:
        copy = secrets.token_hex(16)
        if not self._run(self._copy(name, copy)):
            if self.fallback is None:
                raise FileNotFoundError(name)
            # A body from before the cluster: the copy is a row like any other.
            self._run(self._write([copy], [self.fallback.read(name)]))
        return copy

    async def _copy(self, name: str, copy: str) -> int:
        # The bytes are copied inside the database, never through this process.
        source = select(literal(self.kind), literal(copy), cluster_blobs.c.data,
                        literal(int(time.time()))).where(
            cluster_blobs.c.kind == self.kind, cluster_blobs.c.name == name)
        async with self.engine.begin() as conn:
            result = await conn.execute(insert(cluster_blobs).from_select(
                ["kind", "name", "data", "created_at"], source))
            return int(result.rowcount or 0)

    def read(self, name: str) -> bytes:
        data = self._run(self._read_row(name))
        if data is None:
            if self.fallback is None:
                raise FileNotFoundError(name)
            return self.fallback.read(name)
        return data

    async def read_async(self, name: str) -> bytes | None:
        """The bytes of ``name`` (None when there is none), for callers on the event loop."""
        data = await self._read_row(name)
        if data is None and self.fallback is not None:
            try:
                return await asyncio.to_thread(self.fallback.read, name)
            except FileNotFoundError:
                return None
        return data

    async def _read_row(self, name: str) -> bytes | None:
        async with self.engine.connect() as conn:
            data = (await conn.execute(select(cluster_blobs.c.data).where(
                cluster_blobs.c.kind == self.kind, cluster_blobs.c.name == name))).scalar()
        return None if data is None else bytes(data)

    def remove(self, name: str) -> None:
        self.remove_many([name])

    def remove_many(self, names: list[str]) -> None:
        if names:
            self._run(self._remove(names))
            if self.fallback is not None:
                self.fallback.remove_many(names)

    async def _remove(self, names: list[str]) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(delete(cluster_blobs).where(cluster_blobs.c.kind == self.kind,
                                                           cluster_blobs.c.name.in_(names)))

    async def sweep(self, referenced: Any, min_age: float) -> int:
        """Remove bodies older than ``min_age`` whose name no row has in the column ``referenced``.

        NOT EXISTS, an anti-join: NOT IN over every message's name would be rechecked row by row
        once the names outgrow work_mem, and would match nothing if one were NULL.
        """
        cutoff = int(time.time() - min_age)
        async with self.engine.begin() as conn:
            result = await conn.execute(delete(cluster_blobs).where(
                cluster_blobs.c.kind == self.kind, cluster_blobs.c.created_at < cutoff,
                ~exists().where(referenced == cluster_blobs.c.name)))
            return int(result.rowcount or 0)

    async def count(self) -> int:
        """Bodies of this kind (for tests and status)."""
        async with self.engine.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(cluster_blobs).where(
                cluster_blobs.c.kind == self.kind))).scalar() or 0)


async def sweep_files(upload: DatabaseBlobs, media: DatabaseBlobs, min_age: float) -> int:
    """Remove upload and media bodies no row refers to (a node died between the body and its row);
    mail bodies are swept by the mailbox store's ``collect_orphans``."""
    from peerage.social.tables import social_media
    from peerage.xmpp.extables import upload_files

    removed = await upload.sweep(upload_files.c.blob, min_age)
    return removed + await media.sweep(social_media.c.blob, min_age)


class SharedKeys:
    """Private keys (PEM) every node reads alike, in ``cluster_keys``."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def get(self, kind: str, name: str) -> bytes | None:
        async with self.engine.connect() as conn:
            pem = (await conn.execute(select(cluster_keys.c.pem).where(
                cluster_keys.c.kind == kind, cluster_keys.c.name == name))).scalar()
        return None if pem is None else bytes(pem)

    async def get_or_create(self, kind: str, name: str, make: Callable[[], bytes]) -> bytes:
        """The key ``kind``/``name``; made by ``make`` (in a worker thread) and stored when absent.

        Two nodes may both make one; the first insert wins and both return the winner's.
        """
        found = await self.get(kind, name)
        if found is not None:
            return found
        pem = await asyncio.to_thread(make)
        async with self.engine.begin() as conn:
            await conn.execute(pg_insert(cluster_keys).values(
                kind=kind, name=name, pem=pem, created_at=int(time.time())).on_conflict_do_nothing())
        stored = await self.get(kind, name)
        assert stored is not None
        return stored

    async def put(self, kind: str, name: str, pem: bytes) -> None:
        """Store ``pem`` as the key ``kind``/``name``, replacing the one there (a renewed certificate)."""
        statement = pg_insert(cluster_keys).values(kind=kind, name=name, pem=pem, created_at=int(time.time()))
        async with self.engine.begin() as conn:
            await conn.execute(statement.on_conflict_do_update(
                index_elements=[cluster_keys.c.kind, cluster_keys.c.name],
                set_={"pem": statement.excluded.pem, "created_at": statement.excluded.created_at}))

    async def names(self, kind: str, prefix: str) -> list[str]:
        """The names of ``kind`` that start with ``prefix``, sorted."""
        async with self.engine.connect() as conn:
            return sorted(str(row[0]) for row in await conn.execute(select(cluster_keys.c.name).where(
                cluster_keys.c.kind == kind, cluster_keys.c.name.startswith(prefix, autoescape=True))))


def with_keys(database_url: str, action: Callable[[SharedKeys], Awaitable[T]], migrate: bool = False) -> T:
    """``action`` on the cluster's keys with an engine of its own, for a command's plain code.

    It runs in a thread of its own, so a caller inside an event loop (``peerage check``) can wait
    for it as well as one outside.
    """
    async def run() -> T:
        from peerage.store import Store

        store = Store(database_url)
        try:
            if migrate:
                await store.migrate()
            return await action(SharedKeys(store.engine))
        finally:
            await store.close()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(run())).result()
