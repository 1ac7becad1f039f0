"""Sans-I/O IMAP command reader, argument parsers and response writer.

``CommandReader.receive(data)`` takes bytes as they come off the wire and returns events: a complete
``Command``, a request to send a continuation ("+") for a synchronising literal, a refused literal,
or a malformed command (answered BAD). The size of a literal is judged from its ``{n}`` header,
before a single byte of it is read, so an oversized APPEND costs nothing (RFC 7889, RFC 7888 §4).
Commands are tokenised into atoms (``str``), strings (``bytes``, quoted or literal) and lists;
``parse_sequence_set``, ``parse_fetch_attributes`` and ``parse_search`` interpret arguments. The
writer functions turn values into IMAP syntax. Nothing here touches a socket.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

# Dovecot's imap_max_line_length is 64 KiB; RFC 7162 §4 asks servers to accept lines of at least
# 8192 octets. A line (outside literals) longer than this is refused.
MAX_LINE_LENGTH = 65536
# RFC 7888 §4 (LITERAL-): non-synchronising literals are limited to 4096 octets by servers that only
# offer LITERAL-; we offer LITERAL+ and accept them up to the literal limit of the command.
LITERAL_MINUS_MAX = 4096
# Literals outside APPEND (search strings, mailbox names, SASL) never need more; Dovecot applies its
# line limit to them too.
MAX_ARGUMENT_LITERAL = 65536
# Parenthesised lists nest this deep at most (a BODYSTRUCTURE-like search tree from a client is
# never deeper; the bound stops stack exhaustion).
MAX_NESTING = 64
# Arguments per command; a SEARCH with thousands of keys is an attack, not a client.
MAX_TOKENS = 100000
# Sequence-set ranges per command (mbsync and offlineimap send a few hundred at most).
MAX_SEQUENCE_RANGES = 100000

# Commands after which the bytes that follow are not commands (or must be discarded, for STARTTLS).
STREAM_CHANGING_COMMANDS = frozenset({"AUTHENTICATE", "IDLE", "STARTTLS", "COMPRESS"})

_LITERAL_AT_END = re.compile(rb"(~?)\{(\d{1,20})(\+|-)?\}$")
_TAG = re.compile(r"^[\x21-\x7e]+$")
_TAG_FORBIDDEN = set('(){%*"\\+')
_NUMBER = re.compile(r"^[0-9]+$")


class ParseError(Exception):
    """The command is malformed; answered with BAD."""


# -- events -----------------------------------------------------------------------------------


@dataclass
class Command:
    tag: str
    name: str  # upper case, "UID FETCH" for UID commands
    args: list[object]


@dataclass
class Continue:
    """Send "+ " so the client sends its synchronising literal."""


@dataclass
class Malformed:
    tag: str
    message: str


@dataclass
class LiteralRefused:
    """A literal is larger than allowed. ``synchronising`` ones were never sent; others are skipped."""

    tag: str
    command: str
    size: int
    limit: int
    synchronising: bool


@dataclass
class Line:
    """A raw line, in line mode (AUTHENTICATE responses, IDLE's DONE)."""

    data: bytes


Event = Command | Continue | Malformed | LiteralRefused | Line


class CommandReader:
    """Assembles complete commands (lines plus literals) from a byte stream."""

    def __init__(self, append_limit: int, max_line: int = MAX_LINE_LENGTH) -> None:
        self.append_limit = append_limit
        self.max_line = max_line
        self.line_mode = False
        self._buffer = bytearray()
        self._segments: list[bytes] = []
        self._literal_needed = 0
        self._discard = 0
        self._discarding_command = False
        self._skip_to_newline = False
        self._command_size = 0

    def detach_buffer(self) -> bytes:
        """Hand back the bytes received but not yet parsed (their meaning is about to change)."""
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    def receive(self, data: bytes) -> list[Event]:
        self._buffer += data
        events: list[Event] = []
        while True:
            event = self._step()
            if event is None:
                break
            if event is not _NOTHING:
                events.append(event)  # type: ignore[arg-type]
            if isinstance(event, Line):
                break
            if isinstance(event, Command) and event.name in STREAM_CHANGING_COMMANDS:
                # What follows is not a command (SASL lines, DONE) or must not be read yet (TLS).
                break
        return events

    def _step(self) -> object:
        if self._discard:
            taken = min(self._discard, len(self._buffer))
            del self._buffer[:taken]
            self._discard -= taken
            return _NOTHING if taken else None
        if self._literal_needed:
            if len(self._buffer) < self._literal_needed:
                return None
            self._segments.append(bytes(self._buffer[: self._literal_needed]))
            del self._buffer[: self._literal_needed]
            self._literal_needed = 0
            return _NOTHING
        end = self._buffer.find(b"\n")
        if end < 0:
            if len(self._buffer) > self.max_line:
                self._buffer.clear()
                self._skip_to_newline = True
                self._segments = []
                return Malformed("*", "line too long")
            return None
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        if line.endswith(b"\r"):
            line = line[:-1]
        if self._skip_to_newline:
            self._skip_to_newline = False
            return _NOTHING
        if self.line_mode and not self._segments:
            return Line(line)
        if len(line) > self.max_line:
            self._segments = []
            return Malformed(_guess_tag([line]), "line too long")
        match = _LITERAL_AT_END.search(line)
        if self._discarding_command:
            if match:
                self._discard = int(match.group(2))
            else:
                self._discarding_command = False
            return _NOTHING
        self._segments.append(line)
        if match is None:
            segments, self._segments = self._segments, []
            self._command_size = 0
            try:
                return parse_command(segments)
            except ParseError as exc:
                return Malformed(_guess_tag(segments), str(exc))
        size = int(match.group(2))
        synchronising = match.group(3) is None
        command = _guess_command(self._segments)
        limit = self.append_limit if command == "APPEND" else MAX_ARGUMENT_LITERAL
        self._command_size += size
        if size > limit or self._command_size > limit + MAX_ARGUMENT_LITERAL:
            tag = _guess_tag(self._segments)
            self._segments = []
            self._command_size = 0
            if not synchronising:
                # The client sends the bytes anyway: skip them without keeping them, then the rest
                # of the command (RFC 7888 §4 allows closing instead; skipping keeps the session).
                self._discard = size
                self._discarding_command = True
            return LiteralRefused(tag, command, size, limit, synchronising)
        if size == 0:
            self._segments.append(b"")
        else:
            self._literal_needed = size
        return Continue() if synchronising else _NOTHING


_NOTHING = object()


class Literal8(bytes):
    """A string sent as a literal8, ``~{n}`` (RFC 3516): its octets may include NUL and need not form
    lines, so APPEND stores such content base64-encoded rather than as lines of text."""

    __slots__ = ()


def _guess_tag(segments: Sequence[bytes]) -> str:
    if not segments:
        return "*"
    head = segments[0].split(b" ", 1)[0].decode("ascii", "replace")
    return head if head and _valid_tag(head) else "*"


def _guess_command(segments: Sequence[bytes]) -> str:
    words = segments[0].split(b" ", 3)
    if len(words) < 2:
        return ""
    name = words[1].decode("ascii", "replace").upper()
    if name == "UID" and len(words) > 2:
        name = words[2].decode("ascii", "replace").upper()
    return name


def _valid_tag(tag: str) -> bool:
    return bool(_TAG.match(tag)) and not (set(tag) & _TAG_FORBIDDEN)


# -- tokenizer --------------------------------------------------------------------------------


class _Tokens:
    def __init__(self, segments: Sequence[bytes]) -> None:
        self.segments = segments

    def tokenize(self) -> list[object]:
        root: list[object] = []
        stack: list[list[object]] = [root]
        count = 0
        index = 0
        while index < len(self.segments):
            line = self.segments[index]
            literal_match = _LITERAL_AT_END.search(line)
            text_end = literal_match.start() if literal_match else len(line)
            position = 0
            while position < text_end:
                char = line[position]
                if char == 0x20:
                    position += 1
                    continue
                count += 1
                if count > MAX_TOKENS:
                    raise ParseError("too many arguments")
                if char == 0x28:  # (
                    if len(stack) > MAX_NESTING:
                        raise ParseError("lists nested too deep")
                    new: list[object] = []
                    stack[-1].append(new)
                    stack.append(new)
                    position += 1
                elif char == 0x29:  # )
                    if len(stack) == 1:
                        raise ParseError("unbalanced parenthesis")
                    stack.pop()
                    position += 1
                elif char == 0x22:  # "
                    value, position = _quoted(line, position + 1, text_end)
                    stack[-1].append(value)
                else:
                    atom, position = _atom(line, position, text_end)
                    stack[-1].append(atom)
            if literal_match:
                if index + 1 >= len(self.segments):
                    raise ParseError("literal missing")
                if text_end > 0 and line[text_end - 1 : text_end] not in (b" ", b"("):
                    raise ParseError("literal must follow a space")
                data = self.segments[index + 1]
                stack[-1].append(Literal8(data) if literal_match.group(1) else data)
                index += 2
            else:
                index += 1
        if len(stack) != 1:
            raise ParseError("unbalanced parenthesis")
        return root


def _quoted(line: bytes, position: int, end: int) -> tuple[bytes, int]:
    out = bytearray()
    while position < end:
        char = line[position]
        if char == 0x5C:  # backslash
            if position + 1 >= end or line[position + 1] not in (0x22, 0x5C):
                raise ParseError("bad escape in quoted string")
            out.append(line[position + 1])
            position += 2
        elif char == 0x22:
            return bytes(out), position + 1
        else:
            out.append(char)
            position += 1
    raise ParseError("unterminated quoted string")


def _atom(line: bytes, position: int, end: int) -> tuple[str, int]:
    start = position
    depth = 0
    while position < end:
        char = line[position]
        if depth:
            if char == 0x5D:
                depth -= 1
            elif char == 0x5B:
                depth += 1
            position += 1
            continue
        if char in (0x20, 0x28, 0x29, 0x22, 0x7B):
            if char in (0x28, 0x29) or char == 0x22:
                break
            if char == 0x20:
                break
            raise ParseError("unexpected '{'")
        if char < 0x20 or char == 0x7F:
            raise ParseError("control character in atom")
        if char == 0x5B:
            depth += 1
        position += 1
    if depth:
        # `[` is an ordinary ATOM-CHAR (RFC 3501/9051 §9); only a section such as
        # BODY[HEADER.FIELDS (A B)] holds spaces and parentheses inside brackets. An unclosed
        # bracket is therefore part of a plain atom, which ends at the next space or parenthesis.
        position = start
        while position < end and line[position] not in (0x20, 0x28, 0x29, 0x22):
            char = line[position]
            if char < 0x20 or char == 0x7F:
                raise ParseError("control character in atom")
            if char == 0x7B:
                raise ParseError("unexpected '{'")
            position += 1
    try:
        return line[start:position].decode("utf-8"), position
    except UnicodeDecodeError as exc:
        raise ParseError("atom is not UTF-8") from exc


def parse_command(segments: Sequence[bytes]) -> Command:
    tokens = _Tokens(segments).tokenize()
    if not tokens or not isinstance(tokens[0], str):
        raise ParseError("missing tag")
    tag = tokens[0]
    if not _valid_tag(tag):
        raise ParseError("invalid tag")
    if len(tokens) < 2 or not isinstance(tokens[1], str):
        raise ParseError("missing command")
    name = tokens[1].upper()
    args = tokens[2:]
    if name == "UID":
        if not args or not isinstance(args[0], str):
            raise ParseError("UID needs a command")
        name = "UID " + args[0].upper()
        args = args[1:]
    return Command(tag, name, args)


# -- argument interpretation ----------------------------------------------------------------------


def astring(token: object) -> str:
    """An astring argument (atom or string) as text."""
    if isinstance(token, bytes):
        try:
            return token.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ParseError("string is not UTF-8") from exc
    if isinstance(token, str):
        return token
    raise ParseError("expected a string")


def astring_bytes(token: object) -> bytes:
    if isinstance(token, bytes):
        return token
    if isinstance(token, str):
        return token.encode("utf-8")
    raise ParseError("expected a string")


def number(token: object, name: str = "number") -> int:
    if not isinstance(token, str) or not _NUMBER.match(token) or len(token) > 20:
        raise ParseError(f"expected a {name}")
    return int(token)


def atom(token: object, name: str = "atom") -> str:
    if not isinstance(token, str):
        raise ParseError(f"expected {name}")
    return token


@dataclass(frozen=True)
class SequenceSet:
    """Ranges of message numbers or UIDs; 0 stands for "*" (the largest in use)."""

    ranges: tuple[tuple[int, int], ...]
    saved: bool = False  # "$" of RFC 5182

    def resolve(self, largest: int) -> list[tuple[int, int]]:
        result = []
        for low, high in self.ranges:
            low = largest if low == 0 else low
            high = largest if high == 0 else high
            if low > high:
                low, high = high, low
            result.append((low, high))
        return result

    def contains(self, value: int, largest: int) -> bool:
        return any(low <= value <= high for low, high in self.resolve(largest))

    def select(self, values: Sequence[int]) -> list[int]:
        """The members of sorted ``values`` this set names (``*`` is the last of them)."""
        if not values:
            return []
        import bisect

        largest = values[-1]
        picked: set[int] = set()
        out: list[int] = []
        for low, high in self.resolve(largest):
            start = bisect.bisect_left(values, low)
            stop = bisect.bisect_right(values, high)
            if stop - start > 0:
                for value in values[start:stop]:
                    if value not in picked:
                        picked.add(value)
                        out.append(value)
        out.sort()
        return out


def parse_sequence_set(token: object) -> SequenceSet:
    if not isinstance(token, str) or not token:
        raise ParseError("expected a sequence set")
    if token == "$":
        return SequenceSet((), saved=True)
    ranges: list[tuple[int, int]] = []
    for part in token.split(","):
        if len(ranges) >= MAX_SEQUENCE_RANGES:
            raise ParseError("sequence set too long")
        low_text, colon, high_text = part.partition(":")
        low = _seq_number(low_text)
        high = _seq_number(high_text) if colon else low
        ranges.append((low, high))
    return SequenceSet(tuple(ranges))


def _seq_number(text: str) -> int:
    if text == "*":
        return 0
    if not _NUMBER.match(text) or len(text) > 10:
        raise ParseError("bad sequence number")
    value = int(text)
    if value == 0 or value > 0xFFFFFFFF:
        raise ParseError("sequence number out of range")
    return value


def format_sequence_set(values: Sequence[int]) -> str:
    """Compact "1:3,7,9:10" form of sorted ``values``."""
    parts: list[str] = []
    iterator = iter(values)
    try:
        start = previous = next(iterator)
    except StopIteration:
        return ""
    for value in iterator:
        if value == previous + 1:
            previous = value
            continue
        parts.append(str(start) if start == previous else f"{start}:{previous}")
        start = previous = value
    parts.append(str(start) if start == previous else f"{start}:{previous}")
    return ",".join(parts)


# -- FETCH -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    part: tuple[int, ...] = ()
    text: str = ""  # "", HEADER, HEADER.FIELDS, HEADER.FIELDS.NOT, TEXT, MIME
    fields: tuple[str, ...] = ()

    def spec(self) -> str:
        pieces = [".".join(str(p) for p in self.part)] if self.part else []
        if self.text:
            pieces.append(self.text)
        spec = ".".join(pieces)
        if self.fields:
            spec += " (" + " ".join(self.fields) + ")"
        return spec


@dataclass(frozen=True)
class FetchAttribute:
    name: str  # FLAGS, UID, ENVELOPE, BODY, BODYSTRUCTURE, BINARY, BINARY.SIZE, RFC822.SIZE, ...
    section: Section | None = None
    peek: bool = False
    partial: tuple[int, int] | None = None

    def response_name(self) -> str:
        if self.section is None:
            return self.name
        name = f"{self.name}[{self.section.spec()}]"
        if self.partial is not None:
            name += f"<{self.partial[0]}>"
        return name

    @property
    def sets_seen(self) -> bool:
        return (self.name in ("BODY", "BINARY") and self.section is not None and not self.peek) or (
            self.name in ("RFC822", "RFC822.TEXT")
        )


_FETCH_MACROS = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}
_SIMPLE_FETCH = {
    "FLAGS",
    "UID",
    "ENVELOPE",
    "INTERNALDATE",
    "RFC822",
    "RFC822.HEADER",
    "RFC822.TEXT",
    "RFC822.SIZE",
    "BODY",
    "BODYSTRUCTURE",
    "MODSEQ",
    "SAVEDATE",
    "EMAILID",
    "THREADID",
}
_SECTIONED = re.compile(
    r"^(BODY|BODY\.PEEK|BINARY|BINARY\.PEEK|BINARY\.SIZE)\[([^\]]*)\](?:<(\d{1,10})(?:\.(\d{1,10}))?>)?$",
    re.I,
)
_SECTION_TEXT = re.compile(
    r"^((?:[1-9][0-9]{0,8}\.)*[1-9][0-9]{0,8})?\.?(HEADER\.FIELDS\.NOT|HEADER\.FIELDS|HEADER|TEXT|MIME)?"
    r"(?: \((.*)\))?$",
    re.I,
)


