"""MIME as IMAP sees it: sections, BODYSTRUCTURE, ENVELOPE, BINARY and decoded text for SEARCH.

Parts are located on the raw bytes (boundaries found, never re-generated), so BODY[1.2] returns
exactly the octets that were stored, as RFC 9051 §6.4.5 requires. Header parameters, addresses and
encoded words are interpreted with the standard library's ``email`` package; transfer encodings
(base64, quoted-printable) and charsets are undone for BINARY and SEARCH.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.header import decode_header, make_header
from email.message import Message
from email.utils import collapse_rfc2231_value, getaddresses

from peerage.mail.imap.parser import format_list, nstring, quoted_or_literal

# Nesting of multiparts and message/rfc822 followed at most. Dovecot's message parser stops at 100
# nested parts (MESSAGE_PARSER_DEFAULT_MAX_NESTED_MIME_PARTS); half of that keeps Python's recursion
# well away from its limit while no real message comes close.
MAX_MIME_DEPTH = 50
# Parts per message examined at most (Dovecot: MESSAGE_PARSER_DEFAULT_MAX_TOTAL_MIME_PARTS = 10000).
MAX_MIME_PARTS = 10000

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_FIELD_START = re.compile(rb"^([!-9;-~]+)[ \t]*:", re.M)
# A line that may start a Content-* field (cached_structures' shortcut is taken only without one;
# a leading blank cannot start a field, so matching it too only errs on the side of the full parse).
_CONTENT_FIELD = re.compile(rb"^[ \t]*content-", re.I | re.M)


@dataclass
class Part:
    header: bytes
    body: bytes
    message: Headers
    children: list[Part] = field(default_factory=list)
    encapsulated: Part | None = None  # the message inside a message/rfc822 part

    @property
    def content_type(self) -> tuple[str, str]:
        maintype, _, subtype = self.message.get_content_type().partition("/")
        return maintype, subtype

    @property
    def is_multipart(self) -> bool:
        return self.content_type[0] == "multipart" and bool(self.children)

    @property
    def is_message(self) -> bool:
        return self.content_type == ("message", "rfc822") and self.encapsulated is not None


def split_header_body(raw: bytes) -> tuple[bytes, bytes]:
    if raw.startswith(b"\r\n"):
        return b"\r\n", raw[2:]
    if raw.startswith(b"\n"):
        return b"\n", raw[1:]
    match = _HEADER_END.search(raw)
    if not match:
        return raw, b""
    return raw[: match.end()], raw[match.end() :]


class Headers:
    """A parsed header block with the small part of ``email.message.Message``'s API used here.

    Hand-rolled because ``email.parser`` costs ~50 µs per header block, which dominates a SEARCH
    over ten thousand messages; RFC 2231 parameters are still handed to the ``email`` package.
    """

    __slots__ = ("_default_type", "_fields")

    def __init__(self, header: bytes) -> None:
        self._fields: list[tuple[str, str]] = []
        self._default_type = "text/plain"
        text = header.decode("utf-8", "replace")
        for line in _FIELD_SPLIT.split(text):
            name, colon, value = line.partition(":")
            if not colon or not name or name[0] in " \t":
                continue
            self._fields.append((name.strip().lower(), _UNFOLD.sub(" ", value).strip()))

    def __contains__(self, name: str) -> bool:
        name = name.lower()
        return any(key == name for key, _ in self._fields)

    def get(self, name: str, default: str | None = None) -> str | None:
        name = name.lower()
        for key, value in self._fields:
            if key == name:
                return value
        return default

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        return [value for key, value in self._fields if key == name]

    def items(self) -> list[tuple[str, str]]:
        return list(self._fields)

    def set_default_type(self, content_type: str) -> None:
        self._default_type = content_type

    def get_content_type(self) -> str:
        value = self.get("content-type")
        if value is None:
            return self._default_type
        kind = value.split(";", 1)[0].strip().lower()
        if kind.count("/") != 1:
            return "text/plain"
        return kind

    def get_params(self, header: str = "content-type", failobj: object = None) -> list[tuple[str, str]] | None:
        value = self.get(header)
        if value is None:
            return failobj  # type: ignore[return-value]
        if "*" in value:
            message = Message()
            message[header] = value
            params = message.get_params(header=header)
            if not params:
                return failobj  # type: ignore[return-value]
            return [(name, collapse_rfc2231_value(v)) for name, v in params]
        return _split_params(value)

    def get_param(self, name: str, header: str = "content-type") -> str | None:
        params = self.get_params(header) or []
        for key, value in params[1:]:
            if key.lower() == name.lower():
                return value
        return None

    def get_content_charset(self) -> str | None:
        charset = self.get_param("charset")
        return charset.lower() if charset else None


_FIELD_SPLIT = re.compile(r"\r?\n(?![ \t])")
_UNFOLD = re.compile(r"\r?\n[ \t]+")
_PARAM = re.compile(r';\s*([^\s=;]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


def _split_params(value: str) -> list[tuple[str, str]]:
    first, _, rest = value.partition(";")
    params = [(first.strip().lower(), "")]
    for match in _PARAM.finditer(";" + rest):
        raw = match.group(2).strip()
        if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params.append((match.group(1).lower(), raw))
    return params


def _parse_header(header: bytes) -> Headers:
    return Headers(header)


def parse(raw: bytes) -> Part:
    counter = [0]
    return _parse(raw, 0, counter, None)


def _parse(raw: bytes, depth: int, counter: list[int], default_type: str | None) -> Part:
    counter[0] += 1
    header, body = split_header_body(raw)
    message = _parse_header(header)
    if default_type and "content-type" not in message:
        message.set_default_type(default_type)
    part = Part(header, body, message)
    if depth >= MAX_MIME_DEPTH or counter[0] >= MAX_MIME_PARTS:
        return part
    maintype, subtype = part.content_type
    if maintype == "multipart":
        boundary = message.get_param("boundary")
        if isinstance(boundary, str) and boundary:
            child_default = "message/rfc822" if subtype == "digest" else None
            for chunk in _split_multipart(body, boundary.encode("utf-8", "replace")):
                if counter[0] >= MAX_MIME_PARTS:
                    break
                part.children.append(_parse(chunk, depth + 1, counter, child_default))
    elif (maintype, subtype) == ("message", "rfc822"):
        part.encapsulated = _parse(body, depth + 1, counter, None)
    return part


def _split_multipart(body: bytes, boundary: bytes) -> Iterator[bytes]:
    delimiter = re.compile(rb"(?:^|\r?\n)--" + re.escape(boundary) + rb"(--)?[ \t]*(?:\r?\n|$)")
    matches = list(delimiter.finditer(body))
    for index, match in enumerate(matches):
        if match.group(1):  # close delimiter
            return
        start = match.end()
        end = matches[index + 1].start() if index + 1 < len(matches) else len(body)
        yield body[start:end]


def find_part(root: Part, numbers: tuple[int, ...]) -> Part | None:
    """Part ``1.2.3`` of a message (RFC 9051 §6.4.5 numbering): the parts of a multipart are
    numbered from 1; a message that is not multipart has its body as part 1; the numbers after a
    message/rfc822 part number the parts of the message inside it, by the same two rules."""
    part = root
    as_message = True  # `part` stands for a whole message here, not for a body part
    for number in numbers:
        if not as_message and part.is_message:
            assert part.encapsulated is not None
            part = part.encapsulated
            as_message = True
        if part.is_multipart:
            if number < 1 or number > len(part.children):
                return None
            part = part.children[number - 1]
            as_message = False
        elif as_message and number == 1:
            as_message = False  # the message's one body part: the same entity
        else:
            return None
    return part


def _unfolded(header: bytes) -> list[tuple[str, bytes]]:
    fields: list[tuple[str, bytes]] = []
    for line in re.split(rb"\r?\n(?![ \t])", header):
        if not line.strip():
            continue
        name, colon, _ = line.partition(b":")
        if not colon:
            continue
        fields.append((name.strip().decode("ascii", "replace"), line))
    return fields


def header_fields(header: bytes, names: tuple[str, ...], exclude: bool) -> bytes:
    """HEADER.FIELDS / HEADER.FIELDS.NOT: the chosen fields in their original form plus CRLF."""
    wanted = {name.lower() for name in names}
    lines = []
    for line in re.split(rb"(?<=\n)(?![ \t])", header):
        if not line.strip():
            continue
        name = line.split(b":", 1)[0].strip().decode("ascii", "replace").lower()
        if (name in wanted) != exclude:
            lines.append(line if line.endswith(b"\n") else line + b"\r\n")
    return b"".join(lines) + b"\r\n"


def section_bytes(raw: bytes, part_numbers: tuple[int, ...], text: str, fields: tuple[str, ...]) -> bytes | None:
    """The octets of BODY[section] (None when the part does not exist)."""
    if not part_numbers and text in ("", "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT"):
        if text == "":
            return raw
        header, body = split_header_body(raw)
        if text == "TEXT":
            return body
        if text == "HEADER":
            return header
        return header_fields(header, fields, text == "HEADER.FIELDS.NOT")
    root = parse(raw)
    part = find_part(root, part_numbers)
    if part is None:
        return None
    if text == "MIME":
        return part.header if part is not root else None
    if text in ("HEADER", "TEXT", "HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        # RFC 9051 §6.4.5: with a part number, these apply only to a message/rfc822 part, and
        # mean the header and text of the message inside it.
        if not part.is_message or part.encapsulated is None:
            return None
        inner = part.encapsulated
        if text == "TEXT":
            return inner.body
        if text == "HEADER":
            return inner.header
        return header_fields(inner.header, fields, text == "HEADER.FIELDS.NOT")
    return part.body


def decode_transfer(part: Part) -> bytes | None:
    """The part's body with its Content-Transfer-Encoding undone (None if the encoding is unknown)."""
    encoding = (part.message.get("content-transfer-encoding") or "7bit").strip().lower()
    if encoding == "base64":
        cleaned = re.sub(rb"[^A-Za-z0-9+/=]", b"", part.body)
        cleaned = cleaned.split(b"=", 1)[0]
        cleaned += b"=" * (-len(cleaned) % 4)
        try:
            return base64.b64decode(cleaned)
        except (binascii.Error, ValueError):
            return None
    if encoding == "quoted-printable":
        return decode_quoted_printable(part.body)
    if encoding in ("7bit", "8bit", "binary", ""):
        return part.body
    return None


