"""XML stream parsing and serialization for XMPP (RFC 6120 sections 4 and 11), sans-I/O.

This module is in charge of turning the bytes of one XML stream into events and stanza objects back
into bytes. It knows nothing about sockets, asyncio, sessions or routing.

Parsing: ``XmlStreamParser.feed(data)`` returns a list of events:

- ``StreamOpened(attrs, content_ns)``: the ``<stream:stream>`` header with its attributes;
- ``Element`` objects: each complete first-level child of the stream (a stanza, ``<stream:features/>``,
  ``<starttls/>``, ``<auth/>``, ...);
- ``StreamClosed()``: the peer sent ``</stream:stream>``;
- ``StreamFailure(condition, text)``: the input broke a rule; ``condition`` is the RFC 6120 section
  4.9.3 stream error to send. It is always the last event and the parser refuses further input.

Restricted XML (RFC 6120 section 11.1): a DTD, entity declarations, processing instructions, comments
and external entity references are refused with ``restricted-xml``. Malformed XML gives
``not-well-formed``; a stanza larger than the configured limit or nested too deep gives
``policy-violation``.

Namespaces: the stream's content namespace (``jabber:client`` on client streams, ``jabber:server`` on
server streams) is represented as the empty string ``""`` in ``Element.xmlns``. A stanza parsed from a
client stream can therefore be serialized onto a server stream unchanged: the serializer writes the
content namespace of the stream it writes to (``serialize(el, content_ns="jabber:server")``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from xml.parsers import expat

STREAM_NS = "http://etherx.jabber.org/streams"
STREAMS_ERROR_NS = "urn:ietf:params:xml:ns:xmpp-streams"
STANZAS_ERROR_NS = "urn:ietf:params:xml:ns:xmpp-stanzas"
CLIENT_NS = "jabber:client"
SERVER_NS = "jabber:server"
XML_NS = "http://www.w3.org/XML/1998/namespace"
#: Stream negotiation namespaces both stream kinds use (RFC 6120 sections 5 and 6).
TLS_NS = "urn:ietf:params:xml:ns:xmpp-tls"
SASL_NS = "urn:ietf:params:xml:ns:xmpp-sasl"
#: Namespaces that are "the stanza content namespace" and map to "" in Element.xmlns.
CONTENT_NAMESPACES = frozenset((CLIENT_NS, SERVER_NS, ""))

#: Largest first-level element accepted, in bytes. RFC 6120 section 13.12 asks for a limit of at
#: least 10000 bytes; Prosody's c2s_stanza_size_limit defaults to 256 KiB (mod_c2s.lua), ejabberd's
#: max_stanza_size to 256 KiB on c2s. We follow them.
DEFAULT_MAX_STANZA_BYTES = 256 * 1024
#: Deepest nesting accepted below the stream root. Real stanzas nest < 10 levels (a MAM result with a
#: forwarded message with an XHTML body is about 8); this bounds recursion in the serializer and
#: parser state. Prosody does not limit depth explicitly; 64 is generous.
MAX_ELEMENT_DEPTH = 64
#: Longest stream header accepted before the first stanza (the header plus whitespace). A real
#: header is < 300 bytes; the limit stops a peer from streaming an endless open tag.
MAX_STREAM_HEADER_BYTES = 16 * 1024


class Element:
    """A light XML element: name, namespace ("" = stanza content namespace), attributes, children.

    ``children`` holds ``Element`` objects and ``str`` text nodes in document order. Attribute keys
    are plain names, ``xml:lang`` for the XML namespace, and ``{uri}name`` for any other namespace.
    """

    __slots__ = ("attrs", "children", "name", "xmlns")

    def __init__(
        self,
        name: str,
        xmlns: str = "",
        attrs: dict[str, str] | None = None,
        children: list[Element | str] | None = None,
    ) -> None:
        self.name = name
        self.xmlns = xmlns
        self.attrs = attrs if attrs is not None else {}
        self.children = children if children is not None else []

    # --- attributes -----------------------------------------------------------------------
    def get(self, key: str, default: str | None = None) -> str | None:
        return self.attrs.get(key, default)

    def set(self, key: str, value: str | None) -> None:
        if value is None:
            self.attrs.pop(key, None)
        else:
            self.attrs[key] = value

    # --- children --------------------------------------------------------------------------
    def append(self, child: Element | str) -> Element | str:
        self.children.append(child)
        return child

    def add(self, name: str, xmlns: str | None = None, attrs: dict[str, str] | None = None,
            text: str | None = None) -> Element:
        """Append and return a new child; ``xmlns=None`` inherits this element's namespace."""
        child = Element(name, self.xmlns if xmlns is None else xmlns, attrs)
        if text is not None:
            child.children.append(text)
        self.children.append(child)
        return child

    def elements(self) -> Iterator[Element]:
        for child in self.children:
            if isinstance(child, Element):
                yield child

    def find(self, name: str | None = None, xmlns: str | None = None) -> Element | None:
        """First child element matching ``name`` and ``xmlns`` (``None`` matches anything)."""
        for child in self.children:
            if isinstance(child, Element) and (name is None or child.name == name) and (
                xmlns is None or child.xmlns == xmlns
            ):
                return child
        return None

    def find_all(self, name: str | None = None, xmlns: str | None = None) -> list[Element]:
        return [
            c for c in self.children
            if isinstance(c, Element) and (name is None or c.name == name)
            and (xmlns is None or c.xmlns == xmlns)
        ]

    def remove(self, child: Element) -> None:
        self.children.remove(child)

    @property
    def text(self) -> str:
        """Concatenated direct text children."""
        return "".join(c for c in self.children if isinstance(c, str))

    def find_text(self, name: str, xmlns: str | None = None) -> str | None:
        child = self.find(name, xmlns)
        return None if child is None else child.text

    def copy(self) -> Element:
        """Deep copy."""
        return Element(
            self.name, self.xmlns, dict(self.attrs),
            [c.copy() if isinstance(c, Element) else c for c in self.children],
        )

    def __repr__(self) -> str:
        return f"<Element {serialize(self)[:200]!r}>"

    def to_bytes(self, content_ns: str = CLIENT_NS) -> bytes:
        return serialize(self, content_ns).encode()


