"""Server-to-server stream negotiation, both sides, sans-I/O (as ``c2s_stream`` is for c2s).

This module is in charge of what a server says and decides while an s2s stream is negotiated:
``Initiator`` on a stream it opened, ``Receiver`` (further down) on a stream a peer opened to it.
``peerage.xmpp.s2s`` carries out their actions on the network, and ``peerage check federation``
(``peerage.xmpp.s2s_check``) runs the same ``Initiator`` and narrates its steps.

``Initiator``: what an initiating server says and decides on a stream it opened, from
its first header to an authenticated stream: reading the receiver's features, STARTTLS (RFC 6120
section 5) and the XEP-0238 rule on whether TLS is worth it, SASL EXTERNAL (XEP-0178) with the
fall-back to dialback when the receiver refuses our certificate, dialback (XEP-0220), and asking for
a bidirectional stream (XEP-0288). It also runs the short streams that only carry a dialback
``db:verify`` to an authoritative server (XEP-0220 section 2.1.2).

It is fed the receiver's stream header (``opened``), first-level elements (``element``) and the
outcome of a TLS handshake (``tls_established``, with the certificate check), and returns actions
for the connection (``peerage.xmpp.s2s.XmlConnection``) to carry out. It owns no socket, no TLS
object, no clock and no DNS; every policy question goes to ``peerage.xmpp.federation``. What the
connection waits for next is ``expects`` (with ``timeout_kind``: a dialback answer involves the
receiver's own round trip to us, so it is given longer), and the end is ``result``:
``Authenticated``, ``Verified``, ``Failed`` or ``FallBackToClear``.

======================  ====================================  =======================================
state                   what comes                             next
======================  ====================================  =======================================
``HEADER``              the receiver's header                  ``FEATURES`` (``DIALBACK`` pre-1.0)
``FEATURES``            ``<stream:features/>``                 ``STARTTLS``, ``SASL``, ``DIALBACK``
``STARTTLS``            ``<proceed/>``                         ``TLS`` (the connection's handshake)
``TLS``                 ``tls_established(check)``             ``HEADER`` on the TLS layer
``SASL``                ``<success/>`` / ``<failure/>``        ``RESTART_HEADER`` / ``DIALBACK``
``RESTART_HEADER``      the header after SASL                  ``RESTART_FEATURES``
``RESTART_FEATURES``    the (empty) features                   done: ``Authenticated``
``DIALBACK``            ``db:result`` (``db:verify``)          done
======================  ====================================  =======================================
"""

from __future__ import annotations

import base64
import binascii
import enum
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from peerage.xmpp import dialback
from peerage.xmpp.dialback import DialbackError, PairTable
from peerage.xmpp.federation import (
    DomainPolicy,
    Level,
    ServerProfile,
    TlsChoice,
    accepts_receiver_certificate,
    initiator_starttls,
    initiator_uses_sasl_external,
    level_reached,
    offers_dialback,
    receiver_offers_sasl_external,
    receiver_offers_starttls,
    receiver_requires_starttls,
    requires_peer_certificate,
)
from peerage.xmpp.jid import JidError, split_jid
from peerage.xmpp.stream import SASL_NS, SERVER_NS, STREAM_NS, TLS_NS, Element, stream_header
from peerage.xmpp.stream import serialize_features as serialize_stream_features
from peerage.xmpp.x509 import CertificateCheck

BIDI_NS = "urn:xmpp:bidi"
BIDI_FEATURE_NS = "urn:xmpp:features:bidi"


def header(from_: str | None, to: str | None, stream_id: str | None, legacy: bool) -> bytes:
    """A jabber:server stream header (the writer c2s uses too); legacy (pre-1.0) peers get no
    version attribute (RFC 6120 section 4.7.5)."""
    return stream_header(content_ns=SERVER_NS, stream_id=stream_id, from_=from_ or None, to=to or None,
                         version=None if legacy else "1.0", extra_ns=dialback.STREAM_DIALBACK_DECLARATION)


def is_1_0(attrs: dict[str, str]) -> bool:
    version = attrs.get("version", "")
    try:
        return int(version.split(".")[0]) >= 1
    except ValueError:
        return False


def sasl_failure_text(failure: Element) -> str:
    """A SASL ``<failure/>`` (RFC 6120 section 6.5) for people: the condition, then the peer's
    ``<text/>`` when it sent one, e.g. "not-authorized: self signed certificate"."""
    condition = next((c.name for c in failure.elements() if c.name != "text"), "") or "no condition"
    text = (failure.find_text("text") or "").strip()
    return f"{condition}: {text}" if text else condition


# --- actions ------------------------------------------------------------------------------------
@dataclass(slots=True)
class Send:
    """Write ``data`` on the stream."""

    data: bytes