_QP_ESCAPE = re.compile(rb"=([0-9A-Fa-f]{2})")


def decode_quoted_printable(body: bytes) -> bytes:
    """RFC 2045 §6.7: trailing spaces and tabs on a line were added in transport and go (rule 3),
    a line ending in "=" (after them) is a soft line break (rule 5), "=XX" is an octet; an "="
    followed by anything else is kept as it is, as the section advises a robust decoder to do."""
    out = bytearray()
    for line in re.split(rb"(?<=\n)", body):
        content = line.rstrip(b"\r\n")
        ending = line[len(content) :]
        content = content.rstrip(b" \t")
        if content.endswith(b"="):
            content, ending = content[:-1], b""
        out += _QP_ESCAPE.sub(lambda match: bytes((int(match.group(1), 16),)), content) + ending
    return bytes(out)


_CTE_FIELD = re.compile(rb"^content-transfer-encoding[ \t]*:.*(?:\r?\n[ \t].*)*\r?\n", re.I | re.M)


def binary_parts_to_base64(raw: bytes) -> bytes:
    """The message with each part whose Content-Transfer-Encoding is binary, or that holds NUL,
    re-encoded as base64 and labelled so (every other octet kept). APPEND stores a literal8 (RFC 3516)
    this way: BODY[] stays an IMAP string, which cannot hold NUL (RFC 9051 §9 CHAR8), and its line
    endings are CRLF, while BINARY[] undoes the base64 and gives back the octets sent."""
    return _binary_to_base64(raw, 0)


