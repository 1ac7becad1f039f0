"""Leases in PostgreSQL: one owner node per key for a bounded time (``cluster_leases``).

This module is in charge of taking, renewing and releasing leases. ``owner(kind, key)`` returns the
node that owns the lease, taking it for this node when it is free or expired (one atomic
``INSERT … ON CONFLICT DO UPDATE … WHERE expired``, so two nodes asking at once get the same answer).
Callers asking about one key while a lookup for it is in flight share that lookup, and resume in the
order they asked (stanzas to one room keep their order while its owner is looked up). The owner
renews all its leases every ``LEASE_SECONDS / 3`` (one statement for all); it releases one itself
when what it covered is gone (``release``: a group chat room destroyed or emptied); a dead node's
leases are released by the survivors as soon as it is declared dead, and lapse by themselves otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert

from peerage.cluster.tables import cluster_leases

log = logging.getLogger(__name__)

#: Seconds a lease lasts without renewal (a node dead without being noticed keeps its domains this long).
LEASE_SECONDS = 60
#: Seconds an answer of owner() is reused before the table is read again.
CACHE_SECONDS = 10.0


class Leases:
    def __init__(self, store: Any, node: str) -> None:
        self.store = store
        self.node = node
        self._cache: dict[tuple[str, str], tuple[str, float]] = {}
        self._mine: set[tuple[str, str]] = set()
        self._asking: dict[tuple[str, str], asyncio.Future[str]] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._renew_loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # A clean stop hands the domains over at once.
        with contextlib.suppress(Exception):
            await self.release_node(self.node)

    def held(self, kind: str) -> list[str]:
        return [key for k, key in self._mine if k == kind]

    def cached_owner(self, kind: str, key: str) -> str | None:
        """The owner from the last answer, if still fresh (no database access)."""
        cached = self._cache.get((kind, key))
        return cached[0] if cached is not None and cached[1] > time.monotonic() else None

    async def owner(self, kind: str, key: str) -> str:
        cached = self._cache.get((kind, key))
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        asking = self._asking.get((kind, key))
        if asking is not None:
            return await asyncio.shield(asking)
        asking = asyncio.get_running_loop().create_future()
        self._asking[(kind, key)] = asking
        try:
            owner = await self._take(kind, key, now)
        except asyncio.CancelledError:
            asking.cancel()
            raise
        except Exception as exc:
            asking.set_exception(exc)
            asking.exception()  # retrieved: the callers waiting get it too
            raise
        else:
            asking.set_result(owner)
        finally:
            del self._asking[(kind, key)]
        return owner

    async def _take(self, kind: str, key: str, now: float) -> str:
        expires = int(time.time()) + LEASE_SECONDS
        statement = insert(cluster_leases).values(kind=kind, key=key, node=self.node, expires_at=expires)
        taking = statement.on_conflict_do_update(
            index_elements=[cluster_leases.c.kind, cluster_leases.c.key],
            set_={"node": statement.excluded.node, "expires_at": statement.excluded.expires_at},
            where=(cluster_leases.c.expires_at < int(time.time())) | (cluster_leases.c.node == self.node),
        ).returning(cluster_leases.c.node)
        async with self.store.begin() as conn:
            owner = (await conn.execute(taking)).scalar()
            if owner is None:
                owner = (await conn.execute(select(cluster_leases.c.node).where(
                    cluster_leases.c.kind == kind, cluster_leases.c.key == key))).scalar()
        owner = str(owner or self.node)
        self._cache[(kind, key)] = (owner, now + CACHE_SECONDS)
        if owner == self.node:
            self._mine.add((kind, key))
        else:
            self._mine.discard((kind, key))
        return owner

    async def release(self, kind: str, key: str) -> None:
        """This node gives up its lease on ``key`` (what it covered is gone); the next node to ask takes it."""
        self._cache.pop((kind, key), None)
        self._mine.discard((kind, key))
        async with self.store.begin() as conn:
            await conn.execute(delete(cluster_leases).where(
                cluster_leases.c.kind == kind, cluster_leases.c.key == key, cluster_leases.c.node == self.node))

    async def release_node(self, node: str) -> None:
        """``node`` is dead (or stopping): its leases are free now."""
        self._cache = {k: v for k, v in self._cache.items() if v[0] != node}
        async with self.store.begin() as conn:
            await conn.execute(delete(cluster_leases).where(cluster_leases.c.node == node))

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(LEASE_SECONDS / 3)
            if not self._mine:
                continue
            try:
                async with self.store.begin() as conn:
                    await conn.execute(update(cluster_leases).where(cluster_leases.c.node == self.node)
                                       .values(expires_at=int(time.time()) + LEASE_SECONDS))
            except Exception:
                log.exception("cluster: renewing leases failed")


async def list_leases(store: Any) -> list[dict[str, Any]]:
    async with store.begin() as conn:
        rows = await conn.execute(select(cluster_leases).order_by(cluster_leases.c.kind, cluster_leases.c.key))
        return [dict(row._mapping) for row in rows]
