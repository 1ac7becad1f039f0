"""SASL negotiation for XMPP client streams (RFC 6120 section 6), sans-I/O.

This module is in charge of which mechanisms a stream offers and of stepping one exchange:
SCRAM-SHA-256, SCRAM-SHA-1 and their -PLUS variants (RFC 5802, RFC 7677, channel bindings
``tls-exporter`` RFC 9266 and ``tls-server-end-point`` RFC 5929) through ``peerage.identity.scram``,
and PLAIN (RFC 4616) only on TLS-protected streams. It never touches sockets or the database: each
step returns what the caller must do next (look a credential up, check a password, send a challenge,
succeed or fail).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from peerage.identity.scram import ScramError, ScramServer
from peerage.xmpp.stream import Element

SASL_NS = "urn:ietf:params:xml:ns:xmpp-sasl"

SCRAM_MECHANISMS = {
    "SCRAM-SHA-256-PLUS": ("SHA-256", True),
    "SCRAM-SHA-1-PLUS": ("SHA-1", True),
    "SCRAM-SHA-256": ("SHA-256", False),
    "SCRAM-SHA-1": ("SHA-1", False),
}
#: Largest base64 payload accepted in <auth/> or <response/>. SCRAM messages are < 4 KiB
#: (peerage.identity.scram.MAX_SCRAM_MESSAGE); base64 grows by 4/3.
MAX_SASL_PAYLOAD_CHARS = 8192
#: RFC 6120 section 6.4.5: the server SHOULD allow a configurable number of retries, at least 2.
#: Prosody allows unlimited retries (mod_saslauth); ejabberd closes after 5 failures. We close the
#: stream after this many failures on one connection; the per-IP/account throttle applies on top.
MAX_FAILURES_PER_STREAM = 3


@dataclass(slots=True)
class NeedCredential:
    """Look up the SCRAM credential of ``username`` and call ``credential_found``."""

    username: str
    hash_name: str


@dataclass(slots=True)
class NeedPassword:
    """Check ``password`` for ``username`` (PLAIN) and call ``password_checked``."""

    username: str
    password: str


@dataclass(slots=True)
class Send:
    """Send ``element`` and wait for the next client element."""

    element: Element


@dataclass(slots=True)
class Succeeded:
    """Authenticated as ``username``; send ``element`` (<success/>) and restart the stream."""

    username: str
    element: Element
    mechanism: str


@dataclass(slots=True)
class Failed:
    """Send ``element`` (<failure/>); ``username`` is set when an account was named."""

    element: Element
    condition: str
    username: str | None


Step = NeedCredential | NeedPassword | Send | Succeeded | Failed


def offered_mechanisms(*, tls: bool, channel_bindings: dict[str, bytes]) -> list[str]:
    """Mechanisms in preference order for a stream in the given state."""
    names = []
    if tls and channel_bindings:
        names += ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS"]
    names += ["SCRAM-SHA-256", "SCRAM-SHA-1"]
    if tls:
        names.append("PLAIN")
    return names


def mechanisms_feature(mechanisms: list[str], channel_bindings: dict[str, bytes]) -> list[Element]:
    """The <mechanisms/> feature and, with channel binding, XEP-0440 <sasl-channel-binding/>."""
    feature = Element("mechanisms", SASL_NS)
    for name in mechanisms:
        feature.add("mechanism", text=name)
    features = [feature]
    if channel_bindings and any(m.endswith("-PLUS") for m in mechanisms):
        cb = Element("sasl-channel-binding", "urn:xmpp:sasl-cb:0")
        for kind in channel_bindings:
            cb.add("channel-binding", attrs={"type": kind})
        features.append(cb)
    return features


def _failure(condition: str, text: str = "") -> Element:
    el = Element("failure", SASL_NS)
    el.add(condition)
    if text:
        el.add("text", attrs={"xml:lang": "en"}, text=text)
    return el


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode() if data else "="


class SaslExchange:
    """One SASL exchange on one stream. Feed it <auth/>, <response/> and <abort/> elements."""

    def __init__(self, *, tls: bool, channel_bindings: dict[str, bytes], domain: str) -> None:
        self.tls = tls
        self.channel_bindings = channel_bindings
        self.domain = domain
        self.offered = offered_mechanisms(tls=tls, channel_bindings=channel_bindings)
        self.mechanism: str | None = None
        self.username: str | None = None
        self._scram: ScramServer | None = None
        self._stage = "idle"

    # --- client elements -----------------------------------------------------------------------
    def auth(self, element: Element) -> Step:
        mechanism = element.attrs.get("mechanism", "")
        if self._stage != "idle":
            return self._fail("malformed-request", "an exchange is already in progress")
        if mechanism not in self.offered:
            return self._fail("invalid-mechanism", f"{mechanism or 'no mechanism'} is not offered")
        payload = self._decode(element.text)
        if payload is None:
            return self._fail("incorrect-encoding", "the payload is not valid base64")
        self.mechanism = mechanism
        if mechanism == "PLAIN":
            return self._plain(payload)
        hash_name, plus = SCRAM_MECHANISMS[mechanism]
        self._scram = ScramServer(
            hash_name, plus=plus, channel_bindings=self.channel_bindings,
            offered_plus=any(m.endswith("-PLUS") for m in self.offered),
        )
        if not payload:
            # RFC 6120 section 6.4.2: no initial response -> empty challenge.
            self._stage = "scram-first"
            return Send(Element("challenge", SASL_NS, children=["="]))
        return self._scram_first(payload)

    def response(self, element: Element) -> Step:
        payload = self._decode(element.text)
        if payload is None:
            return self._fail("incorrect-encoding", "the payload is not valid base64")
        if self._stage == "scram-first":
            return self._scram_first(payload)
        if self._stage == "scram-final" and self._scram is not None:
            try:
                server_final = self._scram.client_final(payload)
            except ScramError as error:
                return self._fail(error.condition, str(error))
            self._stage = "done"
            assert self.username is not None and self.mechanism is not None
            return Succeeded(self.username, Element("success", SASL_NS, children=[_b64(server_final)]),
                             self.mechanism)
        return self._fail("malformed-request", "unexpected response")

    def abort(self) -> Step:
        self._stage = "idle"
        return Failed(_failure("aborted"), "aborted", self.username)

    # --- results of the caller's lookups ---------------------------------------------------------
    def credential_found(self, credential: object) -> Step:
        assert self._scram is not None
        server_first = self._scram.server_first(credential)  # type: ignore[arg-type]
        self._stage = "scram-final"
        return Send(Element("challenge", SASL_NS, children=[_b64(server_first)]))

    def password_checked(self, ok: bool) -> Step:
        if not ok:
            return self._fail("not-authorized", "invalid username or password")
        self._stage = "done"
        assert self.username is not None
        return Succeeded(self.username, Element("success", SASL_NS), "PLAIN")

    # --- internals --------------------------------------------------------------------------------
    def _scram_first(self, payload: bytes) -> Step:
        assert self._scram is not None
        try:
            username = self._scram.client_first(payload)
        except ScramError as error:
            return self._fail(error.condition, str(error))
        if self._scram.authzid and self._scram.authzid not in (username, f"{username}@{self.domain}"):
            return self._fail("invalid-authzid", "authorization identity differs from the account")
        self.username = username
        self._stage = "scram-lookup"
        assert self.mechanism is not None
        return NeedCredential(username, SCRAM_MECHANISMS[self.mechanism][0])

    def _plain(self, payload: bytes) -> Step:
        if not self.tls:
            return self._fail("encryption-required", "PLAIN needs a TLS-protected stream")
        parts = payload.split(b"\0")
        if len(parts) != 3:
            return self._fail("malformed-request", "PLAIN message must be authzid NUL authcid NUL passwd")
        try:
            authzid, authcid, password = (p.decode("utf-8") for p in parts)
        except UnicodeDecodeError:
            return self._fail("malformed-request", "PLAIN message is not UTF-8")
        if not authcid or not password:
            return self._fail("malformed-request", "empty username or password")
        if authzid and authzid not in (authcid, f"{authcid}@{self.domain}"):
            return self._fail("invalid-authzid", "authorization identity differs from the account")
        self.username = authcid
        self._stage = "plain-check"
        return NeedPassword(authcid, password)

    def _decode(self, text: str) -> bytes | None:
        text = text.strip()
        if len(text) > MAX_SASL_PAYLOAD_CHARS:
            return None
        if text in ("", "="):
            return b""
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            return None

    def _fail(self, condition: str, text: str) -> Failed:
        self._stage = "idle"
        self._scram = None
        return Failed(_failure(condition, text), condition, self.username)