def _binary_to_base64(raw: bytes, depth: int) -> bytes:
    header, body = split_header_body(raw)
    message = _parse_header(header)
    maintype, _, subtype = message.get_content_type().partition("/")
    if depth >= MAX_MIME_DEPTH:
        return raw
    if maintype == "multipart":
        boundary = message.get_param("boundary")
        if not isinstance(boundary, str) or not boundary:
            return raw
        delimiter = re.compile(rb"(?:^|\r?\n)--" + re.escape(boundary.encode("utf-8", "replace")) + rb"(--)?[ \t]*(?:\r?\n|$)")
        matches = list(delimiter.finditer(body))
        out = bytearray(header)
        position = 0
        for index, match in enumerate(matches):
            if match.group(1):  # close delimiter: the epilogue after it is kept as it is
                break
            end = matches[index + 1].start() if index + 1 < len(matches) else len(body)
            out += body[position : match.end()] + _binary_to_base64(body[match.end() : end], depth + 1)
            position = end
        out += body[position:]
        return bytes(out)
    if (maintype, subtype) == ("message", "rfc822"):
        return header + _binary_to_base64(body, depth + 1)
    encoding = (message.get("content-transfer-encoding") or "").strip().lower()
    if encoding != "binary" and (b"\0" not in body or encoding not in ("", "7bit", "8bit")):
        return raw
    fields, blank = (b"", header) if header in (b"\r\n", b"\n") else (header[: header.rindex(b"\n", 0, -1) + 1], b"\r\n")
    fields = _CTE_FIELD.sub(b"", fields) + b"Content-Transfer-Encoding: base64\r\n"
    return fields + blank + base64.encodebytes(body).replace(b"\n", b"\r\n")