@dataclass(slots=True)
class SendHeader:
    """Write our stream header (a stream error may follow it from now on)."""

    data: bytes


@dataclass(slots=True)
class StartTls:
    """``<proceed/>`` came: put TLS under the stream (as a client, showing our certificate if
    ``present_certificate``), then call ``tls_established`` with the receiver's certificate check."""

    present_certificate: bool


@dataclass(slots=True)
class Restart:
    """Expect a new stream header on a fresh parser (after SASL success)."""


Action = Send | SendHeader | StartTls | Restart


# --- results ------------------------------------------------------------------------------------
@dataclass(slots=True)
class Authenticated:
    """The stream is authenticated for (local -> remote)."""

    method: str  # "sasl-external" or "dialback"
    #: The receiver's stream id (dialback keys of piggybacked pairs are bound to it).
    stream_id: str
    bidi: bool
    encrypted: bool
    #: The receiver's certificate, when TLS was negotiated.
    receiver: CertificateCheck | None
    #: How we got there when it was not the first choice (SASL EXTERNAL refused, then dialback).
    note: str = ""


@dataclass(slots=True)
class Verified:
    """The authoritative server's answer to our ``db:verify``."""

    valid: bool


@dataclass(slots=True)
class Failed:
    """Negotiation cannot succeed on this connection; ``reason`` is for the status and logs."""

    reason: str


@dataclass(slots=True)
class FallBackToClear:
    """Rule 1 of ``peerage.xmpp.federation``: optional TLS did not authenticate the receiver;
    reconnect without it."""

    reason: str


Result = Authenticated | Verified | Failed | FallBackToClear


class State(enum.Enum):
    HEADER = "header"
    FEATURES = "features"
    STARTTLS = "starttls"
    TLS = "tls"
    SASL = "sasl"
    RESTART_HEADER = "restart-header"
    RESTART_FEATURES = "restart-features"
    DIALBACK = "dialback"
    DONE = "done"


class Expect(enum.Enum):
    """What the connection reads next."""

    HEADER = "header"
    ELEMENT = "element"
    TLS = "tls"
    NOTHING = "nothing"


_EXPECTS = {
    State.HEADER: Expect.HEADER, State.RESTART_HEADER: Expect.HEADER, State.TLS: Expect.TLS,
    State.DONE: Expect.NOTHING,
}