def parse_fetch_attributes(token: object) -> list[FetchAttribute]:
    if isinstance(token, str) and token.upper() in _FETCH_MACROS:
        return [FetchAttribute(name) for name in _FETCH_MACROS[token.upper()]]
    items = token if isinstance(token, list) else [token]
    if not items:
        raise ParseError("empty fetch attribute list")
    result = []
    for item in items:
        if not isinstance(item, str):
            raise ParseError("expected a fetch attribute")
        result.append(parse_fetch_attribute(item))
    return result


def parse_fetch_attribute(text: str) -> FetchAttribute:
    upper = text.upper()
    if upper in _SIMPLE_FETCH:
        return FetchAttribute(upper)
    match = _SECTIONED.match(text)
    if not match:
        raise ParseError(f"unknown fetch attribute {text[:40]}")
    name = match.group(1).upper()
    peek = name.endswith(".PEEK")
    name = name.removesuffix(".PEEK")
    section = parse_section(match.group(2), binary=name.startswith("BINARY"))
    partial = None
    if match.group(3) is not None:
        if name == "BINARY.SIZE":
            raise ParseError("BINARY.SIZE takes no partial")
        length = int(match.group(4)) if match.group(4) is not None else 0xFFFFFFFF
        if match.group(4) is not None and length == 0:
            raise ParseError("partial length must be positive")
        partial = (int(match.group(3)), length)
    return FetchAttribute(name, section, peek, partial)