def binary_section(raw: bytes, part_numbers: tuple[int, ...]) -> bytes | None:
    # BINARY[] is the whole message as stored, a multipart one too: a multipart entity has no
    # Content-Transfer-Encoding to undo (RFC 2045 §6.4 allows it only 7bit, 8bit or binary).
    if part_numbers == ():
        return raw
    part = find_part(parse(raw), part_numbers)
    if part is None or part.is_multipart:
        return None
    return decode_transfer(part)


def _charset_decode(data: bytes, charset: str | None) -> str:
    name = (charset or "us-ascii").strip().strip('"').lower()
    try:
        codecs.lookup(name)
    except LookupError:
        name = "latin-1"
    if name in ("us-ascii", "ascii"):
        name = "utf-8"  # 8-bit text mislabelled as ASCII is common; UTF-8 is the best guess
    return data.decode(name, errors="replace")


def decode_header_value(value: str) -> str:
    try:
        return str(make_header(decode_header(value)))
    except (ValueError, LookupError, UnicodeError, binascii.Error):
        return value


def header_text(header: bytes) -> dict[str, list[str]]:
    """Field name (lower case) -> decoded values (encoded words undone)."""
    message = _parse_header(header)
    result: dict[str, list[str]] = {}
    for name, value in message.items():
        if "=?" in value:
            value = decode_header_value(value)
        result.setdefault(name, []).append(value)
    return result


def body_text(raw: bytes) -> str:
    """All text of a message a BODY search looks at: text parts decoded, joined."""
    root = parse(raw)
    pieces: list[str] = []
    _collect_text(root, pieces, 0)
    return "\n".join(pieces)


def _collect_text(part: Part, pieces: list[str], depth: int) -> None:
    if depth > MAX_MIME_DEPTH:
        return
    if part.is_multipart:
        for child in part.children:
            _collect_text(child, pieces, depth + 1)
        return
    if part.is_message:
        assert part.encapsulated is not None
        for values in header_text(part.encapsulated.header).values():
            pieces.extend(values)
        _collect_text(part.encapsulated, pieces, depth + 1)
        return
    maintype = part.content_type[0]
    if maintype not in ("text", "message"):
        return
    data = decode_transfer(part)
    if data is None:
        return
    pieces.append(_charset_decode(data, part.message.get_content_charset()))


# -- ENVELOPE and BODYSTRUCTURE ---------------------------------------------------------------


