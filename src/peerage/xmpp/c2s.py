"""Client-to-server connections (RFC 6120): negotiation and the stream's stanza pipeline.

This module is in charge of one client connection from the first byte to the last: STARTTLS on the
plain port or TLS from the start on the Direct TLS port (XEP-0368), SASL (``peerage.xmpp.sasl``) with
the authentication throttle, resource binding, stream errors as RFC 6120 section 4.9 specifies, and
the XEP-0198 and XEP-0352 elements of the stream. Once a resource is bound, the connection carries a
``ClientSession`` (``peerage.xmpp.session``), which outlives it when the stream can be resumed;
stanzas go to the stanza router (``peerage.xmpp.stanzas``).

Incoming stanzas are processed strictly in order. Those that can be handled without waiting (a
message to an online contact) are handled inside ``data_received``; when one needs storage, later
ones queue behind it, and reading pauses if that queue grows. Outgoing data is gathered and written
once per event-loop iteration.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl
import time
from collections import deque
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from peerage.identity.address import AddressError, parse_address
from peerage.xmpp import sasl
from peerage.xmpp.features.csi import CSI_NS
from peerage.xmpp.features.sm import SM_NS, StreamManagementState
from peerage.xmpp.jid import MAX_RESOURCE_OCTETS, JidError, split_jid
from peerage.xmpp.session import ClientSession
from peerage.xmpp.stream import (
    CLIENT_NS,
    STREAM_CLOSE,
    STREAM_NS,
    Element,
    StreamClosed,
    StreamFailure,
    StreamOpened,
    XmlStreamParser,
    error_reply,
    serialize,
    stream_error,
    stream_header,
)
from peerage.xmpp.tls_layer import TlsLayer

if TYPE_CHECKING:
    from peerage.xmpp.service import XmppService

log = logging.getLogger(__name__)

TLS_NS = "urn:ietf:params:xml:ns:xmpp-tls"
BIND_NS = "urn:ietf:params:xml:ns:xmpp-bind"
SESSION_NS = "urn:ietf:params:xml:ns:xmpp-session"

#: Stanzas waiting behind one that needs storage before reading from the socket pauses. Enough to
#: absorb a burst; small enough that a client cannot make the server buffer without bound.
MAX_QUEUED_STANZAS = 64
#: Bytes waiting to be written to a client before it counts as not reading and is disconnected
#: (Prosody closes c2s connections whose send buffer exceeds its "max_send_buffer_size", 1 MiB).
MAX_WRITE_BUFFER = 4 * 1024 * 1024
#: Bytes read from the socket per call are set by the event loop; a TLS record is at most 16 KiB.
#: Stream IDs: 128 bits of randomness (RFC 6120 section 4.7.3 asks for unpredictability).
STREAM_ID_BYTES = 16

STANZA_NAMES = frozenset(("message", "presence", "iq"))


class C2SConnection(asyncio.Protocol):
    """One client connection and, once bound, the session it carries."""

    # Slots keep an idle connection small (thousands of these live at once).
    __slots__ = (
        "_busy",
        "_counted",
        "_flush_scheduled",
        "_out",
        "_queue",
        "_reading_paused",
        "authenticated",
        "closed_cleanly",
        "closing",
        "direct_tls",
        "domain",
        "header_sent",
        "last_activity",
        "parser",
        "peer_ip",
        "sasl",
        "sasl_failures",
        "service",
        "session",
        "tls",
        "transport",
    )

    def __init__(self, service: XmppService, *, direct_tls: bool) -> None:
        self.service = service
        self.direct_tls = direct_tls
        self.transport: asyncio.Transport | None = None
        self.peer_ip = ""
        self.tls: TlsLayer | None = None
        self.parser = XmlStreamParser(service.max_stanza_size)
        self.header_sent = False
        self.domain: str | None = None
        self.authenticated: str | None = None  # bare JID after SASL
        self.sasl: sasl.SaslExchange | None = None
        self.sasl_failures = 0
        self.closing = False
        self.closed_cleanly = False
        self.last_activity = time.monotonic()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._queue: deque[Element] | None = None
        self._busy = False
        self._reading_paused = False
        self._counted = False
        #: The bound resource this connection carries (None before binding and once detached).
        self.session: ClientSession | None = None

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
            self._stream_error("policy-violation", "too many connections from your address")
            return
        self._counted = True
        self.service.connections.add(self)
        if self.direct_tls:
            self.tls = TlsLayer(self.service.tls_context())

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
                self._stream_opened(event)
            elif isinstance(event, StreamClosed):
                self._peer_closed()
            elif isinstance(event, StreamFailure):
                self._stream_error(event.condition, event.text)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.closing = True
        if self._counted:
            self._counted = False
            self.service.limits.connections.release(self.peer_ip)
        self.service.connections.discard(self)
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
            self._write(_serialize_element(stanza))

    def write(self, data: bytes) -> None:
        """Queue bytes for the client (the session's way out)."""
        self._write(data)

    def stream_error(self, condition: str, text: str = "") -> None:
        self._stream_error(condition, text)

    def _write(self, data: bytes) -> None:
        if self.transport is None:
            return
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

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

    def _stream_error(self, condition: str, text: str = "") -> None:
        """Send a stream error and close (RFC 6120 section 4.9.1)."""
        if self.closing and self.transport is None:
            return
        log.debug("stream error %s to %s: %s", condition, self.peer_ip, text)
        if not self.header_sent:
            self._write(stream_header(stream_id=self._new_id(), from_=self.domain or self.service.default_domain))
            self.header_sent = True
        self._write_now(stream_error(condition, text))
        self._close_transport()

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

    @staticmethod
    def _new_id() -> str:
        return secrets.token_hex(STREAM_ID_BYTES)

    # ============================================================================================
    # Stream negotiation
    # ============================================================================================
    def _stream_opened(self, event: StreamOpened) -> None:
        attrs = event.attrs
        to = attrs.get("to", "")
        try:
            domain = split_jid(to)[1] if to else ""
        except JidError:
            domain = ""
        if not domain or not self.service.router.is_hosted(domain) or (self.domain and domain != self.domain):
            self._stream_error("host-unknown", f"this server does not serve {to or 'an unnamed domain'}")
            return
        self.domain = domain
        self._write(stream_header(stream_id=self._new_id(), from_=domain))
        self.header_sent = True
        if event.content_ns != CLIENT_NS:
            self._stream_error("invalid-namespace", "the stream namespace must be jabber:client")
            return
        if attrs.get("version", "0.9").split(".")[0] < "1":
            self._stream_error("unsupported-version", "this server speaks XMPP 1.0 only")
            return
        features = Element("features", STREAM_NS)
        if self.tls is None:
            if not self.service.tls_available:
                self._stream_error("undefined-condition", "TLS is required but no certificate is configured")
                return
            features.add("starttls", TLS_NS).add("required")
        elif self.authenticated is None:
            bindings = self._channel_bindings()
            for element in sasl.mechanisms_feature(
                    sasl.offered_mechanisms(tls=True, channel_bindings=bindings), bindings):
                features.children.append(element)
        else:
            features.add("bind", BIND_NS)
            features.add("session", SESSION_NS).add("optional")
            for feature in self.service.ctx.features:
                features.children.extend(feature.stream_features(self))
        self._write(_serialize_stream_element(features))

    def _channel_bindings(self) -> dict[str, bytes]:
        if self.tls is None or not self.tls.handshake_done:
            return {}
        return self.tls.channel_bindings(self.service.host.tls.certificate_der(self.domain or ""))

    def _restart(self) -> None:
        """Expect a new stream header on a fresh parser (after STARTTLS and SASL success)."""
        self.parser = XmlStreamParser(self.service.max_stanza_size)
        self.header_sent = False

    def _peer_closed(self) -> None:
        self.closed_cleanly = True
        if self.sm is not None:
            self.sm.resumable = False
        self._write_now(STREAM_CLOSE)
        self._close_transport()

    # ============================================================================================
    # Element pipeline
    # ============================================================================================
    def _process(self, element: Element) -> None:
        try:
            result = self._handle(element)
        except Exception:
            log.exception("error handling an element from %s", self.name)
            self._stream_error("internal-server-error")
            return
        if result is None:
            if self.sm is not None and element.name in STANZA_NAMES:
                self.sm.count_handled()
            return
        self._busy = True
        self.service.spawn(self._drain(result, element))

    async def _drain(self, pending: Awaitable[None], element: Element) -> None:
        while True:
            try:
                await pending
            except Exception:
                log.exception("error handling an element from %s", self.name)
                self._stream_error("internal-server-error")
                return
            if self.sm is not None and element.name in STANZA_NAMES:
                self.sm.count_handled()
            while self._queue:
                if self.closing:
                    self._queue = None
                    break
                element = self._queue.popleft()
                try:
                    next_pending = self._handle(element)
                except Exception:
                    log.exception("error handling an element from %s", self.name)
                    self._stream_error("internal-server-error")
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
        if self.bound and element.xmlns == "" and element.name in STANZA_NAMES:
            return self._stanza(element)
        ns = element.xmlns
        name = element.name
        if self.tls is None:
            if name == "starttls" and ns == TLS_NS:
                self._starttls()
                return None
            if ns == sasl.SASL_NS and name == "auth":
                self._write(_serialize_stream_element(_sasl_failure("encryption-required")))
                self._stream_error("policy-violation", "TLS is required")
                return None
            self._stream_error("not-authorized", "negotiate TLS first")
            return None
        if self.authenticated is None:
            if ns == sasl.SASL_NS:
                return self._sasl(element)
            self._stream_error("not-authorized", "authenticate first")
            return None
        if ns == SM_NS:
            return self._stream_management(element)
        if ns == CSI_NS and name in ("active", "inactive"):
            if self.session is not None:
                self.session.set_active(name == "active")
            return None
        if not self.bound:
            if name == "iq" and ns == "":
                return self._pre_bind_iq(element)
            self._stream_error("not-authorized", "bind a resource first")
            return None
        self._stream_error("unsupported-stanza-type", f"unexpected element <{name}/>")
        return None

    # --- STARTTLS (RFC 6120 section 5) ---------------------------------------------------------
    def _starttls(self) -> None:
        self._write_now(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        self.tls = TlsLayer(self.service.tls_context())
        self._restart()

    # --- SASL (RFC 6120 section 6) -------------------------------------------------------------
    def _sasl(self, element: Element) -> Awaitable[None] | None:
        name = element.name
        if name == "auth":
            self.sasl = sasl.SaslExchange(tls=True, channel_bindings=self._channel_bindings(),
                                          domain=self.domain or "")
            return self._sasl_step(self.sasl.auth(element))
        if self.sasl is None:
            self._stream_error("policy-violation", "no SASL exchange in progress")
            return None
        if name == "response":
            return self._sasl_step(self.sasl.response(element))
        if name == "abort":
            return self._sasl_step(self.sasl.abort())
        self._stream_error("unsupported-stanza-type", f"unexpected SASL element <{name}/>")
        return None

    def _sasl_step(self, step: sasl.Step) -> Awaitable[None] | None:
        if isinstance(step, sasl.Send):
            self._write(_serialize_stream_element(step.element))
            return None
        if isinstance(step, sasl.Failed):
            return self._sasl_failed(step)
        if isinstance(step, sasl.Succeeded):
            return self._sasl_succeeded(step)
        return self._sasl_lookup(step)

    def _account(self, username: str) -> str | None:
        try:
            if "@" in username:
                address = parse_address(username)
                if address.domain != self.domain:
                    return None
            else:
                address = parse_address(f"{username}@{self.domain}")
        except AddressError:
            return None
        return str(address)

    async def _sasl_lookup(self, step: sasl.NeedCredential | sasl.NeedPassword) -> None:
        throttle = self.service.limits.auth
        account = self._account(step.username)
        delay = throttle.check(self.peer_ip, account)
        if delay is None:
            self._write(_serialize_stream_element(_sasl_failure("temporary-auth-failure",
                                                                "too many failed attempts; try later")))
            self._stream_error("policy-violation", "too many failed authentication attempts")
            return
        if delay:
            await asyncio.sleep(delay)
        assert self.sasl is not None
        if isinstance(step, sasl.NeedCredential):
            credential = await self.service.host.accounts.scram(account, step.hash_name) if account else None
            next_step = self.sasl.credential_found(credential)
        else:
            ok = bool(account) and await self.service.host.accounts.verify_password(account, step.password)
            next_step = self.sasl.password_checked(ok)
        result = self._sasl_step(next_step)
        if result is not None:
            await result

    async def _sasl_failed(self, step: sasl.Failed) -> None:
        account = self._account(step.username) if step.username else None
        if step.condition != "aborted":
            self.service.limits.auth.failure(self.peer_ip, account, protocol="xmpp",
                                             mechanism=(self.sasl.mechanism if self.sasl else None) or "-")
        self.sasl_failures += 1
        self._write(_serialize_stream_element(step.element))
        if self.sasl_failures >= sasl.MAX_FAILURES_PER_STREAM:
            self._stream_error("policy-violation", "too many failed authentication attempts")

    async def _sasl_succeeded(self, step: sasl.Succeeded) -> None:
        account = self._account(step.username)
        if account is None:
            await self._sasl_failed(sasl.Failed(_sasl_failure("not-authorized"), "not-authorized", None))
            return
        self.service.limits.auth.success(self.peer_ip, account)
        self.authenticated = account
        self.sasl = None
        self._write_now(_serialize_stream_element(step.element))
        self._restart()

    # --- resource binding (RFC 6120 section 7) and legacy session -------------------------------
    def _pre_bind_iq(self, iq: Element) -> Awaitable[None] | None:
        payload = next(iq.elements(), None)
        if iq.attrs.get("type") == "set" and payload is not None and payload.name == "bind" and payload.xmlns == BIND_NS:
            return self._bind(iq, payload)
        self._write(_serialize_element(error_reply(iq, "not-authorized" if payload is None or payload.xmlns != SESSION_NS
                                                    else "not-allowed")))
        return None

    async def _bind(self, iq: Element, payload: Element) -> None:
        requested = (payload.find_text("resource") or "").strip()
        if len(requested.encode()) > MAX_RESOURCE_OCTETS:
            self.send_raw_error(iq, "bad-request")
            return
        resource = requested or secrets.token_hex(8)
        assert self.authenticated is not None
        bound = await self.service.sessions.bind(self, self.authenticated, resource)
        if isinstance(bound, str):
            self._write(_serialize_element(error_reply(iq, bound, "too many resources bound")))
            return
        if self.closing:
            # Gone while binding: the session never had a carrier.
            await self.service.sessions.end(bound)
            return
        self.session = bound
        reply = Element("iq", "", {"type": "result", "id": iq.attrs.get("id", "")})
        reply.add("bind", BIND_NS).add("jid", text=bound.full_jid)
        self._write(_serialize_element(reply))

    def send_raw_error(self, iq: Element, condition: str) -> None:
        self._write(_serialize_element(error_reply(iq, condition)))

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
                self._stream_error("invalid-from", "the from address is not yours")
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
    def _stream_management(self, element: Element) -> Awaitable[None] | None:
        name = element.name
        session = self.session
        if name == "enable":
            if session is None or session.sm is not None:
                self._write(_serialize_element(Element("failed", SM_NS, children=[
                    Element("unexpected-request", "urn:ietf:params:xml:ns:xmpp-stanzas")])))
                return None
            resumable = element.attrs.get("resume") in ("true", "1")
            session.sm = StreamManagementState(resumable)
            enabled = Element("enabled", SM_NS)
            if resumable and session.sm.resume_id:
                enabled.attrs.update({"id": session.sm.resume_id, "resume": "true",
                                      "max": str(int(self.service.sessions.resumption_timeout))})
                self.service.sessions.enable_resumption(session)
            self._write(_serialize_element(enabled))
            return None
        sm = self.sm
        if name == "r":
            if sm is not None:
                self._write(f"<a xmlns='urn:xmpp:sm:3' h='{sm.handled}'/>".encode())
            return None
        if name == "a":
            if sm is not None:
                try:
                    h = int(element.attrs.get("h", ""))
                except ValueError:
                    self._stream_error("undefined-condition", "invalid h")
                    return None
                if not sm.ack(h):
                    self._stream_error("undefined-condition", "acknowledged more stanzas than were sent")
            return None
        if name == "resume":
            return self._resume(element)
        self._stream_error("unsupported-stanza-type", f"unexpected <{name}/>")
        return None

    def _resume(self, element: Element) -> Awaitable[None] | None:
        previd = element.attrs.get("previd", "")
        failed = Element("failed", SM_NS, children=[Element("item-not-found", "urn:ietf:params:xml:ns:xmpp-stanzas")])
        try:
            h = int(element.attrs.get("h", ""))
        except ValueError:
            h = -1
        session = None
        if self.session is None and h >= 0 and self.authenticated is not None:
            session = self.service.sessions.resume(self, self.authenticated, previd, h)
        if session is None:
            self._write(_serialize_element(failed))
            return None
        self.session = session
        sm = session.sm
        assert sm is not None
        self._write(f"<resumed xmlns='urn:xmpp:sm:3' previd='{previd}' h='{sm.handled}'/>".encode())
        for data, _ in sm.unacked:
            self._write(data)
        if sm.unacked:
            self._write(b"<r xmlns='urn:xmpp:sm:3'/>")
        return None


def _serialize_stream_element(element: Element) -> bytes:
    """Serialize a first-level non-stanza element (features, SASL, TLS, SM) on a client stream."""
    if element.xmlns == STREAM_NS:
        out = serialize(element, CLIENT_NS, parent_ns=STREAM_NS)
        # <features xmlns='http://etherx...'> is valid XML but clients expect the stream: prefix.
        return ("<stream:features>" + out[out.index(">") + 1: -len("</features>")] + "</stream:features>").encode() \
            if out.endswith("</features>") else b"<stream:features/>"
    return serialize(element, CLIENT_NS).encode()


def _serialize_element(element: Element) -> bytes:
    return serialize(element, CLIENT_NS).encode()


def _sasl_failure(condition: str, text: str = "") -> Element:
    failure = Element("failure", sasl.SASL_NS)
    failure.add(condition)
    if text:
        failure.add("text", text=text)
    return failure

