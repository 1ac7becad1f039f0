"""SIP message layer: parse and serialize SIP requests and responses (RFC 3261 §7, §20, §25).

This module is in charge of turning bytes into :class:`SipMessage` objects and back, with no I/O.

* Datagrams are parsed whole by :func:`parse_datagram` (RFC 3261 §18.3: Content-Length optional on
  UDP; a body shorter than Content-Length is an error, extra bytes are discarded).
* Streams (TCP, TLS, later WebSocket framing) go through :class:`StreamParser`, which frames messages
  by Content-Length, which is mandatory there, and reports CRLF keep-alives (RFC 5626 §3.5.1).
* Header values are kept as text and parsed only when asked for (the proxy hot path reads a handful
  of headers: Via, Max-Forwards, Route, CSeq, Call-ID, To tag), so parsing a message costs one split
  per line.

Compact header forms (§7.3.3) are expanded to their long names; multi-value headers (§7.3.1) are
split on commas outside quoted strings and angle brackets; name-addr, Via and SIP-URI parsing handle
quoted strings with escapes, %-escapes and IPv6 references (RFC 5118).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any
from urllib.parse import unquote

# --- limits -------------------------------------------------------------------------------------

# Largest datagram or stream message accepted.  RFC 3261 §18.1.1 keeps UDP messages under the path
# MTU when possible; Kamailio's default BUF_SIZE is 65535 and its TCP max message is also 64 KiB.
MAX_MESSAGE_SIZE = 65535
# Largest header block (start line + headers) on a stream before we give up waiting for CRLFCRLF.
# Kamailio rejects TCP headers above its read buffer (BUF_SIZE = 64 KiB); 16 KiB is ample for real
# SIP (Prosody's and h11's header caps are of the same order) and bounds memory per connection.
MAX_HEADER_BLOCK = 16384
# Largest body.  SDP and MESSAGE bodies are small; RFC 3428 §7 caps MESSAGE at 1300 bytes unless
# congestion-controlled.  Bounded by MAX_MESSAGE_SIZE anyway.
MAX_BODY_SIZE = MAX_MESSAGE_SIZE
# Most header lines in one message; RFC 4475 §3.1.2.x "huge headers" style attacks are cut here.
# Kamailio's parser has no explicit count but is bounded by its buffer; 256 lines is generous.
MAX_HEADER_LINES = 256
# Longest single header line; real Via/Route/Contact values stay well under 4 KiB.
MAX_HEADER_LINE = 8192
# Largest Content-Length digit string: RFC 4475 §3.1.2.3 (scalarlg) uses absurdly large integers;
# anything past 10 digits is rejected before int() so no huge numbers are built.
MAX_SCALAR_DIGITS = 10

SIP_VERSION = "SIP/2.0"

# --- header names -------------------------------------------------------------------------------

# RFC 3261 §7.3.3 compact forms, plus those registered later (RFC 3841, 3891, 3892, 4028, 3903...).
COMPACT_FORMS = {
    "i": "call-id", "m": "contact", "e": "content-encoding", "l": "content-length",
    "c": "content-type", "f": "from", "s": "subject", "k": "supported", "t": "to", "v": "via",
    "o": "event", "r": "refer-to", "b": "referred-by", "u": "allow-events", "x": "session-expires",
    "a": "accept-contact", "j": "reject-contact", "d": "request-disposition", "y": "identity",
}

# How each well-known header is spelled when we write it.  Received lines keep the spelling they
# arrived with.
CANONICAL_NAMES = {
    name.lower(): name
    for name in (
        "Via", "From", "To", "Call-ID", "CSeq", "Contact", "Max-Forwards", "Route",
        "Record-Route", "Content-Length", "Content-Type", "Expires", "Min-Expires", "Allow",
        "Supported", "Require", "Proxy-Require", "Unsupported", "WWW-Authenticate",
        "Authorization", "Proxy-Authenticate", "Proxy-Authorization", "User-Agent", "Server",
        "Path", "Date", "Accept", "Subject", "Event", "Retry-After", "Warning",
        "Authentication-Info", "Content-Encoding", "Timestamp", "Organization", "Priority",
    )
}

# Every spelling we look headers up by -> its lower-case long name, so lookups skip lower().
_KNOWN_KEYS = {name: name for name in CANONICAL_NAMES}
_KNOWN_KEYS.update({spelling: name for name, spelling in CANONICAL_NAMES.items()})
_KNOWN_KEYS.update(COMPACT_FORMS)
# The lower-case long names, which are their own key.
_LONG_NAMES = frozenset(CANONICAL_NAMES) | frozenset(COMPACT_FORMS.values())
# Each of those spellings as it arrives -> (lower-case long name, spelling on output): one lookup
# per header line when parsing.  A line keeps the name it came with (a compact form stays compact,
# as Kamailio forwards it), so what a proxy passes on is written as it was received.
_SPELLINGS = {spelling: (key, spelling) for spelling, key in _KNOWN_KEYS.items()}

# Headers whose value is a comma-separated list (RFC 3261 §7.3.1 and §20).  The authentication
# headers are not here: their commas separate parameters, not values.
MULTI_VALUE_HEADERS = frozenset({
    "via", "route", "record-route", "contact", "path", "allow", "supported", "require",
    "proxy-require", "unsupported", "accept", "accept-encoding", "accept-language",
    "content-encoding", "allow-events", "in-reply-to", "service-route",
})

# Headers a well-formed request must carry (RFC 3261 §8.1.1).
MANDATORY_REQUEST_HEADERS = ("to", "from", "cseq", "call-id", "via")
# Headers that may appear only once (RFC 3261 §7.3.1: only list headers repeat).  RFC 4475 §3.3.8
# (multi01) duplicates To, From, Call-ID and CSeq, and §3.3.9 (mcl01) carries two Content-Length
# values: both must be answered 400, since which copy is meant cannot be known.
SINGLE_VALUE_HEADERS = frozenset({"to", "from", "call-id", "cseq", "max-forwards", "content-length"})

# RFC 3261 §25.1 hostname / IPv4address (IPv6 references are handled separately)
_HOST_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9._-]*)")
# scheme ":" then visible ASCII only (no spaces or controls) for the Request-URI (§25.1)
_URI_TEXT_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[!-~]+")
_TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
# The methods of RFC 3261 and its extensions, tokens all (RFC 3261 §25.1): a Request-Line or CSeq
# naming one of them needs no token check.
_KNOWN_METHODS = frozenset({
    "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK", "SUBSCRIBE", "NOTIFY",
    "PUBLISH", "INFO", "REFER", "MESSAGE", "UPDATE",
})
_TOKEN_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
)


# One header line: (lower-case long name, spelling for output, value).  Tuples, not lists: they
# are immutable, so the cyclic garbage collector stops tracking them, which matters with tens of
# thousands of messages alive in transactions.
Header = tuple[str, str, str]


class Recent(dict[Any, Any]):
    """A bounded map of things seen lately (parses and checks a call repeats on its every
    message), read as ``recent[key]`` (None when unknown): two generations of at most ``size``
    entries, the older dropped whole when the newer fills, so a lookup in the newer is the dict's
    own (no Python call) and nothing is ever scanned."""

    __slots__ = ("older", "size")

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self.older: dict[Any, Any] = {}

    def __missing__(self, key: Any) -> Any:
        return self.older.get(key)

    def put(self, key: Any, value: Any) -> None:
        if len(self) >= self.size:
            self.older = dict(self)
            self.clear()
        self[key] = value

    def forget(self) -> None:
        self.clear()
        self.older = {}


# Request-URIs and From/To values found well-formed lately: a call's ACK and BYE repeat its INVITE's
# From, their To and Request-URI are the same, and calls to one user share a Request-URI.
_WELL_FORMED_URIS = Recent(8192)
_WELL_FORMED = Recent(8192)


class SipParseError(ValueError):
    """The bytes are not a valid SIP message.

    ``message`` is set when enough was parsed to answer 400 (start line and headers); ``status``
    is the response code to use (400, or 505 for an unsupported version, 413 when too large).
    """

    def __init__(self, reason: str, message: SipMessage | None = None, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.message = message
        self.status = status


# --- the message ----------------------------------------------------------------------------------


class SipMessage:
    """A SIP request (``method`` set) or response (``status`` set).

    ``headers`` is a list of ``[lower-case long name, spelling, value]`` entries in wire order.
    Values are the raw text after unfolding, so serializing an unchanged message keeps every byte of
    each header value.

    Lookups go through an index of the first value of each header, built on the first lookup and
    kept up to date by every method that edits ``headers``; code that edits the list itself calls
    :meth:`headers_changed` before the next lookup (the proxy reads a dozen headers of each message
    several times, and scanning the list each time cost more than parsing it; rebuilding the index
    after each of the proxy's edits cost a rebuild and a half per message).
    """

    __slots__ = ("_cseq", "_index", "_top_via", "body", "headers", "method", "reason", "status", "uri", "wire")

    def __init__(
        self,
        method: str | None = None,
        uri: str | None = None,
        status: int = 0,
        reason: str = "",
        headers: list[Header] | None = None,
        body: bytes = b"",
    ) -> None:
        self.method = method
        self.uri = uri
        self.status = status
        self.reason = reason
        self.headers: list[Header] = headers if headers is not None else []
        self.body = body
        self._top_via: Via | None = None
        self._index: dict[str, str] | None = None
        self._cseq: tuple[int, str] | None = None
        # The datagram this message was parsed from, when it is exactly start line, headers, blank
        # line and a body of the Content-Length given (so a proxy can forward a response by cutting
        # its own Via out of it, as Kamailio edits the received buffer); every edit of the headers
        # through the methods below drops it.
        self.wire: bytes | None = None

    # -- construction helpers
    @classmethod
    def request(cls, method: str, uri: str, headers: list[tuple[str, str]] | None = None,
                body: bytes = b"") -> SipMessage:
        message = cls(method=method, uri=uri, body=body)
        for name, value in headers or ():
            message.add(name, value)
        return message

    @classmethod
    def response(cls, status: int, reason: str, headers: list[tuple[str, str]] | None = None,
                 body: bytes = b"") -> SipMessage:
        message = cls(status=status, reason=reason, body=body)
        for name, value in headers or ():
            message.add(name, value)
        return message

    @property
    def is_request(self) -> bool:
        return self.method is not None

    # -- header access
    def get(self, name: str) -> str | None:
        """The first header line named ``name`` (any form), as raw text."""
        index = self._index
        if index is None:
            # reversed: the first line of a name is the one that stays
            index = self._index = {entry[0]: entry[2] for entry in reversed(self.headers)}
        value = index.get(name)  # most lookups name the lower-case long name
        if value is None and name not in _LONG_NAMES:
            value = index.get(_KNOWN_KEYS.get(name) or _long_name(name))
        return value

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, with comma-joined values split apart for list headers."""
        key = _long_name(name)
        values: list[str] = []
        split = key in MULTI_VALUE_HEADERS
        for entry in self.headers:
            if entry[0] == key:
                if split:
                    values.extend(split_values(entry[2]))
                else:
                    values.append(entry[2])
        return values

    def get_all_raw(self, name: str) -> list[str]:
        """Every header line named ``name``, unsplit (for Authorization-style headers)."""
        key = _long_name(name)
        return [entry[2] for entry in self.headers if entry[0] == key]

    def first_value(self, name: str) -> str | None:
        """The first value of a list header (the topmost Via, Route, ...)."""
        index = self._index
        raw = (index if index is not None else self.index()).get(name)  # the long name, as a rule
        if raw is None:
            if name in _LONG_NAMES:
                return None
            raw = self.get(name)
            if raw is None:
                return None
        comma = raw.find(",")
        if comma >= 0 and ('"' in raw or "<" in raw):
            comma = _first_comma(raw)
        return raw.strip() if comma < 0 else raw[:comma].strip()

    def has(self, name: str) -> bool:
        return self.get(name) is not None

    def add(self, name: str, value: str) -> None:
        self.wire = None
        key = _long_name(name)
        index = self._index
        if index is not None and key not in index:
            index[key] = value  # below any line of that name: the first one stays
        if key == "cseq":
            self._cseq = None
        if key == "via":
            self._top_via = None
        self.headers.append((key, CANONICAL_NAMES.get(key, name), value))

    def add_first(self, name: str, value: str, top: bool = False) -> None:
        """Insert ``name`` above every other header of that name (new Via, Record-Route); with
        ``top``, above every header when it has none (where Kamailio puts its Record-Route)."""
        self.wire = None
        key = _long_name(name)
        if self._index is not None:
            self._index[key] = value
        if key == "cseq":
            self._cseq = None
        if key == "via":
            self._top_via = None
        entry = (key, CANONICAL_NAMES.get(key, name), value)
        for index, existing in enumerate(self.headers):
            if existing[0] == key:
                self.headers.insert(index, entry)
                return
        if top:
            self.headers.insert(0, entry)
        else:
            self.headers.append(entry)

    def push_via(self, transport: str, host: str, port: int, branch: str) -> None:
        """Add our own topmost Via ``SIP/2.0/<transport> host:port;branch=...;rport`` (RFC 3261
        §16.6 step 8, RFC 3581), known without parsing it back."""
        entry, via = via_line(transport, host, port, branch)
        self.add_first("Via", entry[2])
        self._top_via = via

    def prepended(self, entries: list[Header], via: Via | None = None) -> SipMessage:
        """A copy with ``entries`` (Via, Record-Route or Route lines) above all its header lines,
        so each is above the lines of its name as with add_first (RFC 3261 §16.6 steps 4 and 8: a
        proxy's Record-Route and Via); ``via``: the parse of the topmost Via among them.  The
        header index and CSeq parse are taken over, not redone."""
        copy = SipMessage(self.method, self.uri, self.status, self.reason, entries + self.headers, self.body)
        if self._index is not None:
            index = copy._index = dict(self._index)
            for entry in reversed(entries):
                index[entry[0]] = entry[2]
        copy._cseq = self._cseq
        copy._top_via = via
        return copy

    def set(self, name: str, value: str) -> None:
        """Replace every ``name`` header with one line."""
        self.wire = None
        key = _long_name(name)
        if self._index is not None:
            self._index[key] = value
        if key == "cseq":
            self._cseq = None
        if key == "via":
            self._top_via = None
        for index, entry in enumerate(self.headers):
            if entry[0] == key:
                self.headers[index] = (key, entry[1], value)
                self.headers[index + 1:] = [e for e in self.headers[index + 1:] if e[0] != key]
                return
        self.headers.append((key, CANONICAL_NAMES.get(key, name), value))

    def remove(self, name: str) -> None:
        self.wire = None
        key = _long_name(name)
        if self._index is not None:
            self._index.pop(key, None)
        if key == "cseq":
            self._cseq = None
        if key == "via":
            self._top_via = None
        self.headers = [entry for entry in self.headers if entry[0] != key]

    def pop_first_value(self, name: str) -> str | None:
        """Remove and return the first value of a list header (top Via, top Route)."""
        self.wire = None
        key = _long_name(name)
        for index, entry in enumerate(self.headers):
            if entry[0] == key:
                if key == "via":
                    self._top_via = None
                elif key == "cseq":
                    self._cseq = None
                raw = entry[2]
                comma = _first_comma(raw)
                rest = "" if comma < 0 else raw[comma + 1:].strip()
                if rest:
                    self.headers[index] = (key, entry[1], rest)
                else:
                    del self.headers[index]
                if self._index is not None:
                    self._reindex(key)
                return raw.strip() if comma < 0 else raw[:comma].strip()
        return None

    def replace_top_via(self, position: int, entry: Header, via: Via) -> None:
        """Put ``entry`` in place of the first Via line, at ``position``, with ``via`` its parse
        (the transport's received/rport stamp, RFC 3581 §4)."""
        self.wire = None
        self.headers[position] = entry
        if self._index is not None:
            self._index["via"] = entry[2]
        self._top_via = via

    def index(self) -> dict[str, str]:
        """The first value of each header by lower-case long name (read-only)."""
        index = self._index
        if index is None:
            index = self._index = {entry[0]: entry[2] for entry in reversed(self.headers)}
        return index

    def top_branch(self) -> str | None:
        """The branch of the topmost Via, read without parsing the Via when it is written as
        ";branch=" (as every implementation writes it); else from the parsed Via."""
        via = self._top_via
        if via is not None:
            return via.params.get("branch")
        value = self.first_value("via")
        if value is None:
            raise SipParseError("no Via header")
        start = value.find(";branch=")
        if (start < 0 or value.count(" ") != 1 or "\t" in value or '"' in value
                or value.lower().count("branch") != 1):
            return self.top_via().branch  # blanks, quotes, another spelling: the parse decides
        start += 8
        end = value.find(";", start)
        return value[start:] if end < 0 else value[start:end]

    def headers_changed(self, name: str | None = None) -> None:
        """Call after editing ``headers`` entries in place, so cached parses are redone (``name``:
        only that header was edited)."""
        self.wire = None
        if name is None:
            self._index = None
        elif self._index is not None:
            self._reindex(name)
        if name is None or name == "via":
            self._top_via = None
        if name is None or name == "cseq":
            self._cseq = None

    def copy(self) -> SipMessage:
        """A copy with a header list of its own (the entries, tuples, are shared) and the header
        index and CSeq parse, which stay true for it."""
        copy = SipMessage(self.method, self.uri, self.status, self.reason, list(self.headers), self.body)
        if self._index is not None:
            copy._index = dict(self._index)
        copy._cseq = self._cseq
        return copy

    def inherit_views(self, original: SipMessage, changed: str, value: str) -> None:
        """Take over the header index and CSeq parse of ``original``, whose header lines this
        message copies except ``changed``, now the one line ``value`` (a request the proxy forwards
        need not index them again)."""
        if original._index is not None:
            index = self._index = dict(original._index)
            index[changed] = value
        if changed != "cseq":
            self._cseq = original._cseq

    def _reindex(self, key: str) -> None:
        """The index entry of ``key`` after its lines changed (the index exists)."""
        assert self._index is not None
        for entry in self.headers:
            if entry[0] == key:
                self._index[key] = entry[2]
                return
        self._index.pop(key, None)

    # -- frequently used parsed views
    @property
    def call_id(self) -> str:
        index = self._index
        value = (index if index is not None else self.index()).get("call-id")
        return value.strip() if value else ""

    @property
    def cseq(self) -> tuple[int, str]:
        cseq = self._cseq
        if cseq is None:
            cseq = self._cseq = parse_cseq(self.get("cseq") or "")
        return cseq

    def top_via(self) -> Via:
        """The topmost Via, parsed once (the cache is dropped when headers change)."""
        via = self._top_via
        if via is None:
            value = self.first_value("via")
            if value is None:
                raise SipParseError("no Via header")
            via = self._top_via = parse_via(value)
        return via

    def from_tag(self) -> str | None:
        return header_param(self.get("from") or "", "tag")

    def to_tag(self) -> str | None:
        index = self._index
        return header_param((index if index is not None else self.index()).get("to") or "", "tag")

    # -- output
    def serialize(self) -> bytes:
        """Wire form, with Content-Length always set to the body size."""
        if self.method is not None:
            start = f"{self.method} {self.uri} {SIP_VERSION}\r\n"
        else:
            start = f"{SIP_VERSION} {self.status} {self.reason}\r\n"
        body = self.body
        head = "".join([f"{spelling}: {value}\r\n" for key, spelling, value in self.headers
                        if key != "content-length"])
        return f"{start}{head}Content-Length: {len(body)}\r\n\r\n".encode("utf-8", "surrogateescape") + body

    def __bytes__(self) -> bytes:
        return self.serialize()

    def __repr__(self) -> str:
        if self.method is not None:
            return f"<SipMessage {self.method} {self.uri}>"
        return f"<SipMessage {self.status} {self.reason}>"


def _scan_commas(value: str, first_only: bool) -> tuple[list[int], bool]:
    """Indexes of commas separating list values (outside quotes and <>), and whether a quoted string
    is left open at the end. With `first_only`, stop at the first such comma."""
    commas: list[int] = []
    in_quotes = in_angle = False
    index = 0
    length = len(value)
    while index < length:
        ch = value[index]
        if in_quotes:
            if ch == "\\":
                index += 1
            elif ch == '"':
                in_quotes = False
        elif ch == '"':
            in_quotes = True
        elif ch == "<":
            in_angle = True
        elif ch == ">":
            in_angle = False
        elif ch == "," and not in_angle:
            commas.append(index)
            if first_only:
                break
        index += 1
    return commas, in_quotes


def _first_comma(value: str) -> int:
    """Index of the first comma separating list values (outside quotes and <>), or -1."""
    comma = value.find(",")
    if comma < 0 or ('"' not in value and "<" not in value):
        return comma
    commas, _ = _scan_commas(value, first_only=True)
    return commas[0] if commas else -1


def _long_name(name: str) -> str:
    known = _KNOWN_KEYS.get(name)
    if known is not None:
        return known
    key = name.lower()
    return COMPACT_FORMS.get(key, key)


# --- parsing ------------------------------------------------------------------------------------


def parse_datagram(data: bytes) -> SipMessage:
    """Parse one UDP datagram (RFC 3261 §18.3)."""
    if len(data) > MAX_MESSAGE_SIZE:
        raise SipParseError("message too large", status=513)
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if not data.endswith(b"\r\n"):
            raise SipParseError("no end of headers")
        # The datagram ends where the message does: a missing empty line after the last header
        # (RFC 4475 §3.1.2.15 baddn arrives so) leaves no doubt where the headers stop.
        end = len(data) - 2
    message = _parse_head(data[:end])
    body = data[end + 4:]
    length_text = message.get("content-length")
    if length_text is not None:
        length = parse_content_length(length_text, message)
        if length > len(body):
            raise SipParseError("body shorter than Content-Length", message)
        if len(body) == length:
            message.wire = data
        body = body[:length]
    message.body = body
    return message


def without_top_via(message: SipMessage) -> bytes | None:
    """The received bytes of ``message`` with its top Via line cut out (RFC 3261 §16.7 step 3, a
    proxy's own Via off a response), or None when the bytes cannot be used that way: not received
    whole and clean, or a top Via line holding more values or folded (then serialize a copy)."""
    wire = message.wire
    if wire is None:
        return None
    for entry in message.headers:
        if entry[0] == "via":
            value = entry[2]
            break
    else:
        return None
    if "," in value:
        return None
    needle = value.encode("utf-8", "surrogateescape")
    position = wire.find(needle)
    start = wire.rfind(b"\r\n", 0, position) if position > 0 else -1
    if start < 0:
        return None
    after = position + len(needle)
    end = wire.find(b"\r\n", after)
    name, colon, blank = wire[start + 2:position].partition(b":")
    if (not colon or name.rstrip(b" \t").lower() not in (b"via", b"v") or blank.strip(b" \t")
            or wire[after:end].strip(b" \t")):
        return None
    return wire[:start] + wire[end:]


# Content-Length values read lately (a few sizes: 0, an SDP's).
_LENGTHS = Recent(1024)


def parse_content_length(text: str, message: SipMessage | None = None) -> int:
    length: int | None = _LENGTHS[text]
    if length is None:
        length = _parse_content_length(text, message)
        _LENGTHS.put(text, length)
    return length


def _parse_content_length(text: str, message: SipMessage | None) -> int:
    text = text.strip()
    if not text.isdigit() or not text.isascii():
        raise SipParseError("bad Content-Length", message)
    if len(text) > MAX_SCALAR_DIGITS:
        raise SipParseError("Content-Length too large", message)
    length = int(text)
    if length > MAX_BODY_SIZE:
        raise SipParseError("Content-Length too large", message, status=513)
    return length


def _parse_head(head: bytes) -> SipMessage:
    text = head.decode("utf-8", "surrogateescape")
    lines = text.split("\r\n")
    too_many = len(lines) > MAX_HEADER_LINES
    if too_many:
        lines = lines[:MAX_HEADER_LINES]  # keep enough to answer 513 (Via, From, To, ...)
    start = lines[0]
    start_error: SipParseError | None = None
    try:
        message = _parse_start_line(start)
    except SipParseError as error:
        if start.startswith("SIP/") or " " not in start:
            raise
        # A bad Request-Line (RFC 4475 ltgtruri, lwsstart, badvers...): parse the headers anyway so
        # the request can be answered 400/505 (RFC 4475 §3.1.2 expects an answer, not silence).
        start_error = error
        method = start.split(" ", 1)[0]
        message = SipMessage(method=method if _is_token(method) else "INVALID", uri="")
    spellings = _SPELLINGS
    headers = message.headers
    if start_error is None and len(text) <= MAX_HEADER_LINE:
        # Every line "Name: value" with a name in its usual spelling (what user agents and
        # proxies write): one pass in a comprehension.  A line without a colon, a folded line,
        # an empty one or any other name raises here and the loop below takes the message.
        try:
            headers[:] = [(*spellings[name], value.strip(" \t"))
                          for name, value in [line.split(":", 1) for line in lines[1:]]]
        except (KeyError, ValueError):
            pass
        else:
            lines = lines[:1]
    append = headers.append
    compact = COMPACT_FORMS
    canonical = CANONICAL_NAMES
    for line in lines[1:]:
        if not line:
            raise SipParseError("empty header line", message)
        first = line[0]
        if first == " " or first == "\t":
            # RFC 3261 §7.3.1 line folding: continuation of the previous header value.
            if not headers:
                raise SipParseError("continuation line before any header", message)
            last = headers[-1]
            headers[-1] = (last[0], last[1], last[2] + " " + line.strip())
            continue
        if len(line) > MAX_HEADER_LINE:
            raise SipParseError("header line too long", message, status=513)
        spelling, colon, value = line.partition(":")
        known = spellings.get(spelling)  # the usual spellings, without lower() and validation
        if known is not None and colon:
            append((known[0], known[1], value.strip(" \t")))
            continue
        if not colon or not spelling:
            raise SipParseError("header line without a colon", message)
        spelling = spelling.rstrip(" \t")
        key = spelling.lower()
        if key not in canonical and key not in compact and not _is_token(key):
            raise SipParseError(f"bad header name {spelling!r}", message)
        key = compact.get(key, key)
        append((key, spelling, value.strip(" \t")))
    if start_error is not None:
        raise SipParseError(start_error.reason, message, start_error.status)
    if too_many:
        raise SipParseError("too many header lines", message, status=513)
    if message.method is not None:
        _check_request(message)
    else:
        _check_response(message)
    return message


def _is_token(text: str) -> bool:
    return _TOKEN_RE.fullmatch(text) is not None


def _parse_start_line(line: str) -> SipMessage:
    if line.startswith("SIP/"):
        parts = line.split(" ", 2)
        if len(parts) < 2:
            raise SipParseError("bad status line")
        version, code = parts[0], parts[1]
        if version.upper() != SIP_VERSION:
            raise SipParseError("unsupported SIP version", status=505)
        if len(code) != 3 or not code.isdigit() or not code.isascii() or code[0] == "0":
            raise SipParseError("bad status code")
        return SipMessage(status=int(code), reason=parts[2] if len(parts) > 2 else "")
    parts = line.split(" ")
    if len(parts) != 3:
        # RFC 4475 §3.1.2.7 (lwsstart), §3.1.2.8 (trws), §3.1.2.11 (escruri):  exactly one SP
        # between the three elements of the Request-Line (RFC 3261 §7.1).
        raise SipParseError("malformed Request-Line")
    method, uri, version = parts
    if method not in _KNOWN_METHODS and not _is_token(method):
        raise SipParseError("bad method")
    if _WELL_FORMED_URIS[uri] is None:
        if not uri or uri[0] == "<" or not _is_uri_text(uri):
            # RFC 4475 §3.1.2.6 (ltgtruri): the Request-URI is never inside < >.
            raise SipParseError("bad Request-URI")
        _WELL_FORMED_URIS.put(uri, True)
    if version != SIP_VERSION:
        if version.upper() == SIP_VERSION:
            version = SIP_VERSION
        elif version.startswith("SIP/"):
            # RFC 4475 §3.1.2.14 (badvers): 505 Version Not Supported.
            message = SipMessage(method=method, uri=uri)
            raise SipParseError("unsupported SIP version", message, status=505)
        else:
            raise SipParseError("bad SIP version")
    return SipMessage(method=method, uri=uri)


def _is_uri_text(uri: str) -> bool:
    return _URI_TEXT_RE.fullmatch(uri) is not None


def _present_once(message: SipMessage) -> bool:
    """Build the message's lookup index (header name -> first value), refusing a repeated
    single-value header (RFC 4475 §3.3.8-9); True when no name repeats (each name one line)."""
    headers = message.headers
    # reversed: the first line of a name is the one that stays
    index = message._index = {entry[0]: entry[2] for entry in reversed(headers)}
    extra = len(headers) - len(index)
    if not extra:
        return True
    keys = [entry[0] for entry in headers]
    vias, routes, record_routes = keys.count("via"), keys.count("route"), keys.count("record-route")
    if extra == vias + routes + record_routes - (vias > 0) - (routes > 0) - (record_routes > 0):
        return False  # only those repeat (a response's Vias, a dialog's route set)
    seen: set[str] = set()  # something repeats: a list header, or one that must not
    for key, _spelling, _value in headers:
        if key in seen and key in SINGLE_VALUE_HEADERS:
            raise SipParseError(f"more than one {CANONICAL_NAMES.get(key, key)} header", message)
        seen.add(key)
    return False


# An empty list element or parameter (",," ";;" ",;" or a leading or trailing separator, blanks
# allowed between), outside quotes: RFC 4475 §3.1.2.1 (badinv01) has "Via: SIP/2.0/UDP
# 192.0.2.15;;,;,," and a Contact ending ";;;;".
_QUOTED_RE = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACKETED_RE = re.compile(r"<[^>]*>")


def _check_list_syntax(value: str, message: SipMessage, name: str) -> None:
    text = _QUOTED_RE.sub('""', value) if '"' in value else value
    if "<" in text:
        text = _BRACKETED_RE.sub("<>", text)  # a URI's user part may hold ';' and ','
    # With the blanks taken out, an empty element is two separators side by side or one at an
    # end: substring tests, cheaper than a regex trying a match at every position of the value.
    compact = text.replace(" ", "").replace("\t", "")
    if (not compact or compact[0] in ",;" or compact[-1] in ",;" or ";;" in compact or ";," in compact
            or ",;" in compact or ",," in compact):
        raise SipParseError(f"empty element in {name}", message)


# A name-addr with no display name and no quotes: "<uri>" and ";params" that parse_name_addr always
# accepts (a scheme, no whitespace inside < >, parameters after ">").  Others get the full parse.
_SIMPLE_NAME_ADDR_RE = re.compile(r'<[A-Za-z][A-Za-z0-9+.-]*:[^<>\s"]*>(?:;[^"]*)?')


def _check_request(message: SipMessage) -> None:
    once = _present_once(message)
    index = message._index
    assert index is not None
    for name in MANDATORY_REQUEST_HEADERS:
        if name not in index:
            raise SipParseError(f"missing {name} header", message)
    _number, method = message._cseq = parse_cseq(index["cseq"], message)
    # RFC 4475 §3.1.2.15 (mismatch01): CSeq method must match the Request-Line method.
    if method != message.method:
        raise SipParseError("CSeq method does not match the request method", message)
    max_forwards = index.get("max-forwards")
    if max_forwards is not None:
        value = max_forwards.strip()
        if not value.isdigit() or len(value) > MAX_SCALAR_DIGITS or int(value) > 255:
            raise SipParseError("bad Max-Forwards", message)
    well_formed = _WELL_FORMED
    for name in ("from", "to"):
        value = index[name]
        if well_formed[value] is not None:
            continue
        if _SIMPLE_NAME_ADDR_RE.fullmatch(value) is None:
            # not "<scheme:...>;params", with nothing parse_name_addr could refuse
            try:
                parse_name_addr(value)
            except SipParseError as error:
                raise SipParseError(f"bad {name} header: {error.reason}", message) from None
        well_formed.put(value, True)
    if once:  # one Via line and at most one Contact line: no need to look through them all
        via = index["via"]
        # the simple form has no empty element; its parse is kept for the transport's stamp
        top = parse_simple_via(via) if "," not in via else None
        if top is None:
            _check_list_syntax(via, message, "Via")
        _LAST_SIMPLE_VIA[:] = (via, top)
        contact = index.get("contact")
        if contact is not None:
            _check_contact(contact, message)
        return
    for key, _spelling, value in message.headers:
        if key == "via":
            _check_list_syntax(value, message, "Via")
        elif key == "contact":
            _check_contact(value, message)


def _check_contact(value: str, message: SipMessage) -> None:
    # RFC 4475 §3.1.2.13 (regbadct): an addr-spec Contact with '?' must be bracketed
    _check_list_syntax(value, message, "Contact")
    if "," not in value and _SIMPLE_NAME_ADDR_RE.fullmatch(value) is not None:
        return  # one "<uri>;params" value
    try:
        for item in split_values(value):
            if _SIMPLE_NAME_ADDR_RE.fullmatch(item) is None:
                parse_name_addr(item)
    except SipParseError as error:
        raise SipParseError(f"bad Contact header: {error.reason}", message) from None


def _check_response(message: SipMessage) -> None:
    _present_once(message)
    index = message._index
    assert index is not None
    for name in ("via", "cseq", "call-id", "from", "to"):
        if name not in index:
            raise SipParseError(f"missing {name} header", message)
    message._cseq = parse_cseq(index["cseq"], message)


# CSeq values parsed lately ("1 INVITE", "2 BYE": few, and many calls share them).
_CSEQS = Recent(1024)


def parse_cseq(value: str, message: SipMessage | None = None) -> tuple[int, str]:
    found: tuple[int, str] | None = _CSEQS[value]
    if found is None:
        found = _parse_cseq(value, message)
        _CSEQS.put(value, found)
    return found


def _parse_cseq(value: str, message: SipMessage | None) -> tuple[int, str]:
    parts = value.split()
    if len(parts) != 2:
        raise SipParseError("bad CSeq", message)
    number, method = parts
    # RFC 3261 §8.1.1.5: the sequence number is a 32-bit unsigned integer (RFC 4475 scalar02/lg).
    if not number.isdigit() or not number.isascii() or len(number) > MAX_SCALAR_DIGITS:
        raise SipParseError("bad CSeq number", message)
    sequence = int(number)
    if sequence >= 2**31:
        raise SipParseError("CSeq number out of range", message)
    if method not in _KNOWN_METHODS and not _is_token(method):
        raise SipParseError("bad CSeq method", message)
    return sequence, method


class StreamParser:
    """Frames SIP messages out of a byte stream (TCP, TLS) by Content-Length (RFC 3261 §18.3).

    Feed bytes with :meth:`feed`; it returns complete messages and the string ``"ping"`` for each
    CRLFCRLF keep-alive (RFC 5626 §3.5.1), which the transport answers with a single CRLF.  A
    stream that breaks framing raises :class:`SipParseError`; the connection must then be closed,
    since the next message boundary cannot be found.
    """

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[SipMessage | str]:
        self._buffer += data
        out: list[SipMessage | str] = []
        while True:
            buffer = self._buffer
            # keep-alives and stray CRLFs between messages (RFC 3261 §7.5 allows ignoring them)
            if buffer.startswith(b"\r\n"):
                if buffer.startswith(b"\r\n\r\n"):
                    out.append("ping")
                    self._buffer = buffer[4:]
                    continue
                if len(buffer) < 4 and b"\r\n\r\n".startswith(buffer):
                    break  # maybe the first half of a ping; wait
                self._buffer = buffer[2:]
                continue
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEADER_BLOCK:
                    raise SipParseError("header block too large", status=513)
                break
            if end > MAX_HEADER_BLOCK:
                raise SipParseError("header block too large", status=513)
            message = _parse_head(buffer[:end])
            length_text = message.get("content-length")
            if length_text is None:
                raise SipParseError("Content-Length is mandatory on streams", message)
            length = parse_content_length(length_text, message)
            total = end + 4 + length
            if len(buffer) < total:
                break
            message.body = buffer[end + 4:total]
            self._buffer = buffer[total:]
            out.append(message)
        return out

    @property
    def pending(self) -> int:
        return len(self._buffer)


# --- header value grammar -----------------------------------------------------------------------


def split_values(value: str) -> list[str]:
    """Split a list header on commas outside quotes and <> (RFC 3261 §7.3.1)."""
    if "," not in value:
        stripped = value.strip()
        return [stripped] if stripped else []
    if '"' not in value and "<" not in value:
        # the common case (Via lists joined by a UA): commas can only separate values
        return [part for part in (piece.strip() for piece in value.split(",")) if part]
    commas, unterminated = _scan_commas(value, first_only=False)
    if unterminated:
        raise SipParseError("unterminated quoted string")
    bounds = [-1, *commas, len(value)]
    return [part for part in (value[a + 1 : b].strip() for a, b in pairwise(bounds)) if part]


def split_params(text: str) -> dict[str, str | None]:
    """Parse ``;name=value;flag`` (text after the first ';'), honouring quoted values."""
    params: dict[str, str | None] = {}
    for item in _split_outside_quotes(text, ";"):
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        name = name.strip().lower()
        if sep:
            value = value.strip()
            if value.startswith('"'):
                value = unquote_string(value)
            params[name] = value
        else:
            params[name] = None
    return params


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    if '"' not in text:
        return text.split(separator)
    parts: list[str] = []
    current: list[str] = []
    in_quotes = False
    escaped = False
    for ch in text:
        if in_quotes:
            current.append(ch)
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_quotes = False
        elif ch == '"':
            in_quotes = True
            current.append(ch)
        elif ch == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if in_quotes:
        raise SipParseError("unterminated quoted string")
    parts.append("".join(current))
    return parts


def unquote_string(text: str) -> str:
    """``"a \\"b\\""`` -> ``a "b"`` (RFC 3261 §25.1 quoted-string with quoted-pair)."""
    text = text.strip()
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        raise SipParseError("bad quoted string")
    inner = text[1:-1]
    if "\\" not in inner:
        if '"' in inner:
            raise SipParseError("bad quoted string")
        return inner
    out: list[str] = []
    index = 0
    while index < len(inner):
        ch = inner[index]
        if ch == "\\":
            index += 1
            if index >= len(inner):
                raise SipParseError("bad escape in quoted string")
            out.append(inner[index])
        elif ch == '"':
            raise SipParseError("bad quoted string")
        else:
            out.append(ch)
        index += 1
    return "".join(out)


def quote_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(slots=True)
class NameAddr:
    """``"Display" <uri>;params`` or ``uri;params`` (From, To, Contact, Route, Record-Route)."""

    display: str | None
    uri: str
    params: dict[str, str | None] = field(default_factory=dict)
    wildcard: bool = False

    def __str__(self) -> str:
        text = "*" if self.wildcard else f"<{self.uri}>"
        if self.display:
            text = f"{quote_string(self.display)} {text}"
        return text + format_params(self.params)


def format_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


def parse_name_addr(value: str) -> NameAddr:
    value = value.strip()
    if value == "*":
        return NameAddr(None, "*", {}, wildcard=True)
    display: str | None = None
    rest = value
    if rest.startswith('"'):
        # quoted display name: find the closing quote honouring escapes
        index = 1
        while index < len(rest):
            ch = rest[index]
            if ch == "\\":
                index += 2
                continue
            if ch == '"':
                break
            index += 1
        else:
            # RFC 4475 §3.1.2.9 (quotbal): unbalanced quotes -> 400
            raise SipParseError("unterminated quoted display name")
        display = unquote_string(rest[: index + 1])
        rest = rest[index + 1:].lstrip()
        if not rest.startswith("<"):
            raise SipParseError("display name without <uri>")
    lt = rest.find("<")
    if lt >= 0:
        if display is None:
            token_display = rest[:lt].strip()
            if token_display:
                # RFC 4475 §3.1.2.13 (baddn): an unquoted display name must be tokens
                if not all(_is_token(word) for word in token_display.split()):
                    raise SipParseError("bad display name")
                display = token_display
        gt = rest.find(">", lt)
        if gt < 0:
            raise SipParseError("missing '>'")
        uri = rest[lt + 1: gt]
        if uri != uri.strip():
            # RFC 4475 §3.1.2.14 (badaspec): no whitespace inside < > (RFC 3261 §25.1 LAQUOT, RAQUOT)
            raise SipParseError("whitespace inside <>")
        params_text = rest[gt + 1:].strip()
        if params_text and not params_text.startswith(";"):
            raise SipParseError("junk after '>'")
        params = split_params(params_text[1:]) if params_text else {}
    else:
        # addr-spec form: parameters after the URI belong to the header (RFC 3261 §20.10), so the
        # URI itself cannot carry ';' params here; RFC 4475 §3.1.2.12 (badaspec) ends up here too.
        uri, _, params_text = rest.partition(";")
        uri = uri.strip()
        if not uri or " " in uri or "?" in uri or "," in uri:
            raise SipParseError("bad addr-spec")
        params = split_params(params_text) if params_text else {}
    if ":" not in uri:
        raise SipParseError("URI without a scheme")
    return NameAddr(display, uri, params)


def header_param(value: str, name: str) -> str | None:
    """A header parameter (e.g. ``tag`` of From/To) without building a NameAddr."""
    gt = value.rfind(">")
    tail = value[gt + 1:] if gt >= 0 else value.partition(";")[2]
    if not tail:
        return None
    for item in tail.split(";"):
        key, sep, found = item.partition("=")
        if sep and key.strip().lower() == name:
            return found.strip()
    return None


@dataclass(slots=True)
class Via:
    """One Via value (RFC 3261 §20.42): ``SIP/2.0/UDP host:port;branch=...;rport``."""

    transport: str
    host: str
    port: int | None
    params: dict[str, str | None]

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        sent_by = host if self.port is None else f"{host}:{self.port}"
        return f"SIP/2.0/{self.transport} {sent_by}{format_params(self.params)}"


# The Via almost every user agent and proxy writes: "SIP/2.0/UDP host:port;name=value;flag", with no
# IPv6 reference, whitespace or quoted parameter.  It is parsed here in one match; anything else (and
# anything this accepts that the general parser would refuse, such as a port out of range) goes to it.
_SIMPLE_VIA_RE = re.compile(
    r"SIP/2\.0/([A-Za-z]+) ([A-Za-z0-9_][A-Za-z0-9._-]*)(?::([0-9]{1,5}))?((?:;[^;\"=\s,]+(?:=[^;\"\s,]*)?)*)")


def via_line(transport: str, host: str, port: int, branch: str) -> tuple[Header, Via]:
    """Our Via ``SIP/2.0/<transport> host:port;branch=...;rport`` (RFC 3261 §16.6 step 8, RFC 3581
    asking for rport) as a header line and parsed."""
    sent_by = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return (("via", "Via", f"SIP/2.0/{transport} {sent_by};branch={branch};rport"),
            Via(transport.upper(), host.lower(), port, {"branch": branch, "rport": None}))


# The last lone Via line _check_request parsed in the simple form, and its parse: the transport
# stamps received/rport on it next (see take_simple_via).
_LAST_SIMPLE_VIA: list[Any] = [None, None]


def take_simple_via(value: str) -> Via | None:
    """parse_simple_via(value), from the request check's parse when ``value`` is the very string
    it parsed last (it is handed over once: the caller may change it)."""
    last = _LAST_SIMPLE_VIA
    if last[0] is value:
        via: Via | None = last[1]
        last[0] = last[1] = None
        return via
    return parse_simple_via(value)


def parse_via(value: str) -> Via:
    via = parse_simple_via(value)
    return via if via is not None else _parse_via(value)


def parse_simple_via(value: str) -> Via | None:
    """``value`` parsed if it is the simple form of _SIMPLE_VIA_RE, else None."""
    simple = _SIMPLE_VIA_RE.fullmatch(value)
    if simple is None:
        return None
    transport, host, port_text, params_text = simple.groups()
    port = int(port_text) if port_text is not None else None
    if port is not None and not 0 < port < 65536:
        return None
    params: dict[str, str | None] = {}
    if params_text:
        for item in params_text[1:].split(";"):
            name, sep, param = item.partition("=")
            params[name.lower()] = param if sep else None
    return Via(transport.upper(), host.lower(), port, params)


def _parse_via(value: str) -> Via:
    protocol, _, rest = value.strip().partition(" ")
    parts = [part.strip() for part in protocol.split("/")]
    if len(parts) == 2 and rest.startswith("/"):
        # tolerate "SIP / 2.0 / UDP host" (RFC 4475 wsinv uses LWS around '/')
        protocol_text, rest = _rejoin_via_protocol(value)
        parts = [p.strip() for p in protocol_text.split("/")]
    if len(parts) != 3 or parts[0].upper() != "SIP" or parts[1] != "2.0":
        protocol_text, rest = _rejoin_via_protocol(value)
        parts = [p.strip() for p in protocol_text.split("/")]
        if len(parts) != 3 or parts[0].upper() != "SIP" or parts[1] != "2.0":
            raise SipParseError("bad Via protocol")
    transport = parts[2].upper()
    sent_by, _, params_text = rest.strip().partition(";")
    host, port = parse_hostport(sent_by.strip())
    params = split_params(params_text) if params_text else {}
    return Via(transport, host, port, params)


def _rejoin_via_protocol(value: str) -> tuple[str, str]:
    """Handle LWS around '/' in the sent-protocol: collect until the third token."""
    tokens = value.replace("/", " / ").split()
    protocol: list[str] = []
    index = 0
    while index < len(tokens) and len([t for t in protocol if t != "/"]) < 3:
        protocol.append(tokens[index])
        index += 1
    return "".join(protocol), " ".join(tokens[index:])


def parse_hostport(text: str) -> tuple[str, int | None]:
    if not text:
        raise SipParseError("empty host")
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise SipParseError("unterminated IPv6 reference")
        host = text[1:end]
        rest = text[end + 1:]
        if not host or not all(ch in "0123456789abcdefABCDEF:." for ch in host):
            raise SipParseError("bad IPv6 reference")
    else:
        host, colon, port_text = text.partition(":")
        rest = ":" + port_text if colon else ""
        if _HOST_RE.fullmatch(host) is None:
            # RFC 4475 §3.1.1.x IPv6 without brackets ends here too (RFC 5118 §4.10)
            raise SipParseError("bad host")
    if not rest:
        return host.lower(), None
    if not rest.startswith(":") or not rest[1:].isdigit() or len(rest) > 6:
        raise SipParseError("bad port")
    port = int(rest[1:])
    if not 0 < port < 65536:
        raise SipParseError("port out of range")
    return host.lower(), port


@dataclass(slots=True)
class SipUri:
    """A sip: or sips: URI (RFC 3261 §19.1), user unescaped."""

    scheme: str
    user: str | None
    host: str
    port: int | None
    params: dict[str, str | None]
    headers: str = ""
    password: str | None = None

    @property
    def transport(self) -> str | None:
        value = self.params.get("transport")
        return value.lower() if value else None

    def address_of_record(self) -> str:
        """``sip:user@host`` for location lookups (RFC 3261 §10.3 canonicalisation)."""
        return f"sip:{self.user}@{self.host}" if self.user else f"sip:{self.host}"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        text = f"{self.scheme}:"
        if self.user is not None:
            text += escape_user(self.user)
            if self.password is not None:
                text += ":" + self.password
            text += "@"
        text += host
        if self.port is not None:
            text += f":{self.port}"
        text += format_params(self.params)
        if self.headers:
            text += "?" + self.headers
        return text


_USER_UNRESERVED = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!~*'()&=+$,;?/"
)