def _raw_field(message: Headers, name: str) -> str | None:
    value = message.get(name)
    if value is None:
        return None
    return re.sub(r"\r?\n(?=[ \t])", "", str(value)).strip()


def address_segments(value: str) -> list[tuple[str, str]]:
    """Split an address list at RFC 5322 §3.4 group syntax (`name: a, b;`), outside quoted strings,
    comments and angle brackets: ("start", name), ("addresses", text) and ("end", "") in order."""
    segments: list[tuple[str, str]] = []
    start = 0
    index = 0
    quoted = False
    comment = 0
    angle = False
    last_comma = -1
    while index < len(value):
        char = value[index]
        if char == "\\" and (quoted or comment):
            index += 2
            continue
        if quoted:
            quoted = char != '"'
        elif char == "(":
            comment += 1
        elif char == ")" and comment:
            comment -= 1
        elif comment:
            pass
        elif char == '"':
            quoted = True
        elif char == "<":
            angle = True
        elif char == ">":
            angle = False
        elif angle:
            pass
        elif char == ",":
            last_comma = index
        elif char == ":":
            if last_comma >= start:
                segments.append(("addresses", value[start:last_comma]))
                start = last_comma + 1
            segments.append(("start", value[start:index].strip().strip('"')))
            start = index + 1
        elif char == ";":
            segments.append(("addresses", value[start:index]))
            segments.append(("end", ""))
            start = index + 1
        index += 1
    segments.append(("addresses", value[start:]))
    return segments


_ROUTE = re.compile(r"<\s*(@[^:<>]*?)\s*:\s*([^<>\s]+)\s*>")
_ROUTE_START = re.compile(r"<\s*@")


def _addresses(message: Headers, name: str, fallback: str | None = None) -> bytes:
    values = message.get_all(name)
    if not values and fallback:
        values = message.get_all(fallback)
    if not values:
        return b"NIL"
    items = []
    for value in values:
        for kind, text in address_segments(re.sub(r"\r?\n(?=[ \t])", "", str(value))):
            if kind == "start":
                # RFC 9051 §7.5.2: a group is a start marker (NIL NIL name NIL), its members, and an
                # end marker (NIL NIL NIL NIL).
                items.append(format_list([b"NIL", b"NIL", nstring(text), b"NIL"]))
                continue
            if kind == "end":
                items.append(b"(NIL NIL NIL NIL)")
                continue
            if not text.strip():
                continue
            # RFC 5322 §4.4 obs-route (`<@a,@b:user@domain>`): the ENVELOPE's at-domain-list. The
            # route is taken out before parsing (its commas would split the address).
            routes: dict[str, str] = {}
            if "<" in text and _ROUTE_START.search(text):
                for match in _ROUTE.finditer(text):
                    routes[match.group(2)] = re.sub(r"\s+", "", match.group(1))
                text = _ROUTE.sub(r"<\2>", text)
            for display, address in getaddresses([text]):
                if not address and not display:
                    continue
                mailbox, _, host = address.rpartition("@") if "@" in address else (address, "", "")
                route = routes.get(address)
                items.append(
                    format_list(
                        [
                            nstring(display or None),
                            nstring(route) if route else b"NIL",
                            nstring(mailbox if "@" in address else address),
                            nstring(host or None),
                        ]
                    )
                )
    if not items and fallback:
        # RFC 9051 §7.5.2: an empty (or unparsable) Sender or Reply-To counts as absent.
        return _addresses(message, fallback)
    return format_list(items) if items else b"NIL"


def envelope(header: bytes) -> bytes:
    message = _parse_header(header)
    return format_list(
        [
            nstring(_raw_field(message, "date")),
            nstring(_raw_field(message, "subject")),
            _addresses(message, "from"),
            _addresses(message, "sender", "from"),
            _addresses(message, "reply-to", "from"),
            _addresses(message, "to"),
            _addresses(message, "cc"),
            _addresses(message, "bcc"),
            nstring(_raw_field(message, "in-reply-to")),
            nstring(_raw_field(message, "message-id")),
        ]
    )