def parse_section(text: str, binary: bool = False) -> Section:
    match = _SECTION_TEXT.match(text.strip()) if text else None
    if not text:
        return Section()
    if not match:
        raise ParseError("bad section")
    part = tuple(int(p) for p in match.group(1).split(".")) if match.group(1) else ()
    kind = (match.group(2) or "").upper()
    if binary and kind:
        raise ParseError("BINARY takes only part numbers")
    if kind == "MIME" and not part:
        raise ParseError("MIME needs a part number")
    fields: tuple[str, ...] = ()
    if kind.startswith("HEADER.FIELDS"):
        if match.group(3) is None:
            raise ParseError("HEADER.FIELDS needs a list")
        fields = tuple(_header_field_names(match.group(3)))
        if not fields:
            raise ParseError("HEADER.FIELDS needs field names")
    elif match.group(3) is not None:
        raise ParseError("unexpected list in section")
    return Section(part, kind, fields)


def _header_field_names(text: str) -> Iterator[str]:
    for raw in text.split():
        name = raw.strip('"')
        if not name or any(c in name for c in ":()[]{}") or not name.isascii():
            raise ParseError("bad header field name")
        yield name


# -- SEARCH ----------------------------------------------------------------------------------


@dataclass
class SearchKey:
    op: str
    args: list[object] = field(default_factory=list)


