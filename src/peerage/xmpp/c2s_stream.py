"""The client stream state machine (RFC 6120 sections 4 to 7), sans-I/O, in the shape of h11.

This module is in charge of what a client stream may do in each negotiation state and what the
server answers: the stream header checks (section 4.7), STARTTLS required before anything else
(section 5), SASL (section 6: the XML framing around ``peerage.identity.sasl``, which owns the
mechanisms, the login-name rule, channel binding and every check) and resource binding (section 7). It is
fed parser events (``opened``, ``element``, ``closed``, ``failure``) and the results of the lookups
it asked for (``sasl_result``), and returns actions for the connection to carry out. It owns no
socket, no TLS object, no clock and no database.

The states, and what moves the stream from one to the next:

======================  ==================================  ==========================================
state                   element (after the header)          next state
======================  ==================================  ==========================================
``TLS``                 ``<starttls/>``                     ``TLS`` again, on the TLS layer (restart)
``AUTH``                ``<auth/>`` ... ``<success/>``      ``BIND`` (restart)
``BIND``                ``<iq><bind/></iq>``, ``<resume/>``  ``BOUND`` once the connection has bound
``BOUND``               stanzas, XEP-0198/0352 elements     ``BOUND``
any                     ``</stream:stream>`` or an error    ``CLOSED``
======================  ==================================  ==========================================

A state starts with the client's stream header: each restart (after TLS and after SASL) expects a
new one. Stanzas on a bound stream do not come through here: the connection hands them to the
stanza router directly, which keeps the hot path one branch long.
"""

from __future__ import annotations

import base64
import binascii
import enum
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from peerage.identity import sasl
from peerage.identity.address import AddressError, parse_address
from peerage.identity.sasl import LoginNames
from peerage.xmpp.features.csi import CSI_NS
from peerage.xmpp.features.sm import SM_NS
from peerage.xmpp.jid import JidError, split_jid
from peerage.xmpp.stream import (
    CLIENT_NS,
    SASL_NS,
    STREAM_CLOSE,
    STREAM_NS,
    TLS_NS,
    Element,
    StreamOpened,
    error_reply,
    serialize,
    serialize_features,
    stream_error,
    stream_header,
)

#: XEP-0440 SASL channel-binding type capability.
SASL_CB_NS = "urn:xmpp:sasl-cb:0"
BIND_NS = "urn:ietf:params:xml:ns:xmpp-bind"
SESSION_NS = "urn:ietf:params:xml:ns:xmpp-session"
#: Largest base64 payload accepted in <auth/> or <response/>: the engine's message bound grown by 4/3.
MAX_SASL_PAYLOAD_CHARS = sasl.MAX_CLIENT_MESSAGE * 4 // 3 + 4
#: Failed SASL attempts on one stream before it is closed (the engine's per-connection bound).
MAX_FAILURES_PER_STREAM = sasl.MAX_FAILURES_PER_CONNECTION
#: Stream IDs: 128 bits of randomness (RFC 6120 section 4.7.3 asks for unpredictability).
STREAM_ID_BYTES = 16
#: IQs a stream may send before it authenticates (XEP-0077 registration, XEP-0401 pre-auth): a
#: registration takes two or three; Prosody's mod_register_ibr has no count but closes the stream
#: after a registration, so a handful more is generous.
MAX_PRE_AUTH_IQS = 10


#: Shared by every stream without channel bindings (never mutated: ``opened`` replaces it).
_NO_BINDINGS: dict[str, bytes] = {}


class State(enum.Enum):
    TLS = "tls"
    AUTH = "auth"
    BIND = "bind"
    BOUND = "bound"
    CLOSED = "closed"


# --- actions -----------------------------------------------------------------------------------
@dataclass(slots=True)
class Send:
    """Write ``data`` to the client."""

    data: bytes


@dataclass(slots=True)
class StartTls:
    """``<proceed/>`` is out: put the TLS layer under the stream and expect a new header."""


@dataclass(slots=True)
class Restart:
    """Expect a new stream header on a fresh parser (after SASL success)."""


@dataclass(slots=True)
class Close:
    """Everything to send is out (a stream error or the closing tag): close the connection."""

    condition: str | None = None


@dataclass(slots=True)
class Lookup:
    """A SASL step needs the account store: do ``step``, then call ``sasl_result``."""

    step: sasl.NeedCredential | sasl.NeedPassword
    account: str | None


