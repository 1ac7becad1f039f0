"""Database access of the XMPP service: roster, offline queue, archive, private XML, vCards, blocks.

This module is in charge of every SQL statement the XMPP features run, through the shared async
engine. Every write commits before it returns, so a caller that acknowledges afterwards (offline
storage, XEP-0198 <a/>) acknowledges only durable data.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, delete, func, insert, not_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from peerage.xmpp.tables import (
    xmpp_archive,
    xmpp_blocklist,
    xmpp_offline,
    xmpp_private,
    xmpp_roster,
    xmpp_roster_removed,
    xmpp_roster_version,
    xmpp_vcard,
)


@dataclass(slots=True)
class RosterItem:
    contact: str
    name: str | None = None
    subscription: str = "none"  # none | to | from | both
    ask: bool = False
    approved: bool = False
    groups: list[str] = field(default_factory=list)
    hidden: bool = False  # exists only for a pending inbound request
    pending_in: bool = False
    pending_stanza: str | None = None
    version: int = 0  # the roster version of its last change (XEP-0237)

    def row(self) -> dict[str, Any]:
        return {
            "contact": self.contact, "name": self.name, "subscription": self.subscription,
            "ask": self.ask, "approved": self.approved, "groups": "\n".join(self.groups),
            "hidden": self.hidden, "pending_in": self.pending_in,
            "pending_stanza": self.pending_stanza, "version": self.version,
        }


@dataclass(slots=True)
class ArchivedMessage:
    archive_id: str
    with_jid: str
    stamp: float
    stanza: str


#: Removal records kept per account for roster versioning (XEP-0237). A client that last synced
#: before the oldest one is sent the full roster instead, as every client must handle.
MAX_REMOVED_ITEMS = 1000


#: Accounts remembered as having an empty offline queue (``XmppStorage.empty_offline``); beyond,
#: the set starts again (a few MB at most for the bound).
MAX_KNOWN_EMPTY_OFFLINE = 100_000


class XmppStorage:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        #: domains whose archives their own module expires (peerage.xmpp.muc: the rooms of
        #: conference.DOMAIN, by [muc] archive_expires_days); expire_archive leaves them alone
        self.expired_elsewhere: frozenset[str] = frozenset()
        #: Accounts whose offline queue is known to be empty: read empty here, and nothing stored
        #: for them since (``store_offline`` clears an entry, after its commit as well as before).
        #: Every login's first presence reads the queue; almost always it is empty, and this spares
        #: that query. Only valid while this process is the one writer of the queue: a cluster,
        #: where another node stores for an account unseen by this one, sets it to None (off).
        self.empty_offline: set[str] | None = set()
        #: Bumped by every ``store_offline``: a read that began before a store does not mark the
        #: queue empty (its answer may predate the row).
        self._offline_writes = 0

    # --- roster (RFC 6121 section 2, XEP-0237) --------------------------------------------------
    async def load_roster(self, owner: str) -> tuple[int, dict[str, RosterItem]]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(xmpp_roster).where(xmpp_roster.c.owner == owner))).all()
            version = (await conn.execute(
                select(xmpp_roster_version.c.version).where(xmpp_roster_version.c.owner == owner)
            )).scalar()
        items = {}
        for row in rows:
            items[row.contact] = RosterItem(
                row.contact, row.name, row.subscription, bool(row.ask), bool(row.approved),
                [g for g in row.groups.split("\n") if g], bool(row.hidden), bool(row.pending_in),
                row.pending_stanza, int(row.version or 0),
            )
        return version or 0, items

    async def roster_versions(self, owners: list[str]) -> dict[str, int]:
        """The stored roster version (XEP-0237) of each of ``owners`` (0 when it has none)."""
        versions = dict.fromkeys(owners, 0)
        async with self.engine.connect() as conn:
            for start in range(0, len(owners), 500):  # bound the statement's parameter count
                chunk = owners[start:start + 500]
                for row in await conn.execute(select(xmpp_roster_version.c.owner, xmpp_roster_version.c.version)
                                              .where(xmpp_roster_version.c.owner.in_(chunk))):
                    versions[row.owner] = int(row.version)
        return versions

    async def save_roster_item(self, owner: str, item: RosterItem | None, contact: str) -> int:
        """Insert, update or (item=None) delete one item; bump and return the roster version.

        The item is stored with the new version; a deletion leaves a removal record with it, so a
        client that last saw an older version can be sent just the changes (XEP-0237).
        """
        async with self.engine.begin() as conn:
            current = (await conn.execute(
                select(xmpp_roster_version.c.version, xmpp_roster_version.c.pruned)
                .where(xmpp_roster_version.c.owner == owner))).first()
            if current is None:
                version = 1
                await conn.execute(insert(xmpp_roster_version).values(owner=owner, version=version, pruned=0))
            else:
                version = int(current.version) + 1
                await conn.execute(update(xmpp_roster_version).where(
                    xmpp_roster_version.c.owner == owner).values(version=version))
            await conn.execute(delete(xmpp_roster).where(
                and_(xmpp_roster.c.owner == owner, xmpp_roster.c.contact == contact)))
            await conn.execute(delete(xmpp_roster_removed).where(
                and_(xmpp_roster_removed.c.owner == owner, xmpp_roster_removed.c.contact == contact)))
            if item is not None:
                item.version = version
                await conn.execute(insert(xmpp_roster).values(owner=owner, **item.row()))
            else:
                await conn.execute(insert(xmpp_roster_removed).values(owner=owner, contact=contact, version=version))
                await self._prune_removed(conn, owner)
        return int(version)

    async def _prune_removed(self, conn: Any, owner: str) -> None:
        count = (await conn.execute(select(func.count()).select_from(xmpp_roster_removed)
                                    .where(xmpp_roster_removed.c.owner == owner))).scalar() or 0
        if count <= MAX_REMOVED_ITEMS:
            return
        # Keep the newest records; a client older than what was dropped gets the full roster.
        cutoff = (await conn.execute(
            select(xmpp_roster_removed.c.version).where(xmpp_roster_removed.c.owner == owner)
            .order_by(xmpp_roster_removed.c.version.desc()).offset(MAX_REMOVED_ITEMS).limit(1))).scalar()
        await conn.execute(delete(xmpp_roster_removed).where(
            and_(xmpp_roster_removed.c.owner == owner, xmpp_roster_removed.c.version <= cutoff)))
        await conn.execute(update(xmpp_roster_version).where(
            xmpp_roster_version.c.owner == owner).values(pruned=cutoff))

    async def roster_removed_since(self, owner: str, version: int) -> list[tuple[int, str]] | None:
        """(version, contact) of items removed after ``version``; None when that history is gone."""
        async with self.engine.connect() as conn:
            pruned = (await conn.execute(select(xmpp_roster_version.c.pruned)
                                         .where(xmpp_roster_version.c.owner == owner))).scalar()
            if pruned is not None and version < pruned:
                return None
            rows = (await conn.execute(
                select(xmpp_roster_removed.c.version, xmpp_roster_removed.c.contact)
                .where(and_(xmpp_roster_removed.c.owner == owner, xmpp_roster_removed.c.version > version))
                .order_by(xmpp_roster_removed.c.version))).all()
        return [(int(row.version), row.contact) for row in rows]

    # --- offline messages (XEP-0160) --------------------------------------------------------------
    async def offline_count(self, owner: str) -> int:
        known_empty = self.empty_offline
        if known_empty is not None and owner in known_empty:
            return 0
        async with self.engine.connect() as conn:
            return int((await conn.execute(
                select(func.count()).select_from(xmpp_offline).where(xmpp_offline.c.owner == owner)
            )).scalar() or 0)

    async def store_offline(self, owner: str, stanza: str) -> None:
        self._offline_stored(owner)
        async with self.engine.begin() as conn:
            await conn.execute(insert(xmpp_offline).values(owner=owner, stamp=time.time(), stanza=stanza))
        self._offline_stored(owner)  # a read that ran during the commit must not mark it empty

    def _offline_stored(self, owner: str) -> None:
        self._offline_writes += 1
        if self.empty_offline is not None:
            self.empty_offline.discard(owner)

    async def take_offline(self, owner: str) -> list[tuple[int, str]]:
        known_empty = self.empty_offline
        if known_empty is not None and owner in known_empty:
            return []
        writes = self._offline_writes
        async with self.engine.connect() as conn:
            rows = (await conn.execute(
                select(xmpp_offline.c.id, xmpp_offline.c.stanza)
                .where(xmpp_offline.c.owner == owner).order_by(xmpp_offline.c.id)
            )).all()
        known_empty = self.empty_offline
        if not rows and known_empty is not None and writes == self._offline_writes:
            if len(known_empty) >= MAX_KNOWN_EMPTY_OFFLINE:
                known_empty.clear()  # forgetting only costs a query at the next login
            known_empty.add(owner)
        return [(row.id, row.stanza) for row in rows]

    async def delete_offline(self, owner: str, up_to_id: int) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(delete(xmpp_offline).where(
                and_(xmpp_offline.c.owner == owner, xmpp_offline.c.id <= up_to_id)))

    # --- archive (XEP-0313) ---------------------------------------------------------------------
    @staticmethod
    def new_archive_id() -> str:
        return uuid.uuid4().hex

    async def archive_many(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        async with self.engine.begin() as conn:
            await conn.execute(insert(xmpp_archive), rows)

    async def query_archive(
        self, owner: str, *, with_jid: str | None, start: float | None, end: float | None,
        after_id: str | None, before_id: str | None, limit: int, ids: list[str] | None = None,
    ) -> tuple[list[ArchivedMessage], bool]:
        """Return up to ``limit`` messages in chronological order and whether the page is the last."""
        table = xmpp_archive
        conditions = [table.c.owner == owner]
        if with_jid:
            conditions.append(table.c.with_jid == with_jid)
        if start is not None:
            conditions.append(table.c.stamp >= start)
        if end is not None:
            conditions.append(table.c.stamp <= end)
        if ids:
            conditions.append(table.c.archive_id.in_(ids))
        async with self.engine.connect() as conn:
            for ref, op in ((after_id, "after"), (before_id, "before")):
                if ref:
                    ref_row = (await conn.execute(select(table.c.id).where(
                        and_(table.c.owner == owner, table.c.archive_id == ref)))).scalar()
                    if ref_row is None:
                        raise KeyError(ref)
                    conditions.append(table.c.id > ref_row if op == "after" else table.c.id < ref_row)
            query = select(table.c.archive_id, table.c.with_jid, table.c.stamp, table.c.stanza).where(
                and_(*conditions))
            if before_id is not None:
                query = query.order_by(table.c.id.desc()).limit(limit + 1)
            else:
                query = query.order_by(table.c.id).limit(limit + 1)
            rows = (await conn.execute(query)).all()
        complete = len(rows) <= limit
        rows = list(rows[:limit])
        if before_id is not None:
            rows.reverse()
        return [ArchivedMessage(r.archive_id, r.with_jid, r.stamp, r.stanza) for r in rows], complete

    async def expire_archive(self, before_stamp: float) -> None:
        condition = xmpp_archive.c.stamp < before_stamp
        for domain in self.expired_elsewhere:
            condition = and_(condition, not_(xmpp_archive.c.owner.endswith("@" + domain, autoescape=True)))
        async with self.engine.begin() as conn:
            await conn.execute(delete(xmpp_archive).where(condition))

    # --- private XML (XEP-0049) ----------------------------------------------------------------
    async def get_private(self, owner: str, namespace: str) -> str | None:
        async with self.engine.connect() as conn:
            return (await conn.execute(select(xmpp_private.c.xml).where(
                and_(xmpp_private.c.owner == owner, xmpp_private.c.namespace == namespace)))).scalar()

    async def set_private(self, owner: str, namespace: str, xml: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(delete(xmpp_private).where(
                and_(xmpp_private.c.owner == owner, xmpp_private.c.namespace == namespace)))
            await conn.execute(insert(xmpp_private).values(owner=owner, namespace=namespace, xml=xml))

    # --- vCard (XEP-0054) -----------------------------------------------------------------------
    async def get_vcard(self, owner: str) -> str | None:
        async with self.engine.connect() as conn:
            return (await conn.execute(select(xmpp_vcard.c.xml).where(xmpp_vcard.c.owner == owner))).scalar()

    async def set_vcard(self, owner: str, xml: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(delete(xmpp_vcard).where(xmpp_vcard.c.owner == owner))
            await conn.execute(insert(xmpp_vcard).values(owner=owner, xml=xml))

    # --- blocking (XEP-0191) --------------------------------------------------------------------
    async def get_blocklist(self, owner: str) -> set[str]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(xmpp_blocklist.c.jid).where(xmpp_blocklist.c.owner == owner))).all()
        return {row.jid for row in rows}

    async def block(self, owner: str, jids: list[str]) -> None:
        async with self.engine.begin() as conn:
            for jid in jids:
                await conn.execute(delete(xmpp_blocklist).where(
                    and_(xmpp_blocklist.c.owner == owner, xmpp_blocklist.c.jid == jid)))
                await conn.execute(insert(xmpp_blocklist).values(owner=owner, jid=jid))

    async def unblock(self, owner: str, jids: list[str] | None) -> None:
        async with self.engine.begin() as conn:
            condition = xmpp_blocklist.c.owner == owner
            if jids is not None:
                condition = and_(condition, xmpp_blocklist.c.jid.in_(jids))
            await conn.execute(delete(xmpp_blocklist).where(condition))