_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_NO_ARG_KEYS = {
    "ALL",
    "ANSWERED",
    "DELETED",
    "DRAFT",
    "FLAGGED",
    "NEW",
    "OLD",
    "RECENT",
    "SEEN",
    "UNANSWERED",
    "UNDELETED",
    "UNDRAFT",
    "UNFLAGGED",
    "UNSEEN",
}
_STRING_KEYS = {"BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO"}
_DATE_KEYS = {"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"}
_NUMBER_KEYS = {"LARGER", "SMALLER", "OLDER", "YOUNGER"}


def parse_date(token: object) -> date:
    text = astring(token)
    try:
        day, month, year = text.split("-")
        return date(int(year), _MONTHS.index(month.upper()) + 1, int(day))
    except (ValueError, IndexError) as exc:
        raise ParseError("bad date") from exc


def parse_datetime(token: object) -> datetime:
    """RFC 9051 date-time: "dd-Mon-yyyy hh:mm:ss +zzzz"."""
    text = astring(token).strip()
    try:
        day_part, time_part, zone = text.split()
        day = parse_date(day_part)
        hours, minutes, seconds = (int(x) for x in time_part.split(":"))
        sign = -1 if zone[0] == "-" else 1
        if zone[0] not in "+-" or len(zone) != 5:
            raise ValueError
        offset = sign * (int(zone[1:3]) * 60 + int(zone[3:5]))
        return datetime(
            day.year,
            day.month,
            day.day,
            hours,
            minutes,
            seconds,
            tzinfo=timezone(timedelta(minutes=offset)),
        )
    except (ValueError, IndexError) as exc:
        raise ParseError("bad date-time") from exc


