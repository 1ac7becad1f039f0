"""XMPP across the nodes of a cluster: the session registry, routing to other nodes, and failover.

This module is in charge of making the router of each node see every bound session of the cluster.

The registry. Each node owns the entries of its own sessions (full JID -> node, with what other
nodes need to apply RFC 6121 delivery rules: available, priority, last presence, carbons enabled,
roster requested). It publishes changes on ``peerage.cluster.sessions`` (numbered; a gap, or a
heartbeat announcing a later number, makes the others ask for the whole table again on
``peerage.node.<name>.sync``). Every node keeps a replica: a ``RemoteSession`` in its router's
session table for each session bound elsewhere, as ejabberd's session table and MongooseIM's CETS
tables are replicated to every node. Feature modules therefore need no change: a message to a bare
JID, a presence broadcast, carbons or a roster push reach a ``RemoteSession`` like a local one, and
``RemoteSession.send`` hands the stanza to the owning node. A dead node's entries are removed by
each survivor once its heartbeats stop (``[cluster] node_timeout``).

Routing. What is sent to the sessions of one node in one turn of the event loop leaves as one NATS
message to ``peerage.node.<name>.deliver`` (a presence broadcast to 300 contacts on two other nodes
is two messages, not 300). The receiving node writes each stanza to its session as addressed, the
delivery rules having run on the sending node. A batch is bytes, not JSON (``pack_batch``): a header
line, a line with every stanza's lengths, then per stanza the recipient's JID and the stanza as
``serialize`` wrote it, which the receiving node writes to the client without escaping, decoding or
encoding it again.

What was acknowledged is not lost. A message (chat/normal, as XEP-0198 section 4 re-routes) to a
session on another node is held by the sending node until that node says the stanza reached the
client: at once for a session without XEP-0198, at the client's ``<a/>`` otherwise. A sender using
XEP-0198 is acknowledged only once the other node has the stanza (``got``) and the archive rows of
what it sent are written, so a sender's ``<a/>`` always means "held by two nodes" or "at the client",
and "archived". Only the answer waits (``XmppService.ack_gate``): the sender's later stanzas are
handled meanwhile, so a client sending a burst is not paced by database commits. When a node dies, every survivor re-routes what
it holds for that node's sessions to the bare JID (other resources, else offline storage): XEP-0198
section 4 for a session that cannot resume. Stanzas the client had received but not acknowledged
may then arrive twice, which XEP-0198 allows. When NATS is down, held stanzas are sent again once it
is back; the receiver drops the copies it already has.

The roster and blocklist caches. Each node caches the state of accounts online anywhere; a node that
changes a roster or blocklist tells the others (``peerage.cluster.user``), which reload it. The cache
serves delivery; a roster change (subscription state machine, roster set) is decided under a
cluster-wide lock on the stored state instead (``cluster.roster``).

Federation. One node owns the outbound streams to each remote domain (``cluster_leases``, kind
``s2s``); the others forward stanzas for that domain to it. Inbound streams are accepted anywhere.

Group chats. Each room of a hosted group chat service (``room@conference.DOMAIN``, whose state lives
in one node's memory) has one owner node (a lease of kind ``room`` on the room JID), taken by the
node where the first stanza for it arrives (its creation); stanzas to the room reaching another node
are forwarded to the owner, whose room sends to the occupants through the registry like any stanza.
The service JID itself (disco#info, unique names, the room listing, which asks the other nodes for
the rooms they serve) is answered by whichever node it reaches. A node that becomes a room's owner
reads the room from PostgreSQL first; one whose room is gone (destroyed, or emptied and not
persistent) releases the lease once the room writer is done. The per-user room limits count the
rooms of every node (``cluster.muc``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import OrderedDict
from typing import Any

from peerage.cluster.leases import Leases
from peerage.cluster.node import ClusterNode, NumberedFeed, Peer, node_subject
from peerage.xmpp.jid import JidError, split_jid
from peerage.xmpp.stream import Element, XmlStreamParser, serialize

log = logging.getLogger(__name__)

SESSIONS_SUBJECT = "peerage.cluster.sessions"
USER_SUBJECT = "peerage.cluster.user"
PEP_SUBJECT = "peerage.cluster.pep"
#: Seconds a sender using XEP-0198 waits for the other node to confirm it holds a stanza before
#: its <a/> goes out anyway (NATS down: the stanza is then held here and sent when NATS is back).
GOT_TIMEOUT = 3.0
#: Confirmations kept per sender before the done ones are dropped (a client asking for acks rarely).
MAX_GOT_WAITERS = 1000
#: Seconds after which an unconfirmed held stanza is sent again (the receiver drops copies).
RESEND_AFTER = 5.0
#: Seconds between checks of what the clients acknowledged (XEP-0198) for stanzas held elsewhere.
RELEASE_CHECK = 0.2
#: Held stanzas per target node before the oldest are given up to offline storage; bounds memory
#: as XEP-0198's own queue does (sm.MAX_UNACKED per session).
MAX_HELD_PER_NODE = 100_000
#: Stanza ids remembered per origin to drop copies sent again after an outage.
SEEN_IDS = 100_000
#: Seconds a client's message waits for its archive rows (XEP-0313) to be written before its
#: XEP-0198 count moves on anyway (database slow or away: the rows stay buffered and are retried).
ARCHIVE_TIMEOUT = 5.0
#: Seconds to wait for a node's whole table (sync).
SYNC_TIMEOUT = 3.0
#: Seconds during which an offline message stored here is checked against sessions becoming available
#: on other nodes (the registry's propagation is milliseconds; a login takes longer than this rarely).
RECENT_OFFLINE = 60.0
#: Hosted services whose rooms live in one node's memory, by JID prefix: each room gets an owner node.
OWNED_SERVICES = ("conference.",)
#: Seconds a room listing (disco#items on the service) waits for each other node's answer.
LISTING_TIMEOUT = 1.0
#: Seconds a room's lease is kept after the room is gone while its last changes are being written.
RELEASE_AFTER_WRITE = 5.0
MUC_USER = "http://jabber.org/protocol/muc#user"
#: Largest stanza accepted from another node (the c2s limit is the same order, [xmpp] max_stanza_size).
MAX_FORWARDED_STANZA = 1024 * 1024


class RemoteSession:
    """A session bound on another node, as the router and the feature modules see it."""

    __slots__ = ("_presence", "available", "bare_jid", "carbons", "connection", "ended", "full_jid",
                 "hibernation", "jid_bytes", "node", "priority", "resource", "roster_requested", "sm", "xmpp")

    def __init__(self, xmpp: ClusterXmpp, node: str, full_jid: str) -> None:
        self.xmpp = xmpp
        self.node = node
        self.full_jid = full_jid
        #: The full JID as a delivery batch carries it (encoded once, not per stanza).
        self.jid_bytes = full_jid.encode()
        self.bare_jid, _, self.resource = full_jid.partition("/")
        self.available = False
        self.priority = 0
        #: The last available presence as sent (parsed when read: a parsed presence with caps is about
        #: 2 KiB, the text a tenth of that, and most are never read on this node).
        self._presence = ""
        self.carbons = False
        self.roster_requested = False
        # What Sessions.replaced() looks at when a local bind replaces this entry.
        self.sm = None
        self.connection = None
        self.hibernation = None
        self.ended = False

    @property
    def last_presence(self) -> Element | None:
        return parse_stanza(self._presence) if self._presence else None

    @last_presence.setter
    def last_presence(self, stanza: Element | None) -> None:
        self._presence = serialize(stanza) if stanza is not None else ""

    def send(self, stanza: Element) -> None:
        self.xmpp.send_remote(self, stanza)

    def set_active(self, active: bool) -> None:
        pass

    def __repr__(self) -> str:
        return f"<RemoteSession {self.full_jid} on {self.node}>"


def room_of(to: str) -> str | None:
    """The room JID (normalised bare JID) a stanza to a group chat service is for; None for the
    service JID itself, or an address the service rejects as malformed."""
    try:
        local, domain, _ = split_jid(to)
    except JidError:
        return None
    return f"{local}@{domain}" if local else None


class OwnedService:
    """A group chat service whose rooms each have an owner node: a stanza to a room is delivered here
    when this node owns the room, else forwarded to the owner; a stanza to the service JID is
    answered here."""

    __slots__ = ("inner", "jid", "parent", "xmpp")

    def __init__(self, xmpp: ClusterXmpp, inner: Any) -> None:
        self.xmpp = xmpp
        self.inner = inner
        self.jid = inner.jid
        self.parent = inner.parent

    def deliver(self, stanza: Element, origin: Any = None) -> Any:
        room = room_of(stanza.attrs.get("to", ""))
        if room is None:
            return self.inner.deliver(stanza, origin)
        xmpp = self.xmpp
        if room in xmpp.rooms_served and xmpp.leases.cached_owner("room", room) == xmpp.node.name:
            result = self.inner.deliver(stanza, origin)
            xmpp.check_room(room)
            return result
        return xmpp.deliver_to_owner(self, room, stanza, origin)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class _Held:
    __slots__ = ("got", "node", "sender", "sent_at", "stanza", "to")

    def __init__(self, node: str, to: str, stanza: Element, sender: str) -> None:
        self.node = node
        self.to = to
        self.stanza = stanza
        self.sender = sender
        self.got: asyncio.Future[None] | None = None
        self.sent_at = time.monotonic()


def _holdable(stanza: Element) -> bool:
    """What XEP-0198 section 4 re-routes when a session cannot resume (as Sessions._reroute_unacked)."""
    if stanza.name != "message" or stanza.attrs.get("type") in ("error", "groupchat", "headline"):
        return False
    return all(child.xmlns not in ("urn:xmpp:carbons:2", "urn:xmpp:mam:2") for child in stanza.elements())


_HEADER = "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"


def stream_parser() -> XmlStreamParser:
    """A parser for a stream of forwarded stanzas (kept between batches: building one costs more than
    parsing a small batch)."""
    parser = XmlStreamParser(MAX_FORWARDED_STANZA)
    parser.feed(_HEADER.encode())
    return parser


def parse_stanzas(texts: list[str], parser: XmlStreamParser | None = None) -> list[Element] | None:
    """Stanzas serialised by ``serialize`` (content namespace jabber:client), parsed back with one
    parser (``parser``, or a new one); None if any is not well-formed (then none is trusted, and
    ``parser`` cannot be used again)."""
    if parser is None:
        parser = stream_parser()
    events = parser.feed("".join(texts).encode())
    stanzas = [event for event in events if isinstance(event, Element)]
    if parser.failed or len(stanzas) != len(texts):
        return None
    return stanzas


#: The parser ``parse_stanza`` keeps between calls (building one costs more than a small stanza).
_kept_parser: XmlStreamParser | None = None


def parse_stanza(text: str | bytes) -> Element | None:
    """One serialised stanza (a forwarded service, PEP or federation stanza, a last presence),
    parsed with a kept parser; a new one after a failure, which leaves the kept one unusable."""
    global _kept_parser
    parser = _kept_parser if _kept_parser is not None else stream_parser()
    events = parser.feed(text.encode() if isinstance(text, str) else text)
    if parser.failed or len(events) != 1 or not isinstance(events[0], Element):
        _kept_parser = None
        return None
    _kept_parser = parser
    return events[0]


#: First bytes of a delivery batch in the format of ``pack_batch``. A batch from a node that still
#: sends the earlier format (``B1 ``, a line of lengths per stanza) or JSON (starting with "{") is
#: read as before.
BATCH_MAGIC = b"B2 "
_BATCH_MAGIC_1 = b"B1 "


def pack_batch(node: str, incarnation: str, items: list[tuple[int, bytes, bytes]]) -> bytes:
    """A delivery batch of (sid, recipient's full JID, stanza), both as UTF-8: ``B2 node incarnation
    count`` on the first line, every item's ``sid to-length stanza-length`` on the second (one line
    for the batch: one split and one int() per number to read it, where a line per stanza cost a
    search and a split each), then the JIDs and stanzas back to back. Lengths frame everything, so a
    JID or stanza may hold any character; the stanza bytes are written to the client as they arrive."""
    lengths = b" ".join([b"%d %d %d" % (sid, len(jid), len(data)) for sid, jid, data in items])
    head = b"%s%s %s %d\n%s\n" % (BATCH_MAGIC, node.encode(), incarnation.encode(), len(items), lengths)
    return b"".join([head, *[jid + data for _, jid, data in items]])


def pack_batch_1(node: str, incarnation: str, items: list[tuple[int, bytes, bytes]]) -> bytes:
    """The same batch in the earlier format (``B1``: a line of lengths before each stanza), for a
    node whose heartbeat does not say it reads ``B2`` (a node not yet upgraded in a rolling upgrade)."""
    head = b"%s%s %s %d\n" % (_BATCH_MAGIC_1, node.encode(), incarnation.encode(), len(items))
    return b"".join([head, *[b"%d %d %d\n%s%s" % (sid, len(jid), len(data), jid, data) for sid, jid, data in items]])


#: The newest batch format this node reads, announced in its heartbeat (``batch``): senders use
#: ``pack_batch`` for a node announcing 2 and ``pack_batch_1`` for one announcing nothing.
BATCH_FORMAT = 2


def unpack_batch(data: bytes) -> tuple[str, str, list[tuple[int, str, bytes]]] | None:
    """(origin node, incarnation, [(sid, to, stanza bytes)]) of ``pack_batch``'s bytes, or of a
    batch of an older node; None if malformed (lengths past the end, a count that differs)."""
    try:
        if data[:1] == b"{":
            batch = json.loads(data)
            return (str(batch["node"]), str(batch["inc"]),
                    [(int(item[0]), str(item[1]), str(item[2]).encode()) for item in batch["items"]])
        if data.startswith(_BATCH_MAGIC_1):
            return _unpack_batch_1(data)
        if not data.startswith(BATCH_MAGIC):
            return None
        end = data.index(b"\n")
        node, incarnation, count = data[len(BATCH_MAGIC):end].decode().split(" ")
        start = end + 1
        end = data.index(b"\n", start)
        numbers = list(map(int, data[start:end].split()))
        if len(numbers) != 3 * int(count) or (numbers and min(numbers) < 0):
            return None
        items = []
        position = end + 1
        fields = iter(numbers)
        for sid, jid_length, data_length in zip(fields, fields, fields, strict=True):
            middle = position + jid_length
            end = middle + data_length
            items.append((sid, data[position:middle].decode(), data[middle:end]))
            position = end
        if position != len(data):
            return None
        return node, incarnation, items
    except (ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError):
        return None


def _unpack_batch_1(data: bytes) -> tuple[str, str, list[tuple[int, str, bytes]]] | None:
    """A batch of the earlier format: per stanza a line ``sid to-length stanza-length``, then the
    recipient's JID and the stanza."""
    end = data.index(b"\n")
    node, incarnation, count = data[len(_BATCH_MAGIC_1):end].decode().split(" ")
    items = []
    position, size = end + 1, len(data)
    for _ in range(int(count)):
        end = data.index(b"\n", position)
        sid, jid_length, data_length = data[position:end].split(b" ")
        start = end + 1
        middle = start + int(jid_length)
        position = middle + int(data_length)
        if position > size or middle < start or position < middle:
            return None
        items.append((int(sid), data[start:middle].decode(), data[middle:position]))
    if position != size:
        return None
    return node, incarnation, items


