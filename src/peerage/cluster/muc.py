"""The per-user group-chat limits over every node of a cluster: rooms joined, owned, created per hour.

This module is in charge of what the group chat service (``peerage.xmpp.muc.service``) counts of a
user's rooms on the other nodes (``MucService.elsewhere``), so ``[muc] max_rooms_joined``,
``max_rooms_owned`` and ``max_room_creations_per_hour`` hold for the cluster and not per node. Each
room lives in the memory of its owner node (``cluster_leases``, kind ``room``), so each node counts
only its own rooms; what it adds for the others comes from two mechanisms, chosen by how often the
decision is taken.

Rooms joined: a replicated count. Joins are frequent (a client rejoins its bookmarked rooms at
every login) and each is decided on the owner node inside the room's presence handling, in order
with the room's other stanzas. Asking every live node at each join (N-1 requests) would make every
join wait for the slowest node, and for the whole timeout while a dead node is not yet declared
dead, and would cost 2(N-1) NATS messages per join. Instead every node publishes, per event-loop
turn, the users whose count of occupied rooms among its rooms changed (``peerage.cluster.muc.joined``:
absolute counts, numbered), and every node keeps a replica (node -> bare JID -> count), as the
session registry is replicated (``cluster.xmpp``): the join is decided on local memory, at no wait,
for one NATS message per change batch and one entry per user in a room per node. A gap in the
numbering, a node coming up and this node's NATS connection coming back make it ask for the whole
table (``peerage.node.<name>.muc_joined``); a dead node's counts go when it is declared dead, before
its rooms' occupants are told (status 332), so their rejoins are not refused. The replica lags by
the milliseconds NATS takes: two joins of one user at the same instant on two nodes may both pass,
one over the limit.

Rooms owned and created per hour: asked at the decision. Creations are rare (at most
``max_room_creations_per_hour`` per user), so a creation, and a room being made persistent, ask
every live node (``peerage.node.<name>.muc_user``, all at once, ``COUNT_TIMEOUT`` each) for the
rooms the user owns among those it serves and the rooms the user created there within the hour,
and read from PostgreSQL the persistent rooms the user owns (``muc_affiliations``, indexed by
account: rooms nobody serves since the last restart are only there). The rooms owned are the union of these room JIDs,
so a room is counted once whoever holds it. A node that does not answer in time counts as 0, and
this is logged: the decision fails open. The limits bound what one account costs, they do not
protect data; refusing instead would let one slow or dying node (a death takes ``[cluster]
node_timeout`` to notice) stop room creation for every user of the cluster, while failing open lets
a user exceed a limit by at most what that one node holds for it. The creations a node made are in
its memory only: they are forgotten with it (a restart lets a user create again).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from peerage.cluster.node import ClusterNode, NumberedFeed, Peer, node_subject

log = logging.getLogger(__name__)

JOINED_SUBJECT = "peerage.cluster.muc.joined"
#: Seconds a creation waits for each other node's count of the user's rooms (a LAN answers in well
#: under a millisecond; the listing of the service's rooms waits 1 s, a creation less).
COUNT_TIMEOUT = 0.5
#: Seconds to wait for a node's whole table of counts.
TABLE_TIMEOUT = 3.0


class RoomCounts:
    """``MucService.elsewhere`` on a cluster node: the other nodes' share of a user's rooms."""

    def __init__(self, node: ClusterNode, muc: Any, served: set[str], store: Any) -> None:
        self.node = node
        self.muc = muc
        #: the rooms this node owns and serves (``ClusterXmpp.rooms_served``)
        self.served = served
        self.store = store
        #: node -> bare JID -> rooms it occupies on that node (only counts above zero)
        self.tables: dict[str, dict[str, int]] = {}
        self._feed = NumberedFeed(node)
        self.seq = 0
        self._dirty: set[str] = set()
        self._flush_scheduled = False

    def attach(self) -> None:
        node = self.node
        node.subscribe(JOINED_SUBJECT, self._joined_received)
        node.subscribe(node_subject(node.name, "muc_joined"), self._table_requested)
        node.subscribe(node_subject(node.name, "muc_user"), self._user_requested)
        node.on_node_up(self._node_up)
        node.on_reconnect(self._reconnected)
        self.muc.elsewhere = self

    # =================================================================================================
    # Rooms joined: this node's counts -> the others
    # =================================================================================================
    def joined(self, bare: str) -> int:
        """Rooms ``bare`` occupies on the other nodes, as last heard."""
        return sum(table.get(bare, 0) for table in self.tables.values())

    def joined_changed(self, bare: str) -> None:
        self._dirty.add(bare)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _count(self, bare: str) -> int:
        return len(self.muc.joined.get(bare, ()))

    def _flush(self) -> None:
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, set()
        if not dirty:
            return
        self.seq += 1
        payload = {"node": self.node.name, "inc": self.node.incarnation, "seq": self.seq,
                   "counts": {bare: self._count(bare) for bare in dirty}}
        self.node.publish(JOINED_SUBJECT, json.dumps(payload).encode())

    async def _table_requested(self, msg: Any) -> None:
        self._flush()  # what changed this turn goes out numbered first, so the table is not older
        table = {bare: len(rooms) for bare, rooms in self.muc.joined.items() if rooms}
        reply = {"node": self.node.name, "inc": self.node.incarnation, "seq": self.seq, "counts": table}
        if msg.reply:
            await self.node.nc.publish(msg.reply, json.dumps(reply).encode())

    # =================================================================================================
    # Rooms joined: the others' counts -> this node's replica
    # =================================================================================================
    async def _joined_received(self, msg: Any) -> None:
        try:
            data = json.loads(msg.data)
            origin, inc, seq = str(data["node"]), str(data["inc"]), int(data["seq"])
            counts = {str(bare): int(n) for bare, n in dict(data["counts"]).items()}
        except (ValueError, KeyError, TypeError):
            return
        verdict = self._feed.batch(origin, inc, seq)
        if verdict == NumberedFeed.FETCH:
            await self._fetch(origin)
        if verdict != NumberedFeed.APPLY:
            return  # from an unknown node: its coming up brings the whole table
        self._apply(origin, counts)

    def _apply(self, origin: str, counts: dict[str, int]) -> None:
        table = self.tables.setdefault(origin, {})
        for bare, n in counts.items():
            if n > 0:
                table[bare] = n
            else:
                table.pop(bare, None)

    async def _fetch(self, origin: str) -> None:
        data = await self.node.request(node_subject(origin, "muc_joined"), b"{}", TABLE_TIMEOUT)
        if data is None:
            return
        try:
            reply = json.loads(data)
            inc, seq = str(reply["inc"]), int(reply["seq"])
            counts = {str(bare): int(n) for bare, n in dict(reply["counts"]).items() if int(n) > 0}
        except (ValueError, KeyError, TypeError):
            return
        if not self._feed.table(origin, inc, seq):
            return
        self.tables[origin] = counts

    async def _node_up(self, peer: Peer) -> None:
        self._feed.restart(peer.name)
        self.tables.pop(peer.name, None)
        await self._fetch(peer.name)

    def node_down(self, name: str) -> None:
        """``name`` is dead: its rooms and their occupants are gone (called before the occupants
        here are told, so that their rejoins count without it)."""
        self.tables.pop(name, None)
        self._feed.forget(name)

    def _reconnected(self) -> None:
        for name in list(self.node.peers):
            task = asyncio.ensure_future(self._fetch(name))
            task.add_done_callback(_log_failure)

    # =================================================================================================
    # Rooms owned and created within the hour: asked at the decision
    # =================================================================================================
    def _owned_here(self, bare: str) -> set[str]:
        """The rooms this node serves that ``bare`` owns (not the copies of rooms others serve)."""
        rooms = self.muc.rooms
        return {jid for jid in self.served
                if (room := rooms.get(jid)) is not None and room.affiliations.get(bare) == "owner"}

    async def _owned_stored(self, bare: str) -> set[str]:
        from sqlalchemy import select

        from peerage.xmpp.muc.tables import muc_affiliations

        query = select(muc_affiliations.c.room).where(muc_affiliations.c.jid == bare,
                                                      muc_affiliations.c.affiliation == "owner")
        try:
            async with self.store.begin() as conn:
                return {str(row[0]) for row in await conn.execute(query)}
        except Exception:
            log.exception("cluster: could not read the stored rooms %s owns; counted as none", bare)
            return set()

    async def counts(self, bare: str, room: str | None) -> tuple[int, int]:
        """(rooms ``bare`` owns on the cluster apart from ``room``, rooms it created on the other
        nodes within the hour)."""
        peers = list(self.node.peers)
        request = json.dumps({"bare": bare}).encode()
        stored = asyncio.ensure_future(self._owned_stored(bare))
        answers = await asyncio.gather(
            *(self.node.request(node_subject(name, "muc_user"), request, COUNT_TIMEOUT) for name in peers))
        owned = (await stored) | self._owned_here(bare)
        created = 0
        for name, answer in zip(peers, answers, strict=True):
            try:
                if answer is None:
                    raise ValueError("no answer")
                data = json.loads(answer)
                owned.update(str(jid) for jid in data["owned"])
                created += int(data["created"])
            except (ValueError, KeyError, TypeError):
                # Fails open (see the module docstring): the limits bound cost, one silent node
                # must not stop creations for everyone.
                log.warning("cluster: node %s gave no count of %s's rooms within %.1f s; counted as 0",
                            name, bare, COUNT_TIMEOUT)
        owned.discard(room or "")
        return len(owned), created

    async def _user_requested(self, msg: Any) -> None:
        try:
            bare = str(json.loads(msg.data)["bare"])
        except (ValueError, KeyError, TypeError):
            return
        reply = {"owned": sorted(self._owned_here(bare)), "created": self.muc.created_within_hour(bare)}
        if msg.reply:
            with contextlib.suppress(Exception):
                await self.node.nc.publish(msg.reply, json.dumps(reply).encode())

    def status(self) -> dict[str, Any]:
        """``peerage cluster status``: this node's replica of the others' counts of rooms joined."""
        return {"rooms_joined_elsewhere": {name: dict(table) for name, table in self.tables.items()}}


def _log_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("cluster: fetching a table of room counts failed: %s", task.exception())
