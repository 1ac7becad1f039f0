"""Client-to-server connections (RFC 6120): bytes, TLS, batching and back-pressure.

This module is in charge of carrying one client stream over TCP: STARTTLS on the plain port or TLS
from the start on the Direct TLS port (XEP-0368), parsing, writing once per event-loop iteration,
pausing reading when stanzas queue up, the deadline to authenticate, and carrying out what the
stream state machine (``peerage.xmpp.c2s_stream``) asks: SASL lookups with the authentication
throttle, resource binding, and the XEP-0198/XEP-0352 elements of the session. Once a resource is
bound the connection carries a ``ClientSession`` (``peerage.xmpp.session``), which outlives it when
the stream can be resumed; stanzas go to the stanza router (``peerage.xmpp.stanzas``).

Incoming stanzas are processed strictly in order. Those that can be handled without waiting (a
message to an online contact) are handled inside ``data_received``; when one needs storage, later
ones queue behind it, and reading pauses if that queue grows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import ssl
import time
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from peerage.identity import sasl
from peerage.identity.tokens import looks_like_token
from peerage.net.limits import PreAuthSlot
from peerage.xmpp.c2s_stream import (
    SESSION_NS,
    Action,
    Authenticated,
    AuthFailed,
    Bind,
    C2SStream,
    Close,
    Lookup,
    Manage,
    PreAuthIq,
    Restart,
    Send,
    StartTls,
    State,
    serialize_top,
)
from peerage.xmpp.features.csi import CSI_NS
from peerage.xmpp.features.sm import SM_NS, StreamManagementState
from peerage.xmpp.jid import MAX_RESOURCE_OCTETS, JidError, split_jid
from peerage.xmpp.session import ClientSession
from peerage.xmpp.stream import (
    Element,
    StreamClosed,
    StreamFailure,
    StreamOpened,
    XmlStreamParser,
    error_reply,
)
from peerage.xmpp.tls_layer import TlsLayer

if TYPE_CHECKING:
    from peerage.xmpp.service import XmppService

log = logging.getLogger(__name__)

#: Stanzas waiting behind one that needs storage before reading from the socket pauses. Enough to
#: absorb a burst; small enough that a client cannot make the server buffer without bound.
MAX_QUEUED_STANZAS = 64
#: Bytes waiting to be written to a client before it counts as not reading and is disconnected
#: (Prosody closes c2s connections whose send buffer exceeds its "max_send_buffer_size", 1 MiB).
MAX_WRITE_BUFFER = 4 * 1024 * 1024

STANZA_NAMES = frozenset(("message", "presence", "iq"))

#: How long a lost connection's queued stanzas may take before its session is let go regardless (a
#: handler waiting on storage finishes well within it; one that never does must not keep a gone
#: resource online).
DRAIN_AFTER_LOSS_SECONDS = 30.0

#: Queued in place of ``</stream:stream>`` when it arrives behind elements still waiting: the
#: stanzas a client sent before it closed are handled before the stream ends (RFC 6120 section 4.4).
STREAM_CLOSED_MARK = Element("closed", "urn:peerage:internal:stream-closed")


@dataclass(slots=True)
class PreAuthEvent:
    """What ``c2s-pre-auth-iq`` handlers get: the connection, the stream's domain, the IQ, the peer IP."""

    connection: Any
    domain: str
    iq: Element
    peer_ip: str


