"""Sans-I/O header helpers for raw messages (CRLF line endings): read a field's unfolded values and
drop fields, without parsing or re-serialising the rest of the message, so signatures stay valid."""

from __future__ import annotations

import re
from collections.abc import Callable
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses
from typing import Any


def header_block(data: bytes) -> bytes:
    """The header section including its last CRLF (the whole input when there is no body)."""
    end = data.find(b"\r\n\r\n")
    return data[: end + 2] if end >= 0 else data


def _fields(head: bytes) -> list[list[bytes]]:
    """Each field as its physical lines (the first, then continuation lines, RFC 5322 §2.2.3)."""
    fields: list[list[bytes]] = []
    for line in head.split(b"\r\n"):
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
    return fields


def _name(field: list[bytes]) -> bytes:
    return field[0].split(b":", 1)[0].strip().lower()


def unfolded_value(field: list[bytes]) -> bytes:
    first = field[0].split(b":", 1)
    parts = [first[1] if len(first) == 2 else b"", *field[1:]]
    return b" ".join(p.strip() for p in parts).strip()


def header_values(data: bytes, name: str) -> list[str]:
    """Unfolded values of every field called `name`, decoded as UTF-8 (RFC 6532 allows it)."""
    target = name.lower().encode()
    return [
        unfolded_value(f).decode("utf-8", "replace") for f in _fields(header_block(data)) if _name(f) == target
    ]


def remove_headers(data: bytes, names: set[bytes], keep: Callable[[bytes], bool] | None = None) -> bytes:
    """Drop the fields called one of `names` (lower case) unless `keep(unfolded value)` says otherwise."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return data
    head, body = data[: end + 2], data[end + 2 :]
    kept: list[bytes] = []
    for field in _fields(head):
        if _name(field) in names and (keep is None or not keep(unfolded_value(field))):
            continue
        kept.extend(field)
    return b"\r\n".join(kept) + b"\r\n" + body


def with_return_path(data: bytes, mail_from: str) -> bytes:
    """`data` with a Return-Path field of `mail_from` (RFC 5321 §4.4) first and none of its own."""
    head = header_block(data)
    if b"return-path:" in head.lower():
        data = remove_headers(data, {b"return-path"})
    return f"Return-Path: <{mail_from}>\r\n".encode("utf-8", "surrogateescape") + data


# --- one parse of a header block, shared by its readers at delivery ---------------------------------
#
# DMARC's From check, the thread id and the list-view facts each used to run the standard library's
# header parser (compat32) on the same block. `HeaderFields` splits the block once and answers `get`
# and `get_all` with exactly the values that parser gives (RFC 5322 §2.2: name ":" value, folded
# lines kept as they are, §2.2.3). Anything its plain split does not cover is handed to the standard
# parser: 8-bit bytes (compat32 answers those with Header objects), a bare CR or LF, a continuation
# line first, a line that is not a field (compat32 ends the header section there), a Unix "From " line.

_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+:")


class HeaderFields:
    """The fields of one header block, with `email.message.Message`'s `get`/`get_all` answers."""

    __slots__ = ("_fields", "_message")

    def __init__(self, header: bytes) -> None:
        self._fields: list[tuple[str, str]] | None = _split_fields(header)
        self._message: Message | None = None
        if self._fields is None:
            self._message = BytesHeaderParser(policy=compat32).parsebytes(header)

    @property
    def fast(self) -> bool:
        """Whether the plain split read the block (else the standard parser did)."""
        return self._fields is not None

    def get(self, name: str) -> Any:
        if self._fields is None:
            assert self._message is not None
            return self._message.get(name)
        name = name.lower()
        for key, value in self._fields:
            if key == name:
                return value
        return None

    def get_all(self, name: str) -> list[Any] | None:
        if self._fields is None:
            assert self._message is not None
            return self._message.get_all(name)
        name = name.lower()
        found = [value for key, value in self._fields if key == name]
        return found or None


def _split_fields(header: bytes) -> list[tuple[str, str]] | None:
    if not header.isascii():
        return None
    lines = header.split(b"\r\n")
    while lines and not lines[-1]:
        lines.pop()  # the CRLF that ends the last field, and the empty line that ends the block
    fields: list[tuple[str, str]] = []
    for line in lines:
        if not line or b"\r" in line or b"\n" in line:
            return None
        if line[0] in b" \t":
            if not fields:
                return None
            name, value = fields[-1]
            fields[-1] = (name, value + "\r\n" + line.decode("ascii"))
            continue
        if _FIELD_NAME.match(line) is None:
            return None
        name, _, value = line.decode("ascii").partition(":")
        fields.append((name.lower(), value.lstrip(" \t")))
    return fields


# A single address with no comment, quoting, group or encoded word (RFC 5322 §3.4: an addr-spec of
# dot-atoms, bare or in angle brackets after a display name of atoms).
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_ADDR_SPEC = rf"{_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
_PLAIN_ADDRESS = re.compile(rf"[ \t]*(?:({_ADDR_SPEC})|(?:({_ATEXT}(?: {_ATEXT})*) )?<({_ADDR_SPEC})>)[ \t]*\Z")


def plain_address(value: str) -> tuple[str, str] | None:
    """(display name, address) of a value holding one plain address, else None."""
    found = _PLAIN_ADDRESS.match(value)
    if found is None or "=?" in value:
        return None
    bare, name, angled = found.groups()
    return ("", bare) if bare is not None else (name or "", angled)


def addresses_of(values: list[str]) -> list[tuple[str, str]]:
    """`email.utils.getaddresses(values)`, without its parser for the usual single plain address."""
    if len(values) == 1 and isinstance(values[0], str):
        single = plain_address(values[0])
        if single is not None:
            return [single]
    return getaddresses([str(value) for value in values])


def plain_body_text(raw: bytes) -> str | None:
    """The text of a message with no Content-Type and no Content-Transfer-Encoding field: RFC 2045
    §5.2 makes it text/plain; charset=us-ascii, its body is its text (CRLF read as LF, what the MIME
    parse gives, and, as there, UTF-8 when the bytes are not ASCII). None when the message needs the
    MIME parse."""
    end = raw.find(b"\r\n\r\n")
    if end <= 0:
        return None
    fields = HeaderFields(raw[: end + 2])
    if not fields.fast or fields.get("content-type") is not None or fields.get("content-transfer-encoding") is not None:
        return None
    body = raw[end + 4 :]
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            text = body.decode("ascii", "replace")
    return text.replace("\r\n", "\n")