@dataclass(slots=True)
class AuthFailed:
    """One failed attempt (for the throttle); ``account`` when the client named one."""

    account: str | None
    counts: bool
    mechanism: str | None = None


@dataclass(slots=True)
class Authenticated:
    account: str
    # the SCRAM stored key of the app password or login token that matched (identity.tokens)
    login_key: bytes | None = None


@dataclass(slots=True)
class Bind:
    """Bind ``resource`` ('' for one the server picks) for ``iq``; then call ``bound`` or ``bind_failed``."""

    iq: Element
    resource: str


@dataclass(slots=True)
class PreAuthIq:
    """An IQ before authentication (XEP-0077 in-band registration): answer it through the
    ``c2s-pre-auth-iq`` event; the stream stays in the AUTH state."""

    iq: Element


@dataclass(slots=True)
class Manage:
    """A XEP-0198 or XEP-0352 element for the session layer."""

    element: Element


Action = Send | StartTls | Restart | Close | Lookup | AuthFailed | Authenticated | Bind | Manage | PreAuthIq


def serialize_top(element: Element) -> bytes:
    """Serialize a first-level element (features, SASL, TLS, SM, stanzas) on a client stream."""
    if element.xmlns == STREAM_NS and element.name == "features":
        return serialize_features(element, CLIENT_NS)
    return serialize(element, CLIENT_NS).encode()


def sasl_failure(condition: str, text: str = "") -> Element:
    failure = Element("failure", SASL_NS)
    failure.add(condition)
    if text:
        failure.add("text", text=text)
    return failure


def mechanisms_feature(mechanisms: list[str], channel_bindings: dict[str, bytes]) -> list[Element]:
    """The <mechanisms/> feature and, with channel binding, XEP-0440 <sasl-channel-binding/>."""
    feature = Element("mechanisms", SASL_NS)
    for name in mechanisms:
        feature.add("mechanism", text=name)
    features = [feature]
    if channel_bindings and any(m.endswith("-PLUS") for m in mechanisms):
        cb = Element("sasl-channel-binding", SASL_CB_NS)
        for kind in channel_bindings:
            cb.add("channel-binding", attrs={"type": kind})
        features.append(cb)
    return features


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode() if data else "="


def _decode(text: str) -> bytes | None:
    """The payload of <auth/> or <response/>; None when it is not valid base64 or too long."""
    text = text.strip()
    if len(text) > MAX_SASL_PAYLOAD_CHARS:
        return None
    if text in ("", "="):  # RFC 6120 section 6.4.2: "=" is an empty response
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