def _params(message: Headers, header: str = "content-type") -> bytes:
    params = message.get_params(header=header, failobj=None)
    if not params:
        return b"NIL"
    items: list[bytes] = []
    for index, (name, value) in enumerate(params):
        if index == 0 and header == "content-type":
            continue  # the type itself
        if isinstance(value, tuple):
            value = str(value[2])
        items += [quoted_or_literal(name.upper()), quoted_or_literal(str(value))]
    return format_list(items) if items else b"NIL"


def _disposition(message: Headers) -> bytes:
    value = message.get("content-disposition")
    if value is None:
        return b"NIL"
    kind = str(value).split(";", 1)[0].strip().upper() or "ATTACHMENT"
    return format_list([quoted_or_literal(kind), _params_disposition(message)])


def _params_disposition(message: Headers) -> bytes:
    params = message.get_params(header="content-disposition", failobj=None)
    if not params or len(params) < 2:
        return b"NIL"
    items: list[bytes] = []
    for name, value in params[1:]:
        if isinstance(value, tuple):
            value = str(value[2])
        items += [quoted_or_literal(name.upper()), quoted_or_literal(str(value))]
    return format_list(items)


def _language(message: Headers) -> bytes:
    value = _raw_field(message, "content-language")
    if not value:
        return b"NIL"
    return format_list([quoted_or_literal(tag.strip()) for tag in value.split(",") if tag.strip()])


def body_structure(raw: bytes, extended: bool = True) -> bytes:
    return _structure(parse(raw), extended, 0)


def cached_structures(raw: bytes) -> tuple[bytes, bytes]:
    """(BODYSTRUCTURE, BODY) of a message, parsed once, for the mailbox store to keep."""
    header, body = split_header_body(raw)
    if not _CONTENT_FIELD.search(header):
        # No Content-* field at all (most mail from scripts and many plain-text clients): RFC 2045
        # §5.2 makes it text/plain; charset=us-ascii in 7bit, and both structures follow from the
        # body's size and lines, as _structure gives them, without the MIME parse.
        common = b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" %d %d' % (len(body), _count_lines(body))
        return common + b" NIL NIL NIL NIL)", common + b")"
    root = parse(raw)
    return _structure(root, True, 0), _structure(root, False, 0)


def _count_lines(data: bytes) -> int:
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


def _structure(part: Part, extended: bool, depth: int) -> bytes:
    message = part.message
    maintype, subtype = part.content_type
    if part.is_multipart and depth < MAX_MIME_DEPTH:
        items = b"".join(_structure(child, extended, depth + 1) for child in part.children)
        fields = [items, quoted_or_literal(subtype.upper())]
        if extended:
            fields += [_params(message), _disposition(message), _language(message), nstring(_raw_field(message, "content-location"))]
        return b"(" + b" ".join(fields) + b")"
    params = _params(message)
    if params == b"NIL" and maintype == "text" and message.get("content-type") is None:
        params = b'("CHARSET" "us-ascii")'  # RFC 2045 §5.2: the default content type
    fields = [
        quoted_or_literal(maintype.upper()),
        quoted_or_literal(subtype.upper()),
        params,
        nstring(_raw_field(message, "content-id")),
        nstring(_raw_field(message, "content-description")),
        quoted_or_literal((_raw_field(message, "content-transfer-encoding") or "7BIT").upper()),
        str(len(part.body)).encode(),
    ]
    if part.is_message and depth < MAX_MIME_DEPTH:
        assert part.encapsulated is not None
        fields += [
            envelope(part.encapsulated.header),
            _structure(part.encapsulated, extended, depth + 1),
            str(_count_lines(part.body)).encode(),
        ]
    elif maintype == "text":
        fields.append(str(_count_lines(part.body)).encode())
    if extended:
        fields += [
            nstring(_raw_field(message, "content-md5")),
            _disposition(message),
            _language(message),
            nstring(_raw_field(message, "content-location")),
        ]
    return b"(" + b" ".join(fields) + b")"