class C2SConnection(asyncio.Protocol):
    """One client connection and, once bound, the session it carries."""

    # Slots keep an idle connection small (thousands of these live at once).
    __slots__ = (
        "_acking",
        "_busy",
        "_counted",
        "_deadline",
        "_detach_when_drained",
        "_flush_scheduled",
        "_login_key",
        "_out",
        "_preauth",
        "_queue",
        "_reading_paused",
        "closed_cleanly",
        "closing",
        "direct_tls",
        "last_activity",
        "parser",
        "peer_ip",
        "pre_auth",
        "service",
        "session",
        "stream",
        "tls",
        "transport",
        "web_session",
    )

    def __init__(self, service: XmppService, *, direct_tls: bool) -> None:
        self.service = service
        self.direct_tls = direct_tls
        self.transport: asyncio.Transport | None = None
        self.peer_ip = ""
        self.tls: TlsLayer | None = None
        self.parser = XmlStreamParser(service.max_stanza_size)
        hosted, features, pre_auth = service.stream_callbacks  # bound once, shared by every stream
        self.stream = C2SStream(tls=direct_tls, tls_available=service.tls_available, hosted=hosted,
                                features=features, default_domain=service.default_domain, pre_auth=pre_auth)
        self.closing = False
        #: what a c2s-pre-auth-iq handler keeps for this stream (a XEP-0401 invitation token)
        self.pre_auth: Any = None
        self.closed_cleanly = False
        self.last_activity = time.monotonic()
        self._deadline: asyncio.TimerHandle | None = None
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._queue: deque[Element] | None = None
        self._busy = False
        #: The last <a/> held back by ``XmppService.ack_gate``; later answers go out after it.
        self._acking: asyncio.Future[None] | None = None
        self._reading_paused = False
        #: The connection was lost while stanzas it had delivered were still queued: the session is
        #: let go once they are handled.
        self._detach_when_drained = False
        self._counted = False
        #: This connection's place under ``[limits] max_unauthenticated`` until it authenticates.
        self._preauth: PreAuthSlot | None = None
        #: The bound resource this connection carries (None before binding and once detached).
        self.session: ClientSession | None = None
        #: The login token (or its SCRAM stored key) this stream authenticated with, and the web session
        #: that token was issued to (its hash): that session's logout ends this stream too.
        self._login_key: bytes | str | None = None
        self.web_session: str | None = None

    @property
    def bound(self) -> bool:
        return self.session is not None

    @property
    def sm(self) -> StreamManagementState | None:
        session = self.session
        return session.sm if session is not None else None

    @property
    def name(self) -> str:
        """Who is at the other end, for logs."""
        return self.session.full_jid if self.session is not None else self.peer_ip

    # ============================================================================================
    # asyncio.Protocol
    # ============================================================================================
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer_ip = peer[0] if peer else ""
        if not self.service.limits.connections.acquire(self.peer_ip):
            self.stream_error("policy-violation", "too many connections from your address")
            return
        self._counted = True
        self.service.connections.add(self)
        # One cap on connections that have not logged in, shared with IMAP, submission and SIP:
        # beyond it the stream is refused with <resource-constraint/> (RFC 6120 section 4.9.3.17).
        self._preauth = self.service.limits.preauth()
        if self._preauth is None:
            self.stream_error("resource-constraint", "too many connections waiting to log in; try again later")
            return
        if self.direct_tls:
            self.tls = TlsLayer(self.service.tls_context())
        # However slowly the client trickles bytes, it authenticates within this deadline.
        self._deadline = asyncio.get_running_loop().call_later(
            self.service.negotiation_timeout, self._negotiation_expired)

    def _negotiation_expired(self) -> None:
        self._deadline = None
        if self.stream.authenticated is None:
            self.stream_error("connection-timeout", "authentication took too long")

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.last_activity = time.monotonic()
        tls = self.tls
        if tls is not None:
            try:
                data = tls.receive(data)
            except ssl.SSLError as error:
                log.debug("TLS error from %s: %s", self.peer_ip, error)
                self._abort()
                return
            pending = tls.take_output()
            if pending and self.transport is not None:
                self.transport.write(pending)
            if tls.peer_closed:
                # close_notify without </stream:stream>: the stream is over (RFC 6120 section 4.4).
                self._close_transport()
                return
            if not data:
                return
        parser = self.parser
        for event in parser.feed(data):
            if self.parser is not parser or self.closing:
                break  # the stream was restarted or closed: later events belong to no stream
            if event.__class__ is Element:
                if self._busy:
                    if self._queue is None:
                        self._queue = deque()
                    self._queue.append(event)
                    if len(self._queue) >= MAX_QUEUED_STANZAS and not self._reading_paused and self.transport:
                        self._reading_paused = True
                        self.transport.pause_reading()
                else:
                    self._process(event)
            elif isinstance(event, StreamOpened):
                self._run(self.stream.opened(event, self._channel_bindings()))
            elif isinstance(event, StreamClosed):
                self._peer_closed()
                break  # nothing follows the closing tag
            elif isinstance(event, StreamFailure):
                self.stream_error(event.condition, event.text)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.closing = True
        self.parser.release()
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if self._counted:
            self._counted = False
            self.service.limits.connections.release(self.peer_ip)
        if self._preauth is not None:
            self._preauth.release()
            self._preauth = None
        self.service.connections.discard(self)
        session = self.session
        if session is not None and session.connection is self:
            if self._busy:
                # Stanzas read before the connection went are still queued: they are the client's
                # (a client may send a message and hang up at once), so they are handled first.
                self._detach_when_drained = True
                asyncio.get_running_loop().call_later(DRAIN_AFTER_LOSS_SECONDS, self._detach_if_still_draining)
                return
            self.session = None
            self.service.sessions.detached(session, clean=self.closed_cleanly)

    def _detach_if_still_draining(self) -> None:
        if self._detach_when_drained:
            log.warning("%s: stanzas sent before the connection went were not handled in %.0f s; "
                        "ending the session", self.name, DRAIN_AFTER_LOSS_SECONDS)
            self._detach_drained()

    def _detach_drained(self) -> None:
        self._detach_when_drained = False
        session = self.session
        if session is not None and session.connection is self:
            self.session = None
            self.service.sessions.detached(session, clean=self.closed_cleanly)

    def detach(self) -> None:
        """The session was resumed on another connection: end this one without it."""
        self.session = None
        self._abort()

    # ============================================================================================
    # Output
    # ============================================================================================
    def send(self, stanza: Element) -> None:
        """Send ``stanza`` to the client: through its session once bound (XEP-0198, XEP-0352)."""
        if self.session is not None:
            self.session.send(stanza)
        else:
            self._write(serialize_top(stanza))

    def stream_error(self, condition: str, text: str = "") -> None:
        """Send a stream error and close (RFC 6120 section 4.9.1)."""
        if self.closing and self.transport is None:
            return
        log.debug("stream error %s to %s: %s", condition, self.peer_ip, text)
        self._run(self.stream.fail(condition, text))

    def _write(self, data: bytes) -> None:
        if self.transport is None:
            return
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    #: Queue bytes for the client: the session's way out (the same function, no extra call).
    write = _write

    def _flush(self) -> None:
        self._flush_scheduled = False
        transport = self.transport
        if not self._out or transport is None:
            self._out.clear()
            return
        data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
        self._out.clear()
        if self.tls is not None:
            try:
                self.tls.send(data)
            except ssl.SSLError:
                self._abort()
                return
            data = self.tls.take_output()
        transport.write(data)
        if transport.get_write_buffer_size() > MAX_WRITE_BUFFER and not self.closing:
            log.info("%s does not read its stream; closing", self.name)
            self._abort()

    def _write_now(self, data: bytes) -> None:
        self._write(data)
        self._flush()

    def release_buffers(self) -> bool:
        """A quiet connection gives back its parser and TLS buffers; return whether any was freed."""
        released = self.parser.compact()
        if self.tls is not None and self.tls.release_buffers():
            released = True
        return released

    def _close_transport(self) -> None:
        self.closing = True
        if self.transport is not None:
            if self.tls is not None:
                self.tls.close()
                pending = self.tls.take_output()
                if pending:
                    self.transport.write(pending)
            self.transport.close()

    def _abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    def _channel_bindings(self) -> dict[str, bytes] | None:
        """The TLS channel bindings for the SASL exchange; None once there is none to come (the
        stream after SASL keeps none: they are worked out for the header that offers SASL only)."""
        if self.stream.state is not State.AUTH:
            return None
        if self.tls is None or not self.tls.handshake_done:
            return {}
        return self.tls.channel_bindings(self.service.host.tls.certificate_der(self.stream.domain or ""))

    def _restart(self) -> None:
        """Expect a new stream header on a fresh parser (after STARTTLS and SASL success)."""
        self.parser.release()
        self.parser = XmlStreamParser(self.service.max_stanza_size)

    def _peer_closed(self) -> None:
        self.closed_cleanly = True
        if self.sm is not None:
            self.sm.resumable = False
        if self._busy:
            # Answered in its turn, after the stanzas the client sent before it (RFC 6120 section 4.4).
            if self._queue is None:
                self._queue = deque()
            self._queue.append(STREAM_CLOSED_MARK)
            return
        self._run(self.stream.closed())

    # ============================================================================================
    # What the stream state machine asks for
    # ============================================================================================
    def _run(self, actions: list[Action]) -> Awaitable[None] | None:
        """Carry ``actions`` out in order; one that needs waiting comes last and is returned."""
        for action in actions:
            if isinstance(action, Send):
                self._write(action.data)
            elif isinstance(action, Close):
                self._flush()
                self._close_transport()
            elif isinstance(action, StartTls):
                self._flush()  # <proceed/> goes out in the clear
                self.tls = TlsLayer(self.service.tls_context())
                self._restart()
            elif isinstance(action, Restart):
                self._flush()
                self._restart()
            elif isinstance(action, AuthFailed):
                if action.counts:
                    self.service.limits.auth.failure(self.peer_ip, action.account, protocol="xmpp",
                                                     mechanism=action.mechanism or "-")
            elif isinstance(action, Authenticated):
                self.service.limits.auth.success(self.peer_ip, action.account)
                if action.login_key is not None:
                    self._login_key = action.login_key
                if self._preauth is not None:
                    self._preauth.release()
                    self._preauth = None
                if self._deadline is not None:
                    self._deadline.cancel()
                    self._deadline = None
            elif isinstance(action, Lookup):
                return self._lookup(action)
            elif isinstance(action, Bind):
                return self._bind(action)
            elif isinstance(action, Manage):
                return self._manage(action.element)
            elif isinstance(action, PreAuthIq):
                return self._pre_auth_iq(action.iq)
        return None

    async def _pre_auth_iq(self, iq: Element) -> None:
        """An IQ before authentication: the ``c2s-pre-auth-iq`` event's handler answers it
        (``peerage.xmpp.features.register``); unhandled, it is service-unavailable."""
        event = PreAuthEvent(self, self.stream.domain or "", iq, self.peer_ip)
        try:
            reply = self.service.ctx.events.fire("c2s-pre-auth-iq", event)
            if reply is not None and not isinstance(reply, Element):
                reply = await reply
        except Exception:
            log.exception("pre-authentication IQ failed")
            reply = error_reply(iq, "internal-server-error")
        if reply is None:
            reply = error_reply(iq, "service-unavailable")
        if not self.closing:
            self._write(reply.to_bytes())
            self._flush()

    async def _lookup(self, action: Lookup) -> None:
        throttle = self.service.limits.auth
        account = action.account
        delay = throttle.check(self.peer_ip, account)
        if delay is None:
            self._run(self.stream.throttled())
            return
        if delay:
            await asyncio.sleep(delay)
        accounts = self.service.host.accounts
        step = action.step
        found: object
        if isinstance(step, sasl.NeedCredential):
            # protocol="xmpp": the account's short-lived XMPP login tokens count too (identity.tokens).
            found = await accounts.scram(account, step.hash_name, protocol="xmpp") if account else None
        else:
            found = bool(account) and bool(await accounts.verify_password(account, step.password, protocol="xmpp"))
            if found and looks_like_token(step.password):
                self._login_key = step.password
        if self.closing:
            return
        result = self._run(self.stream.sasl_result(found))
        if result is not None:
            await result

    async def _bind(self, action: Bind) -> None:
        iq = action.iq
        if len(action.resource.encode()) > MAX_RESOURCE_OCTETS:
            self._run(self.stream.bind_failed(iq, "bad-request"))
            return
        account = self.stream.authenticated
        assert account is not None
        if self._login_key is not None:
            await self._note_web_session()  # before the session exists: a later logout finds it marked
        bound = await self.service.sessions.bind(self, account, action.resource or secrets.token_hex(8))
        if isinstance(bound, str):
            self._run(self.stream.bind_failed(iq, bound, "too many resources bound"))
            return
        if self.closing:
            await self.service.sessions.end(bound)  # gone while binding: the session has no carrier
            return
        self.session = bound
        self._run(self.stream.bound(iq, bound.full_jid))

    # ============================================================================================
    # Element pipeline
    # ============================================================================================
    def _process(self, element: Element) -> None:
        try:
            session = self.session
            if session is not None and element.xmlns == "" and element.name in STANZA_NAMES:
                result = self._stanza(element)  # _handle, inlined: every stanza of a bound client
                if result is None:
                    sm = session.sm
                    if sm is not None:
                        sm.count_handled()
                    return
            else:
                result = self._handle(element)
        except Exception:
            log.exception("error handling an element from %s", self.name)
            self.stream_error("internal-server-error")
            return
        if result is None:
            sm = self.sm
            if sm is not None and element.name in STANZA_NAMES:
                sm.count_handled()
            return
        self._busy = True
        self.service.spawn(self._drain(result, element))

    async def _drain(self, pending: Awaitable[None], element: Element) -> None:
        try:
            await self._drain_queue(pending, element)
        finally:
            if self._detach_when_drained:
                self._busy = False
                self._queue = None
                self._detach_drained()

    async def _drain_queue(self, pending: Awaitable[None], element: Element) -> None:
        while True:
            try:
                await pending
            except Exception:
                log.exception("error handling an element from %s", self.name)
                self.stream_error("internal-server-error")
                return
            if self.sm is not None and element.name in STANZA_NAMES:
                self.sm.count_handled()
            while self._queue:
                element = self._queue.popleft()
                if element is STREAM_CLOSED_MARK:
                    self._queue = None
                    self._busy = False
                    self._run(self.stream.closed())
                    return
                if self.closing and (self.session is None or element.xmlns != "" or element.name not in STANZA_NAMES):
                    # The connection is gone: only the stanzas of a still-attached session are
                    # worth handling (they were sent before it went); the rest spoke to the stream.
                    continue
                try:
                    next_pending = self._handle(element)
                except Exception:
                    log.exception("error handling an element from %s", self.name)
                    self.stream_error("internal-server-error")
                    return
                if next_pending is not None:
                    pending = next_pending
                    break
                if self.sm is not None and element.name in STANZA_NAMES:
                    self.sm.count_handled()
            else:
                self._busy = False
                if self._reading_paused and self.transport is not None:
                    self._reading_paused = False
                    self.transport.resume_reading()
                return

    def _handle(self, element: Element) -> Awaitable[None] | None:
        if self.session is not None and element.xmlns == "" and element.name in STANZA_NAMES:
            return self._stanza(element)
        return self._run(self.stream.element(element))

    # --- stanzas from a bound client --------------------------------------------------------------
    def _stanza(self, stanza: Element) -> Awaitable[None] | None:
        session = self.session
        assert session is not None
        attrs = stanza.attrs
        claimed = attrs.get("from")
        if claimed is not None and claimed != session.full_jid and claimed != session.bare_jid:
            try:
                local, domain, resource = split_jid(claimed)
                normal = f"{local}@{domain}"
                ok = normal == session.bare_jid and resource in ("", session.resource)
            except JidError:
                ok = False
            if not ok:
                self.stream_error("invalid-from", "the from address is not yours")
                return None
        attrs["from"] = session.full_jid
        to = attrs.get("to")
        if to is not None:
            try:
                local, domain, resource = split_jid(to)
            except JidError:
                if attrs.get("type") != "error":
                    self.send(error_reply(stanza, "jid-malformed"))
                return None
            normal = (f"{local}@{domain}" if local else domain) + (f"/{resource}" if resource else "")
            if normal != to:
                attrs["to"] = normal
        if stanza.name == "iq":
            itype = attrs.get("type")
            if itype not in ("get", "set", "result", "error") or "id" not in attrs:
                self.send(error_reply(stanza, "bad-request"))
                return None
            payload = next(stanza.elements(), None)
            if payload is not None and payload.name == "session" and payload.xmlns == SESSION_NS and not to:
                reply = Element("iq", "", {"type": "result", "id": attrs["id"]})
                self.send(reply)
                return None
        return self.service.stanzas.from_client(session, stanza)

    # --- XEP-0198 -------------------------------------------------------------------------------
    def _manage(self, element: Element) -> Awaitable[None] | None:
        if element.xmlns == CSI_NS:
            if self.session is not None:
                self.session.set_active(element.name == "active")
            return None
        name = element.name
        session = self.session
        if name == "enable":
            if session is None or session.sm is not None:
                self._write(serialize_top(Element("failed", SM_NS, children=[
                    Element("unexpected-request", "urn:ietf:params:xml:ns:xmpp-stanzas")])))
                return None
            resumable = element.attrs.get("resume") in ("true", "1")
            session.sm = StreamManagementState(resumable)
            enabled = Element("enabled", SM_NS)
            if resumable and session.sm.resume_id:
                enabled.attrs.update({"id": session.sm.resume_id, "resume": "true",
                                      "max": str(int(self.service.sessions.resumption_timeout))})
                self.service.sessions.enable_resumption(session)
            self._write(serialize_top(enabled))
            return None
        sm = self.sm
        if name == "r":
            if sm is not None:
                gate = self.service.ack_gate
                wait = gate(session) if gate is not None and session is not None else None
                if wait is None and self._acking is None:
                    self._write(f"<a xmlns='urn:xmpp:sm:3' h='{sm.handled}'/>".encode())
                else:
                    # Held back (peerage.cluster: until what was counted is stored), while the
                    # stanzas after it are handled; answers keep their order.
                    self._acking = asyncio.ensure_future(self._answer_later(sm.handled, wait, self._acking))
            return None
        if name == "a":
            if sm is not None:
                try:
                    h = int(element.attrs.get("h", ""))
                except ValueError:
                    self.stream_error("undefined-condition", "invalid h")
                    return None
                if not sm.ack(h):
                    self.stream_error("undefined-condition", "acknowledged more stanzas than were sent")
                elif session is not None and self.service.ctx.events.has("sm-acked"):
                    # Who held a copy of what the client now has can let it go (peerage.cluster).
                    self.service.ctx.events.fire("sm-acked", session)
            return None
        if name == "resume":
            return self._resume(element)
        self.stream_error("unsupported-stanza-type", f"unexpected <{name}/>")
        return None

    async def _answer_later(self, h: int, wait: Awaitable[None] | None, before: Awaitable[None] | None) -> None:
        with contextlib.suppress(Exception):
            if before is not None:
                await before
            if wait is not None:
                await wait
        self._write(f"<a xmlns='urn:xmpp:sm:3' h='{h}'/>".encode())
        if self._acking is asyncio.current_task():
            self._acking = None

    def _resume(self, element: Element, gated: bool = False) -> Awaitable[None] | None:
        previd = element.attrs.get("previd", "")
        gate = self.service.ack_gate
        if gate is not None and not gated and self.session is None:
            # <resumed h=/> acknowledges too: it waits for the same gate as <a/>, before the session
            # is attached here (nothing may be written to this stream before <resumed/>).
            old = self.service.sessions.resumable.get(previd)
            wait = gate(old) if old is not None else None
            if wait is not None:
                return self._resume_after(wait, element)
        failed = Element("failed", SM_NS, children=[Element("item-not-found", "urn:ietf:params:xml:ns:xmpp-stanzas")])
        try:
            h = int(element.attrs.get("h", ""))
        except ValueError:
            h = -1
        session = None
        if self.session is None and h >= 0 and self.stream.authenticated is not None:
            session = self.service.sessions.resume(self, self.stream.authenticated, previd, h)
        if session is None:
            self._write(serialize_top(failed))
            return None
        self.session = session
        self.stream.resumed()
        sm = session.sm
        assert sm is not None
        self._write(f"<resumed xmlns='urn:xmpp:sm:3' previd='{previd}' h='{sm.handled}'/>".encode())
        for data, _, _ in sm.unacked:
            self._write(data)
        if sm.unacked:
            self._write(b"<r xmlns='urn:xmpp:sm:3'/>")
        return self._note_web_session() if self._login_key is not None else None

    async def _resume_after(self, wait: Awaitable[None], element: Element) -> None:
        with contextlib.suppress(Exception):
            await wait
        result = self._resume(element, gated=True)
        if result is not None:
            await result

    async def _note_web_session(self) -> None:
        """Which web session gave the login token this stream authenticated with (identity.tokens)."""
        account, key = self.stream.authenticated, self._login_key
        self._login_key = None
        if account is not None and key is not None and self.web_session is None:
            self.web_session = await self.service.host.accounts.tokens.web_session_of(account, "xmpp", key)
