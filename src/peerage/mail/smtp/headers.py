"""Sans-I/O header helpers for raw messages (CRLF line endings): read a field's unfolded values and
drop fields, without parsing or re-serialising the rest of the message, so signatures stay valid."""

from __future__ import annotations

from collections.abc import Callable


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
