"""SMTPUTF8 downgrade: making an internationalized message fit a peer that does not offer SMTPUTF8.

This module is in charge of deciding whether a message needs SMTPUTF8 at all (RFC 6531 §3.4: a
non-ASCII envelope address, or a non-ASCII header field at any level of the MIME structure, §3.2) and,
for a peer without the extension, of rewriting what can be rewritten so the message can still go:

- envelope addresses whose local part is ASCII travel with their domain as A-labels (IDNA2008,
  RFC 5890/5891); a non-ASCII *local part* has no ASCII form, so that recipient (or, for the sender,
  the whole message) fails with X.6.7 (RFC 6533 §3);
- header fields are rewritten as RFC 6857 §3 describes for the post-delivery downgrade, which is the
  only standard ASCII form an internationalized message has (RFC 6531 §3.2 lets an MTA that meets a
  legacy peer return or downgrade):
  * address fields (From, To, Cc, ...): display names as RFC 2047 encoded-words, domains as A-labels,
    and a mailbox with a non-ASCII local part as an empty group whose encoded display name carries
    the original mailbox (§3.1.10), so the reader still sees who it was;
  * unstructured and unknown fields (Subject, Comments, X-...): RFC 2047 encoded-words (§3.1.9);
  * MIME parameters (Content-Type, Content-Disposition): RFC 2231 encoding (§3.1.8);
  * Message-ID, In-Reply-To, References and their Resent-/Original forms cannot carry encoded-words,
    so they become Downgraded-... fields with an encoded value (§3.1.4–3.1.7);
  * a Received field's non-ASCII FOR clause is dropped (§3.1.3).
  Body parts are left byte for byte: MIME part headers inside multiparts are downgraded in place;
  message/global parts are bodies (RFC 6532 §3.7) and travel as they are.

A message that cannot be rewritten (header bytes that are not UTF-8, a mailbox with a non-ASCII local
part inside a named group) yields the reason, and the caller answers with a DSN (5.6.9).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from email.header import Header
from email.headerregistry import AddressHeader, HeaderRegistry
from email.utils import encode_rfc2231
from typing import cast

import idna

# A MIME structure deeper than this is not walked (Dovecot's mail_max_mime_parts limits the count; a
# nesting of 100 is what Postfix's mime_nesting_limit allows).
MAX_MIME_DEPTH = 100

ADDRESS_FIELDS = frozenset({
    "from", "sender", "reply-to", "to", "cc", "bcc", "resent-from", "resent-sender", "resent-to",
    "resent-cc", "resent-bcc", "return-receipt-to", "disposition-notification-to", "mail-followup-to",
    "mail-reply-to", "errors-to",
})
# RFC 6857 §3.1.4–3.1.7: identifiers cannot hold encoded-words; the field is carried as Downgraded-*.
ID_FIELDS = frozenset({"message-id", "in-reply-to", "references", "resent-message-id", "original-message-id"})
PARAMETER_FIELDS = frozenset({"content-type", "content-disposition"})

_registry = HeaderRegistry()
Rewrite = Callable[[str, str], str]


class CannotDowngrade(ValueError):
    """The message has an element with no ASCII form; the text is the reason for the DSN."""


@dataclass(slots=True)
class Plan:
    """What to send to a legacy peer: the ASCII sender, the recipients that can go (original → ASCII
    form), the recipients that cannot, and the rewritten message (None when nothing needed it)."""

    mail_from: str
    recipients: dict[str, str] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)
    data: bytes | None = None


def headers_need_utf8(data: bytes) -> bool:
    """True when a header field at any MIME level is not ASCII (RFC 6531 §3.2)."""
    if data.isascii():
        return False
    try:
        _walk(data, lambda name, value: value, depth=0, probe=True)
    except _NeedsUtf8:
        return True
    return False


def needs_smtputf8(mail_from: str, recipients: list[str], data: bytes) -> bool:
    if not mail_from.isascii() or not all(r.isascii() for r in recipients):
        return True
    return headers_need_utf8(data)


def ascii_address(address: str) -> str | None:
    """The address with its domain as A-labels; None when the local part is not ASCII."""
    if address.isascii():
        return address
    local, at, domain = address.rpartition("@")
    if not at or not local.isascii():
        return None
    try:
        return f"{local}@{ascii_domain(domain)}"
    except CannotDowngrade:
        return None


def ascii_domain(domain: str) -> str:
    if domain.isascii():
        return domain
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise CannotDowngrade(f"the domain {domain!r} has no A-label form ({exc})") from exc


def plan(mail_from: str, recipients: list[str], data: bytes) -> Plan:
    """Work out the ASCII form of one transaction; raises CannotDowngrade for the whole message."""
    sender = ascii_address(mail_from) if mail_from else ""
    if sender is None:
        raise CannotDowngrade(f"the sender address {mail_from} has a non-ASCII local part")
    result = Plan(mail_from=sender)
    for recipient in recipients:
        converted = ascii_address(recipient)
        if converted is None:
            result.refused.append(recipient)
        else:
            result.recipients[recipient] = converted
    if headers_need_utf8(data):
        result.data = downgrade_message(data)
    return result


def downgrade_message(data: bytes) -> bytes:
    return _walk(data, _downgrade_field, depth=0, probe=False)


class _NeedsUtf8(Exception):
    pass


_FIELD_START = re.compile(rb"^[!-9;-~]+:")


def _split(data: bytes) -> tuple[bytes, bytes, bytes]:
    """(header block, separator, body) of one entity, keeping the line endings as they are."""
    for separator in (b"\r\n\r\n", b"\n\n"):
        end = data.find(separator)
        if end >= 0:
            return data[:end], separator, data[end + len(separator):]
    return data, b"", b""


def _fields(block: bytes) -> list[bytes]:
    """The header fields of a block, each with its folded continuation lines."""
    fields: list[bytes] = []
    for line in block.splitlines(keepends=True):
        if fields and line[:1] in (b" ", b"\t"):
            fields[-1] += line
        else:
            fields.append(line)
    return fields


def _walk(data: bytes, rewrite: Rewrite, *, depth: int, probe: bool) -> bytes:
    block, separator, body = _split(data)
    out: list[bytes] = []
    boundary: bytes | None = None
    for raw in _fields(block):
        ending = b"\r\n" if raw.endswith(b"\r\n") else (b"\n" if raw.endswith(b"\n") else b"")
        text = raw[: len(raw) - len(ending)] if ending else raw
        name, colon, value = text.partition(b":")
        if name.strip().lower() == b"content-type" and colon:
            match = re.search(rb'boundary\s*=\s*(?:"([^"]+)"|([^\s;]+))', value, re.IGNORECASE)
            if match and re.match(rb"\s*multipart/", value, re.IGNORECASE):
                boundary = match.group(1) or match.group(2)
        if text.isascii() or not colon:
            out.append(raw)
            continue
        if probe:
            raise _NeedsUtf8
        try:
            decoded = value.decode("utf-8")
            field_name = name.decode("ascii").strip()
        except UnicodeDecodeError as exc:
            raise CannotDowngrade("a header field is neither ASCII nor UTF-8 (RFC 6532 §3.1)") from exc
        replaced = rewrite(field_name, _unfold(decoded))
        out.append(replaced.encode("ascii") + ending)
    if boundary is not None and body and depth < MAX_MIME_DEPTH:
        body = _walk_multipart(body, boundary, rewrite, depth=depth + 1, probe=probe)
    return b"".join(out) + separator + body


def _walk_multipart(body: bytes, boundary: bytes, rewrite: Rewrite, *, depth: int, probe: bool) -> bytes:
    # RFC 2046 §5.1.1: a delimiter is CRLF "--" boundary at the start of a line; the preamble and the
    # epilogue are not parts.
    delimiter = re.compile(rb"(^|\r?\n)--" + re.escape(boundary) + rb"(--)?[ \t]*(?=\r?\n|$)")
    pieces: list[bytes] = []
    position = 0
    inside = False
    for match in delimiter.finditer(body):
        chunk = body[position:match.start()]
        if inside:
            # A part's content starts after the delimiter line's line break.
            lead = b"\r\n" if chunk.startswith(b"\r\n") else (b"\n" if chunk.startswith(b"\n") else b"")
            chunk = lead + _walk(chunk[len(lead):], rewrite, depth=depth, probe=probe)
        pieces.append(chunk)
        pieces.append(match.group(0))
        position = match.end()
        inside = match.group(2) is None
        if not inside:
            break
    pieces.append(body[position:])
    return b"".join(pieces)


def _unfold(value: str) -> str:
    return re.sub(r"\r?\n(?=[ \t])", "", value).strip()


def _encoded(text: str, name: str) -> str:
    """RFC 2047 encoded-words for `text`, folded to fit after `name: `."""
    return Header(text, "utf-8", header_name=name).encode(linesep="\r\n")


def _phrase(text: str, name: str) -> str:
    if text.isascii():
        if re.fullmatch(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~. -]*", text):
            return text
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return _encoded(text, name)


def _downgrade_field(name: str, value: str) -> str:
    lowered = name.lower()
    if lowered in ADDRESS_FIELDS:
        return f"{name}: {_downgrade_addresses(name, value)}"
    if lowered in ID_FIELDS:
        return f"Downgraded-{name}: {_encoded(value, 'Downgraded-' + name)}"
    if lowered == "received":
        stripped = re.sub(r"\s+for\s+<?[^\s;>]*[^\x00-\x7f][^\s;>]*>?", "", value)
        if stripped.isascii():
            return f"{name}: {stripped}"
        return f"Downgraded-{name}: {_encoded(value, 'Downgraded-' + name)}"
    if lowered in PARAMETER_FIELDS:
        return f"{name}: {_downgrade_parameters(value)}"
    return f"{name}: {_encoded(value, name)}"


def _downgrade_addresses(name: str, value: str) -> str:
    parsed = cast(AddressHeader, _registry(name, value))
    rendered: list[str] = []
    for group in parsed.groups:
        members: list[str] = []
        for address in group.addresses:
            if address.username.isascii():
                spec = f"{address.username}@{ascii_domain(address.domain)}" if address.domain else address.username
                if address.display_name:
                    members.append(f"{_phrase(address.display_name, name)} <{spec}>")
                else:
                    members.append(spec)
                continue
            if group.display_name is not None:
                raise CannotDowngrade(f"the group {group.display_name!r} in {name} holds a non-ASCII address")
            # RFC 6857 §3.1.10: the mailbox becomes an empty group whose (encoded) name is the
            # original mailbox text.
            original = f"{address.display_name} <{address.addr_spec}>" if address.display_name else address.addr_spec
            members.append(f"{_encoded(original, name)} :;")
        if group.display_name is not None:
            rendered.append(f"{_phrase(group.display_name, name)}: {', '.join(members)};")
        else:
            rendered.extend(members)
    if not rendered:
        return _encoded(value, name)
    return ",\r\n ".join(rendered)


def _downgrade_parameters(value: str) -> str:
    parts = _split_parameters(value)
    out = [parts[0] if parts[0].isascii() else _encoded(parts[0], "Content-Type")]
    for parameter in parts[1:]:
        key, eq, raw = parameter.partition("=")
        key = key.strip()
        if parameter.isascii() or not eq:
            out.append(parameter.strip())
            continue
        text = raw.strip()
        if len(text) >= 2 and text[0] == text[-1] == '"':
            text = text[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        # RFC 2231 §4: name*=charset'language'percent-encoded-octets.
        out.append(f"{key}*={encode_rfc2231(text, 'utf-8')}")
    return ";\r\n ".join(out)


def _split_parameters(value: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    escaped = False
    for char in value:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == ";" and not quoted:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    parts.append("".join(current).strip())
    return [p for p in parts if p] or [""]