class StreamOpened:
    """The peer opened (or restarted) its stream. ``attrs`` keeps ``to``, ``from``, ``version``,
    ``id``, ``xml:lang``; ``content_ns`` is the declared default namespace."""

    __slots__ = ("attrs", "content_ns")

    def __init__(self, attrs: dict[str, str], content_ns: str) -> None:
        self.attrs = attrs
        self.content_ns = content_ns

    def __repr__(self) -> str:
        return f"StreamOpened({self.attrs!r}, {self.content_ns!r})"


class StreamClosed:
    """The peer sent ``</stream:stream>``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "StreamClosed()"


class StreamFailure:
    """The input broke a rule; ``condition`` is an RFC 6120 section 4.9.3 stream error condition."""

    __slots__ = ("condition", "text")

    def __init__(self, condition: str, text: str = "") -> None:
        self.condition = condition
        self.text = text

    def __repr__(self) -> str:
        return f"StreamFailure({self.condition!r}, {self.text!r})"


Event = StreamOpened | StreamClosed | StreamFailure | Element


class _Refused(Exception):
    """Raised inside expat handlers to abort parsing with a stream error condition."""

    def __init__(self, condition: str, text: str) -> None:
        super().__init__(text)
        self.condition = condition
        self.text = text


_NAME_CACHE: dict[str, tuple[str, str]] = {}
#: Bound on the expanded-name cache; names come from peers, so the cache must not grow unbounded.
_NAME_CACHE_LIMIT = 4096


def _split_name(expanded: str) -> tuple[str, str]:
    """expat gives 'uri local' (or 'local'); return (namespace, local) with content ns -> ''."""
    cached = _NAME_CACHE.get(expanded)
    if cached is not None:
        return cached
    ns, _, local = expanded.rpartition(" ")
    if ns in CONTENT_NAMESPACES:
        ns = ""
    result = (ns, local)
    if len(_NAME_CACHE) < _NAME_CACHE_LIMIT:
        _NAME_CACHE[expanded] = result
    return result


def _attr_key(expanded: str) -> str:
    if " " not in expanded:
        return expanded
    ns, _, local = expanded.rpartition(" ")
    if ns == XML_NS:
        return "xml:" + local
    return "{" + ns + "}" + local


_NO_EVENTS: list[Any] = []
#: ``object.__new__``, for the parser's elements (see ``XmlStreamParser._start``).
_new_element = object.__new__


class XmlStreamParser:
    """Incremental parser for one XML stream (one direction, until the next stream restart).

    Create a new parser after each stream restart (after STARTTLS and after SASL success).

    ``compact()`` releases the expat parser while the stream rests between stanzas (an expat parser
    with its buffers costs about 20 KiB, the largest part of an idle connection's memory). The next
    ``feed()`` builds a fresh one and replays a header with the stream's namespace declarations.
    """

    __slots__ = (
        "_base",
        "_closed",
        "_content_ns",
        "_depth",
        "_events",
        "_failed",
        "_fed",
        "_header_mark",
        "_mark",
        "_parser",
        "_quiescent",
        "_replaying",
        "_root_ns",
        "_stack",
        "_stanza_start",
        "_starts",
        "max_stanza_bytes",
    )

    def __init__(self, max_stanza_bytes: int = DEFAULT_MAX_STANZA_BYTES) -> None:
        self.max_stanza_bytes = max_stanza_bytes
        self._events: list[Event] = _NO_EVENTS
        self._stack: list[Element] = []
        self._depth = 0
        self._failed = False
        self._closed = False
        self._fed = 0  # bytes of the real stream consumed so far
        self._base = 0  # absolute offset of byte 0 of the current expat document
        self._stanza_start = 0
        self._starts: list[int] | None = None  # feed_messages: where each top-level element began
        self._mark = -1  # absolute offset of the last top-level tag (header, stanza end)
        self._header_mark = -2  # absolute offset of the stream header
        self._quiescent = False  # the stream rests between stanzas with no partial input
        self._content_ns = ""
        self._root_ns: list[tuple[str | None, str]] = []
        self._replaying = False
        self._parser: Any = self._new_expat()

    def _new_expat(self) -> Any:
        parser = expat.ParserCreate(namespace_separator=" ")
        parser.buffer_text = True
        # Never read external DTD subsets or parameter entities (billion laughs / XXE).
        parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
        if hasattr(parser, "SetReparseDeferralEnabled"):  # expat >= 2.6: deliver events promptly
            parser.SetReparseDeferralEnabled(False)
        parser.StartElementHandler = self._start
        parser.EndElementHandler = self._end
        parser.CharacterDataHandler = self._text
        parser.StartNamespaceDeclHandler = self._ns_decl
        parser.StartDoctypeDeclHandler = self._restricted_doctype
        parser.EntityDeclHandler = self._restricted_entity
        parser.UnparsedEntityDeclHandler = self._restricted_entity
        parser.NotationDeclHandler = self._restricted_entity
        parser.ExternalEntityRefHandler = self._restricted_external
        parser.ProcessingInstructionHandler = self._restricted_pi
        parser.CommentHandler = self._restricted_comment
        parser.DefaultHandler = self._default
        return parser

    @property
    def failed(self) -> bool:
        return self._failed

    def compact(self) -> bool:
        """Release the expat parser if the stream is between stanzas; return whether it did."""
        if self._parser is None or self._failed or self._closed or not self._quiescent:
            return False
        if self._replay_header() is None:
            return False
        self._parser = None
        return True

    def release(self) -> None:
        """Let go of the expat parser at once: the stream was restarted or the connection is gone.

        The expat parser's handlers are this object's bound methods, so the two form a reference
        cycle that, left to itself, only the cyclic garbage collector frees, after the parser has
        usually been promoted to an older generation: an expat parser and its buffers (about
        20 KiB) per restart and per closed connection then wait for a full collection, and free
        in a burst long after other allocations have been placed around them, leaving holes in the
        C heap that an idle server keeps resident. Released here, their memory is reused at once
        by the next parser, which needs the same sizes. Feeding a released parser does nothing.
        """
        self._parser = None
        self._closed = True
        self._stack.clear()

    def _replay_header(self) -> bytes | None:
        """A stream header declaring the original namespaces, or None if it cannot be rebuilt."""
        stream_prefixes = [prefix for prefix, uri in self._root_ns if uri == STREAM_NS]
        if len(stream_prefixes) != 1 or not stream_prefixes[0]:
            return None
        decls = "".join(
            f" xmlns='{escape_attr(uri)}'" if prefix is None else f" xmlns:{prefix}='{escape_attr(uri)}'"
            for prefix, uri in self._root_ns
        )
        return f"<{stream_prefixes[0]}:stream{decls}>".encode()

    def feed(self, data: bytes) -> list[Event]:
        """Consume bytes; return the events they complete."""
        if self._failed or self._closed:
            return []
        events = self._events = []
        fed_before = self._fed
        try:
            if self._parser is None:
                header = self._replay_header()
                assert header is not None
                self._parser = self._new_expat()
                self._base = fed_before - len(header)
                self._depth = 0
                self._replaying = True
                try:
                    self._parser.Parse(header, False)
                finally:
                    self._replaying = False
            mark_before = self._mark
            self._parser.Parse(data, False)
            self._fed += len(data)
            if self._depth >= 2 and self._fed - self._stanza_start > self.max_stanza_bytes:
                raise _Refused("policy-violation", "stanza exceeds the size limit")
            if self._depth == 0 and self._fed > MAX_STREAM_HEADER_BYTES:
                raise _Refused("policy-violation", "stream header too long")
            if self._depth != 1:
                self._quiescent = False
            elif self._mark != mark_before and self._mark >= fed_before:
                # The mark is the start of the last end tag "</...>" (or the header), or the end of
                # an empty-element tag "<.../>": the stream rests if nothing but the rest of that
                # tag and whitespace follows it.
                index = self._mark - fed_before
                tail = data[index:].rstrip()
                if data[index:index + 2] == b"</" or self._mark == self._header_mark:
                    self._quiescent = tail.endswith(b">") and tail.count(b"<") == 1
                else:
                    self._quiescent = not tail
            elif data.strip():
                self._quiescent = False
        except _Refused as refused:
            self._fail(events, refused.condition, refused.text)
        except expat.ExpatError as error:
            self._fail(events, "not-well-formed", expat.ErrorString(error.code))
        except RecursionError:  # pragma: no cover - depth is bounded before this can happen
            self._fail(events, "policy-violation", "too deeply nested")
        self._events = _NO_EVENTS  # do not keep the last stanzas alive
        return events

    def feed_message(self, data: bytes) -> list[Event]:
        """Consume one framed message meant to hold one whole element after the header (RFC 7395,
        one element per WebSocket message); return its events.

        ``feed`` without the resting-stream bookkeeping, which only serves ``compact`` between reads
        of a byte stream: the caller checks that exactly one Element came and the depth is back to 1."""
        if self._parser is None or self._failed or self._closed or self._depth == 0:
            return self.feed(data)
        events = self._events = []
        try:
            self._parser.Parse(data, False)
            self._fed += len(data)
            if self._depth >= 2 and self._fed - self._stanza_start > self.max_stanza_bytes:
                raise _Refused("policy-violation", "stanza exceeds the size limit")
            self._quiescent = False
        except _Refused as refused:
            self._fail(events, refused.condition, refused.text)
        except expat.ExpatError as error:
            self._fail(events, "not-well-formed", expat.ErrorString(error.code))
        except RecursionError:  # pragma: no cover - depth is bounded before this can happen
            self._fail(events, "policy-violation", "too deeply nested")
        self._events = _NO_EVENTS
        return events

    def feed_messages(self, messages: list[bytes]) -> tuple[list[Event], list[int]]:
        """``feed_message`` for several messages in one parse: their events, and where each top-level
        element began, counted from the first message's first byte. The caller compares those
        offsets with the messages' own to know which messages held exactly one element."""
        fed_before = self._fed
        starts = self._starts = []
        try:
            events = self.feed_message(b"".join(messages))
        finally:
            self._starts = None
        return events, [start - fed_before for start in starts]

    def _fail(self, events: list[Event], condition: str, text: str) -> None:
        self._failed = True
        self._stack.clear()
        events.append(StreamFailure(condition, text))
        # Drop handler references so the parser and this object do not keep each other alive.
        self._parser = None

    # --- expat handlers -------------------------------------------------------------------------
    def _ns_decl(self, prefix: str | None, uri: str | None) -> None:
        if self._depth == 0 and not self._replaying:
            self._root_ns.append((prefix, uri or ""))
            if prefix is None:
                self._content_ns = uri or ""

    def _start(self, name: str, attrs: dict[str, str]) -> None:
        depth = self._depth
        if depth == 0:
            if name != STREAM_NS + " stream":
                raise _Refused("invalid-namespace", "the root element must be stream:stream")
            self._depth = 1
            # Only the header's declarations matter (_ns_decl): a client that declares xmlns on every
            # stanza (RFC 7395 section 3.3.3 asks it to) no longer costs a call per stanza.
            self._parser.StartNamespaceDeclHandler = None
            if self._replaying:
                return
            self._mark = self._header_mark = self._base + self._parser.CurrentByteIndex
            self._events.append(
                StreamOpened({_attr_key(k): v for k, v in attrs.items()}, self._content_ns)
            )
            return
        if depth >= MAX_ELEMENT_DEPTH:
            raise _Refused("policy-violation", "elements nested too deeply")
        split = _NAME_CACHE.get(name)  # _split_name, its cache read inlined
        ns, local = split if split is not None else _split_name(name)
        if attrs:
            # expat hands a fresh dict; it is rebuilt only when a key is namespaced ("uri local").
            for key in attrs:
                if " " in key:
                    attrs = {(k if " " not in k else _attr_key(k)): v for k, v in attrs.items()}
                    break
        # Element(local, ns, attrs, []), without the __init__ call: every element of every stanza.
        element = _new_element(Element)
        element.name = local
        element.xmlns = ns
        element.attrs = attrs
        element.children = []
        if depth == 1:
            # CurrentByteIndex is the offset of this start tag in the current expat document.
            start = self._stanza_start = self._base + self._parser.CurrentByteIndex
            starts = self._starts
            if starts is not None:
                starts.append(start)
        else:
            self._stack[-1].children.append(element)
        self._stack.append(element)
        self._depth = depth + 1

    def _end(self, name: str) -> None:
        depth = self._depth - 1
        self._depth = depth
        if depth == 0:
            self._closed = True
            self._events.append(StreamClosed())
            return
        element = self._stack.pop()
        if depth == 1:
            position = self._base + self._parser.CurrentByteIndex
            if position - self._stanza_start > self.max_stanza_bytes:
                raise _Refused("policy-violation", "stanza exceeds the size limit")
            self._mark = position
            self._events.append(element)

    def _text(self, data: str) -> None:
        if self._depth >= 2:
            self._stack[-1].children.append(data)
        elif self._depth == 1 and not data.isspace():
            raise _Refused("not-well-formed", "text outside a stanza")

    def _default(self, data: str) -> None:
        # Reached for input with no specific handler; entity references to undeclared entities
        # are errors in expat already, so nothing to do.
        return None

    def _restricted_doctype(self, *args: Any) -> None:
        raise _Refused("restricted-xml", "document type declarations are not allowed")

    def _restricted_entity(self, *args: Any) -> None:
        raise _Refused("restricted-xml", "entity declarations are not allowed")

    def _restricted_external(self, *args: Any) -> int:
        raise _Refused("restricted-xml", "external entities are not allowed")

    def _restricted_pi(self, target: str, data: str) -> None:
        raise _Refused("restricted-xml", "processing instructions are not allowed")

    def _restricted_comment(self, data: str) -> None:
        raise _Refused("restricted-xml", "comments are not allowed")


# --- serialization --------------------------------------------------------------------------

def escape_text(text: str) -> str:
    if "&" in text:
        text = text.replace("&", "&amp;")
    if "<" in text:
        text = text.replace("<", "&lt;")
    if ">" in text:
        text = text.replace(">", "&gt;")
    return text


def escape_attr(text: str) -> str:
    if "&" in text:
        text = text.replace("&", "&amp;")
    if "<" in text:
        text = text.replace("<", "&lt;")
    if ">" in text:
        text = text.replace(">", "&gt;")
    if "'" in text:
        text = text.replace("'", "&apos;")
    if '"' in text:
        text = text.replace('"', "&quot;")
    return text


def _write(el: Element, parent_ns: str, content_ns: str, out: list[str]) -> None:
    out.append("<" + el.name)
    ns = el.xmlns
    if ns != parent_ns:
        out.append(" xmlns='" + escape_attr(ns or content_ns) + "'")
    extra_ns = 0
    for key, value in el.attrs.items():
        if key[0] == "{":
            extra_ns += 1
            uri, _, local = key[1:].partition("}")
            prefix = f"ns{extra_ns}"
            out.append(f" xmlns:{prefix}='{escape_attr(uri)}' {prefix}:{local}='{escape_attr(value)}'")
        else:
            out.append(f" {key}='{escape_attr(value)}'")
    children = el.children
    if not children:
        out.append("/>")
        return
    out.append(">")
    for child in children:
        if child.__class__ is str:
            out.append(escape_text(child))
        else:
            _write(child, ns, content_ns, out)  # type: ignore[arg-type]
    out.append("</" + el.name + ">")


def serialize(el: Element, content_ns: str = CLIENT_NS, parent_ns: str = "") -> str:
    """Serialize ``el`` as a first-level child of a stream whose content namespace is ``content_ns``.

    Elements whose ``xmlns`` is "" are written in ``content_ns``; an ``xmlns`` attribute is written
    only where the namespace changes from the parent's.
    """
    out: list[str] = []
    _write(el, parent_ns, content_ns, out)
    return "".join(out)


def serialize_features(features: Element, content_ns: str = CLIENT_NS) -> bytes:
    """``<stream:features>`` with its children (RFC 6120 section 4.3.2), for either stream kind."""
    body = "".join(serialize(child, content_ns, STREAM_NS) for child in features.elements())
    return f"<stream:features>{body}</stream:features>".encode() if body else b"<stream:features/>"


def stream_header(
    *, content_ns: str = CLIENT_NS, stream_id: str | None = None, from_: str | None = None,
    to: str | None = None, version: str | None = "1.0", lang: str = "en", extra_ns: str = "",
) -> bytes:
    """The ``<?xml?>`` declaration and opening ``<stream:stream>`` tag (RFC 6120 section 4.7).

    ``version=None`` leaves the attribute out, as a reply to a header without one must (section
    4.7.5).
    """
    parts = ["<?xml version='1.0'?><stream:stream xmlns='", content_ns,
             "' xmlns:stream='", STREAM_NS, "'", extra_ns]
    if stream_id is not None:
        parts.append(f" id='{escape_attr(stream_id)}'")
    if from_ is not None:
        parts.append(f" from='{escape_attr(from_)}'")
    if to is not None:
        parts.append(f" to='{escape_attr(to)}'")
    if version is not None:
        parts.append(f" version='{version}'")
    parts.append(f" xml:lang='{lang}'>")
    return "".join(parts).encode()


STREAM_CLOSE = b"</stream:stream>"

#: The stream error conditions of RFC 6120 section 4.9.3.
STREAM_ERROR_CONDITIONS = frozenset((
    "bad-format", "bad-namespace-prefix", "conflict", "connection-timeout", "host-gone",
    "host-unknown", "improper-addressing", "internal-server-error", "invalid-from",
    "invalid-namespace", "invalid-xml", "not-authorized", "not-well-formed", "policy-violation",
    "remote-connection-failed", "reset", "resource-constraint", "restricted-xml", "see-other-host",
    "system-shutdown", "undefined-condition", "unsupported-encoding", "unsupported-feature",
    "unsupported-stanza-type", "unsupported-version",
))


def stream_error(condition: str, text: str = "") -> bytes:
    """``<stream:error>`` followed by the closing tag (RFC 6120 section 4.9)."""
    if condition not in STREAM_ERROR_CONDITIONS:
        condition = "undefined-condition"
    body = f"<{condition} xmlns='{STREAMS_ERROR_NS}'/>"
    if text:
        body += f"<text xmlns='{STREAMS_ERROR_NS}'>{escape_text(text)}</text>"
    return f"<stream:error>{body}</stream:error>".encode() + STREAM_CLOSE


#: Stanza error condition -> default error type (RFC 6120 section 8.3.3).
STANZA_ERROR_TYPES = {
    "bad-request": "modify", "conflict": "cancel", "feature-not-implemented": "cancel",
    "forbidden": "auth", "gone": "cancel", "internal-server-error": "cancel",
    "item-not-found": "cancel", "jid-malformed": "modify", "not-acceptable": "modify",
    "not-allowed": "cancel", "not-authorized": "auth", "policy-violation": "modify",
    "recipient-unavailable": "wait", "redirect": "modify", "registration-required": "auth",
    "remote-server-not-found": "cancel", "remote-server-timeout": "wait",
    "resource-constraint": "wait", "service-unavailable": "cancel",
    "subscription-required": "auth", "undefined-condition": "cancel",
    "unexpected-request": "wait",
}


def error_reply(stanza: Element, condition: str, text: str = "", by: str | None = None) -> Element:
    """The error response to ``stanza`` (RFC 6120 section 8.3): addresses swapped, type='error'."""
    reply = Element(stanza.name, stanza.xmlns, {"type": "error"})
    for key in ("id",):
        if key in stanza.attrs:
            reply.attrs[key] = stanza.attrs[key]
    if "from" in stanza.attrs:
        reply.attrs["to"] = stanza.attrs["from"]
    if "to" in stanza.attrs:
        reply.attrs["from"] = stanza.attrs["to"]
    # Keep the original payload for messages and presences (RFC 6120 section 8.3.1 allows it);
    # for IQs include the request child so the requester can correlate.
    for child in stanza.children:
        if isinstance(child, Element) and child.name != "error":
            reply.children.append(child)
            if stanza.name == "iq":
                break
    error = reply.add("error", "", {"type": STANZA_ERROR_TYPES.get(condition, "cancel")})
    if by:
        error.attrs["by"] = by
    error.add(condition, STANZAS_ERROR_NS)
    if text:
        error.add("text", STANZAS_ERROR_NS, {"xml:lang": "en"}, text)
    return reply


def iq_result(iq: Element, payload: Element | None = None) -> Element:
    reply = Element("iq", "", {"type": "result", "id": iq.attrs.get("id", "")})
    if "from" in iq.attrs:
        reply.attrs["to"] = iq.attrs["from"]
    if "to" in iq.attrs:
        reply.attrs["from"] = iq.attrs["to"]
    if payload is not None:
        reply.children.append(payload)
    return reply


def parse_stored(xml: str) -> Element:
    """Parse one stanza or fragment stored as serialized XML (client content namespace)."""
    parser = XmlStreamParser(max_stanza_bytes=1 << 30)
    events = parser.feed(
        b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
        + xml.encode()
    )
    parser.release()  # freed now rather than by the cyclic collector (XmlStreamParser.release)
    for event in events:
        if isinstance(event, Element):
            return event
    raise ValueError("stored stanza could not be parsed")
