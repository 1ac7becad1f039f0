"""Server-to-server stream negotiation of the initiating side, sans-I/O (as ``c2s_stream`` is for c2s).

This module is in charge of what an initiating server says and decides on a stream it opened, from
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
import enum
from collections.abc import Callable
from dataclasses import dataclass

from peerage.xmpp import dialback
from peerage.xmpp.federation import (
    Level,
    ServerProfile,
    TlsChoice,
    accepts_receiver_certificate,
    initiator_starttls,
    initiator_uses_sasl_external,
)
from peerage.xmpp.stream import SASL_NS, SERVER_NS, TLS_NS, Element, stream_header
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