class Initiator:
    """One outgoing stream's negotiation, for stanzas (``verify=None``) or for one ``db:verify``.

    ``dialback_key(stream_id)`` gives our key for the receiver's stream id (XEP-0185); ``verify``
    is ``(stream_id, key)`` of the key to check with the authoritative server.
    """

    def __init__(self, profile: ServerProfile, local: str, remote: str, *,
                 present_certificate: bool, skip_tls: bool = False, bidi_enabled: bool = False,
                 dialback_key: Callable[[str], str] | None = None,
                 verify: tuple[str, str] | None = None) -> None:
        self.profile = profile
        self.local = local
        self.remote = remote
        self.present_certificate = present_certificate
        self.skip_tls = skip_tls
        self.bidi_enabled = bidi_enabled
        self.dialback_key = dialback_key
        self.verify = verify
        self.state = State.HEADER
        self.result: Result | None = None
        self.encrypted = False
        self.receiver: CertificateCheck | None = None
        self.stream_id = ""
        self.bidi = False
        self.note = ""
        self._tls_choice = TlsChoice.NO
        self._dialback_offered = False

    # --- what the connection asks -------------------------------------------------------------
    @property
    def expects(self) -> Expect:
        return _EXPECTS.get(self.state, Expect.ELEMENT)

    @property
    def awaits_dialback(self) -> bool:
        """Waiting for the receiver's dialback answer (it asks our authoritative server first)."""
        return self.state is State.DIALBACK

    # --- inputs -------------------------------------------------------------------------------
    def start(self, direct_tls: CertificateCheck | None = None) -> list[Action]:
        """The first header; ``direct_tls`` is the receiver's certificate when the connection is
        Direct TLS (XEP-0368), already encrypted."""
        if direct_tls is not None:
            self.encrypted = True
            if not self._receiver_acceptable(direct_tls):
                return []
        return [self._header()]

    def opened(self, attrs: dict[str, str]) -> list[Action]:
        """The receiver's stream header."""
        if self.state is State.RESTART_HEADER:
            self.state = State.RESTART_FEATURES
            return []
        if self.state is not State.HEADER:
            return self._fail("an unexpected stream header")
        self.stream_id = attrs.get("id", "")
        if self.profile.legacy or not is_1_0(attrs):
            # Pre-1.0 (XEP-0238 Type 1): no features, no TLS; dialback straight away.
            if self.verify is None and self.profile.required >= Level.ENCRYPTED and not self.encrypted:
                return self._fail("the peer speaks pre-1.0 XMPP (no stream features, no TLS) and our "
                                  "policy requires encryption")
            return self._dialback()
        self.state = State.FEATURES
        return []

    def element(self, element: Element) -> list[Action]:
        """A first-level element from the receiver."""
        state = self.state
        if state is State.FEATURES:
            return self._features(element)
        if state is State.STARTTLS:
            if element.xmlns != TLS_NS or element.name != "proceed":
                return self._fail("the peer refused STARTTLS")
            self.state = State.TLS
            return [StartTls(self.present_certificate)]
        if state is State.SASL:
            return self._sasl_answer(element)
        if state is State.RESTART_FEATURES:
            return self._done("sasl-external")
        if state is State.DIALBACK:
            return self._dialback_answer(element)
        return []  # nothing else is expected before the stream is authenticated

    def tls_established(self, receiver: CertificateCheck) -> list[Action]:
        """The TLS handshake under the stream completed; ``receiver`` is its certificate check."""
        if self.state is not State.TLS:
            return self._fail("a TLS handshake nobody asked for")
        self.encrypted = True
        if not self._receiver_acceptable(receiver):
            return []
        if self._tls_choice is TlsChoice.IF_AUTHENTICATED and not receiver.trusted:
            self.state = State.DONE
            self.result = FallBackToClear(
                "TLS was optional and the receiver's certificate is not trusted ("
                + receiver.explain(self.remote) + "); reconnecting without TLS")
            return []
        self.state = State.HEADER
        return [self._header()]

    # --- steps --------------------------------------------------------------------------------
    def _header(self) -> SendHeader:
        return SendHeader(header(self.local, self.remote, None, self.profile.legacy))

    def _receiver_acceptable(self, check: CertificateCheck) -> bool:
        self.receiver = check
        if self.verify is None and not accepts_receiver_certificate(self.profile, check.trusted):
            self._fail("our policy for this domain requires a trusted certificate: "
                       + check.explain(self.remote))
            return False
        return True

    def _features(self, features: Element) -> list[Action]:
        offered = {child.xmlns: child for child in features.elements()}
        tls_feature = offered.get(TLS_NS)
        tls_required = tls_feature is not None and tls_feature.find("required") is not None
        if self.verify is not None:
            # A db:verify stream only takes TLS when the receiver insists on it.
            if not self.encrypted and tls_required:
                return self._starttls(TlsChoice.REQUIRED)
            return self._dialback()
        profile = self.profile
        if not self.encrypted and tls_feature is not None and not self.skip_tls:
            choice = initiator_starttls(profile, True, tls_required)
            if choice is not TlsChoice.NO:
                return self._starttls(choice)
        if not self.encrypted:
            if tls_required:
                return self._fail("the receiver requires TLS")
            if profile.required >= Level.ENCRYPTED:
                return self._fail("our policy requires TLS and the receiver offers none")
        actions: list[Action] = []
        if BIDI_FEATURE_NS in offered and self.bidi_enabled and not self.bidi:
            actions.append(Send(f"<bidi xmlns='{BIDI_NS}'/>".encode()))
            self.bidi = True
        mechanisms = offered.get(SASL_NS)
        external = mechanisms is not None and any(
            m.text.strip() == "EXTERNAL" for m in mechanisms.find_all("mechanism"))
        self._dialback_offered = dialback.DIALBACK_FEATURE_NS in offered
        if self.encrypted and initiator_uses_sasl_external(profile, external, self._dialback_offered):
            authzid = base64.b64encode(self.local.encode()).decode()
            actions.append(Send(f"<auth xmlns='{SASL_NS}' mechanism='EXTERNAL'>{authzid}</auth>".encode()))
            self.state = State.SASL
            return actions
        if profile.required >= Level.TRUSTED:
            return actions + self._fail(
                "our policy for this domain requires SASL EXTERNAL, and the receiver did not offer it "
                "(it could not verify our certificate or its own is not CA-issued)")
        if not self._dialback_offered:
            return actions + self._fail("the receiver offers neither SASL EXTERNAL (usable by us) nor dialback")
        return actions + self._dialback()

    def _starttls(self, choice: TlsChoice) -> list[Action]:
        self._tls_choice = choice
        self.state = State.STARTTLS
        return [Send(f"<starttls xmlns='{TLS_NS}'/>".encode())]

    def _sasl_answer(self, answer: Element) -> list[Action]:
        if answer.xmlns == SASL_NS and answer.name == "success":
            self.state = State.RESTART_HEADER
            return [Restart(), self._header()]
        refusal = sasl_failure_text(answer)
        # A receiver may offer EXTERNAL whenever a certificate was shown, then refuse one it cannot
        # verify (ejabberd answers <not-authorized/> "self signed certificate"). The stream is still
        # unauthenticated, so, as Prosody and ejabberd do, fall back to dialback on it when the
        # receiver offered dialback and our policy allows it.
        if self._dialback_offered and self.profile.required < Level.TRUSTED:
            self.note = f"SASL EXTERNAL refused ({refusal}), fell back to dialback"
            return self._dialback()
        return self._fail(f"the receiver refused SASL EXTERNAL: {refusal}")

    def _dialback(self) -> list[Action]:
        self.state = State.DIALBACK
        if self.verify is not None:
            stream_id, key = self.verify
            request = dialback.verify_request(self.local, self.remote, stream_id, key)
        else:
            assert self.dialback_key is not None
            request = dialback.result_request(self.local, self.remote, self.dialback_key(self.stream_id))
        return [Send(dialback.to_wire(request).encode())]

    def _dialback_answer(self, element: Element) -> list[Action]:
        wanted = "verify" if self.verify is not None else "result"
        if element.xmlns != dialback.DIALBACK_NS or element.name != wanted:
            return []
        try:
            message = dialback.parse(element)
        except dialback.DialbackParseError:
            return []
        if self.verify is not None:
            if message.stream_id != self.verify[0]:
                return []
            self.state = State.DONE
            self.result = Verified(message.type == "valid")
            return []
        if message.from_ != self.remote or message.to != self.local:
            return []
        if message.type == "valid":
            return self._done("dialback")
        if message.type == "error":
            return self._fail(f"dialback error from the receiver: {message.error}")
        return self._fail("the receiver could not verify our dialback key")

    def _done(self, method: str) -> list[Action]:
        self.state = State.DONE
        self.result = Authenticated(method, self.stream_id if method == "dialback" else "", self.bidi,
                                    self.encrypted, self.receiver, self.note)
        return []

    def _fail(self, reason: str) -> list[Action]:
        self.state = State.DONE
        self.result = Failed(reason)
        return []