class C2SStream:
    """The negotiation of one client stream."""

    __slots__ = ("_features", "_hosted", "_pre_auth", "authenticated", "bindings", "default_domain", "domain",
                 "exchange", "failures", "header_sent", "pre_auth_iqs", "state", "tls", "tls_available", "versioned")

    exchange: sasl.SaslServer | None

    def __init__(self, *, tls: bool, tls_available: bool, hosted: Callable[[str], bool],
                 features: Callable[[], list[Element]], default_domain: str = "",
                 pre_auth: Callable[[str], list[Element]] | None = None) -> None:
        self.tls = tls
        self.tls_available = tls_available
        self._hosted = hosted
        self._features = features  # stream features of the modules, offered after authentication
        #: stream features offered before authentication (XEP-0077 <register/>), for a domain; when
        #: set, IQs before authentication go out as PreAuthIq actions
        self._pre_auth = pre_auth
        self.pre_auth_iqs = 0
        self.default_domain = default_domain
        #: TLS channel bindings of the connection (RFC 9266, RFC 5929), known once TLS is up.
        self.bindings: dict[str, bytes] = _NO_BINDINGS
        self.state = State.AUTH if tls else State.TLS
        self.domain: str | None = None
        self.authenticated: str | None = None  # bare JID after SASL
        #: The SASL exchange in progress (RFC 6120 section 6.4), None between exchanges.
        self.exchange = None
        self.failures = 0
        self.header_sent = False
        #: The client's header carried version='1.0' (our replies carry it only then).
        self.versioned = True

    # --- the stream header ----------------------------------------------------------------------
    def opened(self, event: StreamOpened, bindings: dict[str, bytes] | None = None) -> list[Action]:
        """The client's stream header; ``bindings`` are the TLS channel bindings, if TLS is up."""
        if bindings is not None:
            self.bindings = bindings
        attrs = event.attrs
        to = attrs.get("to", "")
        try:
            domain = split_jid(to)[1] if to else ""
        except JidError:
            domain = ""
        # RFC 6120 section 4.7.5: a header without version is answered without one.
        self.versioned = "version" in attrs
        if not domain or not self._hosted(domain) or (self.domain and domain != self.domain):
            return self.fail("host-unknown", f"this server does not serve {to or 'an unnamed domain'}")
        self.domain = domain
        out: list[Action] = [Send(self._header())]
        if event.content_ns != CLIENT_NS:
            return out + self.fail("invalid-namespace", "the stream namespace must be jabber:client")
        if attrs.get("version", "0.9").split(".")[0] < "1":
            return out + self.fail("unsupported-version", "this server speaks XMPP 1.0 only")
        features = Element("features", STREAM_NS)
        if self.state is State.TLS:
            if not self.tls_available:
                return out + self.fail("undefined-condition", "TLS is required but no certificate is configured")
            features.add("starttls", TLS_NS).add("required")
        elif self.state is State.AUTH:
            bindings = self.bindings
            features.children.extend(mechanisms_feature(
                sasl.offered_mechanisms(secure=True, channel_bindings=bindings), bindings))
            if self._pre_auth is not None:
                features.children.extend(self._pre_auth(domain))
        else:
            features.add("bind", BIND_NS)
            features.add("session", SESSION_NS).add("optional")
            features.children.extend(self._features())
        out.append(Send(serialize_top(features)))
        return out

    def _header(self) -> bytes:
        self.header_sent = True
        return stream_header(stream_id=secrets.token_hex(STREAM_ID_BYTES), from_=self.domain or self.default_domain,
                             version="1.0" if self.versioned else None)

    # --- elements before the stream is bound ----------------------------------------------------
    def element(self, element: Element) -> list[Action]:
        state = self.state
        ns = element.xmlns
        name = element.name
        if state is State.TLS:
            if name == "starttls" and ns == TLS_NS:
                self.tls = True
                self.state = State.AUTH
                self.header_sent = False
                return [Send(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"), StartTls()]
            if ns == SASL_NS and name == "auth":
                return [Send(serialize_top(sasl_failure("encryption-required"))),
                        *self.fail("policy-violation", "TLS is required")]
            return self.fail("not-authorized", "negotiate TLS first")
        if state is State.AUTH:
            if ns == SASL_NS:
                return self._sasl(element)
            if name == "iq" and ns == "" and self._pre_auth is not None:
                self.pre_auth_iqs += 1
                if self.pre_auth_iqs > MAX_PRE_AUTH_IQS:
                    return self.fail("policy-violation", f"at most {MAX_PRE_AUTH_IQS} requests before authenticating")
                return [PreAuthIq(element)]
            return self.fail("not-authorized", "authenticate first")
        if ns == SM_NS or (ns == CSI_NS and name in ("active", "inactive")):
            return [Manage(element)]
        if state is State.BIND:
            if name == "iq" and ns == "":
                return self._pre_bind_iq(element)
            return self.fail("not-authorized", "bind a resource first")
        if state is State.CLOSED:
            return []
        return self.fail("unsupported-stanza-type", f"unexpected element <{name}/>")

    def closed(self) -> list[Action]:
        """The client sent ``</stream:stream>`` (RFC 6120 section 4.4)."""
        self.state = State.CLOSED
        return [Send(STREAM_CLOSE), Close()]

    def fail(self, condition: str, text: str = "") -> list[Action]:
        """A stream error (RFC 6120 section 4.9.1): header first if none was sent, then close."""
        if self.state is State.CLOSED:
            return []
        self.state = State.CLOSED
        out: list[Action] = []
        if not self.header_sent:
            out.append(Send(self._header()))
        out.append(Send(stream_error(condition, text)))
        out.append(Close(condition))
        return out

    # --- SASL (RFC 6120 section 6) --------------------------------------------------------------
    def _sasl(self, element: Element) -> list[Action]:
        name = element.name
        if name == "auth":
            domain = self.domain or ""
            # RFC 6120 section 6.4.6: the account is on the stream's domain; alice@<that domain> too.
            self.exchange = sasl.SaslServer(
                mechanisms=sasl.offered_mechanisms(secure=True, channel_bindings=self.bindings),
                login=LoginNames(domain or None, [domain] if domain else []),
                channel_bindings=self.bindings, secure=True)
            payload = _decode(element.text)
            if payload is None:
                return self._step(sasl.Failure("incorrect-encoding", "the payload is not valid base64"))
            # RFC 6120 section 6.4.2: an empty element means no initial response, "=" an empty one.
            initial = None if not element.text.strip() else payload
            return self._step(self.exchange.start(element.attrs.get("mechanism", ""), initial))
        if self.exchange is None:
            return self.fail("policy-violation", "no SASL exchange in progress")
        if name == "response":
            payload = _decode(element.text)
            if payload is None:
                return self._step(sasl.Failure("incorrect-encoding", "the payload is not valid base64"))
            return self._step(self.exchange.respond(payload))
        if name == "abort":
            return self._step(self.exchange.abort())
        return self.fail("unsupported-stanza-type", f"unexpected SASL element <{name}/>")

    def sasl_result(self, found: object) -> list[Action]:
        """The answer to a ``Lookup``: the SCRAM credential (or None), or whether the password is right."""
        assert self.exchange is not None
        if isinstance(found, bool):
            return self._step(self.exchange.password_checked(found))
        return self._step(self.exchange.credential_found(found))  # type: ignore[arg-type]

    def throttled(self) -> list[Action]:
        """The throttle refused another attempt from this address or for this account."""
        return [Send(serialize_top(sasl_failure("temporary-auth-failure", "too many failed attempts; try later"))),
                *self.fail("policy-violation", "too many failed authentication attempts")]

    def _step(self, step: sasl.Step) -> list[Action]:
        """Frame one step of the SASL engine as elements and actions (RFC 6120 section 6.4)."""
        if isinstance(step, sasl.Challenge):
            return [Send(serialize_top(Element("challenge", SASL_NS, children=[_b64(step.data)])))]
        if isinstance(step, sasl.Failure):
            account = self.account(step.username) if step.username else None
            text = "" if step.condition == "aborted" else step.text
            return self._failed(sasl_failure(step.condition, text), account, counts=step.condition != "aborted")
        if isinstance(step, sasl.Success):
            username = (self.exchange.username if self.exchange is not None else None) or step.account
            account = self.account(username)
            if account is None:
                return self._failed(sasl_failure("not-authorized"), None, counts=True)
            self.authenticated = account
            login_key = self.exchange.matched_alternate if self.exchange is not None else None
            self.exchange = None
            self.bindings = _NO_BINDINGS  # needed for SASL only; an idle stream keeps none
            self.state = State.BIND
            self.header_sent = False
            success = Element("success", SASL_NS, children=[_b64(step.data)] if step.data else [])
            return [Authenticated(account, login_key), Send(serialize_top(success)), Restart()]
        if isinstance(step, sasl.NeedExternal):  # EXTERNAL is not offered on client streams
            return self._step(sasl.Failure("invalid-mechanism", "EXTERNAL is not offered"))
        return [Lookup(step, self.account(step.username))]

    def _failed(self, element: Element, account: str | None, *, counts: bool) -> list[Action]:
        self.failures += 1
        mechanism = self.exchange.mechanism if self.exchange is not None else None
        out: list[Action] = [AuthFailed(account, counts, mechanism), Send(serialize_top(element))]
        if self.failures >= MAX_FAILURES_PER_STREAM:
            out += self.fail("policy-violation", "too many failed authentication attempts")
        return out

    def account(self, username: str) -> str | None:
        """The account a SASL username names on this stream's domain, or None."""
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

    # --- resource binding (RFC 6120 section 7) and the legacy session ----------------------------
    def _pre_bind_iq(self, iq: Element) -> list[Action]:
        payload = next(iq.elements(), None)
        if iq.attrs.get("type") == "set" and payload is not None and payload.name == "bind" and payload.xmlns == BIND_NS:
            return [Bind(iq, (payload.find_text("resource") or "").strip())]
        condition = "not-authorized" if payload is None or payload.xmlns != SESSION_NS else "not-allowed"
        return [Send(serialize_top(error_reply(iq, condition)))]

    def bound(self, iq: Element, full_jid: str) -> list[Action]:
        self.state = State.BOUND
        reply = Element("iq", "", {"type": "result", "id": iq.attrs.get("id", "")})
        reply.add("bind", BIND_NS).add("jid", text=full_jid)
        return [Send(serialize_top(reply))]

    def bind_failed(self, iq: Element, condition: str, text: str = "") -> list[Action]:
        return [Send(serialize_top(error_reply(iq, condition, text)))]

    def resumed(self) -> None:
        """XEP-0198: the connection took a session over; the stream is bound."""
        self.state = State.BOUND