def escape_user(user: str) -> str:
    return "".join(
        ch if ch in _USER_UNRESERVED else "".join(f"%{b:02X}" for b in ch.encode("utf-8"))
        for ch in user
    )


class UnsupportedScheme(SipParseError):
    """A well-formed URI whose scheme is not sip/sips (answered 416, RFC 3261 §8.2.2.1)."""


# Parsed URIs remembered: the proxy parses the same ones over and over (the Request-URI of calls to
# one user, a dialog's route in its ACK and BYE, a registered contact).  Callers treat the result
# as read-only.
URI_CACHE_SIZE = 4096


@functools.lru_cache(maxsize=URI_CACHE_SIZE)
def parse_uri(text: str) -> SipUri:
    text = text.strip()
    scheme, colon, rest = text.partition(":")
    scheme = scheme.lower()
    if not colon:
        raise SipParseError("URI without a scheme")
    if scheme not in ("sip", "sips"):
        raise UnsupportedScheme(f"unsupported URI scheme {scheme!r}", status=416)
    user: str | None = None
    password: str | None = None
    # The user part may hold '?', ';' and ',' (RFC 3261 §25.1 user-unreserved; RFC 4475 §3.1.1.2
    # intmeth): find the userinfo first.  '@' is legal in no later part, so the first one ends it.
    at = rest.find("@")
    if at >= 0:
        userinfo = rest[:at]
        rest = rest[at + 1:]
        user_text, sep, password_text = userinfo.partition(":")
        if not user_text:
            raise SipParseError("empty user part")
        user = unquote(user_text, errors="surrogateescape")
        password = password_text if sep else None
    rest, _, headers = rest.partition("?")
    hostport, _, params_text = rest.partition(";")
    host, port = parse_hostport(hostport)
    params = split_params(params_text) if params_text else {}
    return SipUri(scheme, user, host, port, params, headers, password)