# === the receiving side ===========================================================================
#
# ``Receiver`` is the other half: what this server says and decides on a stream a peer opened to
# it. It answers the peer's header with ours and the features our policy offers (STARTTLS, SASL
# EXTERNAL, dialback, bidi), takes STARTTLS, judges the peer's certificate after the handshake,
# checks SASL EXTERNAL, answers ``db:verify`` requests for our own keys, and turns each
# ``db:result`` request into a verification the connection runs with the peer's authoritative
# server (``Verify``; the answer comes back through ``key_verified``). Every domain pair it
# authenticates or refuses is reported (``PairOpened``/``PairFailed``) for the records operators
# see; stanzas it lets through go out as ``Deliver``, for the service to check their addresses.
#
# ======================  ====================================  =======================================
# state                   what comes                             next
# ======================  ====================================  =======================================
# ``HEADER``              the peer's header                      ``OPEN`` (our header and features)
# ``OPEN``                ``<starttls/>``                        ``TLS`` (``StartTlsServer``)
# ``OPEN``                ``<auth mechanism='EXTERNAL'/>``       ``HEADER`` after ``<success/>``
# ``OPEN``                ``db:result``, ``db:verify``, stanzas  ``OPEN``
# ``TLS``                 ``tls_established(certificate)``       ``HEADER`` on the TLS layer
# any                     a fault, the end, the deadline         ``CLOSED``
# ======================  ====================================  =======================================


class ReceiverState(enum.Enum):
    HEADER = "header"
    OPEN = "open"
    TLS = "tls"
    CLOSED = "closed"


class ReceiverEnvironment(Protocol):
    """What the receiving machine asks of its server: policy, hosted domains, its own keys and
    the peer address's authentication throttle. Answers are synchronous and have no side effect."""

    default_domain: str
    hosted_domains: list[str]
    tls_available: bool
    bidi_enabled: bool

    def is_hosted(self, domain: str) -> bool: ...

    def profile(self, remote: str, local: str) -> ServerProfile: ...

    def domain_policy(self, remote: str) -> DomainPolicy: ...

    def check_certificate(self, der: bytes | None, domain: str) -> CertificateCheck: ...

    def key_is_ours(self, originator: str, receiver: str, stream_id: str, key: str) -> bool: ...

    def throttled(self) -> bool: ...


@dataclass(slots=True)
class StartTlsServer:
    """``<proceed/>`` is written: put TLS under the stream as the server, then call
    ``tls_established`` with the certificate the peer presented (or None)."""


@dataclass(slots=True)
class Verify:
    """Ask the authoritative server of ``remote`` whether ``key`` is its key for our stream
    (XEP-0220 section 2.1.2), then call ``key_verified(remote, local, outcome)``."""

    remote: str
    local: str
    stream_id: str
    key: str


