"""Client sessions, apart from the connections that carry them.

This module is in charge of what a bound resource is while it lives: its JIDs, presence, directed
presences and per-feature state (``ClientSession``), and of its life cycle (``Sessions``): binding
a resource (the older session of the same full JID is replaced, as Prosody's default
``conflict_resolve = "kick_old"`` does), detaching it when its connection drops, keeping it for
XEP-0198 resumption, re-attaching it to the connection that resumes it, and ending it for good
(``resource-unbind`` is fired, then whatever the client never acknowledged is re-routed).

A session writes through its ``connection`` (anything with ``write(bytes)`` and
``stream_error(condition, text)``): a TCP or Direct TLS stream today, a WebSocket tomorrow. While
detached (``connection is None``), what is sent to it waits in the XEP-0198 queue.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from peerage.xmpp.context import XmppContext
from peerage.xmpp.features.csi import CsiQueue
from peerage.xmpp.features.sm import StreamManagementState
from peerage.xmpp.router import schedule
from peerage.xmpp.stream import Element, serialize

log = logging.getLogger(__name__)

SM_REQUEST = b"<r xmlns='urn:xmpp:sm:3'/>"
#: Earlier spans of taking bare-JID messages remembered per session. A span older than these gives
#: a duplicate at most (the message is re-routed), never a loss; eight covers a client that toggles
#: its presence (away/unavailable and back) during one resumption timeout.
BARE_HISTORY = 8


class Connection(Protocol):
    """What a session needs from the connection carrying it."""

    def write(self, data: bytes) -> None: ...

    def stream_error(self, condition: str, text: str = "") -> None: ...


class ClientSession:
    """One bound resource of an account (the router's RoutedSession)."""

    # Slots keep an idle session small (thousands of these live at once).
    __slots__ = (
        "available",
        "bare_jid",
        "bare_past",
        "bare_since",
        "blocklist_requested",
        "carbons",
        "connection",
        "csi",
        "directed",
        "ended",
        "full_jid",
        "hibernation",
        "last_presence",
        "priority",
        "resource",
        "roster_requested",
        "sessions",
        "sm",
    )

    def __init__(self, sessions: Sessions, connection: Connection | None, bare_jid: str, resource: str) -> None:
        self.sessions = sessions
        self.connection = connection
        self.bare_jid = bare_jid
        self.resource = resource
        self.full_jid = f"{bare_jid}/{resource}"
        #: Sent initial presence and not yet unavailable (RFC 6121 section 4.2).
        self.available = False
        self.priority = 0
        #: ``Sessions.bare_clock`` when this session last began to take messages to the bare JID
        #: (available with a non-negative priority); None while it does not.
        self.bare_since: int | None = None
        #: Earlier spans ``(start, end)`` of ``Sessions.bare_clock`` during which it took them, the
        #: last ``BARE_HISTORY`` (a resource that went unavailable and came back got the messages
        #: of its earlier span: they are not handed to it again when another session ends).
        self.bare_past: tuple[tuple[int, int], ...] = ()
        #: The last available presence broadcast, None when unavailable.
        self.last_presence: Element | None = None
        self.directed: set[str] | None = None  # directed presences (RFC 6121 section 4.6), lazily
        self.roster_requested = False
        self.blocklist_requested = False
        self.carbons = False
        self.sm: StreamManagementState | None = None
        self.csi: CsiQueue | None = None
        self.hibernation: asyncio.TimerHandle | None = None
        #: Unbound for good (ended, replaced or resumed elsewhere): nothing may revive it.
        self.ended = False

    def send(self, stanza: Element) -> None:
        """Queue ``stanza`` for the client (held back while it is inactive, XEP-0352)."""
        csi = self.csi
        if csi is not None:
            if csi.hold(stanza):
                return
            for early in csi.release():
                self._send_now(early)
        self._send_now(stanza)

    def send_serialized(self, data: bytes, parse: Callable[[bytes], Element | None]) -> Element | bool | None:
        """Queue a stanza that arrives serialised by ``serialize`` (the bytes ``_send_now`` would
        write; another cluster node routed it). The bytes go out as they are; ``parse(data)`` is
        called only when something here needs the element: XEP-0352 decides what may wait, and
        XEP-0198's queue keeps messages for re-routing. Returns the element if it was parsed, True if it went
        out without, None if ``parse`` failed (nothing sent)."""
        if self.csi is None and (self.sm is None or not data.startswith(b"<message")):
            self._send_now(None, data)
            return True
        stanza = parse(data)
        if stanza is None:
            return None
        if self.csi is not None:
            self.send(stanza)
        else:
            self._send_now(stanza, data)
        return stanza

    def presence_changed(self) -> None:
        """Its availability or priority changed (``features.presence``): note when it began to
        take messages to the bare JID (RFC 6121 section 8.5.2.1.1)."""
        if self.available and self.priority >= 0:
            if self.bare_since is None:
                self.sessions.bare_clock += 1
                self.bare_since = self.sessions.bare_clock
        elif self.bare_since is not None:
            # The span ends: a message stamped from now on did not reach this session.
            self.sessions.bare_clock += 1
            self.bare_past = (*self.bare_past[-(BARE_HISTORY - 1):], (self.bare_since, self.sessions.bare_clock))
            self.bare_since = None

    def set_active(self, active: bool) -> None:
        """XEP-0352: an inactive client gets only what cannot wait."""
        if active:
            if self.csi is not None:
                held = self.csi.release()
                self.csi = None
                for stanza in held:
                    self._send_now(stanza)
        elif self.csi is None:
            self.csi = CsiQueue()

    def _send_now(self, stanza: Element | None, data: bytes | None = None) -> None:
        # ``stanza`` None: ``data`` is given and is not a message (send_serialized).
        if data is None:
            assert stanza is not None
            data = serialize(stanza).encode()
        connection = self.connection
        sm = self.sm
        if sm is None:
            if connection is not None:
                connection.write(data)
            return
        sm.sent(data, stanza if stanza is not None and stanza.name == "message" else None, self.sessions.bare_clock)
        if sm.overflowing:
            if connection is None:  # detached and the queue is full: the session ends
                self.sessions.end_detached(self)
            else:
                connection.stream_error("resource-constraint", "too many unacknowledged stanzas")
            return
        if connection is None:
            return  # detached: kept for resumption
        connection.write(data)
        if sm.should_request():
            connection.write(SM_REQUEST)


class Sessions:
    """Binding, detaching, resuming and ending client sessions."""

    def __init__(self, ctx: XmppContext, *, max_resources: int, resumption_timeout: float) -> None:
        self.ctx = ctx
        self.max_resources = max_resources
        self.resumption_timeout = resumption_timeout
        #: XEP-0198 resumption id -> session that may be resumed with it.
        self.resumable: dict[str, ClientSession] = {}
        #: Ticks once each time a session begins or stops taking messages to its bare JID. A managed
        #: session notes its value with each message it sends; when it ends, a message to the
        #: bare JID is not re-routed to a session whose ``bare_since`` is not later than that:
        #: that session was taking bare-JID messages when it came and got it as well.
        self.bare_clock = 0


    def _spawn(self, coroutine: Any) -> None:
        spawn = self.ctx.spawn
        if spawn is not None:
            spawn(coroutine)
        else:
            schedule(coroutine)

    async def bind(self, connection: Connection, bare: str, resource: str) -> ClientSession | str:
        """Bind ``bare/resource`` for ``connection``; the new session, or an error condition."""
        await self.ctx.users.load(bare)  # roster and blocklist cached before the session is routable
        router = self.ctx.router
        existing = router.resources(bare)
        if resource not in existing and len(existing) >= self.max_resources:
            return "resource-constraint"
        session = ClientSession(self, connection, bare, resource)
        previous = router.bind(session)
        if previous is not None and previous is not session:
            await self.replaced(previous)  # type: ignore[arg-type]
        self.ctx.events.fire("resource-bind", session)
        return session

    def enable_resumption(self, session: ClientSession) -> None:
        assert session.sm is not None and session.sm.resume_id
        self.resumable[session.sm.resume_id] = session

    def resume(self, connection: Connection, bare: str, previd: str, h: int) -> ClientSession | None:
        """XEP-0198 section 5: re-attach the session ``previd`` to ``connection``; None if it cannot be."""
        session = self.resumable.get(previd)
        if session is None or session.bare_jid != bare or session.sm is None or session.ended:
            return None
        if not session.sm.ack(h):
            return None
        if session.hibernation is not None:
            session.hibernation.cancel()
            session.hibernation = None
        old = session.connection
        session.connection = connection
        if old is not None and old is not connection:
            detach = getattr(old, "detach", None)
            if detach is not None:
                detach()  # the old connection ends without taking the session with it
        return session

    def detached(self, session: ClientSession, *, clean: bool) -> None:
        """The connection carrying ``session`` is gone: keep it for resumption, or end it."""
        session.connection = None
        if session.ended:
            return
        if session.sm is not None and session.sm.resumable and not clean:
            loop = asyncio.get_running_loop()
            session.hibernation = loop.call_later(self.resumption_timeout, self._hibernation_expired, session)
            # For the features that act on a session waiting to be resumed (push notifications).
            self.ctx.events.fire("session-hibernating", session)
        else:
            self._spawn(self.end(session))

    def _hibernation_expired(self, session: ClientSession) -> None:
        session.hibernation = None
        if not session.ended:
            self._spawn(self.end(session))

    def end_detached(self, session: ClientSession) -> None:
        if session.hibernation is not None:
            session.hibernation.cancel()
            session.hibernation = None
        self._spawn(self.end(session))

    async def end(self, session: ClientSession) -> None:
        """The session is over for good: unbind, go unavailable, re-route what was never acked."""
        if session.ended:
            return
        session.ended = True
        self.ctx.router.unbind(session)
        self._forget_resumption(session)
        try:
            result = self.ctx.events.fire("resource-unbind", session)
            if result is not None:
                await result
        except Exception:
            log.exception("error ending the session of %s", session.full_jid)
        await self._reroute_unacked(session)

    async def replaced(self, session: ClientSession) -> None:
        """Another connection bound the same full JID: this one gets <conflict/> and ends."""
        session.ended = True
        if session.hibernation is not None:
            session.hibernation.cancel()
            session.hibernation = None
        self._forget_resumption(session)
        connection, session.connection = session.connection, None
        if connection is not None:
            connection.stream_error("conflict", "another client bound this resource")
        await self._reroute_unacked(session)

    def _forget_resumption(self, session: ClientSession) -> None:
        if session.sm is not None and session.sm.resume_id and self.resumable.get(session.sm.resume_id) is session:
            del self.resumable[session.sm.resume_id]

    async def _reroute_unacked(self, session: ClientSession) -> None:
        """Deliver messages the client never acknowledged by bare-JID rules (XEP-0198 section 4)."""
        if session.sm is None:
            return
        router = self.ctx.router
        redelivering = self.ctx.redelivering
        unacked, session.sm.unacked = list(session.sm.unacked), deque()
        for _, stanza, stamp in unacked:
            if stanza is None or stanza.attrs.get("type") in ("error", "groupchat", "headline"):
                continue
            if stanza.attrs.get("to") == session.bare_jid and self._seen_elsewhere(session, stamp):
                continue  # sent to the bare JID: another resource took it then, and has it
            if stanza.find("result", "urn:xmpp:mam:2") is not None:
                continue
            if stanza.find("received", "urn:xmpp:carbons:2") or stanza.find("sent", "urn:xmpp:carbons:2"):
                continue
            # Never lose them: other resources, or offline storage.
            rerouted = Element(stanza.name, stanza.xmlns, {**stanza.attrs, "to": session.bare_jid}, stanza.children)
            redelivering.add(id(rerouted))
            try:
                result = router.route(rerouted)
                if result is not None:
                    await result
            except Exception:
                log.exception("could not re-route an unacknowledged stanza")
            finally:
                redelivering.discard(id(rerouted))

    def _seen_elsewhere(self, session: ClientSession, stamp: int) -> bool:
        """Whether another session of the account was taking bare-JID messages when a message
        stamped ``stamp`` was sent (and so got it as well)."""
        for other in self.ctx.router.resources(session.bare_jid).values():
            if other is session:
                continue
            since = getattr(other, "bare_since", None)  # sessions of other cluster nodes have none
            if since is not None and since <= stamp:
                return True
            if any(start <= stamp < end for start, end in getattr(other, "bare_past", ())):
                return True
        return False

    def all(self) -> list[ClientSession]:
        return list(self.resumable.values())