def parse_search(tokens: Sequence[object]) -> SearchKey:
    """A list of search keys, ANDed (RFC 9051 §6.4.4)."""
    position = 0
    keys = []
    while position < len(tokens):
        key, position = _search_key(tokens, position, 0)
        keys.append(key)
    if not keys:
        raise ParseError("missing search criteria")
    return keys[0] if len(keys) == 1 else SearchKey("AND", list(keys))


def _search_key(tokens: Sequence[object], position: int, depth: int) -> tuple[SearchKey, int]:
    if depth > MAX_NESTING:
        raise ParseError("search nested too deep")
    token = tokens[position]
    position += 1

    def take() -> object:
        nonlocal position
        if position >= len(tokens):
            raise ParseError("search key needs an argument")
        value = tokens[position]
        position += 1
        return value

    if isinstance(token, list):
        if not token:
            raise ParseError("empty search list")
        inner = []
        index = 0
        while index < len(token):
            key, index = _search_key(token, index, depth + 1)
            inner.append(key)
        return (inner[0] if len(inner) == 1 else SearchKey("AND", list(inner))), position
    if not isinstance(token, str):
        raise ParseError("expected a search key")
    name = token.upper()
    if name in _NO_ARG_KEYS:
        return SearchKey(name), position
    if name in _STRING_KEYS:
        return SearchKey(name, [astring(take())]), position
    if name in _DATE_KEYS:
        return SearchKey(name, [parse_date(take())]), position
    if name in _NUMBER_KEYS:
        return SearchKey(name, [number(take())]), position
    if name in ("KEYWORD", "UNKEYWORD"):
        return SearchKey(name, [atom(take(), "keyword")]), position
    if name == "HEADER":
        field_name = astring(take())
        return SearchKey(name, [field_name, astring(take())]), position
    if name == "UID":
        return SearchKey(name, [parse_sequence_set(take())]), position
    if name == "NOT":
        if position >= len(tokens):
            raise ParseError("NOT needs a key")
        negated, position = _search_key(tokens, position, depth + 1)
        return SearchKey(name, [negated]), position
    if name == "OR":
        if position >= len(tokens):
            raise ParseError("OR needs two keys")
        left, position = _search_key(tokens, position, depth + 1)
        if position >= len(tokens):
            raise ParseError("OR needs two keys")
        right, position = _search_key(tokens, position, depth + 1)
        return SearchKey(name, [left, right]), position
    if name == "MODSEQ":
        value = take()
        if isinstance(value, bytes) or (isinstance(value, str) and not _NUMBER.match(value)):
            # entry-name and entry-type-req (RFC 7162 §3.1.5), which we accept and ignore
            take()
            value = take()
        return SearchKey(name, [number(value, "mod-sequence")]), position
    if name in ("SAVEDBEFORE", "SAVEDON", "SAVEDSINCE"):
        return SearchKey(name.replace("SAVED", ""), [parse_date(take())]), position
    if name == "$" or name[0].isdigit() or name[0] == "*":
        return SearchKey("SEQ", [parse_sequence_set(token)]), position
    raise ParseError(f"unknown search key {token[:40]}")