class ClusterXmpp:
    """The registry replica, the per-node outboxes, the held stanzas and the lease-owned federation."""

    def __init__(self, node: ClusterNode, service: Any, leases: Leases) -> None:
        self.node = node
        self.service = service
        self.ctx = service.ctx
        self.router = service.router
        self.sessions = service.sessions
        self.leases = leases
        self.seq = 0  # numbers this node's registry changes
        self._ops: list[list[Any]] = []  # registry changes waiting for the end of this turn
        self._snapshots: dict[str, tuple[Any, ...]] = {}  # local full JID -> what others last heard
        self._dirty: dict[str, Any] = {}  # local sessions to look at at the end of this turn
        #: node -> full JID -> RemoteSession
        self.remote: dict[str, dict[str, RemoteSession]] = {}
        self._feed = NumberedFeed(node)
        #: node -> (sid, recipient's full JID, stanza) as ``pack_batch`` frames them, all bytes
        self._outbox: dict[str, list[tuple[int, bytes, bytes]]] = {}
        self._flush_scheduled = False
        self.forwarded_batches = 0  # NATS messages those went in (stanzas per message: the scaling model)
        self._next_id = 0
        #: id -> stanza held here until the node of its session says the client has it
        self.held: dict[int, _Held] = {}
        #: sender full JID -> futures its XEP-0198 <a/> waits for
        self._got_waiters: dict[str, list[asyncio.Future[None]]] = {}
        #: (origin node, incarnation) -> (stanza id, local session, sent count it needs acked)
        self._marks: dict[tuple[str, str], dict[int, tuple[Any, int]]] = {}
        self._seen: dict[tuple[str, str], OrderedDict[int, None]] = {}
        #: bare JID -> when this node last stored an offline message for it
        self._recent_offline: dict[str, float] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self._original_remote_sender: Any = None
        self.forwarded_in = 0
        self.forwarded_out = 0
        self.rerouted_after_death = 0
        #: rooms this node owns and has read since it last became their owner
        self.rooms_served: set[str] = set()
        self._room_loading: dict[str, asyncio.Future[None]] = {}
        self._muc: Any = None
        #: local full JID -> room JID -> (nick, owner node, affiliation): rooms on another node that
        #: this session is in (from the self-presence, XEP-0045 status 110)
        self.occupying: dict[str, dict[str, tuple[str, str, str]]] = {}
        self._pep: Any = None
        #: the per-user room limits over the cluster (cluster.muc), with a group chat service
        self.room_counts: Any = None
        self.roster_guard: Any = None
        self._mam: Any = None

    # =================================================================================================
    # Wiring
    # =================================================================================================
    def attach(self) -> None:
        node, events = self.node, self.ctx.events
        events.hook("resource-bind", self._bound, 10_000)
        events.hook("resource-unbind", self._unbound, 10_000)
        events.hook("sm-acked", self._client_acked)
        stanzas = self.service.stanzas
        original = stanzas.from_client

        from peerage.xmpp.features.mam import Mam

        mam = self.ctx.feature(Mam) if self.ctx.archive_enabled else None
        self._mam = mam

        def from_client(session: Any, stanza: Element) -> Any:
            result = original(session, stanza)
            if stanza.name == "message":
                # What the registry carries of a session (availability, priority, last presence,
                # carbons, roster requested) changes only by presence (RFC 6121 section 4) and iq
                # (XEP-0280 enable, the roster get): a message is not looked at again.
                return result
            self._dirty[session.full_jid] = session
            self._schedule_flush()
            if result is None:
                return None
            return self._complete(result, session)

        stanzas.from_client = from_client
        # XEP-0198: what a client's <a/> (or <resumed/>) counts is held by two nodes and archived.
        self.service.ack_gate = self._ack_gate
        # The storage writes that change a cached roster or blocklist tell the other nodes.
        storage = self.ctx.storage
        for name in ("save_roster_item", "block", "unblock"):
            setattr(storage, name, self._announcing(getattr(storage, name)))
        store_offline = storage.store_offline

        async def stored_offline(owner: str, stanza: str) -> None:
            await store_offline(owner, stanza)
            self._offline_stored(owner)

        storage.store_offline = stored_offline
        # Roster decisions: one node at a time per account, on the stored state (cluster/roster.py).
        from peerage.cluster.roster import RosterGuard

        self.roster_guard = RosterGuard(self.ctx.users)
        self.ctx.users.guard = self.roster_guard
        # Outbound federation through the owner of each remote domain.
        self._original_remote_sender = self.router._remote_sender  # installed by S2SService.start
        if self._original_remote_sender is not None:
            self.router.set_remote_sender(self._send_federated)
        node.subscribe(SESSIONS_SUBJECT, self._sessions_changed)
        node.subscribe(USER_SUBJECT, self._user_changed)
        node.subscribe(node_subject(node.name, "deliver"), self._deliver_received)
        node.subscribe(node_subject(node.name, "acks"), self._acks_received)
        node.subscribe(node_subject(node.name, "sync"), self._sync_requested)
        node.subscribe(node_subject(node.name, "s2s"), self._s2s_received)
        node.subscribe(node_subject(node.name, "offline"), self._offline_check_received)
        node.subscribe(node_subject(node.name, "service"), self._service_received)
        node.subscribe(node_subject(node.name, "rooms"), self._rooms_requested)
        self._attach_pep()
        from peerage.xmpp.muc.service import MucService

        self._muc = self.ctx.feature(MucService)
        if self._muc is not None:
            self._muc.listing = self._room_listing
            # A room gone without a stanza for it (its lock timed out) gives its lease up too.
            self._muc.on_gone = self.check_room
            from peerage.cluster.muc import RoomCounts

            self.room_counts = RoomCounts(node, self._muc, self.rooms_served, self.leases.store)
            self.room_counts.attach()
        # Group chat services: one owner node per room (services registered later, after a reload, too).
        router = self.router
        for jid, service in list(router.services.items()):
            if jid.startswith(OWNED_SERVICES):
                router.services[jid] = OwnedService(self, service)
        add_service = router.add_service

        def add_owned(service: Any) -> None:
            add_service(OwnedService(self, service) if service.jid.startswith(OWNED_SERVICES) else service)

        router.add_service = add_owned
        node.on_node_up(self._node_up)
        node.on_node_down(self._node_down)
        node.on_reconnect(self._reconnected)
        node.heartbeat_info.append(lambda: {"seq": self.seq, "sessions": len(self._snapshots),
                                            "batch": BATCH_FORMAT})
        node.status_info.append(self.status)
        self._tasks.append(asyncio.ensure_future(self._release_loop()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        # A clean stop: what other nodes hold for sessions here is theirs to re-route now.
        self._publish_ops([["-", full] for full in list(self._snapshots)])

    def status(self, request: dict[str, Any]) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "sessions": sorted(self._snapshots),
            "remote_sessions": sum(len(s) for s in self.remote.values()),
            "held": len(self.held),
            "forwarded_in": self.forwarded_in,
            "forwarded_out": self.forwarded_out,
            "forwarded_batches": self.forwarded_batches,
            "s2s_leases": sorted(self.leases.held("s2s")),
            "room_leases": sorted(self.leases.held("room")),
            "roster_reloads": self.roster_guard.reloaded if self.roster_guard is not None else 0,
        }
        if request.get("registry"):
            # This node's replica of the others' sessions (what its router sees of them).
            answer["registry"] = {
                full: {"node": s.node, "available": s.available, "carbons": s.carbons}
                for table in self.remote.values() for full, s in table.items()}
            if self.room_counts is not None:
                answer.update(self.room_counts.status())
        return answer

    # =================================================================================================
    # This node's sessions -> the others
    # =================================================================================================
    def _bound(self, session: Any) -> None:
        if isinstance(session, RemoteSession):
            return None
        self._dirty[session.full_jid] = session
        self._schedule_flush()
        return None

    def _unbound(self, session: Any) -> None:
        if isinstance(session, RemoteSession):
            return None
        self._got_waiters.pop(session.full_jid, None)
        self._dirty[session.full_jid] = session
        self._schedule_flush()
        return None

    @staticmethod
    def _snapshot(session: Any) -> tuple[Any, ...]:
        return (session.available, session.priority, id(session.last_presence), session.carbons,
                session.roster_requested)

    def _collect(self) -> None:
        dirty, self._dirty = self._dirty, {}
        for full, session in dirty.items():
            bound = not session.ended and self.router.session(session.bare_jid, session.resource) is session
            if not bound:
                if self._snapshots.pop(full, None) is not None:
                    self._ops.append(["-", full])
                continue
            snap = self._snapshot(session)
            if self._snapshots.get(full) != snap:
                self._snapshots[full] = snap
                self._ops.append(["+", *self._entry(session)])

    @staticmethod
    def _entry(session: Any) -> list[Any]:
        presence = serialize(session.last_presence) if session.last_presence is not None else ""
        return [session.full_jid, int(session.available), session.priority, int(session.carbons),
                int(session.roster_requested), presence]

    def _publish_ops(self, ops: list[list[Any]]) -> None:
        if not ops:
            return
        self.seq += 1
        payload = {"node": self.node.name, "inc": self.node.incarnation, "seq": self.seq, "ops": ops}
        self.node.publish(SESSIONS_SUBJECT, json.dumps(payload).encode())

    async def _sync_requested(self, msg: Any) -> None:
        self._collect()
        if self._ops:
            ops, self._ops = self._ops, []
            self._publish_ops(ops)
        entries = []
        for full in self._snapshots:
            bare, _, resource = full.partition("/")
            session = self.router.session(bare, resource)
            if session is not None and not isinstance(session, RemoteSession):
                entries.append(self._entry(session))
        reply = {"node": self.node.name, "inc": self.node.incarnation, "seq": self.seq, "sessions": entries}
        if msg.reply:
            await self.node.nc.publish(msg.reply, json.dumps(reply).encode())

    # =================================================================================================
    # The others' sessions -> this node's router
    # =================================================================================================
    async def _sessions_changed(self, msg: Any) -> None:
        try:
            data = json.loads(msg.data)
            origin, inc, seq, ops = str(data["node"]), str(data["inc"]), int(data["seq"]), list(data["ops"])
        except (ValueError, KeyError, TypeError):
            return
        verdict = self._feed.batch(origin, inc, seq)
        if verdict == NumberedFeed.FETCH:
            await self._sync(origin)
        if verdict != NumberedFeed.APPLY:
            return  # from an unknown node: its heartbeat brings a sync
        for op in ops:
            self._apply(origin, op)

    def _apply(self, origin: str, op: list[Any]) -> None:
        table = self.remote.setdefault(origin, {})
        if op[0] == "-":
            session = table.pop(op[1], None)
            if session is not None:
                # What is held for it stays held: its node re-routes what the client never
                # acknowledged and releases it here, unless it dies first.
                self.router.unbind(session)
            return
        full, available, priority, carbons, roster_requested, presence = op[1:7]
        session = table.get(full)
        if session is None:
            session = RemoteSession(self, origin, full)
            table[full] = session
        stored = self._recent_offline.get(session.bare_jid)
        if available and not session.available and stored is not None and time.monotonic() - stored < RECENT_OFFLINE:
            # Stored here while that login was emptying the queue there: it looks again.
            self.node.publish(node_subject(origin, "offline"), json.dumps({"bare": session.bare_jid}).encode())
        session.available = bool(available)
        session.priority = int(priority)
        session.carbons = bool(carbons)
        session.roster_requested = bool(roster_requested)
        session._presence = str(presence or "")
        current = self.router.session(session.bare_jid, session.resource)
        if current is session:
            return
        if current is not None and not isinstance(current, RemoteSession):
            # The same full JID bound on another node: the older session here ends with <conflict/>.
            self.router.bind(session)
            self.service.spawn(self.sessions.replaced(current))
            return
        if current is not None:
            self.remote.get(current.node, {}).pop(full, None)
        self.router.bind(session)

    async def _sync(self, origin: str) -> None:
        data = await self.node.request(node_subject(origin, "sync"), b"{}", SYNC_TIMEOUT)
        if data is None:
            return
        try:
            reply = json.loads(data)
            inc, seq, entries = str(reply["inc"]), int(reply["seq"]), list(reply["sessions"])
        except (ValueError, KeyError, TypeError):
            return
        if not self._feed.table(origin, inc, seq):
            return
        listed = {entry[0] for entry in entries}
        for full in list(self.remote.get(origin, {})):
            if full not in listed:
                self._apply(origin, ["-", full])
        for entry in entries:
            self._apply(origin, ["+", *entry])

    async def _node_up(self, peer: Peer) -> None:
        self._feed.restart(peer.name)
        await self._sync(peer.name)

    async def _node_down(self, peer: Peer) -> None:
        """A node died: its sessions leave the registry, what was held for them is re-routed."""
        table = self.remote.pop(peer.name, {})
        self._feed.forget(peer.name)
        self._marks = {key: marks for key, marks in self._marks.items() if key[0] != peer.name}
        for session in table.values():
            self.router.unbind(session)
        self._reroute_held(lambda held: held.node == peer.name)
        await self.leases.release_node(peer.name)
        if self.room_counts is not None:
            self.room_counts.node_down(peer.name)  # before the occupants rejoin (status 332)
        self._rooms_lost(peer.name)
        for session in table.values():
            if session.available:
                await self._tell_contacts_unavailable(session)
        if table:
            log.info("cluster: %d sessions of %s left the registry", len(table), peer.name)

    async def _tell_contacts_unavailable(self, session: RemoteSession) -> None:
        """RFC 6121 section 4.5.2 on behalf of a dead node, to the contacts whose sessions are here."""
        state = self.ctx.users.cached(session.bare_jid)
        if state is None:
            return
        unavailable = Element("presence", "", {"from": session.full_jid, "type": "unavailable"})
        for contact, item in list(state.roster.items()):
            if item.subscription not in ("from", "both"):
                continue
            for other in list(self.router.resources(contact).values()):
                if not isinstance(other, RemoteSession) and other.available:
                    other.send(Element("presence", "", {**unavailable.attrs, "to": other.full_jid}))

    def _reconnected(self) -> None:
        for name in list(self.node.peers):
            self.service.spawn(self._sync(name))
        self._resend(force=True)

    # =================================================================================================
    # Sending to a session on another node
    # =================================================================================================
    def send_remote(self, session: RemoteSession, stanza: Element) -> None:
        sid = 0
        # Held only for a sender this node acknowledges (XEP-0198): nobody else was promised anything,
        # and a stanza held costs a confirmation message back from the other node.
        sender = self._local_sender(stanza.attrs.get("from", "")) if stanza.name == "message" else None
        if sender is not None and sender.sm is not None and _holdable(stanza):
            self._next_id += 1
            sid = self._next_id
            held = _Held(session.node, session.full_jid, stanza, sender.full_jid)
            self.held[sid] = held
            # Cut off from NATS, no confirmation can come: the sender is acknowledged with the stanza
            # held here, and it is sent again when NATS is back.
            if self.node.connected:
                held.got = asyncio.get_running_loop().create_future()
                waiting = self._got_waiters.setdefault(held.sender, [])
                if len(waiting) >= MAX_GOT_WAITERS:
                    waiting[:] = [w for w in waiting if not w.done()]
                waiting.append(held.got)
        self._outbox.setdefault(session.node, []).append((sid, session.jid_bytes, serialize(stanza).encode()))
        self._schedule_flush()

    def _local_sender(self, full: str) -> Any:
        bare, _, resource = full.partition("/")
        if not resource:
            return None
        session = self.router.session(bare, resource)
        return None if session is None or isinstance(session, RemoteSession) else session

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        self._collect()
        if self._ops:
            ops, self._ops = self._ops, []
            self._publish_ops(ops)
        outbox, self._outbox = self._outbox, {}
        name, incarnation = self.node.name, self.node.incarnation
        peers = self.node.peers
        for target, items in outbox.items():
            self.forwarded_out += len(items)
            self.forwarded_batches += 1
            peer = peers.get(target)
            reads_b2 = peer is not None and peer.info.get("batch", 1) >= 2
            pack = pack_batch if reads_b2 else pack_batch_1
            self.node.publish(node_subject(target, "deliver"), pack(name, incarnation, items))

    async def _complete(self, result: Any, session: Any) -> None:
        await result
        self._dirty[session.full_jid] = session
        self._schedule_flush()

    def _ack_gate(self, session: Any) -> Any:
        """What the XEP-0198 acknowledgement of ``session`` waits for (``XmppService.ack_gate``):
        other nodes confirming they hold the messages it sent to their sessions (``got``), and the
        archive rows of everything handled so far (the archive writes behind in batches, and a node
        killed after acknowledging would lose its last batch; the writer starts at once instead of
        after its batching delay, one write for every client waiting). None when nothing is pending.
        The stanzas after the request are handled meanwhile: only the answer waits."""
        waiters = [w for w in self._got_waiters.pop(session.full_jid, ()) if not w.done()]
        archived = self._mam.durable() if self._mam is not None else None
        if not waiters and archived is None:
            return None
        return self._until_stored(waiters, archived)

    @staticmethod
    async def _until_stored(waiters: list[asyncio.Future[None]], archived: asyncio.Future[None] | None) -> None:
        if waiters:
            await asyncio.wait(waiters, timeout=GOT_TIMEOUT)
        if archived is not None:
            await asyncio.wait([archived], timeout=ARCHIVE_TIMEOUT)

    # =================================================================================================
    # Receiving stanzas for this node's sessions
    # =================================================================================================
    async def _deliver_received(self, msg: Any) -> None:
        batch = unpack_batch(msg.data)
        if batch is None:
            log.warning("cluster: a malformed batch was dropped")
            return
        origin, inc, items = batch
        key = (origin, inc)
        seen = self._seen.setdefault(key, OrderedDict())
        marks = self._marks.setdefault(key, {})
        got: list[int] = []
        released: list[int] = []
        sessions = self.router.sessions  # the router's table, read inline: this loop runs per stanza

        def parse(data: bytes) -> Element | None:
            return self._parse(data, origin)

        delivered = 0
        for sid, to, data in items:
            if sid:
                got.append(sid)
                if sid in seen:
                    if sid not in marks:
                        released.append(sid)  # a copy sent again: this one was delivered already
                    continue
                seen[sid] = None
                if len(seen) > SEEN_IDS:
                    seen.popitem(last=False)
            delivered += 1
            bare, _, resource = to.partition("/")
            resources = sessions.get(bare)
            session = resources.get(resource) if resources else None
            if session is None or isinstance(session, RemoteSession) or session.ended:
                # Gone since the sender looked: by the bare JID's rules from here (XEP-0198 section 4).
                if sid:
                    released.append(sid)
                    stanza = self._parse(data, origin)
                    if stanza is not None:
                        await self._reroute(stanza, bare)
                continue
            # The bytes are what ``serialize`` made of the stanza on the sending node, which is what
            # this node would write: they go to the client as they are, parsed only where the element
            # is needed (presence for room tracking, XEP-0198's queue of messages, XEP-0352).
            if data.startswith(b"<presence") or not hasattr(session, "send_serialized"):
                stanza = self._parse(data, origin)
                if stanza is None:
                    continue
                session.send(stanza)
                if stanza.name == "presence":
                    self._track_occupant(session.full_jid, stanza, origin)
            elif session.send_serialized(data, parse) is None:
                continue
            if sid:
                if session.sm is None:
                    released.append(sid)
                else:
                    marks[sid] = (session, session.sm.sent_count)
        self.forwarded_in += delivered
        if got or released:
            self._send_acks(origin, got, released)

    def _parse(self, data: bytes, origin: str) -> Element | None:
        """One forwarded stanza, parsed with the kept parser (a new one after a failure)."""
        stanza = parse_stanza(data)
        if stanza is None:
            log.warning("cluster: a malformed stanza from %s was dropped", origin)
        return stanza

    def _send_acks(self, origin: str, got: list[int], released: list[int]) -> None:
        payload = {"node": self.node.name, "inc": self.node.incarnation, "got": got, "rel": released}
        self.node.publish(node_subject(origin, "acks"), json.dumps(payload).encode())

    def _client_acked(self, session: Any) -> None:
        """A client here sent <a/> (XEP-0198): release at once what it acknowledged."""
        if self._marks:
            self._release(session)

    def _release(self, only: Any = None) -> None:
        for (origin, inc), marks in list(self._marks.items()):
            if not marks:
                continue
            peer = self.node.peers.get(origin)
            if peer is None or peer.incarnation != inc:
                del self._marks[(origin, inc)]
                continue
            released = []
            for sid, (session, needed) in list(marks.items()):
                if only is not None and session is not only:
                    continue
                sm = session.sm
                # A session that ended re-routed its unacknowledged stanzas itself.
                if session.ended or sm is None or sm.sent_count - len(sm.unacked) >= needed:
                    released.append(sid)
                    del marks[sid]
            if released:
                self._send_acks(origin, [], released)

    async def _release_loop(self) -> None:
        """Release what ended sessions re-routed, and send again what was never confirmed."""
        while True:
            await asyncio.sleep(RELEASE_CHECK)
            try:
                self._release()
                self._resend()
            except Exception:
                log.exception("cluster: release round failed")

    async def _acks_received(self, msg: Any) -> None:
        try:
            data = json.loads(msg.data)
            _origin, got, released = str(data["node"]), list(data["got"]), list(data["rel"])
        except (ValueError, KeyError, TypeError):
            return
        for sid in got:
            held = self.held.get(sid)
            if held is not None and held.got is not None and not held.got.done():
                held.got.set_result(None)
        for sid in released:
            held = self.held.pop(sid, None)
            if held is not None and held.got is not None and not held.got.done():
                held.got.set_result(None)

    def _resend(self, force: bool = False) -> None:
        """Held stanzas unconfirmed for too long are sent again (NATS lost them while it was down)."""
        if not self.held or not self.node.connected:
            return
        now = time.monotonic()
        for sid, held in self.held.items():
            confirmed = held.got is not None and held.got.done()
            if (force or now - held.sent_at > RESEND_AFTER) and not confirmed and self.node.alive(held.node):
                held.sent_at = now
                self._outbox.setdefault(held.node, []).append((sid, held.to.encode(), serialize(held.stanza).encode()))
        if self._outbox:
            self._schedule_flush()

    def _reroute_held(self, which: Any) -> None:
        chosen = [sid for sid, held in self.held.items() if which(held)]
        for sid in chosen:
            held = self.held.pop(sid)
            if held.got is not None and not held.got.done():
                held.got.set_result(None)
            self.rerouted_after_death += 1
            self.service.spawn(self._reroute(held.stanza, held.to.partition("/")[0]))

    async def _reroute(self, stanza: Element, bare: str) -> None:
        rerouted = Element(stanza.name, stanza.xmlns, {**stanza.attrs, "to": bare}, stanza.children)
        self.ctx.redelivering.add(id(rerouted))  # archived once already, on its first delivery
        try:
            result = self.router.route(rerouted)
            if result is not None:
                await result
        except Exception:
            log.exception("cluster: could not re-route a stanza of a lost session")
        finally:
            self.ctx.redelivering.discard(id(rerouted))

    # =================================================================================================
    # Group chat rooms with an owner node
    # =================================================================================================
    async def deliver_to_owner(self, service: OwnedService, room: str, stanza: Element, origin: Any,
                               hops: int = 0) -> None:
        """Deliver a stanza for ``room`` here if this node owns it (taking the lease when it is free:
        the stanza creating a room makes its node the owner), else forward it to the owner."""
        owner = await self.leases.owner("room", room)
        if owner != self.node.name and self.node.alive(owner) and self.node.connected:
            if hops:
                # Forwarded here on a stale cached owner: one hop more, to the owner the lease names.
                log.debug("cluster: %s moved to %s; forwarded on", room, owner)
            self.rooms_served.discard(room)  # served elsewhere: if it comes back, the database has it
            payload = {"service": service.jid, "room": room, "hops": hops, "stanza": serialize(stanza)}
            self.node.publish(node_subject(owner, "service"), json.dumps(payload).encode())
            return
        if owner == self.node.name:
            await self._room_ready(room)
        else:
            log.warning("cluster: the owner of %s (%s) is unreachable; serving it here", room, owner)
        result = service.inner.deliver(stanza, origin)
        if result is not None:
            await result
        if owner == self.node.name:
            self.check_room(room)

    async def _service_received(self, msg: Any) -> None:
        try:
            data = json.loads(msg.data)
            jid, room, hops = str(data["service"]), str(data["room"]), int(data.get("hops", 0))
            stanza = parse_stanza(str(data["stanza"]))
        except (ValueError, KeyError, TypeError):
            return
        service = self.router.services.get(jid)
        if stanza is None or not isinstance(service, OwnedService) or room != room_of(stanza.attrs.get("to", "")):
            return
        if hops >= 1 and await self.leases.owner("room", room) != self.node.name:
            # Two hops already: served here rather than sent round (the owner may be moving).
            result = service.inner.deliver(stanza)
            if result is not None:
                await result
            return
        await self.deliver_to_owner(service, room, stanza, None, hops + 1)

    async def _room_ready(self, room: str) -> None:
        """This node serves ``room`` now: when it has just become its owner, read what the previous
        owner left in the database first (a persistent room's configuration, affiliations, subject
        and history), once, while stanzas for it wait."""
        if room in self.rooms_served:
            return
        loading = self._room_loading.get(room)
        if loading is not None:
            await loading
            return
        loading = asyncio.get_running_loop().create_future()
        self._room_loading[room] = loading
        try:
            if self._muc is not None and await self._muc.reload_room(room):
                log.debug("cluster: this node owns %s now; read from the database", room)
        except Exception:
            log.exception("cluster: could not read the state of %s", room)
        finally:
            self.rooms_served.add(room)
            del self._room_loading[room]
            loading.set_result(None)

    def check_room(self, room: str) -> None:
        """After a stanza for a room served here, and when a room leaves memory without one
        (``MucService.on_gone``): if the room is gone (destroyed, or emptied and not persistent, or
        never created), its lease goes once its last changes are written."""
        if self._muc is not None and room not in self._muc.rooms and room in self.rooms_served:
            self.rooms_served.discard(room)
            self.service.spawn(self._release_room(room))

    async def _release_room(self, room: str) -> None:
        writer = self._muc.written()
        if writer is not None:
            await asyncio.wait([writer], timeout=RELEASE_AFTER_WRITE)
        if room in self.rooms_served or room in self._room_loading or room in self._muc.rooms:
            return  # created again here meanwhile: kept
        try:
            await self.leases.release("room", room)
        except Exception:
            log.exception("cluster: could not release the lease of %s", room)

    async def _room_listing(self, service_jid: str) -> list[tuple[str, str]]:
        """disco#items on a group chat service (XEP-0045 section 6.3): the persistent rooms as
        stored, corrected by what each node says of the rooms it serves (their live state, and the
        rooms that are not persistent)."""
        muc = self._muc
        stored: dict[str, str] = {}
        try:
            from peerage.xmpp.muc.forms import RoomConfig

            for jid, text in await muc.store.configs(service_jid):
                with contextlib.suppress(ValueError, TypeError):
                    config = RoomConfig.from_json(text)
                    if config.public:
                        stored[jid] = config.name or jid.partition("@")[0]
        except Exception:
            log.exception("cluster: could not read the stored rooms of %s", service_jid)
        live = [tuple(entry) for entry in muc.listable(service_jid, self.rooms_served)]
        request = json.dumps({"service": service_jid}).encode()
        answers = await asyncio.gather(*(self.node.request(node_subject(name, "rooms"), request, LISTING_TIMEOUT)
                                         for name in list(self.node.peers)))
        for answer in answers:
            if answer is None:
                continue
            with contextlib.suppress(ValueError, KeyError, TypeError):
                live.extend(tuple(entry) for entry in json.loads(answer)["rooms"])
        for jid, name, listed in live:
            if listed:
                stored[str(jid)] = str(name)
            else:
                stored.pop(str(jid), None)
        return list(stored.items())

    async def _rooms_requested(self, msg: Any) -> None:
        try:
            service_jid = str(json.loads(msg.data)["service"])
        except (ValueError, KeyError, TypeError):
            return
        rooms = self._muc.listable(service_jid, self.rooms_served) if self._muc is not None else []
        if msg.reply:
            await self.node.nc.publish(msg.reply, json.dumps({"rooms": rooms}).encode())

    # =================================================================================================
    # PEP: notifications to the resources other nodes track
    # =================================================================================================
    def _attach_pep(self) -> None:
        from peerage.xmpp.features.pep import Pep

        pep = self.ctx.feature(Pep)
        if pep is None:
            return
        self._pep = pep
        pep.on_notify = self._pep_notified
        self.node.subscribe(PEP_SUBJECT, self._pep_received)

    def _pep_notified(self, owner: str, pnode: str, config: Any, event: Element) -> None:
        """A PEP notification went out here to the resources this node tracks (those whose presence
        was routed here, which are this node's sessions and the federated contacts whose streams
        it took): the other nodes notify theirs, as if the item had been published on each."""
        if not self.node.peers:
            return
        payload = {"node": self.node.name, "owner": owner, "pnode": pnode, "config": config.row(),
                   "event": serialize(event)}
        self.node.publish(PEP_SUBJECT, json.dumps(payload).encode())

    async def _pep_received(self, msg: Any) -> None:
        from types import SimpleNamespace

        from peerage.xmpp.features.pep import NodeConfig

        try:
            data = json.loads(msg.data)
            if data["node"] == self.node.name:
                return
            owner, pnode = str(data["owner"]), str(data["pnode"])
            config = NodeConfig.from_row(SimpleNamespace(**data["config"]))
            event = parse_stanza(str(data["event"]))
        except (ValueError, KeyError, TypeError):
            return
        if event is None:
            return
        self._pep.notify_here(owner, pnode, config, event)

    def _track_occupant(self, full: str, stanza: Element, origin: str) -> None:
        """A room on ``origin`` told a local session about itself (status 110):
        remember that it is in (or left) the room, so it can be told if ``origin`` dies."""
        sender = stanza.attrs.get("from", "")
        room, _, nick = sender.partition("/")
        if not nick or not room.partition("@")[2].startswith(OWNED_SERVICES):
            return
        x = stanza.find("x", MUC_USER)
        if x is None or not any(status.attrs.get("code") == "110" for status in x.find_all("status")):
            return
        rooms = self.occupying.setdefault(full, {})
        if stanza.attrs.get("type") == "unavailable":
            rooms.pop(room, None)
            if not rooms:
                del self.occupying[full]
            return
        item = x.find("item")
        rooms[room] = (nick, origin, item.attrs.get("affiliation", "none") if item is not None else "none")

    def _rooms_lost(self, dead: str) -> None:
        """XEP-0045 status 332 to each local occupant of a room whose node died: the room's
        service went away, so clients rejoin (the next owner reads the room from the database)."""
        told = 0
        for full, rooms in list(self.occupying.items()):
            bare, _, resource = full.partition("/")
            session = self.router.session(bare, resource)
            if session is None or isinstance(session, RemoteSession) or session.ended:
                del self.occupying[full]
                continue
            for room, (nick, owner, affiliation) in list(rooms.items()):
                if owner != dead:
                    continue
                del rooms[room]
                presence = Element("presence", "", {"from": f"{room}/{nick}", "to": full, "type": "unavailable"})
                x = presence.add("x", MUC_USER)
                x.add("item", None, {"affiliation": affiliation, "role": "none"})
                x.add("status", None, {"code": "110"})
                x.add("status", None, {"code": "332"})
                session.send(presence)
                told += 1
            if not rooms:
                self.occupying.pop(full, None)
        if told:
            log.info("cluster: %d occupants told that rooms on %s went away (status 332)", told, dead)

    # =================================================================================================
    # Offline storage written on one node while the account logs in on another
    # =================================================================================================
    def _offline_stored(self, bare: str) -> None:
        """The offline queue is emptied under a per-node lock (features/offline.py); a login on
        another node may have read it just before this row was committed, so it is asked to look
        again, now or when its session's availability reaches this node."""
        now = time.monotonic()
        self._recent_offline[bare] = now
        if len(self._recent_offline) > 10_000:
            self._recent_offline = {b: t for b, t in self._recent_offline.items() if now - t < RECENT_OFFLINE}
        nodes = {s.node for s in self.router.resources(bare).values()
                 if isinstance(s, RemoteSession) and s.available and s.priority >= 0}
        for target in nodes:
            self.node.publish(node_subject(target, "offline"), json.dumps({"bare": bare}).encode())

    async def _offline_check_received(self, msg: Any) -> None:
        try:
            bare = str(json.loads(msg.data)["bare"])
        except (ValueError, KeyError, TypeError):
            return
        for session in list(self.router.resources(bare).values()):
            if not isinstance(session, RemoteSession) and session.available and session.priority >= 0:
                result = self.ctx.events.fire("message/offline/broadcast", session)
                if result is not None:
                    await result

    # =================================================================================================
    # Roster and blocklist caches
    # =================================================================================================
    def _announcing(self, write: Any) -> Any:
        async def wrapped(owner: str, *args: Any, **kwargs: Any) -> Any:
            result = await write(owner, *args, **kwargs)
            self.node.publish(USER_SUBJECT, json.dumps({"node": self.node.name, "bare": owner}).encode())
            return result

        return wrapped

    async def _user_changed(self, msg: Any) -> None:
        try:
            data = json.loads(msg.data)
            origin, bare = str(data["node"]), str(data["bare"])
        except (ValueError, KeyError, TypeError):
            return
        if origin == self.node.name:
            return
        users = self.ctx.users
        loading = users._loading.get(bare)
        if loading is not None:
            # A load in flight may have read the rows before that change: drop what it brings.
            self.service.spawn(self._reload_after(bare, loading))
        if users.cached(bare) is None:
            return
        # Dropped at once, before any later stanza is handled, and read again from PostgreSQL: the
        # next stanza for this account loads the state the other node wrote.
        users._users.pop(bare, None)
        if self.router.sessions.get(bare):
            self.service.spawn(users.load(bare))

    async def _reload_after(self, bare: str, loading: Any) -> None:
        with contextlib.suppress(Exception):
            await asyncio.shield(loading)
        users = self.ctx.users
        users._users.pop(bare, None)
        if self.router.sessions.get(bare):
            await users.load(bare)

    # =================================================================================================
    # Federation: one node per remote domain
    # =================================================================================================
    async def _send_federated(self, stanza: Element, domain: str) -> None:
        owner = await self.leases.owner("s2s", domain)
        if owner == self.node.name or not self.node.alive(owner) or not self.node.connected:
            await self._original_remote_sender(stanza, domain)
            return
        payload = json.dumps({"domain": domain, "stanza": serialize(stanza)}).encode()
        self.node.publish(node_subject(owner, "s2s"), payload)

    async def _s2s_received(self, msg: Any) -> None:
        try:
            data = json.loads(msg.data)
            domain, stanza = str(data["domain"]), parse_stanza(str(data["stanza"]))
        except (ValueError, KeyError, TypeError):
            return
        if stanza is None or self._original_remote_sender is None:
            return
        try:
            await self._original_remote_sender(stanza, domain)
        except Exception:
            log.exception("cluster: forwarded stanza to %s failed", domain)
            await self.router.bounce(stanza, "remote-server-not-found")
