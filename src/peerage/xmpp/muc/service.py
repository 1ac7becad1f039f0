"""The group-chat service: ``conference.DOMAIN`` for each hosted domain, its rooms and their storage.

This module is in charge of registering the service JIDs (``peerage.xmpp.hosted``), hooking their
events and finding (or creating) the room each stanza is for; of the service's own disco (XEP-0030:
identity ``conference/text``, the list of public rooms), unique room names (XEP-0045 section 10.1.4);
of the per-user limits (rooms joined, owned, created per hour: ``[muc] max_rooms_joined``,
``max_rooms_owned``, ``max_room_creations_per_hour``) and who may create rooms
(``[muc] room_creation``); of MAM queries to rooms (``archive``); and of persistent rooms: loaded at
start, written behind on every change (``store``), so they survive a restart with their
configuration, affiliations, subject and history. On a cluster (peerage.cluster.xmpp) each room has
an owner node: it reads the room again when it becomes the owner (``reload_room``), and the
service's disco#items lists the rooms of every node (``listing``), and the per-user limits count
the rooms of every node (``elsewhere``, peerage.cluster.muc).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from peerage.xmpp.events import HANDLED
from peerage.xmpp.features import Feature
from peerage.xmpp.features.disco import Disco, DiscoItem
from peerage.xmpp.hosted import HostedService, add_service, hook_service_iq
from peerage.xmpp.jid import JidError, bare_of
from peerage.xmpp.muc import limits
from peerage.xmpp.muc.archive import MAM_NS, RoomArchive
from peerage.xmpp.muc.forms import RoomConfig
from peerage.xmpp.muc.room import (
    FASTEN_NS,
    MODERATE_NS,
    MODERATE_NS_0,
    MUC_ADMIN,
    MUC_NS,
    MUC_OWNER,
    PING_NS,
    REGISTER_NS,
    RETRACT_NS,
    RETRACT_NS_0,
    HistoryEntry,
    Room,
    error,
)
from peerage.xmpp.muc.store import RoomStore
from peerage.xmpp.router import schedule
from peerage.xmpp.stanzas import IqContext, StanzaEvent
from peerage.xmpp.stream import Element, iq_result, parse_stored

log = logging.getLogger(__name__)

DISCO_INFO_NS = "http://jabber.org/protocol/disco#info"
DISCO_ITEMS_NS = "http://jabber.org/protocol/disco#items"
MUC_UNIQUE = MUC_NS + "#unique"
PREFIX = "conference"
#: Seconds between room archive expiry runs (as the one-to-one archive's, peerage.xmpp.service).
ARCHIVE_EXPIRY_INTERVAL = 3600.0
#: Seconds the answer to a change of a persistent room waits for the change to be written (then it
#: goes anyway; the writer keeps retrying).
ANSWER_AFTER_WRITE = 5.0


class MucService(Feature):
    """XEP-0045 on ``conference.DOMAIN``; started by the XMPP service with the ``[muc]`` section."""

    def setup(self) -> None:
        self.services: dict[str, HostedService] = {}
        self.rooms: dict[str, Room] = {}
        #: real bare JID -> rooms it occupies (``limits.MAX_ROOMS_JOINED_PER_USER``)
        self.joined: dict[str, set[str]] = {}
        self._creations: dict[str, collections.deque[float]] = {}
        self.enabled = False
        self.room_creation = "local"
        self.max_occupants = limits.DEFAULT_MAX_OCCUPANTS
        self.message_rate = limits.DEFAULT_MESSAGE_RATE
        self.message_burst = limits.DEFAULT_MESSAGE_BURST
        self.max_rooms_joined = limits.MAX_ROOMS_JOINED_PER_USER
        self.max_rooms_owned = limits.MAX_ROOMS_OWNED_PER_USER
        self.max_room_creations = limits.MAX_ROOM_CREATIONS_PER_HOUR
        self.archive_by_default = True
        self.offline_delivery_default = False
        self.archive_expires_days = 7
        self.archive = RoomArchive(self.ctx.storage, self.ctx.spawn)
        self.store = RoomStore(self.ctx.storage.engine)
        self._dirty: set[Room] = set()
        self._deleted: set[str] = set()
        self._writer: asyncio.Future[None] | None = None
        self._write_lock = asyncio.Lock()
        self._expiry: asyncio.Future[None] | None = None
        #: peerage.cluster: the rooms of a service on every node, (JID, name) of those listed, for
        #: disco#items on the service (the rooms of one service may have different owner nodes)
        self.listing: Callable[[str], Awaitable[list[tuple[str, str]]]] | None = None
        #: peerage.cluster: told the JID of a room that left memory for good (destroyed, or emptied
        #: and not persistent), also when no stanza did it (the lock timeout, XEP-0045 section 10.1.1)
        self.on_gone: Callable[[str], None] | None = None
        #: peerage.cluster: what the other nodes hold of a user's rooms (``RoomCounts``), so the
        #: per-user limits count the whole cluster; None on a single server (nothing more is done)
        self.elsewhere: Any = None
        self.ctx.events.hook("xmpp-hosted-domains", self._domains_changed)
        host = self.ctx.host
        self._configure(getattr(host.config, "muc", None) if host is not None else None)
        self._domains_changed(set(self.ctx.router.hosted_domains))
        disco = self.ctx.feature(Disco)
        if disco is not None:
            # XEP-0030 section 4 / XEP-0045 section 6.1: the domain's items name its group-chat service.
            disco.add_items_provider("muc", self._domain_items)

    def _domain_items(self, domain: str) -> list[DiscoItem]:
        jid = f"{PREFIX}.{domain}"
        return [DiscoItem(jid, "Group chats")] if jid in self.services else []

    # ============================================================================================
    # Lifecycle
    # ============================================================================================
    def _configure(self, config: Any) -> None:
        """Apply ``[muc]`` (the defaults when there is no Host, in unit tests)."""
        if config is None:
            self.enabled = True
            return
        if config.room_creation not in ("local", "anyone"):
            from peerage.config import ConfigError

            raise ConfigError('[muc] room_creation is "local" or "anyone"')
        self.enabled = bool(config.enabled)
        self.room_creation = config.room_creation
        self.max_occupants = max(1, int(config.max_occupants))
        self.message_rate = float(config.message_rate)
        self.message_burst = max(1.0, float(config.message_burst))
        self.max_rooms_joined = max(1, int(config.max_rooms_joined))
        self.max_rooms_owned = max(1, int(config.max_rooms_owned))
        self.max_room_creations = max(1, int(config.max_room_creations_per_hour))
        self.archive_by_default = bool(config.archive_by_default)
        self.offline_delivery_default = bool(config.offline_delivery_default)
        self.archive_expires_days = max(0, int(config.archive_expires_days))

    async def load(self) -> None:
        """Load the persistent rooms (before the listeners open) and their recent history, and start
        the rooms' archive expiry."""
        if not self.enabled:
            return
        if self._expiry is None:
            self._expiry = asyncio.ensure_future(self._expire_periodically())
        for row in await self.store.load():
            self._restore(row)
        for room in list(self.rooms.values()):
            await self._load_history(room)
        if self.rooms:
            log.info("muc: %d persistent rooms loaded", len(self.rooms))

    async def _load_history(self, room: Room) -> None:
        if room.config.archiving and room.config.history_length:
            try:
                for stamp, xml in await self.archive.recent(room.jid, room.config.history_length):
                    message = parse_stored(xml)
                    if message.find("retracted", RETRACT_NS) is not None:
                        continue  # a moderator removed it (XEP-0425): not history for newcomers
                    body = message.find("body")
                    room.history.append(HistoryEntry(message, stamp, len(body.text) if body is not None else 0))
            except Exception:
                log.exception("could not load the history of %s", room.jid)

    async def reload_room(self, jid: str) -> bool:
        """peerage.cluster: this node has just become the owner of room ``jid``; it is read again as
        the previous owner left it in the database (configuration, affiliations, subject, history),
        replacing a copy here that may be stale. A room with occupants here is live and kept (this
        node served it while cut off from the others). Returns whether the room exists now."""
        if not self.enabled:
            return False
        current = self.rooms.get(jid)
        if current is not None and current.occupants:
            return True
        row = await self.store.load_one(jid)
        current = self.rooms.get(jid)  # the read let other stanzas run
        if current is not None:
            if current.occupants:
                return True
            self._forget(current)
        if row is None:
            return False
        self._restore(row)
        restored = self.rooms.get(jid)
        if restored is not None:
            await self._load_history(restored)
        return restored is not None

    def _forget(self, room: Room) -> None:
        """Drop a room copy from memory (not from the database)."""
        if room.lock_timer is not None:
            room.lock_timer.cancel()
            room.lock_timer = None
        self._dirty.discard(room)
        self.rooms.pop(room.jid, None)

    def written(self) -> asyncio.Future[None] | None:
        """The room writer in progress (None when every change is in the database)."""
        writer = self._writer
        return writer if writer is not None and not writer.done() else None

    def listable(self, service_jid: str, only: set[str] | None = None) -> list[tuple[str, str, bool]]:
        """(room JID, name, listed) of the rooms of ``service_jid`` in memory (those in ``only`` if
        given): listed in disco#items when public and unlocked (XEP-0045 section 6.3)."""
        suffix = "@" + service_jid
        return [(room.jid, room.config.name or room.local, room.config.public and not room.locked)
                for jid, room in self.rooms.items() if jid.endswith(suffix) and (only is None or jid in only)]

    async def shutdown_notice(self) -> None:
        """XEP-0045 status 332: every occupant is told it leaves because the service shuts down, so
        clients rejoin when it is back (persistent rooms come back; their occupants do not)."""
        remote = False
        for room in list(self.rooms.values()):
            for occupant in list(room.occupants.values()):
                for full in occupant.sessions:
                    remote = remote or full.partition("/")[0].rpartition("@")[2] not in self.ctx.router.hosted_domains
                    self.send(room._presence(occupant, full, with_jid=True, unavailable=True, role="none",
                                             codes=("110", "332")))
        if remote:
            await asyncio.sleep(0.2)  # bounded: queued s2s writes go out before the streams close

    async def stop(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        await self.archive.flush()
        await self._write()

    # --- the rooms' own archive expiry ([muc] archive_expires_days) ------------------------------
    async def _expire_periodically(self) -> None:
        while True:
            await asyncio.sleep(ARCHIVE_EXPIRY_INTERVAL)
            try:
                await self.expire_archive()
            except Exception:
                log.exception("room archive expiry failed")

    async def expire_archive(self, now: float | None = None) -> None:
        """Delete the room messages older than ``[muc] archive_expires_days`` (0: kept while the room
        lives). The one-to-one sweep (``[xmpp] archive_expires_days``) leaves these domains to this."""
        if not self.archive_expires_days or not self.services:
            return
        from sqlalchemy import and_, delete, or_

        from peerage.xmpp.tables import xmpp_archive

        cutoff = (now if now is not None else time.time()) - self.archive_expires_days * 86400
        rooms = or_(*(xmpp_archive.c.owner.endswith("@" + jid, autoescape=True) for jid in self.services))
        await self.archive.flush()
        async with self.ctx.storage.engine.begin() as conn:
            await conn.execute(delete(xmpp_archive).where(and_(xmpp_archive.c.stamp < cutoff, rooms)))

    def _domains_changed(self, domains: set[str]) -> None:
        if not self.enabled:
            return None
        wanted = {f"{PREFIX}.{d}": d for d in domains}
        for jid in list(self.services):
            if jid not in wanted:
                self.ctx.router.remove_service(jid)
                del self.services[jid]
        for jid, domain in wanted.items():
            if jid not in self.services:
                self.services[jid] = self._register(domain)
        # The rooms' archives follow [muc] archive_expires_days, not the one-to-one setting.
        self.ctx.storage.expired_elsewhere = frozenset(self.services)
        return None

    def _register(self, domain: str) -> HostedService:
        service = add_service(self.ctx, PREFIX, domain)
        events = service.events
        events.hook("presence/full", self._presence_full)
        events.hook("presence/bare", self._presence_bare)
        events.hook("presence/host", lambda event: HANDLED)
        events.hook("message/bare", self._message_bare)
        events.hook("message/full", self._message_full)
        events.hook("iq/full", self._iq_full)
        hook_service_iq(service, "query", DISCO_INFO_NS, self._service_info, types=("get",))
        hook_service_iq(service, "query", DISCO_ITEMS_NS, self._service_items, types=("get",))
        hook_service_iq(service, "unique", MUC_UNIQUE, self._unique, types=("get",))
        hook_service_iq(service, "ping", PING_NS, lambda ctx: iq_result(ctx.iq), types=("get",), to=("host", "bare"))
        hook_service_iq(service, "query", DISCO_INFO_NS, self._room_info, types=("get",), to=("bare",))
        hook_service_iq(service, "query", DISCO_ITEMS_NS, self._room_items, types=("get",), to=("bare",))
        hook_service_iq(service, "query", MUC_OWNER, self._owner, to=("bare",))
        hook_service_iq(service, "query", MUC_ADMIN, self._admin, to=("bare",))
        hook_service_iq(service, "query", MAM_NS, self._mam, to=("bare",))
        hook_service_iq(service, "moderate", MODERATE_NS, self._moderate, types=("set",), to=("bare",))
        hook_service_iq(service, "apply-to", FASTEN_NS, self._moderate, types=("set",), to=("bare",))
        hook_service_iq(service, "query", REGISTER_NS, self._room_register, to=("bare",))
        return service

    # ============================================================================================
    # Sending and ids
    # ============================================================================================
    def send(self, stanza: Element) -> None:
        schedule(self.ctx.router.route(stanza))

    @staticmethod
    def new_id() -> str:
        return secrets.token_hex(8)

    # ============================================================================================
    # Rooms: finding, creating, dropping
    # ============================================================================================
    def _creation_refused(self, bare: str, room_jid: str) -> str | None:
        """Why ``bare`` may never create ``room_jid``, whatever it holds (its domain, the name)."""
        domain = bare.rpartition("@")[2]
        if self.room_creation == "local" and domain not in self.ctx.router.hosted_domains:
            return "rooms here are created by this server's users only"
        if len(room_jid.partition("@")[0].encode()) > limits.MAX_ROOM_NAME_BYTES:
            return f"room names are limited to {limits.MAX_ROOM_NAME_BYTES} bytes"
        return None

    def _may_create(self, bare: str, room_jid: str, owned: int | None = None,
                    created_elsewhere: int = 0) -> str | None:
        """Why ``bare`` may not create ``room_jid`` now (XEP-0045 section 10.1.1: not-allowed), or None.
        On a cluster ``owned`` is what it owns on every node and ``created_elsewhere`` what it
        created on the others within the hour (``RoomCounts.counts``)."""
        why = self._creation_refused(bare, room_jid)
        if why is not None:
            return why
        if not self.may_own(bare, None, owned):
            return f"you own {self.max_rooms_owned} rooms already"
        if self.created_within_hour(bare) + created_elsewhere >= self.max_room_creations:
            return f"you may create {self.max_room_creations} rooms an hour; try again later"
        self._creations.setdefault(bare, collections.deque()).append(time.monotonic())
        return None

    def created_within_hour(self, bare: str) -> int:
        """Rooms ``bare`` created here in the last hour (older creations are forgotten)."""
        stamps = self._creations.get(bare)
        if stamps is None:
            return 0
        now = time.monotonic()
        while stamps and now - stamps[0] > 3600:
            stamps.popleft()
        if not stamps:
            del self._creations[bare]
            return 0
        return len(stamps)

    def may_own(self, bare: str, room: Room | None, owned: int | None = None) -> bool:
        """Whether ``bare`` may own one room more than those it owns apart from ``room``: counted
        here, or given (``owned``: counted over the cluster)."""
        if owned is None:
            owned = sum(1 for r in self.rooms.values() if r is not room and r.affiliations.get(bare) == "owner")
        return owned < self.max_rooms_owned

    def joined_changed(self, bare: str) -> None:
        """A room here gained or lost ``bare`` as an occupant (called only on a cluster)."""
        if self.elsewhere is not None:
            self.elsewhere.joined_changed(bare)

    def _create(self, room_jid: str, creator: str) -> Room:
        config = RoomConfig(archiving=self.archive_by_default, max_users=min(limits.DEFAULT_MAX_OCCUPANTS,
                                                                           self.max_occupants))
        room = Room(self, room_jid, config, secrets.token_hex(16), time.time())
        room.affiliations[creator] = "owner"
        # XEP-0045 section 10.1.1: locked until the owner configures it (or sends an instant form).
        room.locked = True
        try:
            loop = asyncio.get_running_loop()
            room.lock_timer = loop.call_later(limits.ROOM_LOCK_TIMEOUT, self._lock_expired, room)
        except RuntimeError:
            pass
        self.rooms[room_jid] = room
        return room

    def _lock_expired(self, room: Room) -> None:
        room.lock_timer = None
        if room.locked and not room.destroyed:
            room.destroy(None, "the room was not configured in time")

    def room_empty(self, room: Room) -> None:
        if not room.config.persistent and not room.occupants and not room.destroyed:
            room.destroyed = True
            if room.lock_timer is not None:
                room.lock_timer.cancel()
            self.rooms.pop(room.jid, None)
            if room in self._dirty:
                self._dirty.discard(room)
            if getattr(room, "stored", False):
                self._deleted.add(room.jid)
                self._kick_writer()
            if self.on_gone is not None:
                self.on_gone(room.jid)

    def destroyed(self, room: Room) -> None:
        room.destroyed = True
        if room.lock_timer is not None:
            room.lock_timer.cancel()
        self.rooms.pop(room.jid, None)
        room.by_full.clear()
        self._dirty.discard(room)
        self._deleted.add(room.jid)
        self._kick_writer()
        if self.ctx.spawn is not None:
            self.ctx.spawn(self.archive.delete_room(room.jid))
        if self.on_gone is not None:
            self.on_gone(room.jid)

    # ============================================================================================
    # Persistence (written behind, in order)
    # ============================================================================================
    def save(self, room: Room) -> None:
        if room.destroyed:
            return
        if room.config.persistent or getattr(room, "stored", False):
            self._dirty.add(room)
            self._kick_writer()

    def _kick_writer(self) -> None:
        if self._writer is None or self._writer.done():
            coroutine = self._write()
            self._writer = self.ctx.spawn(coroutine) if self.ctx.spawn is not None else asyncio.ensure_future(coroutine)

    async def _write(self) -> None:
        async with self._write_lock:  # one writer at a time, so a room's rows are written in order
            await self._write_locked()

    async def _write_locked(self) -> None:
        delay = 0.5
        while self._dirty or self._deleted:
            rooms, self._dirty = list(self._dirty), set()
            deleted, self._deleted = set(self._deleted), set()
            try:
                for jid in deleted:
                    await self.store.delete(jid)
                for room in rooms:
                    if room.config.persistent:
                        await self.store.save(room)
                        room.stored = True  # type: ignore[attr-defined]
                    elif getattr(room, "stored", False):
                        await self.store.delete(room.jid)
                        room.stored = False  # type: ignore[attr-defined]
            except Exception:
                log.exception("could not write %d rooms; retrying", len(rooms) + len(deleted))
                self._dirty.update(r for r in rooms if not r.destroyed)
                self._deleted.update(deleted)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    def _restore(self, row: dict[str, Any]) -> None:
        try:
            config = RoomConfig.from_json(row["config"])
        except (ValueError, TypeError):
            log.error("muc: room %s has an unreadable configuration; skipped", row["jid"])
            return
        room = Room(self, row["jid"], config, row["salt"], row["created"])
        room.subject, room.subject_by = row["subject"], row["subject_by"]
        for jid, affiliation, nick, reason, offline in row["affiliations"]:
            room.affiliations[jid] = affiliation
            if nick:
                room.reserved[jid] = nick
            if reason:
                room.reasons[jid] = reason
            if offline is not None:
                room.offline[jid] = bool(offline)
        room.stored = True  # type: ignore[attr-defined]
        domain = room.jid.partition("@")[2]
        if domain in self.services:
            self.rooms[room.jid] = room

    # ============================================================================================
    # Stanzas
    # ============================================================================================
    def _presence_full(self, event: StanzaEvent) -> Any:
        stanza = event.stanza
        full = stanza.attrs.get("from", "")
        room = self.rooms.get(event.bare)
        ptype = stanza.attrs.get("type")
        if room is None:
            if ptype is not None:
                return HANDLED
            if len(event.resource) > limits.MAX_NICK_LENGTH:
                self.send(_with_muc(error(stanza, "not-acceptable",
                                          f"nicknames are limited to {limits.MAX_NICK_LENGTH} characters")))
                return HANDLED
            try:
                creator = bare_of(full)
            except JidError:
                return HANDLED
            if self.elsewhere is not None:
                return self._create_counted(event, creator)
            self._create_and_join(event, creator, self._may_create(creator, event.bare))
            return HANDLED
        if ptype is None and full not in room.by_full and len(event.resource) > limits.MAX_NICK_LENGTH:
            self.send(_with_muc(error(stanza, "not-acceptable",
                                      f"nicknames are limited to {limits.MAX_NICK_LENGTH} characters")))
            return HANDLED
        if ptype is None and full in room.by_full and room.by_full[full].nick != event.resource \
                and len(event.resource) > limits.MAX_NICK_LENGTH:
            self.send(error(stanza, "not-acceptable", f"nicknames are limited to {limits.MAX_NICK_LENGTH} characters"))
            return HANDLED
        room.presence(stanza, full, event.resource)
        return HANDLED

    def _create_and_join(self, event: StanzaEvent, creator: str, why: str | None) -> None:
        stanza = event.stanza
        if why is not None:
            self.send(_with_muc(error(stanza, "not-allowed", why)))
            return
        room = self._create(event.bare, creator)
        if stanza.find("x", MUC_NS) is None:
            # A groupchat 1.0 client (XEP-0045 section 7.1.1: presence without the MUC
            # extension) cannot configure a room, so it gets an instant room with the default
            # configuration, unlocked, as Prosody's mod_muc does for such joins.
            room.locked = False
            if room.lock_timer is not None:
                room.lock_timer.cancel()
                room.lock_timer = None
        room.join(stanza, stanza.attrs.get("from", ""), event.resource, created=True)
        if not room.occupants:  # the join was refused after all
            self.rooms.pop(room.jid, None)
            if room.lock_timer is not None:
                room.lock_timer.cancel()

    async def _create_counted(self, event: StanzaEvent, creator: str) -> None:
        """A creation on a cluster: the rooms ``creator`` owns and created on the other nodes are
        counted first (peerage.cluster.muc); this client's later stanzas wait meanwhile (c2s
        handles a client's stanzas in order)."""
        why = self._creation_refused(creator, event.bare)
        owned, created = (0, 0) if why is not None else await self.elsewhere.counts(creator, event.bare)
        if event.bare in self.rooms:
            # Created meanwhile by another stanza: this one joins it.
            self._presence_full(event)
            return
        self._create_and_join(event, creator, why or self._may_create(creator, event.bare, owned, created))

    def _presence_bare(self, event: StanzaEvent) -> Any:
        stanza = event.stanza
        if stanza.attrs.get("type") is None:
            # XEP-0045 section 7.2.1: entering needs a nickname.
            self.send(_with_muc(error(stanza, "jid-malformed", "join with room@service/nickname")))
        return HANDLED

    def _message_bare(self, event: StanzaEvent) -> Any:
        stanza = event.stanza
        room = self.rooms.get(event.bare)
        if room is None:
            if stanza.attrs.get("type") != "error":
                self.send(error(stanza, "item-not-found", "no such room"))
            return HANDLED
        full = stanza.attrs.get("from", "")
        if stanza.attrs.get("type") == "groupchat":
            room.groupchat(stanza, full)
        else:
            room.message_to_room(stanza, full)
        return HANDLED

    def _message_full(self, event: StanzaEvent) -> Any:
        stanza = event.stanza
        room = self.rooms.get(event.bare)
        if room is None:
            if stanza.attrs.get("type") != "error":
                self.send(error(stanza, "item-not-found", "no such room"))
            return HANDLED
        room.private(stanza, stanza.attrs.get("from", ""), event.resource)
        return HANDLED

    def _iq_full(self, event: StanzaEvent) -> Any:
        stanza = event.stanza
        room = self.rooms.get(event.bare)
        if room is None:
            if stanza.attrs.get("type") in ("get", "set"):
                self.send(error(stanza, "item-not-found", "no such room"))
            return HANDLED
        room.occupant_iq(stanza, stanza.attrs.get("from", ""), event.resource)
        return HANDLED

    # ============================================================================================
    # IQs to the service
    # ============================================================================================
    def _service_info(self, ctx: IqContext) -> Element:
        query = Element("query", DISCO_INFO_NS)
        if ctx.payload.attrs.get("node"):
            return error(ctx.iq, "item-not-found")
        query.add("identity", attrs={"category": "conference", "type": "text", "name": "Group chats"})
        for feature in sorted((MUC_NS, MUC_UNIQUE, DISCO_INFO_NS, DISCO_ITEMS_NS, PING_NS,
                               "urn:xmpp:occupant-id:0", "http://jabber.org/protocol/muc#self-ping-optimization")):
            query.add("feature", attrs={"var": feature})
        return iq_result(ctx.iq, query)

    def _service_items(self, ctx: IqContext) -> Any:
        if self.listing is not None:
            return self._items_from(ctx, self.listing(ctx.domain))
        return self._items(ctx, [(jid, name) for jid, name, listed in self.listable(ctx.domain) if listed])

    async def _items_from(self, ctx: IqContext, listing: Awaitable[list[tuple[str, str]]]) -> Element:
        return self._items(ctx, await listing)

    @staticmethod
    def _items(ctx: IqContext, rooms: list[tuple[str, str]]) -> Element:
        query = Element("query", DISCO_ITEMS_NS)
        for jid, name in sorted(rooms)[: limits.MAX_ROOMS_DISCO_ITEMS]:
            query.add("item", attrs={"jid": jid, "name": name})
        return iq_result(ctx.iq, query)

    def _unique(self, ctx: IqContext) -> Element:
        # Section 10.1.4: a name no room has, for a room to be created.
        return iq_result(ctx.iq, Element("unique", MUC_UNIQUE, children=[secrets.token_hex(12)]))

    # ============================================================================================
    # IQs to a room
    # ============================================================================================
    def _room(self, ctx: IqContext) -> Room | None:
        return self.rooms.get(ctx.owner or "")

    def _room_info(self, ctx: IqContext) -> Element:
        room = self._room(ctx)
        if room is None or (room.locked and room.affiliation(bare_of(ctx.sender)) != "owner"):
            return error(ctx.iq, "item-not-found", "no such room")
        node = ctx.payload.attrs.get("node")
        if node == "x-roomuser-item":
            return room.reserved_nick_info(ctx.iq, ctx.sender)
        if node:
            return error(ctx.iq, "item-not-found")
        return iq_result(ctx.iq, room.disco_info())

    def _room_items(self, ctx: IqContext) -> Element:
        room = self._room(ctx)
        if room is None:
            return error(ctx.iq, "item-not-found", "no such room")
        # Section 6.5: the occupants may be listed; we list them to occupants only (privacy).
        query = Element("query", DISCO_ITEMS_NS)
        if ctx.sender in room.by_full:
            for nick in sorted(room.occupants):
                query.add("item", attrs={"jid": f"{room.jid}/{nick}"})
        return iq_result(ctx.iq, query)

    def _owner(self, ctx: IqContext) -> Any:
        room = self._room(ctx)
        if room is None:
            return error(ctx.iq, "item-not-found", "no such room")
        if ctx.iq.attrs["type"] == "get":
            return room.owner_get(ctx.iq, ctx.sender)
        if self.elsewhere is not None and not room.config.persistent and _makes_persistent(ctx.payload):
            return self._owner_set_counted(ctx, room)
        return self._once_written(room.owner_set(ctx.iq, ctx.payload, ctx.sender))

    async def _owner_set_counted(self, ctx: IqContext, room: Room) -> Element:
        """A room made persistent on a cluster: its owner's rooms are counted on every node first."""
        try:
            owned, _ = await self.elsewhere.counts(bare_of(ctx.sender), room.jid)
        except JidError:
            return error(ctx.iq, "jid-malformed")
        reply = self._once_written(room.owner_set(ctx.iq, ctx.payload, ctx.sender, owned))
        return reply if isinstance(reply, Element) else await reply

    def _admin(self, ctx: IqContext) -> Any:
        room = self._room(ctx)
        if room is None:
            return error(ctx.iq, "item-not-found", "no such room")
        if ctx.iq.attrs["type"] == "get":
            return room.admin_get(ctx.iq, ctx.payload, ctx.sender)
        return self._once_written(room.admin_set(ctx.iq, ctx.payload, ctx.sender))

    def _once_written(self, reply: Element) -> Any:
        """A configuration or affiliation change is answered once it is in the database (the
        writer started when the room was saved): what the owner was told it changed survives the
        process, and on a cluster the next owner node reads it (peerage.cluster)."""
        writer = self._writer
        if writer is None or writer.done():
            return reply
        return self._answer_after(writer, reply)

    @staticmethod
    async def _answer_after(writer: Any, reply: Element) -> Element:
        await asyncio.wait([writer], timeout=ANSWER_AFTER_WRITE)
        return reply

    def _room_register(self, ctx: IqContext) -> Element:
        room = self._room(ctx)
        if room is None:
            return error(ctx.iq, "item-not-found", "no such room")
        try:
            bare_of(ctx.sender)
        except JidError:
            return error(ctx.iq, "jid-malformed")
        if ctx.iq.attrs["type"] == "get":
            return room.register_get(ctx.iq, ctx.sender)
        return room.register_set(ctx.iq, ctx.payload, ctx.sender)

    def _moderate(self, ctx: IqContext) -> Any:
        """XEP-0425 section 4: ``<moderate id><retract/><reason/></moderate>`` (version 1), or the
        version 0 request ``<apply-to id><moderate><retract/><reason/></moderate></apply-to>``."""
        room = self._room(ctx)
        if room is None:
            return error(ctx.iq, "item-not-found", "no such room")
        payload = ctx.payload
        if payload.xmlns == MODERATE_NS:
            retract, reason = payload.find("retract", RETRACT_NS), payload.find_text("reason", MODERATE_NS)
        else:
            moderate = payload.find("moderate", MODERATE_NS_0)
            retract = moderate.find("retract", RETRACT_NS_0) if moderate is not None else None
            reason = moderate.find_text("reason", MODERATE_NS_0) if moderate is not None else None
        if retract is None:
            return error(ctx.iq, "bad-request" if payload.xmlns == MODERATE_NS else "feature-not-implemented",
                         "only retraction is supported")
        return room.moderate(ctx.iq, ctx.sender, payload.attrs.get("id", ""), (reason or "").strip())

    def _mam(self, ctx: IqContext) -> Any:
        room = self._room(ctx)
        if room is None:
            return error(ctx.iq, "item-not-found", "no such room")
        try:
            bare = bare_of(ctx.sender)
        except JidError:
            return error(ctx.iq, "jid-malformed")
        affiliation = room.affiliation(bare)
        if affiliation == "outcast" or (room.config.members_only and affiliation == "none") or \
                (not room.config.public and ctx.sender not in room.by_full and affiliation == "none"):
            return error(ctx.iq, "forbidden", "only members may read this room's archive")
        if not room.config.archiving and ctx.iq.attrs["type"] == "set":
            return error(ctx.iq, "service-unavailable", "this room is not archived")
        return self.archive.query(ctx.iq, ctx.payload, room.jid, self.ctx.router.route,
                                  limits.DEFAULT_ARCHIVE_PAGE, limits.MAX_ARCHIVE_PAGE)


def _makes_persistent(query: Element) -> bool:
    """Whether a ``muc#owner`` set submits ``muc#roomconfig_persistentroom`` true (section 10.2)."""
    form = query.find("x", "jabber:x:data")
    if form is None:
        return False
    for field in form.find_all("field"):
        if field.attrs.get("var") == "muc#roomconfig_persistentroom":
            return (field.find_text("value") or "").strip() in ("1", "true")
    return False


def _with_muc(reply: Element) -> Element:
    """Section 7.2: errors to a join carry the <x xmlns='…muc'/> back."""
    if reply.find("x", MUC_NS) is None:
        reply.children.insert(0, Element("x", MUC_NS))
    return reply