# -- response writer -------------------------------------------------------------------------

_QUOTABLE = re.compile(rb"^[\x20-\x7e]*$")


def quoted_or_literal(value: bytes | str, utf8: bool = False) -> bytes:
    """A string as a quoted string when safe, otherwise as a literal."""
    data = value.encode("utf-8") if isinstance(value, str) else value
    if len(data) < 1024 and _QUOTABLE.match(data):
        return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    if utf8 and len(data) < 1024 and b"\r" not in data and b"\n" not in data and b"\0" not in data:
        try:
            data.decode("utf-8")
            return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
        except UnicodeDecodeError:
            pass
    return literal(data)


def literal(data: bytes) -> bytes:
    return b"{%d}\r\n" % len(data) + data


def nstring(value: bytes | str | None) -> bytes:
    return b"NIL" if value is None else quoted_or_literal(value)


def format_list(items: Sequence[bytes]) -> bytes:
    return b"(" + b" ".join(items) + b")"


def format_datetime(seconds: int, zone_minutes: int = 0) -> str:
    moment = datetime.fromtimestamp(seconds, timezone(timedelta(minutes=zone_minutes)))
    sign = "-" if zone_minutes < 0 else "+"
    offset = abs(zone_minutes)
    return (
        f"{moment.day:02d}-{_MONTHS[moment.month - 1].title()}-{moment.year:04d} "
        f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d} "
        f"{sign}{offset // 60:02d}{offset % 60:02d}"
    )


# -- modified UTF-7 for mailbox names (RFC 3501 §5.1.3), used unless UTF-8 is enabled ----------


def encode_mailbox_name(name: str) -> str:
    out = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            import base64

            data = "".join(pending).encode("utf-16-be")
            out.append("&" + base64.b64encode(data).decode().rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for char in name:
        if 0x20 <= ord(char) <= 0x7E:
            flush()
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    flush()
    return "".join(out)


def decode_mailbox_name(name: str) -> str:
    if "&" not in name:
        return name
    import base64

    out = []
    position = 0
    while position < len(name):
        char = name[position]
        if char != "&":
            out.append(char)
            position += 1
            continue
        end = name.find("-", position)
        if end < 0:
            raise ParseError("bad modified UTF-7 mailbox name")
        chunk = name[position + 1 : end]
        if not chunk:
            out.append("&")
        else:
            padded = chunk.replace(",", "/") + "=" * (-len(chunk) % 4)
            try:
                out.append(base64.b64decode(padded).decode("utf-16-be"))
            except (ValueError, UnicodeDecodeError) as exc:
                raise ParseError("bad modified UTF-7 mailbox name") from exc
        position = end + 1
    return "".join(out)
