"""Persistent rooms in the database (``muc_rooms``, ``muc_affiliations``).

This module is in charge of reading every persistent room at start (or one room, for the cluster
node that has just become its owner) and of writing one room's whole
state (configuration, subject, occupant-id salt, affiliations with their reserved nicknames and
offline-delivery choices) in one transaction, or deleting it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from peerage.xmpp.muc.tables import muc_affiliations, muc_rooms

if TYPE_CHECKING:
    from peerage.xmpp.muc.room import Room


class RoomStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def load(self) -> list[dict[str, Any]]:
        return await self._read()

    async def load_one(self, jid: str) -> dict[str, Any] | None:
        """One room as ``load`` gives it, or None if it is not stored."""
        rooms = await self._read(jid)
        return rooms[0] if rooms else None

    async def _read(self, jid: str | None = None) -> list[dict[str, Any]]:
        """Every stored room, or only ``jid``, each with its affiliations."""
        rooms_query, affiliations_query = select(muc_rooms), select(muc_affiliations)
        if jid is not None:
            rooms_query = rooms_query.where(muc_rooms.c.jid == jid)
            affiliations_query = affiliations_query.where(muc_affiliations.c.room == jid)
        async with self.engine.connect() as conn:
            rooms = {row.jid: {**row._mapping, "affiliations": []} for row in await conn.execute(rooms_query)}
            if not rooms:
                return []
            for row in await conn.execute(affiliations_query):
                room = rooms.get(row.room)
                if room is not None:
                    room["affiliations"].append((row.jid, row.affiliation, row.nick, row.reason, row.offline))
        return list(rooms.values())

    async def configs(self, service_jid: str) -> list[tuple[str, str]]:
        """(room JID, configuration as stored) of the persistent rooms of ``service_jid``."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(muc_rooms.c.jid, muc_rooms.c.config).where(
                muc_rooms.c.jid.endswith("@" + service_jid, autoescape=True)))
            return [(str(row.jid), str(row.config)) for row in rows]

    async def save(self, room: Room) -> None:
        affiliations = [{"room": room.jid, "jid": jid, "affiliation": affiliation,
                         "nick": room.reserved.get(jid, ""), "reason": room.reasons.get(jid, ""),
                         "offline": room.offline.get(jid)}
                        for jid, affiliation in room.affiliations.items()]
        async with self.engine.begin() as conn:
            await conn.execute(delete(muc_rooms).where(muc_rooms.c.jid == room.jid))
            await conn.execute(insert(muc_rooms).values(
                jid=room.jid, config=room.config.to_json(), subject=room.subject, subject_by=room.subject_by,
                salt=room.salt, created=room.created))
            await conn.execute(delete(muc_affiliations).where(muc_affiliations.c.room == room.jid))
            if affiliations:
                await conn.execute(insert(muc_affiliations), affiliations)

    async def delete(self, jid: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(delete(muc_rooms).where(muc_rooms.c.jid == jid))
            await conn.execute(delete(muc_affiliations).where(muc_affiliations.c.room == jid))
