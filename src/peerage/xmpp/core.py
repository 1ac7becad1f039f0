"""The IM core: RFC 6121 delivery rules, presence and subscriptions, and the features around them.

This module is in charge of what happens to a stanza once it has a sender and a destination on this
server: message delivery to bare and full JIDs (RFC 6121 section 8), offline storage (XEP-0160),
presence broadcast and probes (section 4), the subscription state machine (section 3 and appendix A),
roster pushes, blocking (XEP-0191), carbons (XEP-0280) and archiving (XEP-0313), and the dispatch of
IQs addressed to the server or to an account to the feature modules. It is installed as the router's
local handler, so stanzas from local clients and from federated servers follow the same rules.

Message delivery to an online session stays synchronous (no awaits, no database): it is the hot path.
Anything that touches storage returns an awaitable that callers await before acknowledging.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Iterable
from typing import Any

from peerage.xmpp.features import Feature, IqContext, IqHandler
from peerage.xmpp.jid import JidError, split_jid
from peerage.xmpp.router import Router, schedule
from peerage.xmpp.storage import RosterItem, XmppStorage
from peerage.xmpp.stream import Element, error_reply, serialize
from peerage.xmpp.stream import XmlStreamParser as _Parser

log = logging.getLogger(__name__)

ROSTER_NS = "jabber:iq:roster"
DELAY_NS = "urn:xmpp:delay"
SID_NS = "urn:xmpp:sid:0"
CARBONS_NS = "urn:xmpp:carbons:2"
FORWARD_NS = "urn:xmpp:forward:0"
HINTS_NS = "urn:xmpp:hints"
CHATSTATES_NS = "http://jabber.org/protocol/chatstates"
BLOCKING_ERRORS_NS = "urn:xmpp:blocking:errors"

#: Accounts whose roster and blocklist stay cached while nobody of them is online. Online accounts
#: are always cached; this bounds the rest (LRU).
OFFLINE_USER_CACHE = 2048
#: Messages archived per database transaction. Archiving is write-behind (MAM is not an
#: acknowledgement), batched to keep one insert per message off the hot path.
ARCHIVE_BATCH = 500
#: Longest wait before buffered archive rows are written, in seconds.
ARCHIVE_FLUSH_DELAY = 0.05
#: Archive rows buffered at most; past this, writing is awaited by the sender (back-pressure).
ARCHIVE_BUFFER_LIMIT = 20000
#: Directed presences remembered per session (RFC 6121 section 4.6), to send them unavailable.
MAX_DIRECTED_PRESENCES = 1000


def with_to(stanza: Element, to: str, from_: str | None = None) -> Element:
    """Shallow copy with another 'to' (children are shared and must not be mutated)."""
    attrs = dict(stanza.attrs)
    attrs["to"] = to
    if from_ is not None:
        attrs["from"] = from_
    return Element(stanza.name, stanza.xmlns, attrs, stanza.children)


def is_blocked(blocklist: set[str], jid: str) -> bool:
    """XEP-0191 section 3.2 matching: full JID, bare JID, domain/resource or domain."""
    try:
        local, domain, resource = split_jid(jid)
    except JidError:
        return False
    bare = f"{local}@{domain}" if local else domain
    if bare in blocklist or domain in blocklist:
        return True
    return bool(resource and (f"{bare}/{resource}" in blocklist or f"{domain}/{resource}" in blocklist))


def parse_stored(xml: str) -> Element:
    """Parse one serialized stanza back into an Element."""
    parser = _Parser(max_stanza_bytes=1 << 30)
    events = parser.feed(
        b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
        + xml.encode()
    )
    for event in events:
        if isinstance(event, Element):
            return event
    raise ValueError("stored stanza could not be parsed")


class UserState:
    """What the core keeps about one account: roster, roster version, blocklist."""

    __slots__ = ("bare", "blocklist", "lock", "roster", "version")

    def __init__(self, bare: str, version: int, roster: dict[str, RosterItem], blocklist: set[str]) -> None:
        self.bare = bare
        self.roster = roster
        self.version = version
        self.blocklist = blocklist
        self.lock = asyncio.Lock()


class _KeyedLock:
    """A lock and the number of tasks holding or waiting for it."""

    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class XmppCore:
    def __init__(
        self, *, router: Router, storage: XmppStorage, accounts: Any, archive_enabled: bool = True,
        max_offline_messages: int = 5000, feature_classes: Iterable[type[Feature]] = (),
    ) -> None:
        self.router = router
        self.storage = storage
        self.accounts = accounts
        self.archive_enabled = archive_enabled
        self.max_offline_messages = max_offline_messages
        self.users: OrderedDict[str, UserState] = OrderedDict()
        self._loading: dict[str, asyncio.Future[UserState]] = {}
        self._offline_locks: dict[str, _KeyedLock] = {}
        self._archive_rows: list[dict[str, Any]] = []
        #: ids of stanzas being re-delivered (XEP-0198 unacknowledged): already archived once.
        self.redelivering: set[int] = set()
        self._archive_flush: asyncio.TimerHandle | None = None
        self._archive_writing: asyncio.Task[None] | None = None
        self.features: list[Feature] = [cls(self) for cls in feature_classes]
        self.server_iq: dict[tuple[str, str], IqHandler] = {}
        self.account_iq: dict[tuple[str, str], IqHandler] = {}
        for feature in self.features:
            self.server_iq.update(feature.server_iq())
            self.account_iq.update(feature.account_iq())
        self.account_iq[("query", ROSTER_NS)] = self._roster_iq
        router.set_local_handler(self.deliver)

    def feature(self, cls: type[Feature]) -> Any:
        for feature in self.features:
            if isinstance(feature, cls):
                return feature
        return None

    # ============================================================================================
    # User state
    # ============================================================================================
    def cached(self, bare: str) -> UserState | None:
        return self.users.get(bare)

    async def user(self, bare: str) -> UserState:
        state = self.users.get(bare)
        if state is not None:
            self.users.move_to_end(bare)
            return state
        pending = self._loading.get(bare)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[UserState] = asyncio.get_running_loop().create_future()
        self._loading[bare] = future
        try:
            version, roster = await self.storage.load_roster(bare)
            blocklist = await self.storage.get_blocklist(bare)
            state = UserState(bare, version, roster, blocklist)
            self.users[bare] = state
            self._evict()
            future.set_result(state)
            return state
        except BaseException as error:
            future.set_exception(error)
            future.exception()  # mark retrieved
            raise
        finally:
            del self._loading[bare]

    def _evict(self) -> None:
        if len(self.users) <= OFFLINE_USER_CACHE:
            return
        for bare in list(self.users):
            if len(self.users) <= OFFLINE_USER_CACHE:
                break
            if not self.router.sessions.get(bare):
                del self.users[bare]

    # ============================================================================================
    # Local delivery (router handler): stanzas to accounts and domains hosted here
    # ============================================================================================
    def deliver(self, stanza: Element) -> Awaitable[None] | None:
        to = stanza.attrs["to"]
        try:
            local, domain, resource = split_jid(to)
        except JidError:
            return self.router.bounce(stanza, "jid-malformed")
        name = stanza.name
        if not local:
            if name == "iq":
                return self._server_iq(stanza, domain)
            if name == "message":
                return self._message_to_server(stanza)
            return None  # presence to the server itself is not delivered to anyone
        bare = f"{local}@{domain}"
        resources = self.router.sessions.get(bare)
        state = self.users.get(bare) if resources else None
        if state is None:
            return self._deliver_slow(stanza, bare, resource)
        sender = stanza.attrs.get("from", "")
        if state.blocklist and is_blocked(state.blocklist, sender):
            return self._blocked_inbound(stanza)
        if name == "message":
            return self._deliver_message(stanza, bare, resource, resources)  # type: ignore[arg-type]
        if name == "presence":
            return self._deliver_presence(stanza, bare, resource, resources)  # type: ignore[arg-type]
        return self._deliver_iq(stanza, bare, resource, resources)  # type: ignore[arg-type]

    async def _deliver_slow(self, stanza: Element, bare: str, resource: str) -> None:
        """Delivery to an account with no session: check it exists, then apply the same rules."""
        if not await self.accounts.exists(bare):
            if stanza.name in ("message", "iq") and stanza.attrs.get("type") not in ("error", "result"):
                await self.router.bounce(stanza, "service-unavailable")
            elif stanza.name == "presence" and stanza.attrs.get("type") == "subscribe" and stanza.attrs.get("from"):
                # RFC 6121 section 3.1.3: a request to a non-existent account is answered unsubscribed.
                refusal = Element("presence", "", {"from": bare, "to": stanza.attrs["from"].partition("/")[0],
                                                   "type": "unsubscribed"})
                await _wait(self.router.route(refusal))
            return
        state = await self.user(bare)
        if state.blocklist and is_blocked(state.blocklist, stanza.attrs.get("from", "")):
            result = self._blocked_inbound(stanza)
        else:
            resources = self.router.sessions.get(bare) or {}
            if stanza.name == "message":
                result = self._deliver_message(stanza, bare, resource, resources)
            elif stanza.name == "presence":
                result = self._deliver_presence(stanza, bare, resource, resources)
            else:
                result = self._deliver_iq(stanza, bare, resource, resources)
        if result is not None:
            await result

    def _message_to_server(self, stanza: Element) -> Awaitable[None] | None:
        """A message to the domain itself (RFC 6120 section 10.5.4, RFC 6121 section 8.5).

        The server handles it; it understands no message payload, so chat and normal messages get
        <service-unavailable/> (as Prosody's unhandled-stanza rule answers), and error, groupchat and
        headline messages are dropped (RFC 6120 section 8.3.1; RFC 6121 section 8.5.2).
        """
        if stanza.attrs.get("type", "normal") in ("chat", "normal"):
            return self.router.bounce(stanza, "service-unavailable")
        return None

    def _blocked_inbound(self, stanza: Element) -> Awaitable[None] | None:
        # XEP-0191 section 3.4: presence is dropped; messages and IQ get/set bounce unavailable.
        if stanza.name == "presence" or stanza.attrs.get("type") in ("error", "result"):
            return None
        return self.router.bounce(stanza, "service-unavailable")

    # --- messages (RFC 6121 section 8.5) ----------------------------------------------------------
    def _deliver_message(self, stanza: Element, bare: str, resource: str,
                         resources: dict[str, Any]) -> Awaitable[None] | None:
        mtype = stanza.attrs.get("type", "normal")
        if resource:
            session = resources.get(resource)
            if session is not None:
                self._stamp_and_archive_inbound(stanza, bare, mtype)
                session.send(stanza)
                if len(resources) > 1 and self._carbon_eligible(stanza, mtype):
                    self._carbon_copies(stanza, bare, "received", exclude=session)
                return None
            # Full JID not online (section 8.5.3.2): groupchat bounces, headline/error dropped,
            # chat and normal are treated as if sent to the bare JID.
            if mtype == "groupchat":
                return self.router.bounce(stanza, "service-unavailable")
            if mtype in ("headline", "error"):
                return None
        if mtype == "error":
            return None
        if mtype == "groupchat":
            return self.router.bounce(stanza, "service-unavailable")
        targets = [s for s in resources.values() if s.available and s.priority >= 0]
        if mtype == "headline":
            for session in targets:
                session.send(stanza)
            return None
        if targets:
            self._stamp_and_archive_inbound(stanza, bare, mtype)
            for session in targets:
                session.send(stanza)
            return None
        return self._store_offline(stanza, bare, mtype)

    def _archivable(self, stanza: Element, mtype: str) -> bool:
        if mtype not in ("chat", "normal"):
            return False
        children = stanza.children
        for child in children:
            if child.__class__ is Element and child.name == "body":
                break
        else:
            return False
        return stanza.find("no-store", HINTS_NS) is None and stanza.find("no-permanent-store", HINTS_NS) is None

    def _stamp_and_archive_inbound(self, stanza: Element, bare: str, mtype: str) -> None:
        if not self.archive_enabled or not self._archivable(stanza, mtype) or id(stanza) in self.redelivering:
            return
        # XEP-0359 section 4: remove stanza-ids claiming to be by this account, then add ours.
        for child in stanza.find_all("stanza-id", SID_NS):
            if child.attrs.get("by") == bare:
                stanza.children.remove(child)
        archive_id = XmppStorage.new_archive_id()
        sender = stanza.attrs.get("from", "")
        self.archive(bare, sender, stanza, archive_id)
        stanza.add("stanza-id", SID_NS, {"by": bare, "id": archive_id})

    def archive(self, owner: str, with_jid: str, stanza: Element, archive_id: str | None = None) -> str:
        """Queue ``stanza`` for ``owner``'s archive (write-behind, batched); return its archive id."""
        archive_id = archive_id or XmppStorage.new_archive_id()
        try:
            local, domain, _ = split_jid(with_jid)
            with_bare = f"{local}@{domain}" if local else domain
        except JidError:
            with_bare = with_jid
        self._archive_rows.append({
            "owner": owner, "archive_id": archive_id, "with_jid": with_bare, "stamp": time.time(),
            "stanza": serialize(stanza),
        })
        if len(self._archive_rows) >= ARCHIVE_BATCH:
            self._start_archive_write()
        elif self._archive_flush is None:
            self._archive_flush = asyncio.get_running_loop().call_later(
                ARCHIVE_FLUSH_DELAY, self._start_archive_write)
        return archive_id

    def _start_archive_write(self) -> None:
        if self._archive_flush is not None:
            self._archive_flush.cancel()
            self._archive_flush = None
        if self._archive_writing is not None and not self._archive_writing.done():
            return  # the running writer picks the rest up
        self._archive_writing = asyncio.ensure_future(self._write_archive())

    async def _write_archive(self) -> None:
        while self._archive_rows:
            rows, self._archive_rows = self._archive_rows[:ARCHIVE_BATCH], self._archive_rows[ARCHIVE_BATCH:]
            try:
                await self.storage.archive_many(rows)
            except Exception:
                log.exception("could not write %d archive rows", len(rows))

    async def flush_archive(self) -> None:
        """Write every buffered archive row (before a MAM query and at shutdown)."""
        if self._archive_flush is not None:
            self._archive_flush.cancel()
            self._archive_flush = None
        while self._archive_rows or (self._archive_writing is not None and not self._archive_writing.done()):
            if self._archive_writing is not None and not self._archive_writing.done():
                await self._archive_writing
            elif self._archive_rows:
                self._archive_writing = asyncio.ensure_future(self._write_archive())

    # --- offline storage (XEP-0160) -------------------------------------------------------------
    def _offline_eligible(self, stanza: Element) -> bool:
        if stanza.find("no-store", HINTS_NS) is not None:
            return False
        if stanza.find("store", HINTS_NS) is not None:
            return True
        # Chat states alone are not worth storing (XEP-0085 section 5.4, XEP-0160 section 3).
        return any(child.xmlns not in (CHATSTATES_NS, HINTS_NS) for child in stanza.elements())

    @contextlib.asynccontextmanager
    async def _offline_queue(self, bare: str) -> AsyncIterator[None]:
        """Hold ``bare``'s offline queue: storing a message and emptying the queue never overlap.

        Without it, a message that found no available resource could be committed just after a
        logging-in session read the queue, and wait there until the next login. The lock lives
        apart from ``UserState`` (which may be evicted and rebuilt meanwhile) and is dropped when
        nobody holds or waits for it.
        """
        entry = self._offline_locks.get(bare)
        if entry is None:
            entry = self._offline_locks[bare] = _KeyedLock()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if not entry.users:
                del self._offline_locks[bare]

    def _is_bound(self, session: Any) -> bool:
        return self.router.session(session.bare_jid, session.resource) is session

    def _offline_targets(self, bare: str) -> list[Any]:
        """Sessions that take messages to the bare JID (RFC 6121 section 8.5.2.1.1)."""
        return [s for s in self.router.resources(bare).values() if s.available and s.priority >= 0]

    async def _store_offline(self, stanza: Element, bare: str, mtype: str) -> None:
        if not self._offline_eligible(stanza):
            return
        async with self._offline_queue(bare):
            # Decided before the wait: a resource may have become available since. It empties the
            # queue after setting itself available, so either it is seen here or it reads the row.
            targets = self._offline_targets(bare)
            if targets:
                self._stamp_and_archive_inbound(stanza, bare, mtype)
                for session in targets:
                    session.send(stanza)
                return
            if await self.storage.offline_count(bare) >= self.max_offline_messages:
                await self.router.bounce(stanza, "service-unavailable", "the recipient's offline storage is full")
                return
            self._stamp_and_archive_inbound(stanza, bare, mtype)
            stored = Element(stanza.name, stanza.xmlns, dict(stanza.attrs), list(stanza.children))
            domain = bare.partition("@")[2]
            stored.add("delay", DELAY_NS, {"from": domain, "stamp": _xep82(time.time())}, "Offline Storage")
            await self.storage.store_offline(bare, serialize(stored))

    async def deliver_offline(self, session: Any) -> None:
        """Send stored messages to a session that became available with priority >= 0 (XEP-0160)."""
        bare = session.bare_jid
        async with self._offline_queue(bare):
            if not session.available or not self._is_bound(session):
                return  # gone or unavailable meanwhile: the messages wait for the next one
            rows = await self.storage.take_offline(bare)
            if not rows:
                return
            for _, xml in rows:
                try:
                    stanza = parse_stored(xml)
                except ValueError:
                    continue
                stanza.attrs["to"] = session.full_jid
                session.send(stanza)
            # The session has the messages in its send queue (and, with XEP-0198, in its unacked
            # queue, which goes back to offline storage if the session dies unacknowledged).
            await self.storage.delete_offline(bare, rows[-1][0])

    # --- carbons (XEP-0280) -------------------------------------------------------------------
    @staticmethod
    def _carbon_eligible(stanza: Element, mtype: str) -> bool:
        if mtype != "chat" and not (mtype == "normal" and stanza.find("body") is not None):
            return False
        for child in stanza.children:
            if child.__class__ is Element and child.name in ("private", "no-copy") and \
                    child.xmlns in (CARBONS_NS, HINTS_NS):
                return False
        return True

    def _carbon_copies(self, stanza: Element, bare: str, kind: str, exclude: Any) -> None:
        for session in list(self.router.resources(bare).values()):
            if session is exclude or not getattr(session, "carbons", False):
                continue
            wrapper = Element("message", "", {"from": bare, "to": session.full_jid, "type": stanza.attrs.get("type", "normal")})
            forwarded = wrapper.add(kind, CARBONS_NS).add("forwarded", FORWARD_NS)
            forwarded.children.append(stanza)
            session.send(wrapper)

    # --- presence to a local account (RFC 6121 sections 3 and 4) -----------------------------------
    def _deliver_presence(self, stanza: Element, bare: str, resource: str,
                          resources: dict[str, Any]) -> Awaitable[None] | None:
        ptype = stanza.attrs.get("type")
        if ptype is None or ptype == "unavailable" or ptype == "error":
            if resource:
                session = resources.get(resource)
                if session is not None:
                    session.send(stanza)
            else:
                for session in resources.values():
                    if session.available:
                        session.send(with_to(stanza, session.full_jid))
            return None
        if ptype == "probe":
            return self._answer_probe(stanza, bare)
        if ptype in ("subscribe", "subscribed", "unsubscribe", "unsubscribed"):
            return self._inbound_subscription(stanza, bare, ptype)
        return None

    async def _answer_probe(self, probe: Element, bare: str) -> None:
        state = await self.user(bare)
        prober = probe.attrs.get("from", "")
        try:
            local, domain, _ = split_jid(prober)
        except JidError:
            return
        prober_bare = f"{local}@{domain}" if local else domain
        item = state.roster.get(prober_bare)
        if item is None or item.subscription not in ("from", "both"):
            reply = Element("presence", "", {"from": bare, "to": prober_bare, "type": "unsubscribed"})
            await _wait(self.router.route(reply))
            return
        sent = False
        for session in list(self.router.resources(bare).values()):
            if session.available and session.last_presence is not None:
                await _wait(self.router.route(with_to(session.last_presence, prober)))
                sent = True
        if not sent:
            await _wait(self.router.route(Element("presence", "", {"from": bare, "to": prober, "type": "unavailable"})))

    async def _inbound_subscription(self, stanza: Element, bare: str, ptype: str) -> None:
        try:
            local, domain, _ = split_jid(stanza.attrs.get("from", ""))
        except JidError:
            return
        if not local and not domain:
            return
        contact = f"{local}@{domain}" if local else domain
        stanza = with_to(stanza, bare, contact)  # RFC 6121 section 3.1.3: stamp bare JIDs
        state = await self.user(bare)
        async with state.lock:
            item = state.roster.get(contact)
            if ptype == "subscribe":
                if item is not None and item.subscription in ("from", "both"):
                    await _wait(self.router.route(Element("presence", "", {"from": bare, "to": contact, "type": "subscribed"})))
                    return
                if item is not None and item.approved:
                    item.subscription = "both" if item.subscription == "to" else "from"
                    item.approved = False
                    await self._save_and_push(state, item)
                    await _wait(self.router.route(Element("presence", "", {"from": bare, "to": contact, "type": "subscribed"})))
                    await self._send_current_presence(bare, contact)
                    return
                if item is None:
                    item = RosterItem(contact, hidden=True)
                item.pending_in = True
                item.pending_stanza = serialize(stanza)
                await self._save(state, item)
                for session in self.router.resources(bare).values():
                    if session.available:
                        session.send(with_to(stanza, session.full_jid))
                return
            if item is None or (item.hidden and ptype != "unsubscribe"):
                return
            changed = False
            if ptype == "subscribed":
                if not item.ask:
                    return
                item.ask = False
                item.subscription = {"none": "to", "from": "both"}.get(item.subscription, item.subscription)
                changed = True
            elif ptype == "unsubscribe":
                if item.pending_in or item.subscription in ("from", "both") or item.approved:
                    item.pending_in = False
                    item.pending_stanza = None
                    item.approved = False
                    item.subscription = {"from": "none", "both": "to"}.get(item.subscription, item.subscription)
                    changed = True
                    # RFC 6121 section 3.3.3: the contact's resources go unavailable for the user.
                    for session in list(self.router.resources(bare).values()):
                        if session.available:
                            await _wait(self.router.route(Element(
                                "presence", "", {"from": session.full_jid, "to": contact, "type": "unavailable"})))
            elif ptype == "unsubscribed" and (item.ask or item.subscription in ("to", "both")):
                item.ask = False
                item.subscription = {"to": "none", "both": "from"}.get(item.subscription, item.subscription)
                changed = True
            if not changed:
                return
            if item.hidden and not item.pending_in:
                await self._remove_item(state, contact, push=False)
            else:
                await self._save_and_push(state, item)
        for session in self.router.resources(bare).values():
            if session.available:
                session.send(with_to(stanza, session.full_jid))

    # --- IQ to a local account or its resources ---------------------------------------------------
    def _deliver_iq(self, stanza: Element, bare: str, resource: str,
                    resources: dict[str, Any]) -> Awaitable[None] | None:
        itype = stanza.attrs.get("type")
        if resource:
            session = resources.get(resource)
            if session is not None:
                session.send(stanza)
                return None
            if itype in ("get", "set"):
                return self.router.bounce(stanza, "service-unavailable")
            return None
        if itype in ("get", "set"):
            return self._account_iq(stanza, bare, None)
        return None

    # ============================================================================================
    # IQ dispatch
    # ============================================================================================
    async def _server_iq(self, iq: Element, domain: str, session: Any = None) -> None:
        reply = await self._dispatch_iq(iq, self.server_iq, None, domain, session, False)
        if reply is not None:
            self._reply(reply, session)

    async def _account_iq(self, iq: Element, owner: str, session: Any) -> None:
        sender = iq.attrs.get("from", "")
        try:
            local, domain, _ = split_jid(sender)
            is_owner = f"{local}@{domain}" == owner
        except JidError:
            is_owner = False
        reply = await self._dispatch_iq(iq, self.account_iq, owner, owner.partition("@")[2], session, is_owner)
        if reply is not None:
            self._reply(reply, session)

    def _reply(self, reply: Element, session: Any) -> None:
        if session is not None and reply.attrs.get("to") in (None, session.full_jid):
            session.send(reply)
        elif reply.attrs.get("to"):
            schedule(self.router.route(reply))

    async def _dispatch_iq(self, iq: Element, table: dict[tuple[str, str], IqHandler], owner: str | None,
                           domain: str, session: Any, is_owner: bool) -> Element | None:
        itype = iq.attrs.get("type")
        if itype not in ("get", "set"):
            return None
        payloads = list(iq.elements())
        if len(payloads) != 1:
            return error_reply(iq, "bad-request", "an IQ get or set carries exactly one payload")
        payload = payloads[0]
        handler = table.get((payload.name, payload.xmlns))
        if handler is None:
            return error_reply(iq, "service-unavailable")
        ctx = IqContext(iq, payload, owner, domain, iq.attrs.get("from", ""), session, is_owner)
        try:
            return await handler(ctx)
        except Exception:
            log.exception("IQ handler for %s failed", payload.xmlns)
            return error_reply(iq, "internal-server-error")

    # ============================================================================================
    # Stanzas from a local client (c2s), already stamped with from=full JID
    # ============================================================================================
    def from_client(self, session: Any, stanza: Element) -> Awaitable[None] | None:
        name = stanza.name
        to = stanza.attrs.get("to")
        if name == "message":
            if not to:
                stanza.attrs["to"] = to = session.bare_jid
            state = self.users.get(session.bare_jid)
            if state is not None and state.blocklist and is_blocked(state.blocklist, to):
                reply = error_reply(stanza, "not-acceptable", "you have blocked this contact")
                reply.find("error").add("blocked", BLOCKING_ERRORS_NS)  # type: ignore[union-attr]
                session.send(reply)
                return None
            mtype = stanza.attrs.get("type", "normal")
            if self.archive_enabled and self._archivable(stanza, mtype):
                self.archive(session.bare_jid, to, stanza)
            if len(self.router.sessions.get(session.bare_jid) or ()) > 1 and self._carbon_eligible(stanza, mtype):
                self._carbon_copies(stanza, session.bare_jid, "sent", exclude=session)
            return self.router.route(stanza)
        if name == "presence":
            return self._presence_from_client(session, stanza)
        # iq
        if not to or to == session.bare_jid:
            return self._account_iq(stanza, session.bare_jid, session)
        try:
            local, domain, resource = split_jid(to)
        except JidError:
            session.send(error_reply(stanza, "jid-malformed"))
            return None
        if not local and not resource and self.router.is_hosted(domain):
            return self._server_iq(stanza, domain, session)
        state = self.users.get(session.bare_jid)
        if state is not None and state.blocklist and is_blocked(state.blocklist, to) and \
                stanza.attrs.get("type") in ("get", "set"):
            session.send(error_reply(stanza, "not-acceptable"))
            return None
        return self.router.route(stanza)

    # --- presence from a client (RFC 6121 section 4) ------------------------------------------------
    async def _presence_from_client(self, session: Any, stanza: Element) -> None:
        ptype = stanza.attrs.get("type")
        to = stanza.attrs.get("to")
        if ptype in ("subscribe", "subscribed", "unsubscribe", "unsubscribed"):
            if not to:
                return
            await self._outbound_subscription(session, stanza, ptype, to)
            return
        if ptype == "probe":
            return  # clients do not probe (RFC 6121 section 4.3)
        if ptype not in (None, "unavailable", "error"):
            session.send(error_reply(stanza, "bad-request"))
            return
        if to:
            if ptype is None:
                if session.directed is None:
                    session.directed = set()  # created on first use: most sessions never need it
                if len(session.directed) < MAX_DIRECTED_PRESENCES:
                    session.directed.add(to)
            else:
                if session.directed:
                    session.directed.discard(to)
            await _wait(self.router.route(stanza))
            return
        await self.broadcast_presence(session, stanza)

    async def broadcast_presence(self, session: Any, stanza: Element) -> None:
        """Broadcast available/unavailable presence of ``session`` (RFC 6121 sections 4.2, 4.4, 4.5)."""
        ptype = stanza.attrs.get("type")
        bare = session.bare_jid
        state = await self.user(bare)
        initial = ptype is None and not session.available
        took_bare_messages = session.available and session.priority >= 0
        if ptype is None:
            priority_text = stanza.find_text("priority")
            try:
                session.priority = max(-128, min(127, int(priority_text))) if priority_text else 0
            except ValueError:
                session.priority = 0
            session.available = True
            session.last_presence = stanza
        else:
            if not session.available:
                return
            session.available = False
            session.last_presence = None
        for contact, item in list(state.roster.items()):
            if item.subscription in ("from", "both") and not (state.blocklist and is_blocked(state.blocklist, contact)):
                await _wait(self.router.route(with_to(stanza, contact)))
        if ptype == "unavailable":
            for to in list(session.directed or ()):
                await _wait(self.router.route(with_to(stanza, to)))
            session.directed = None
        for other in list(self.router.resources(bare).values()):
            if other.available or other is session:
                other.send(with_to(stanza, other.full_jid))
        if not initial:
            if ptype is None and session.priority >= 0 and not took_bare_messages:
                # From a negative priority to a non-negative one: stored messages are now due
                # (RFC 6121 section 8.5.2.1.1, as Prosody's mod_offline does on any such presence).
                await self.deliver_offline(session)
            return
        # Initial presence: probe contacts we are subscribed to, show our other resources, pending
        # subscription requests, and offline messages.
        for contact, item in list(state.roster.items()):
            if item.subscription in ("to", "both"):
                probe = Element("presence", "", {"from": bare, "to": contact, "type": "probe"})
                await _wait(self.router.route(probe))
        for other in list(self.router.resources(bare).values()):
            if other is not session and other.available and other.last_presence is not None:
                session.send(with_to(other.last_presence, session.full_jid))
        for item in list(state.roster.values()):
            if item.pending_in and item.pending_stanza:
                with contextlib.suppress(ValueError):
                    session.send(with_to(parse_stored(item.pending_stanza), session.full_jid))
        if session.priority >= 0:
            await self.deliver_offline(session)

    async def session_ended(self, session: Any) -> None:
        """A session is gone: broadcast unavailable if it was available (RFC 6121 section 4.5.3)."""
        if session.available:
            unavailable = Element("presence", "", {"from": session.full_jid, "type": "unavailable"})
            await self.broadcast_presence(session, unavailable)

    async def _outbound_subscription(self, session: Any, stanza: Element, ptype: str, to: str) -> None:
        try:
            local, domain, _ = split_jid(to)
        except JidError:
            session.send(error_reply(stanza, "jid-malformed"))
            return
        contact = f"{local}@{domain}" if local else domain
        bare = session.bare_jid
        if contact == bare:
            return  # one's own presence needs no subscription (RFC 6121 section 4.2.2)
        # RFC 6121 section 3.1.2: stamp the user's bare JID and the contact's bare JID.
        outbound = Element("presence", "", {**stanza.attrs, "from": bare, "to": contact}, stanza.children)
        state = await self.user(bare)
        route = True
        async with state.lock:
            item = state.roster.get(contact)
            if ptype == "subscribe":
                if item is None:
                    item = RosterItem(contact)
                if item.hidden:
                    item.hidden = False
                if item.subscription not in ("to", "both"):
                    item.ask = True
                await self._save_and_push(state, item)
            elif ptype == "subscribed":
                if item is not None and item.pending_in:
                    item.pending_in = False
                    item.pending_stanza = None
                    item.hidden = False
                    item.subscription = {"none": "from", "to": "both"}.get(item.subscription, item.subscription)
                    await self._save_and_push(state, item)
                elif item is None or item.subscription in ("none", "to"):
                    # Pre-approval (RFC 6121 section 3.4): remembered, not routed.
                    if item is None:
                        item = RosterItem(contact)
                    item.approved = True
                    await self._save_and_push(state, item)
                    route = False
                else:
                    route = item.subscription in ("from", "both")
            elif ptype == "unsubscribe" and item is not None:
                item.ask = False
                item.subscription = {"to": "none", "both": "from"}.get(item.subscription, item.subscription)
                await self._save_and_push(state, item)
            elif ptype == "unsubscribed" and item is not None:
                was_from = item.subscription in ("from", "both")
                item.pending_in = False
                item.pending_stanza = None
                item.approved = False
                item.subscription = {"from": "none", "both": "to"}.get(item.subscription, item.subscription)
                if item.hidden:
                    await self._remove_item(state, contact, push=False)
                else:
                    await self._save_and_push(state, item)
                if was_from:
                    for other in list(self.router.resources(bare).values()):
                        if other.available:
                            await _wait(self.router.route(Element(
                                "presence", "", {"from": other.full_jid, "to": contact, "type": "unavailable"})))
        if route:
            await _wait(self.router.route(outbound))
        if ptype == "subscribed" and route:
            await self._send_current_presence(bare, contact)

    async def _send_current_presence(self, bare: str, contact: str) -> None:
        for other in list(self.router.resources(bare).values()):
            if other.available and other.last_presence is not None:
                await _wait(self.router.route(with_to(other.last_presence, contact)))

    # ============================================================================================
    # Roster (RFC 6121 section 2, XEP-0237)
    # ============================================================================================
    async def _save(self, state: UserState, item: RosterItem) -> None:
        state.version = await self.storage.save_roster_item(state.bare, item, item.contact)
        state.roster[item.contact] = item

    async def _save_and_push(self, state: UserState, item: RosterItem) -> None:
        await self._save(state, item)
        if not item.hidden:
            self._push(state, item)

    async def _remove_item(self, state: UserState, contact: str, push: bool = True) -> None:
        state.version = await self.storage.save_roster_item(state.bare, None, contact)
        state.roster.pop(contact, None)
        if push:
            self._push(state, None, contact)

    def _push(self, state: UserState, item: RosterItem | None, contact: str | None = None) -> None:
        for session in list(self.router.resources(state.bare).values()):
            if not getattr(session, "roster_requested", False):
                continue
            query = Element("query", ROSTER_NS, {"ver": str(state.version)})
            if item is None:
                query.add("item", attrs={"jid": contact or "", "subscription": "remove"})
            else:
                query.children.append(roster_item_element(item))
            push = Element("iq", "", {"type": "set", "id": f"push{state.version}", "to": session.full_jid}, [query])
            session.send(push)

    async def _roster_iq(self, ctx: IqContext) -> Element | None:
        if not ctx.is_owner:
            return error_reply(ctx.iq, "forbidden")
        state = await self.user(ctx.owner)  # type: ignore[arg-type]
        if ctx.iq.attrs.get("type") == "get":
            if ctx.session is not None:
                ctx.session.roster_requested = True
            query = Element("query", ROSTER_NS, {"ver": str(state.version)})
            requested = ctx.payload.attrs.get("ver")
            if requested is not None and requested == str(state.version):
                return _result_to_session(ctx, None)  # XEP-0237: unchanged, pushes follow
            for item in state.roster.values():
                if not item.hidden:
                    query.children.append(roster_item_element(item))
            return _result_to_session(ctx, query)
        items = ctx.payload.find_all("item", ROSTER_NS)
        if len(items) != 1:
            return error_reply(ctx.iq, "bad-request", "a roster set carries exactly one item")
        element = items[0]
        try:
            local, domain, resource = split_jid(element.attrs.get("jid", ""))
        except JidError:
            return error_reply(ctx.iq, "jid-malformed")
        if not domain or resource:
            return error_reply(ctx.iq, "bad-request", "roster items are bare JIDs")
        contact = f"{local}@{domain}" if local else domain
        if contact == ctx.owner:
            return error_reply(ctx.iq, "not-allowed", "you cannot add yourself")
        async with state.lock:
            existing = state.roster.get(contact)
            if element.attrs.get("subscription") == "remove":
                if existing is None:
                    return error_reply(ctx.iq, "item-not-found")
                bare = ctx.owner
                assert bare is not None
                if existing.subscription in ("to", "both") or existing.ask:
                    await _wait(self.router.route(Element("presence", "", {"from": bare, "to": contact, "type": "unsubscribe"})))
                if existing.subscription in ("from", "both") or existing.pending_in:
                    await _wait(self.router.route(Element("presence", "", {"from": bare, "to": contact, "type": "unsubscribed"})))
                await self._remove_item(state, contact)
                return _result_to_session(ctx, None)
            groups = [g.text for g in element.find_all("group", ROSTER_NS)]
            if len(set(groups)) != len(groups) or any(not g for g in groups):
                return error_reply(ctx.iq, "bad-request", "duplicate or empty group")
            item = existing if existing is not None else RosterItem(contact)
            item.name = element.attrs.get("name") or None
            item.groups = groups
            item.hidden = False
            await self._save_and_push(state, item)
        return _result_to_session(ctx, None)


def roster_item_element(item: RosterItem) -> Element:
    el = Element("item", ROSTER_NS, {"jid": item.contact, "subscription": item.subscription})
    if item.name:
        el.attrs["name"] = item.name
    if item.ask:
        el.attrs["ask"] = "subscribe"
    if item.approved:
        el.attrs["approved"] = "true"
    for group in item.groups:
        el.add("group", text=group)
    return el


def _result_to_session(ctx: IqContext, payload: Element | None) -> Element:
    from peerage.xmpp.stream import iq_result

    reply = iq_result(ctx.iq, payload)
    reply.attrs.pop("from", None)
    return reply


async def _wait(result: Awaitable[None] | None) -> None:
    if result is not None:
        await result


def _xep82(stamp: float) -> str:
    """XEP-0082 DateTime in UTC."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))
