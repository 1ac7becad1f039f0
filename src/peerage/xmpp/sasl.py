"""SASL for XMPP client streams (RFC 6120 section 6): the XML framing around ``peerage.identity.sasl``.

This module is in charge only of turning <auth/>, <response/> and <abort/> elements into calls on the
shared SASL server and its steps back into <challenge/>, <success/> and <failure/> elements (with
XEP-0440's <sasl-channel-binding/> feature). Mechanisms, the login-name rule, channel binding and every
check live in ``peerage.identity.sasl``; this is a thin layer kept under its old names so the c2s
stream can go on importing it.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from peerage.identity import sasl as engine
from peerage.identity.sasl import SCRAM_MECHANISMS, LoginNames
from peerage.xmpp.stream import Element

__all__ = [
    "MAX_FAILURES_PER_STREAM", "MAX_SASL_PAYLOAD_CHARS", "SASL_NS", "SCRAM_MECHANISMS", "Failed",
    "NeedCredential", "NeedPassword", "SaslExchange", "Send", "Step", "Succeeded", "mechanisms_feature",
    "offered_mechanisms",
]

SASL_NS = "urn:ietf:params:xml:ns:xmpp-sasl"
#: Largest base64 payload accepted in <auth/> or <response/>: the engine's message bound grown by 4/3.
MAX_SASL_PAYLOAD_CHARS = engine.MAX_CLIENT_MESSAGE * 4 // 3 + 4
MAX_FAILURES_PER_STREAM = engine.MAX_FAILURES_PER_CONNECTION


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
    """Mechanisms in preference order for a stream in the given state (XMPP advertises -PLUS)."""
    return engine.offered_mechanisms(secure=tls, channel_bindings=channel_bindings)


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
        # RFC 6120 §6.4.6: the account is on the stream's domain; alice@<that domain> is accepted too.
        self.server = engine.SaslServer(
            mechanisms=self.offered, login=LoginNames(domain or None, [domain] if domain else []),
            channel_bindings=channel_bindings, secure=tls,
        )

    @property
    def mechanism(self) -> str | None:
        return self.server.mechanism

    @property
    def username(self) -> str | None:
        return self.server.username

    def auth(self, element: Element) -> Step:
        payload = self._decode(element.text)
        if payload is None:
            return self._failed(engine.Failure("incorrect-encoding", "the payload is not valid base64"))
        # RFC 6120 §6.4.2: an empty element means no initial response, "=" an empty one.
        initial = None if not element.text.strip() else payload
        return self._wrap(self.server.start(element.attrs.get("mechanism", ""), initial))

    def response(self, element: Element) -> Step:
        payload = self._decode(element.text)
        if payload is None:
            return self._failed(engine.Failure("incorrect-encoding", "the payload is not valid base64"))
        return self._wrap(self.server.respond(payload))

    def abort(self) -> Step:
        return self._wrap(self.server.abort())

    def credential_found(self, credential: object) -> Step:
        return self._wrap(self.server.credential_found(credential))  # type: ignore[arg-type]

    def password_checked(self, ok: bool) -> Step:
        return self._wrap(self.server.password_checked(ok))

    def _wrap(self, step: engine.Step) -> Step:
        if isinstance(step, engine.Challenge):
            return Send(Element("challenge", SASL_NS, children=[_b64(step.data)]))
        if isinstance(step, engine.NeedCredential):
            return NeedCredential(step.username, step.hash_name)
        if isinstance(step, engine.NeedPassword):
            return NeedPassword(step.username, step.password)
        if isinstance(step, engine.Success):
            success = Element("success", SASL_NS, children=[_b64(step.data)] if step.data else [])
            return Succeeded(self.server.username or step.account, success, step.mechanism)
        if isinstance(step, engine.Failure):
            return self._failed(step)
        # EXTERNAL is not offered on c2s streams.
        return self._failed(engine.Failure("invalid-mechanism", "EXTERNAL is not offered"))

    def _failed(self, failure: engine.Failure) -> Failed:
        text = "" if failure.condition == "aborted" else failure.text
        return Failed(_failure(failure.condition, text), failure.condition, failure.username)

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
