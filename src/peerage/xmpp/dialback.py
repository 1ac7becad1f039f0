"""Server Dialback (XEP-0220) with XEP-0185 keys, sans-I/O.

This module is in charge of the dialback keys (HMAC-SHA256 of the two domains and the stream id,
XEP-0185 section 3, under a secret that persists in the data folder so that a restart does not break
dialback in flight), of building and reading ``<db:result/>`` and ``<db:verify/>`` elements, dialback
errors (XEP-0220 section 2.4), and of the per-stream bookkeeping of domain pairs, so that several
pairs can be piggybacked on one connection (XEP-0220 section 2.3). It never opens a socket.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from peerage.xmpp.stream import SERVER_NS, STANZAS_ERROR_NS, Element, escape_attr, escape_text, serialize

DIALBACK_NS = "jabber:server:dialback"
#: Stream feature advertising dialback (XEP-0220 section 2.1.1); ``<errors/>`` inside says we
#: understand dialback errors (section 2.4).
DIALBACK_FEATURE_NS = "urn:xmpp:features:dialback"
#: Declared on every s2s stream header, as Prosody's mod_s2s does (``xmlns:db``).
STREAM_DIALBACK_DECLARATION = f" xmlns:db='{DIALBACK_NS}'"

#: Bytes of random secret. XEP-0185 section 4 asks for a secret "long enough to be unguessable";
#: 32 bytes matches the HMAC-SHA256 block strength.
SECRET_BYTES = 32
SECRET_FILE_NAME = "dialback.secret"
#: The ``server_secrets`` row the nodes of a cluster share instead of each node's file.
CLUSTER_SECRET_NAME = "xmpp-dialback"
#: Domain pairs one stream may have waiting for verification at once. Prosody does not cap it; a
#: bound stops one peer from making us open unbounded verification connections.
MAX_PENDING_PAIRS = 32
#: Domain pairs one stream may carry in all (piggybacking, XEP-0220 section 2.3). A provider with a
#: few hundred virtual hosts stays far below; the bound keeps per-stream state small.
MAX_PAIRS_PER_STREAM = 1024
#: Longest key accepted (XEP-0185 keys are 64 hex digits; other servers use up to ~100 chars).
MAX_KEY_LENGTH = 1024


class DialbackError(enum.Enum):
    """Dialback error conditions (XEP-0220 section 2.4) with their error types."""

    ITEM_NOT_FOUND = ("item-not-found", "cancel")              # the receiving domain is not ours
    REMOTE_SERVER_NOT_FOUND = ("remote-server-not-found", "cancel")  # authoritative server unknown
    REMOTE_SERVER_TIMEOUT = ("remote-server-timeout", "wait")  # authoritative server did not answer
    POLICY_VIOLATION = ("policy-violation", "cancel")          # our federation policy refuses it
    NOT_AUTHORIZED = ("not-authorized", "auth")
    INTERNAL_SERVER_ERROR = ("internal-server-error", "wait")

    @property
    def condition(self) -> str:
        return self.value[0]

    @property
    def error_type(self) -> str:
        return self.value[1]


# --- keys ----------------------------------------------------------------------------------------

class DialbackSecret:
    """The secret behind XEP-0185 keys. Persisted so that keys stay valid across a restart."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("dialback secret too short")
        # XEP-0185 section 3: the HMAC key is the hex SHA-256 digest of the secret.
        self._hmac_key = hashlib.sha256(secret).hexdigest().encode()

    @classmethod
    def load_or_create(cls, data_dir: Path) -> DialbackSecret:
        path = Path(data_dir) / SECRET_FILE_NAME
        try:
            secret = path.read_bytes().strip()
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            secret = secrets.token_hex(SECRET_BYTES).encode()
            tmp = path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as file:
                file.write(secret)
                file.flush()
                os.fsync(file.fileno())
            try:
                os.link(tmp, path)  # never replace a secret another process created meanwhile
            except FileExistsError:
                secret = path.read_bytes().strip()
            finally:
                tmp.unlink(missing_ok=True)
        return cls(secret)

    def key(self, receiving: str, originating: str, stream_id: str) -> str:
        """XEP-0185 section 3: HMAC-SHA256(SHA256(secret), "Receiving Originating StreamID"), hex."""
        message = f"{receiving} {originating} {stream_id}".encode()
        return hmac.new(self._hmac_key, message, hashlib.sha256).hexdigest()

    def check(self, receiving: str, originating: str, stream_id: str, key: str) -> bool:
        return hmac.compare_digest(self.key(receiving, originating, stream_id), key.strip())


# --- elements ------------------------------------------------------------------------------------

def result_request(from_: str, to: str, key: str) -> Element:
    """Originating -> receiving: "let me send as ``from_`` to ``to``" (XEP-0220 section 2.1.1)."""
    return Element("result", DIALBACK_NS, {"from": from_, "to": to}, [key])


def verify_request(from_: str, to: str, stream_id: str, key: str) -> Element:
    """Receiving -> authoritative: "is this key yours for that stream?" (section 2.1.2)."""
    return Element("verify", DIALBACK_NS, {"from": from_, "to": to, "id": stream_id}, [key])


def verify_response(request: Element, valid: bool) -> Element:
    """Authoritative -> receiving (section 2.1.3); addresses swapped, key not echoed."""
    return Element("verify", DIALBACK_NS, {
        "from": request.attrs.get("to", ""), "to": request.attrs.get("from", ""),
        "id": request.attrs.get("id", ""), "type": "valid" if valid else "invalid"})