@dataclass(slots=True)
class PairOpened:
    """(remote -> local) stanzas are authenticated on this stream at ``level``."""

    remote: str
    local: str
    level: Level
    authentication: str  # "sasl-external", "dialback" or "none" (permissive)
    reason: str
    bidi: bool = False


@dataclass(slots=True)
class PairFailed:
    """(remote -> local) was refused, or the stream ended before anything authenticated.
    ``verification`` says it ends the attempt a ``Verify`` started."""

    remote: str
    local: str
    reason: str
    verification: bool = False


@dataclass(slots=True)
class AttachBidi:
    """XEP-0288: stanzas from ``local`` to ``remote`` may go back on this stream."""

    local: str
    remote: str


@dataclass(slots=True)
class AuthFailure:
    """An authentication attempt failed (for the peer address's throttle)."""

    mechanism: str


@dataclass(slots=True)
class Deliver:
    """A stanza from the peer, for the service to check its addresses and route."""

    stanza: Element


@dataclass(slots=True)
class Fail:
    """Send a stream error (our header is out by now) and close (RFC 6120 section 4.9)."""

    condition: str
    text: str


@dataclass(slots=True)
class Close:
    """Close the stream (with ``</stream:stream>`` when ``graceful``); ``note`` is added to the
    records of pairs still open (why they closed)."""

    graceful: bool
    note: str = ""


ReceiverAction = (Send | SendHeader | Restart | StartTlsServer | Verify | PairOpened | PairFailed
                  | AttachBidi | AuthFailure | Deliver | Fail | Close)


def serialize_features(features: Element) -> bytes:
    return serialize_stream_features(features, SERVER_NS)


def _failure(condition: str) -> Send:
    return Send(f"<failure xmlns='{SASL_NS}'><{condition}/></failure>".encode())