def status_reason(status: int) -> str:
    return REASONS.get(status, "Unknown")


REASONS = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 200: "OK", 202: "Accepted", 400: "Bad Request", 401: "Unauthorized",
    403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 407: "Proxy Authentication Required",
    408: "Request Timeout", 413: "Request Entity Too Large", 416: "Unsupported URI Scheme",
    420: "Bad Extension", 423: "Interval Too Brief", 430: "Flow Failed",
    439: "First Hop Lacks Outbound Support", 480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist", 482: "Loop Detected", 483: "Too Many Hops",
    486: "Busy Here", 487: "Request Terminated", 488: "Not Acceptable Here",
    500: "Server Internal Error", 501: "Not Implemented", 503: "Service Unavailable",
    504: "Server Time-out", 505: "Version Not Supported", 513: "Message Too Large",
    600: "Busy Everywhere", 603: "Decline",
}

# Headers copied from a request into a response generated for it (RFC 3261 §8.2.6.2).
_RESPONSE_COPIED = frozenset({"via", "from", "to", "call-id", "cseq"})


def make_response(request: SipMessage, status: int, reason: str | None = None,
                  to_tag: str | None = None) -> SipMessage:
    """A response to ``request`` with Via, From, To, Call-ID and CSeq copied (RFC 3261 §8.2.6)."""
    headers = [entry for entry in request.headers if entry[0] in _RESPONSE_COPIED]
    if to_tag is not None and status > 100:
        for index, entry in enumerate(headers):
            if entry[0] == "to" and header_param(entry[2], "tag") is None:
                headers[index] = (entry[0], entry[1], entry[2] + ";tag=" + to_tag)
    if status == 100:
        timestamp = request.get("timestamp")
        if timestamp is not None:
            headers.append(("timestamp", "Timestamp", timestamp))
    return SipMessage(status=status, reason=reason or status_reason(status), headers=headers)