def result_response(from_: str, to: str, valid: bool) -> Element:
    """Receiving -> originating: the outcome (section 2.1.4)."""
    return Element("result", DIALBACK_NS, {"from": from_, "to": to,
                                           "type": "valid" if valid else "invalid"})


def error_response(name: str, from_: str, to: str, error: DialbackError, stream_id: str | None = None
                   ) -> Element:
    """``<db:result type='error'>`` or ``<db:verify type='error'>`` (section 2.4)."""
    attrs = {"from": from_, "to": to, "type": "error"}
    if stream_id is not None:
        attrs["id"] = stream_id
    element = Element(name, DIALBACK_NS, attrs)
    # XEP-0220 section 2.4 example: the <error/> child is unprefixed, in the stream's jabber:server.
    inner = element.add("error", SERVER_NS, {"type": error.error_type})
    inner.add(error.condition, STANZAS_ERROR_NS)
    return element


#: The prefix every dialback element is written with. XEP-0220 declares ``xmlns:db`` on the stream
#: header and writes ``<db:result/>`` and ``<db:verify/>``; so do Prosody (mod_dialback) and
#: ejabberd. ejabberd's XMPP library matches the qualified name ``db:result`` literally (xmpp_codec's
#: ``db_result`` element is ``<<"db:result">>`` in ``jabber:server``), so an element written as
#: ``<result xmlns='jabber:server:dialback'>``, although the same XML, is not dialback to it: the
#: request is never answered. Hence always the prefix, declared once on our stream header.
DIALBACK_PREFIX = "db"


def to_wire(element: Element) -> str:
    """Serialize a dialback element as ``<db:result/>`` or ``<db:verify/>`` with the ``db`` prefix
    bound by the stream header (``STREAM_DIALBACK_DECLARATION``); children keep their namespaces."""
    name = f"{DIALBACK_PREFIX}:{element.name}"
    out = ["<", name]
    for key, value in element.attrs.items():
        out.append(f" {key}='{escape_attr(value)}'")
    if not element.children:
        out.append("/>")
        return "".join(out)
    out.append(">")
    for child in element.children:
        if isinstance(child, str):
            out.append(escape_text(child))
        else:
            out.append(serialize(child, SERVER_NS, SERVER_NS))
    out.append(f"</{name}>")
    return "".join(out)


def features_element() -> Element:
    feature = Element("dialback", DIALBACK_FEATURE_NS)
    feature.add("errors")
    return feature


@dataclass(frozen=True)
class DialbackMessage:
    kind: str               # "result" or "verify"
    from_: str
    to: str
    stream_id: str          # "" on db:result
    type: str               # "" for a request, else valid / invalid / error
    key: str
    error: str              # the error condition when type == "error"

    @property
    def is_request(self) -> bool:
        return self.type == ""


class DialbackParseError(ValueError):
    """Not a usable dialback element; the caller answers with a stream error."""


def parse(element: Element) -> DialbackMessage:
    if element.xmlns != DIALBACK_NS or element.name not in ("result", "verify"):
        raise DialbackParseError("not a dialback element")
    from_ = element.attrs.get("from", "").lower().rstrip(".")
    to = element.attrs.get("to", "").lower().rstrip(".")
    if not from_ or not to:
        raise DialbackParseError("dialback element without 'from' or 'to'")
    kind = element.name
    type_ = element.attrs.get("type", "")
    if type_ not in ("", "valid", "invalid", "error"):
        raise DialbackParseError(f"unknown dialback type {type_!r}")
    stream_id = element.attrs.get("id", "")
    if kind == "verify" and not stream_id:
        raise DialbackParseError("db:verify without 'id'")
    key = element.text.strip()
    if len(key) > MAX_KEY_LENGTH:
        raise DialbackParseError("dialback key too long")
    if type_ == "" and not key:
        raise DialbackParseError("dialback request without a key")
    condition = ""
    if type_ == "error":
        inner = element.find("error")
        if inner is not None:
            for child in inner.elements():
                if child.xmlns == STANZAS_ERROR_NS:
                    condition = child.name
                    break
        condition = condition or "undefined-condition"
    return DialbackMessage(kind, from_, to, stream_id, type_, key, condition)


# --- per-stream state ----------------------------------------------------------------------------

class PairState(enum.Enum):
    PENDING = "pending"
    VALID = "valid"
    INVALID = "invalid"


class PairTable:
    """Domain pairs (remote, local) negotiated on one inbound stream (piggybacking)."""

    def __init__(self) -> None:
        self.pairs: dict[tuple[str, str], PairState] = {}

    def request(self, remote: str, local: str) -> str | None:
        """Record a new request; return a refusal reason, or None when it may be verified."""
        state = self.pairs.get((remote, local))
        if state is PairState.VALID:
            return None  # re-requesting an authorised pair is harmless; answer valid again
        if state is PairState.PENDING:
            return "a dialback request for this domain pair is already pending"
        if sum(1 for s in self.pairs.values() if s is PairState.PENDING) >= MAX_PENDING_PAIRS:
            return "too many dialback requests pending on this stream"
        if len(self.pairs) >= MAX_PAIRS_PER_STREAM:
            return "too many domain pairs on this stream"
        self.pairs[(remote, local)] = PairState.PENDING
        return None

    def settle(self, remote: str, local: str, valid: bool) -> None:
        self.pairs[(remote, local)] = PairState.VALID if valid else PairState.INVALID

    def authorised(self, remote: str, local: str) -> bool:
        return self.pairs.get((remote, local)) is PairState.VALID

    def remote_domains(self) -> set[str]:
        return {r for (r, _), s in self.pairs.items() if s is PairState.VALID}