class Receiver:
    """One stream a peer opened to us, from its first header to its end; may carry several
    domain pairs (XEP-0220 section 2.3) and the ``db:verify`` requests of other streams.

    ``direct_tls`` is the certificate the peer presented when the connection is Direct TLS
    (XEP-0368): the stream starts encrypted (``b""`` when it presented none).
    """

    def __init__(self, env: ReceiverEnvironment, *, direct_tls: bytes | None = None,
                 legacy: bool = False, new_stream_id: Callable[[], str] | None = None) -> None:
        self.env = env
        self.legacy = legacy
        self._new_stream_id = new_stream_id or (lambda: secrets.token_urlsafe(16))
        self.state = ReceiverState.HEADER
        self.encrypted = direct_tls is not None
        self.peer_certificate: bytes | None = direct_tls or None
        #: After a TLS handshake, the peer's certificate is judged once our next header is out, so
        #: that a refusal is a proper stream error (RFC 6120 section 4.9.1.1).
        self.check_certificate_pending = direct_tls is not None
        self.header_sent = False
        self.pairs = PairTable()
        #: Pairs authenticated on this stream (dialback, SASL EXTERNAL, permissive).
        self.opened_pairs: set[tuple[str, str]] = set()
        self.external_domain: str | None = None
        self.stream_id = ""
        self.header_from = ""
        self.header_to = ""
        self.peer_legacy = False
        self.bidi = False
        self.bidi_after_restart = False
        #: The stream only carried db:verify requests (or was refused): no "never authenticated"
        #: record for it at the end.
        self.verification_only = False
        self.certificate: CertificateCheck | None = None
        self._failure_recorded = False

    # --- what the connection asks -------------------------------------------------------------
    @property
    def authenticated(self) -> bool:
        return bool(self.opened_pairs)

    @property
    def expects_header(self) -> bool:
        return self.state is ReceiverState.HEADER

    @property
    def closed(self) -> bool:
        return self.state is ReceiverState.CLOSED

    def remote_domains(self) -> set[str]:
        """Domains whose stanzas this stream may carry."""
        remotes = self.pairs.remote_domains()
        if self.external_domain is not None:
            remotes.add(self.external_domain)
        return remotes

    def authorised(self, remote: str, local: str) -> bool:
        return remote == self.external_domain or self.pairs.authorised(remote, local)

    # --- inputs -------------------------------------------------------------------------------
    def opened(self, attrs: dict[str, str], content_ns: str = SERVER_NS) -> list[ReceiverAction]:
        """The peer's stream header."""
        if self.state is ReceiverState.OPEN:
            return self.fault("not-well-formed", "unexpected stream header")
        if self.state is not ReceiverState.HEADER:
            return []
        if content_ns != SERVER_NS:
            return self.fault("invalid-namespace", "server streams use jabber:server")
        env = self.env
        to = attrs.get("to", "").lower().rstrip(".")
        from_ = attrs.get("from", "").lower().rstrip(".")
        self.header_from = from_ or self.header_from
        self.stream_id = self._new_stream_id()
        self.peer_legacy = not is_1_0(attrs)
        if to and not env.is_hosted(to):
            actions: list[ReceiverAction] = [self._header(None, None, self.legacy or self.peer_legacy)]
            return actions + self.fault("host-unknown", f"{to} is not served here")
        if to:
            self.header_to = to
        local = to or env.default_domain
        profile = env.profile(from_, local)
        legacy = profile.legacy or self.peer_legacy
        self.state = ReceiverState.OPEN
        actions = [self._header(to or None, from_ or None, legacy)]
        if self.check_certificate_pending:
            self.check_certificate_pending = False
            refusal = self._judge_certificate()
            if refusal:
                return actions + refusal
        if legacy:
            return actions  # pre-1.0: no features (XEP-0238 Type 1)
        features = Element("features", STREAM_NS)
        if not self.encrypted:
            if receiver_offers_starttls(profile) and env.tls_available:
                starttls = features.add("starttls", TLS_NS)
                if receiver_requires_starttls(profile):
                    starttls.add("required")
        else:
            self.certificate = env.check_certificate(self.peer_certificate, from_ or local)
            if (self.external_domain is None and from_
                    and receiver_offers_sasl_external(profile, self.certificate.trusted)):
                features.add("mechanisms", SASL_NS).add("mechanism", text="EXTERNAL")
        if offers_dialback(profile) and self.external_domain is None:
            features.append(dialback.features_element())
        if env.bidi_enabled and not self.bidi:
            features.add("bidi", BIDI_FEATURE_NS)
        actions.append(Send(serialize_features(features)))
        if self.bidi_after_restart and self.external_domain is not None:
            # XEP-0288: our stanzas ride on the stream once it has restarted (RFC 6120 section 6.4.6).
            self.bidi_after_restart = False
            actions += [AttachBidi(hosted, self.external_domain) for hosted in env.hosted_domains]
        return actions

    def element(self, element: Element) -> list[ReceiverAction]:
        """A first-level element from the peer."""
        if self.state is ReceiverState.HEADER:
            return self.fault("not-well-formed", "expected a stream header")
        if self.state is not ReceiverState.OPEN:
            return []
        xmlns, name = element.xmlns, element.name
        if xmlns == TLS_NS and name == "starttls":
            return self._starttls()
        if xmlns == SASL_NS and name == "auth":
            return self._sasl(element)
        if xmlns == BIDI_NS and name == "bidi":
            self.bidi = self.env.bidi_enabled
            return []
        if xmlns == dialback.DIALBACK_NS:
            return self._dialback(element)
        if xmlns == STREAM_NS and name == "error":
            # RFC 6120 section 4.9.1.1: a stream error is followed by the close of the stream; the
            # other side answers with its closing tag, never with an error of its own.
            condition = next((c.name for c in element.elements() if c.name != "text"), "undefined-condition")
            text = (element.find_text("text") or "").strip()
            reason = f"<{condition}/> the peer sent a stream error" + (f": {text}" if text else "")
            actions = self._fail_records(reason)
            self.state = ReceiverState.CLOSED
            return [*actions, Close(True, f"closed by {reason}")]
        if xmlns == "" and name in ("message", "presence", "iq"):
            return [*self._permissive(element), Deliver(element)]
        return self.fault("unsupported-stanza-type", f"unexpected <{name}/>")

    def tls_established(self, peer_certificate: bytes | None) -> list[ReceiverAction]:
        """The TLS handshake under the stream completed; the peer presented ``peer_certificate``."""
        if self.state is not ReceiverState.TLS:
            return []
        self.encrypted = True
        self.peer_certificate = peer_certificate or None
        self.check_certificate_pending = True
        self.state = ReceiverState.HEADER
        self.header_sent = False
        return []

    def key_verified(self, remote: str, local: str, outcome: bool | DialbackError) -> list[ReceiverAction]:
        """The authoritative server's answer to a ``Verify`` (or the reason there is none)."""
        if self.state is ReceiverState.CLOSED:
            return []
        self.pairs.settle(remote, local, outcome is True)
        how = "dialback key confirmed by the authoritative server of " + remote
        if outcome is True:
            self.opened_pairs.add((remote, local))
            actions: list[ReceiverAction] = [
                Send(dialback.to_wire(dialback.result_response(local, remote, True)).encode()),
                PairOpened(remote, local, level_reached(self.encrypted, "dialback"), "dialback",
                           ("TLS, " if self.encrypted else "clear stream, ") + how, self.bidi)]
            if self.bidi:
                actions.append(AttachBidi(local, remote))
            return actions
        if outcome is False:
            # XEP-0220 section 2.1.4: after an invalid result, close the stream.
            self.state = ReceiverState.CLOSED
            return [AuthFailure("dialback"),
                    Send(dialback.to_wire(dialback.result_response(local, remote, False)).encode()),
                    PairFailed(remote, local, "wrong dialback key: the authoritative server of " + remote
                               + " did not confirm it", verification=True),
                    Close(True)]
        return [Send(dialback.to_wire(dialback.error_response("result", local, remote, outcome)).encode()),
                PairFailed(remote, local, f"could not verify the dialback key: {outcome.condition}",
                           verification=True)]

    def closed_by_peer(self) -> list[ReceiverAction]:
        """The peer's ``</stream:stream>``."""
        if self.state is ReceiverState.HEADER:
            return self.fault("not-well-formed", "expected a stream header")
        if self.state is ReceiverState.CLOSED:
            return []
        actions = self._fail_records("the peer closed the stream")
        self.state = ReceiverState.CLOSED
        return [*actions, Close(True)]

    def parse_failure(self, condition: str, text: str) -> list[ReceiverAction]:
        """The parser refused the peer's bytes (not well-formed, a stanza over the size limit)."""
        if self.state is ReceiverState.HEADER:
            return self.fault(condition, text)
        if self.state is ReceiverState.CLOSED:
            return []
        self.state = ReceiverState.CLOSED
        return [Fail(condition, text)]

    def lost(self, reason: str) -> list[ReceiverAction]:
        """The connection broke (or a TLS handshake failed)."""
        if self.state is ReceiverState.CLOSED:
            return []
        actions = self._fail_records(f"closed by the peer ({reason})")
        self.state = ReceiverState.CLOSED
        return [*actions, Close(False)]

    def expired(self, seconds: float) -> list[ReceiverAction]:
        """``[xmpp.federation] negotiation_timeout`` passed since the accept. A stream that only
        carried db:verify requests is closed too: its originator opens a new one for its next
        verification."""
        if self.authenticated or self.state is ReceiverState.CLOSED:
            return []
        actions = self._fail_records(f"not authenticated within {seconds:g} s (negotiation_timeout)")
        return actions + self._fail_stream("connection-timeout",
                                           f"authentication did not complete within {seconds:g} seconds")

    def fault(self, condition: str, text: str) -> list[ReceiverAction]:
        """Our side ends the stream with a stream error (a bad header, a read that timed out)."""
        if self.state is ReceiverState.CLOSED:
            return []
        return self._fail_records(f"stream error {condition}: {text}") + self._fail_stream(condition, text)

    # --- steps --------------------------------------------------------------------------------
    def _header(self, from_: str | None, to: str | None, legacy: bool) -> SendHeader:
        self.header_sent = True
        return SendHeader(header(from_, to, self.stream_id, legacy))

    def _fail_stream(self, condition: str, text: str) -> list[ReceiverAction]:
        actions: list[ReceiverAction] = []
        if not self.header_sent:
            # RFC 6120 section 4.9.1.1: a stream error needs our header first.
            self.stream_id = self.stream_id or self._new_stream_id()
            actions.append(self._header(None, None, False))
        self.state = ReceiverState.CLOSED
        return [*actions, Fail(condition, text)]

    def _fail_records(self, reason: str) -> list[ReceiverAction]:
        """The stream ends: a peer that named itself and authenticated nothing gets a U record."""
        if self._failure_recorded or self.opened_pairs or self.verification_only or not self.header_from:
            return []
        self._failure_recorded = True
        return [PairFailed(self.header_from, self.header_to,
                           f"no authentication before the stream ended: {reason}")]

    def _judge_certificate(self) -> list[ReceiverAction]:
        """After the TLS handshake: does our policy accept what the peer presented? A missing
        client certificate at the encrypted level is refused when the peer tries to authenticate
        (``_dialback``), not here: a stream that only carries db:verify requests claims no identity
        and needs none."""
        remote = self.header_from
        local = self.header_to or self.env.default_domain
        self.certificate = self.env.check_certificate(self.peer_certificate, remote or local)
        if self.env.profile(remote, local).required >= Level.TRUSTED and not self.certificate.trusted:
            self.verification_only = True
            refused = PairFailed(remote or "?", local,
                                 "the trusted level needs a CA-issued certificate naming the peer: "
                                 + self.certificate.explain(remote or "?"))
            return [refused, *self._fail_stream("policy-violation", "a certificate from a trusted CA is required")]
        return []

    def _starttls(self) -> list[ReceiverAction]:
        if self.encrypted or not self.env.tls_available:
            return self.fault("policy-violation", "TLS is not available on this stream")
        self.state = ReceiverState.TLS
        return [Send(f"<proceed xmlns='{TLS_NS}'/>".encode()), StartTlsServer()]

    def _sasl(self, element: Element) -> list[ReceiverAction]:
        env = self.env
        local = self.header_to or env.default_domain
        remote = self.header_from
        if element.attrs.get("mechanism") != "EXTERNAL" or not self.encrypted or not remote:
            return [_failure("invalid-mechanism")]
        if env.throttled():
            return [_failure("not-authorized")]
        text = element.text.strip()
        try:
            authzid = base64.b64decode(text, validate=True).decode() if text not in ("", "=") else ""
        except (binascii.Error, UnicodeDecodeError):
            return [_failure("incorrect-encoding")]
        check = env.check_certificate(self.peer_certificate, remote)
        allowed = env.domain_policy(remote)
        if ((authzid and authzid.lower() != remote) or not check.trusted or not allowed.allowed
                or not receiver_offers_sasl_external(env.profile(remote, local), check.trusted)):
            self.verification_only = True
            return [AuthFailure("EXTERNAL"), _failure("not-authorized"),
                    PairFailed(remote, local, "SASL EXTERNAL refused: "
                               + (allowed.why_refused or check.explain(remote)))]
        self.external_domain = remote
        self.opened_pairs.add((remote, local))
        # XEP-0288: the stream carries our stanzas once it has restarted (RFC 6120 section 6.4.6);
        # a stanza written now would arrive where the peer expects its new stream header.
        self.bidi_after_restart = self.bidi
        self.state = ReceiverState.HEADER
        self.header_sent = False
        return [Send(f"<success xmlns='{SASL_NS}'/>".encode()), Restart(),
                PairOpened(remote, local, level_reached(True, "sasl-external"), "sasl-external",
                           "SASL EXTERNAL with a certificate " + check.explain(remote), self.bidi)]

    def _dialback(self, element: Element) -> list[ReceiverAction]:
        env = self.env
        try:
            message = dialback.parse(element)
        except dialback.DialbackParseError as error:
            return self.fault("invalid-xml", str(error))
        if message.kind == "verify":
            if message.is_request:
                self.verification_only = not self.opened_pairs
                valid = env.is_hosted(message.to) and env.key_is_ours(
                    message.from_, message.to, message.stream_id, message.key)
                return [Send(dialback.to_wire(dialback.verify_response(element, valid)).encode())]
            return []
        if not message.is_request:
            return []  # results come to the originating side, not here
        remote, local = message.from_, message.to

        def refuse(condition: DialbackError) -> Send:
            return Send(dialback.to_wire(dialback.error_response("result", local, remote, condition)).encode())

        if not env.is_hosted(local):
            return [refuse(DialbackError.ITEM_NOT_FOUND)]
        if self.pairs.request(remote, local) is not None:
            return [refuse(DialbackError.POLICY_VIOLATION)]
        profile = env.profile(remote, local)
        allowed = env.domain_policy(remote)
        problem: str | None = None
        if not allowed.allowed:
            problem = allowed.why_refused
        elif not offers_dialback(profile):
            problem = "our policy for this domain is trusted: dialback is not enough (SASL EXTERNAL needed)"
        elif receiver_requires_starttls(profile) and not self.encrypted:
            problem = "our policy for this domain requires TLS before dialback"
        elif requires_peer_certificate(profile) and self.encrypted and not self.peer_certificate:
            problem = "our policy asks for a TLS client certificate and none was presented"
        if problem is not None:
            self.pairs.settle(remote, local, False)
            return [refuse(DialbackError.POLICY_VIOLATION), PairFailed(remote, local, problem)]
        # Even a permissive receiver verifies a key it is offered: permissive means stanzas from a
        # peer that never asks are taken (``_permissive``), not that a wrong key is.
        if env.throttled():
            return self.key_verified(remote, local, DialbackError.POLICY_VIOLATION)
        return [Verify(remote, local, self.stream_id, message.key)]

    def _permissive(self, stanza: Element) -> list[ReceiverAction]:
        """A permissive receiver takes stanzas from a domain that never verified (XEP-0238 section 1)."""
        try:
            remote = split_jid(stanza.attrs.get("from", ""))[1]
            local = split_jid(stanza.attrs.get("to", ""))[1]
        except JidError:
            return []
        if self.authorised(remote, local) or not self.env.is_hosted(local):
            return []
        policy = self.env.domain_policy(remote)
        if policy.required is not Level.PERMISSIVE or not policy.allowed:
            return []
        if self.pairs.request(remote, local) is not None:
            return []
        self.pairs.settle(remote, local, True)
        self.opened_pairs.add((remote, local))
        return [PairOpened(remote, local, Level.PERMISSIVE, "none",
                           "permissive: stanzas accepted without any verification")]
