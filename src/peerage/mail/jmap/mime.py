"""MIME for JMAP: a message's body structure, body values and header forms, and new messages from Email/set.

This module is in charge of RFC 8621 §4.1.4's views of a parsed message (``bodyStructure``, and
``textBody``/``htmlBody``/``attachments`` by the RFC's own parseStructure algorithm), of decoding text
parts for ``bodyValues`` (with ``isEncodingProblem`` and truncation), of the parsed header forms
(§4.1.2: Raw, Text, Addresses, GroupedAddresses, MessageIds, Date, URLs), and of composing a message
from the properties a client sends to Email/set ``create``.

Part ids are the positions of leaf parts in depth-first order ("1", "2", ...); a part's blob id is its
message's blob id followed by ``-`` and the part id, so downloads need no extra storage.
"""

from __future__ import annotations

import email
import email.policy
import html as htmllib
import re
from dataclasses import dataclass, field
from email.message import EmailMessage, Message
from email.utils import format_datetime, formataddr, getaddresses, parsedate_to_datetime
from typing import Any

from peerage.mail.jmap.index import addresses, decode_text, message_ids
from peerage.mail.smtp.headers import plain_body_text

PREVIEW_LENGTH = 256
_TAGS = re.compile(r"<(script|style)\b.*?</\1\s*>|<[^>]+>", re.S | re.I)
_SPACE = re.compile(r"\s+")


@dataclass
class Part:
    part_id: str | None
    message: Message
    type: str
    sub_parts: list[Part] = field(default_factory=list)

    @property
    def is_multipart(self) -> bool:
        return self.type.startswith("multipart/")

    @property
    def disposition(self) -> str | None:
        value = self.message.get_content_disposition()
        return value.lower() if value else None

    @property
    def name(self) -> str | None:
        filename = self.message.get_filename()
        return decode_text(filename) if filename else None

    def content(self) -> bytes:
        if self.is_multipart:
            return b""
        payload = self.message.get_payload(decode=True)
        if isinstance(payload, bytes):
            return payload
        raw = self.message.get_payload()
        if isinstance(raw, list) and raw and isinstance(raw[0], Message):
            # message/rfc822 (RFC 2046 §5.2.1): the parser holds the attached message as a Message; its
            # bytes are the part's content (what Email/parse and download of the part need).
            return raw[0].as_bytes(policy=email.policy.compat32.clone(linesep="\r\n"))
        return raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else b""

    def text(self) -> tuple[str, bool]:
        """The decoded text and whether decoding met a problem (RFC 8621 isEncodingProblem)."""
        data = self.content()
        charset = self.message.get_content_charset() or ("utf-8" if self.type != "text/plain" else "us-ascii")
        problem = False
        try:
            text = data.decode(charset)
        except LookupError:
            text, problem = data.decode("utf-8", "replace"), True
        except UnicodeDecodeError:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                text, problem = data.decode(charset, "replace"), True
        return text.replace("\r\n", "\n"), problem


def parse(raw: bytes) -> Message:
    return email.message_from_bytes(raw, policy=email.policy.compat32)


def tree(message: Message) -> Part:
    counter = [0]

    def walk(msg: Message) -> Part:
        content_type = msg.get_content_type().lower()
        if content_type.startswith("multipart/") and isinstance(msg.get_payload(), list):
            node = Part(None, msg, content_type)
            children: list[Message] = list(msg.get_payload())  # type: ignore[arg-type]
            node.sub_parts = [walk(child) for child in children]
            return node
        counter[0] += 1
        return Part(str(counter[0]), msg, content_type)

    return walk(message)


def leaves(root: Part) -> list[Part]:
    if not root.is_multipart:
        return [root]
    out: list[Part] = []
    for child in root.sub_parts:
        out.extend(leaves(child))
    return out


def find_part(root: Part, part_id: str) -> Part | None:
    for leaf in leaves(root):
        if leaf.part_id == part_id:
            return leaf
    return None


def _inline_media(content_type: str) -> bool:
    return content_type.split("/")[0] in ("image", "audio", "video")


def body_lists(root: Part) -> tuple[list[Part], list[Part], list[Part]]:
    """(textBody, htmlBody, attachments) per RFC 8621 §4.1.4."""
    text_body: list[Part] = []
    html_body: list[Part] = []
    attachments: list[Part] = []

    def parse_structure(parts: list[Part], multipart_type: str, in_alternative: bool,
                        html: list[Part] | None, text: list[Part] | None) -> None:
        text_length = len(text) if text is not None else -1
        html_length = len(html) if html is not None else -1
        for index, part in enumerate(parts):
            is_inline = (
                part.disposition != "attachment"
                and (part.type in ("text/plain", "text/html") or _inline_media(part.type))
                and (index == 0 or (multipart_type != "related"
                                    and (_inline_media(part.type) or not part.name)))
            )
            if part.is_multipart:
                sub_type = part.type.split("/", 1)[1]
                parse_structure(part.sub_parts, sub_type, in_alternative or sub_type == "alternative", html, text)
            elif is_inline:
                if multipart_type == "alternative":
                    if part.type == "text/plain" and text is not None:
                        text.append(part)
                    elif part.type == "text/html" and html is not None:
                        html.append(part)
                    else:
                        attachments.append(part)
                    continue
                if in_alternative:
                    if part.type == "text/plain":
                        html = None
                    if part.type == "text/html":
                        text = None
                if text is not None:
                    text.append(part)
                if html is not None:
                    html.append(part)
                if (text is None or html is None) and _inline_media(part.type):
                    attachments.append(part)
            else:
                attachments.append(part)
        if multipart_type == "alternative" and text is not None and html is not None:
            if text_length == len(text) and html_length != len(html):
                text.extend(html[html_length:])
            if html_length == len(html) and text_length != len(text):
                html.extend(text[text_length:])

    parts = root.sub_parts if root.is_multipart else [root]
    multipart_type = root.type.split("/", 1)[1] if root.is_multipart else "mixed"
    parse_structure(parts, multipart_type, multipart_type == "alternative", html_body, text_body)
    return text_body, html_body, attachments


def html_to_text(value: str) -> str:
    return _SPACE.sub(" ", htmllib.unescape(_TAGS.sub(" ", value))).strip()


def searchable_text(raw: bytes) -> str:
    """The words a body search looks in: every text/plain part and every text/html part as text (the
    full-text index stores this for each message at delivery)."""
    plain = plain_body_text(raw)  # a message with no MIME fields needs no MIME parse
    return plain if plain is not None else mime_searchable_text(raw)


def mime_searchable_text(raw: bytes) -> str:
    """`searchable_text` through the MIME parse, whatever the message."""
    texts = []
    for part in leaves(tree(parse(raw))):
        if part.type == "text/plain":
            texts.append(part.text()[0])
        elif part.type == "text/html":
            texts.append(html_to_text(part.text()[0]))
    return "\n".join(texts)


def preview(root: Part) -> str:
    text_body, html_body, _ = body_lists(root)
    for part in text_body:
        if part.type == "text/plain":
            return _SPACE.sub(" ", part.text()[0]).strip()[:PREVIEW_LENGTH]
    for part in html_body:
        if part.type == "text/html":
            return html_to_text(part.text()[0])[:PREVIEW_LENGTH]
    return ""


def has_attachment(root: Part) -> bool:
    return any(part.disposition == "attachment" or not part.type.startswith("text/")
               for part in body_lists(root)[2])


# --- EmailBodyPart ---------------------------------------------------------------------------------

DEFAULT_BODY_PROPERTIES = ["partId", "blobId", "size", "name", "type", "charset", "disposition", "cid",
                           "language", "location"]


def raw_headers(message: Message) -> list[dict[str, str]]:
    return [{"name": name, "value": _raw_value(value)} for name, value in message.items()]


def _raw_value(value: Any) -> str:
    text = str(value)
    return " " + text if not text.startswith(" ") else text


def body_part(part: Part, blob_prefix: str, properties: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for prop in properties:
        if prop == "partId":
            out[prop] = part.part_id
        elif prop == "blobId":
            out[prop] = None if part.part_id is None else f"{blob_prefix}-{part.part_id}"
        elif prop == "size":
            out[prop] = len(part.content())
        elif prop == "headers":
            out[prop] = raw_headers(part.message)
        elif prop == "name":
            out[prop] = part.name
        elif prop == "type":
            out[prop] = part.type
        elif prop == "charset":
            charset = part.message.get_content_charset()
            out[prop] = charset if charset or not part.type.startswith("text/") else "us-ascii"
        elif prop == "disposition":
            out[prop] = part.disposition
        elif prop == "cid":
            cid = part.message.get("Content-ID")
            out[prop] = str(cid).strip().strip("<>") if cid else None
        elif prop == "language":
            lang = part.message.get("Content-Language")
            out[prop] = [s.strip() for s in str(lang).split(",")] if lang else None
        elif prop == "location":
            loc = part.message.get("Content-Location")
            out[prop] = str(loc).strip() if loc else None
        elif prop == "subParts":
            out[prop] = [body_part(p, blob_prefix, properties) for p in part.sub_parts] if part.is_multipart else None
        elif prop.startswith("header:"):
            out[prop] = header_form(part.message, prop)
    if part.is_multipart and "subParts" not in properties:
        out["subParts"] = [body_part(p, blob_prefix, properties) for p in part.sub_parts]
    return out


def body_value(part: Part, max_bytes: int) -> dict[str, Any]:
    text, problem = part.text()
    truncated = False
    if max_bytes and len(text.encode()) > max_bytes:
        text = text.encode()[:max_bytes].decode("utf-8", "ignore")
        truncated = True
    return {"value": text, "isEncodingProblem": problem, "isTruncated": truncated}


# --- header forms (RFC 8621 §4.1.2) ----------------------------------------------------------------


class HeaderFormError(ValueError):
    pass


def header_form(message: Message, prop: str) -> Any:
    """Answer a ``header:Name[:asForm][:all]`` property."""
    parts = prop.split(":")
    if len(parts) < 2 or not parts[1]:
        raise HeaderFormError(prop)
    name = parts[1]
    rest = parts[2:]
    want_all = bool(rest) and rest[-1] == "all"
    if want_all:
        rest = rest[:-1]
    form = rest[0] if rest else "asRaw"
    if len(rest) > 1 or form not in ("asRaw", "asText", "asAddresses", "asGroupedAddresses", "asMessageIds",
                                      "asDate", "asURLs"):
        raise HeaderFormError(prop)
    values = [str(v) for v in (message.get_all(name) or [])]
    converted = [_convert(v, form) for v in values]
    if want_all:
        return converted
    return converted[-1] if converted else None


def _convert(value: str, form: str) -> Any:
    if form == "asRaw":
        return _raw_value(value)
    if form == "asText":
        return decode_text(re.sub(r"\r?\n[ \t]", " ", value)).strip()
    if form == "asAddresses":
        return addresses([value]) or []
    if form == "asGroupedAddresses":
        return [{"name": None, "addresses": addresses([value]) or []}]
    if form == "asMessageIds":
        return message_ids(value)
    if form == "asDate":
        try:
            return parsedate_to_datetime(value).isoformat().replace("+00:00", "Z")
        except (TypeError, ValueError, IndexError):
            return None
    if form == "asURLs":
        found = re.findall(r"<([^>]*)>", value)
        return found or None
    return None


# --- composing (Email/set create) ------------------------------------------------------------------


class CreateError(ValueError):
    """A property of an Email to create is unusable; ``property`` names it."""

    def __init__(self, message: str, prop: str | None = None) -> None:
        super().__init__(message)
        self.prop = prop


def _address_header(values: Any, prop: str) -> str:
    if not isinstance(values, list):
        raise CreateError(f"{prop} must be a list of EmailAddress objects", prop)
    out = []
    for item in values:
        if not isinstance(item, dict) or not isinstance(item.get("email"), str) or "@" not in item["email"]:
            raise CreateError(f"{prop} holds an address without a valid email", prop)
        name = item.get("name")
        if any(c in item["email"] for c in "\r\n<>,"):
            raise CreateError(f"{prop} holds an invalid address", prop)
        out.append(formataddr((name or "", item["email"])) if name else item["email"])
    return ", ".join(out)


def compose(data: dict[str, Any], blob: Any, domain: str) -> bytes:
    """An RFC 5322 message from Email/set create properties. ``blob(blobId)`` returns (bytes, type)."""
    message = EmailMessage(policy=email.policy.SMTP)
    for prop, header in (("from", "From"), ("sender", "Sender"), ("to", "To"), ("cc", "Cc"), ("bcc", "Bcc"),
                         ("replyTo", "Reply-To")):
        if data.get(prop):
            message[header] = _address_header(data[prop], prop)
    subject = data.get("subject")
    if subject is not None:
        if not isinstance(subject, str) or "\n" in subject or "\r" in subject:
            raise CreateError("subject must be a one-line string", "subject")
        message["Subject"] = subject
    sent_at = data.get("sentAt")
    if sent_at is not None:
        from datetime import datetime

        try:
            message["Date"] = format_datetime(datetime.fromisoformat(str(sent_at).replace("Z", "+00:00")))
        except ValueError:
            raise CreateError("sentAt is not a date", "sentAt") from None
    else:
        from email.utils import localtime

        message["Date"] = format_datetime(localtime())
    for prop, header in (("messageId", "Message-ID"), ("inReplyTo", "In-Reply-To"), ("references", "References")):
        value = data.get(prop)
        if value is None:
            continue
        if not isinstance(value, list) or not all(isinstance(v, str) and re.fullmatch(r"[^<>\s]+@?[^<>\s]*", v)
                                                  for v in value):
            raise CreateError(f"{prop} must be a list of message ids", prop)
        message[header] = " ".join(f"<{v}>" for v in value)
    if "Message-ID" not in message:
        import secrets

        message["Message-ID"] = f"<{secrets.token_hex(12)}@{domain}>"
    for key, value in data.items():
        if key.startswith("header:"):
            name = key.split(":")[1]
            if not re.fullmatch(r"[!-9;-~]+", name) or not isinstance(value, str) or "\n" in value.strip("\r\n"):
                raise CreateError(f"{key} is not a valid header", key)
            if name.lower() in ("content-type", "content-transfer-encoding", "mime-version"):
                raise CreateError(f"{key} may not be set directly", key)
            message[name] = value.strip()
    values = data.get("bodyValues") or {}
    if not isinstance(values, dict):
        raise CreateError("bodyValues must be an object", "bodyValues")

    def text_of(parts: Any, prop: str, subtype: str) -> str | None:
        if parts is None:
            return None
        if not isinstance(parts, list) or len(parts) != 1 or not isinstance(parts[0], dict):
            raise CreateError(f"{prop} must hold exactly one part", prop)
        part = parts[0]
        if part.get("type", f"text/{subtype}") != f"text/{subtype}":
            raise CreateError(f"{prop} must be text/{subtype}", prop)
        value = values.get(part.get("partId"))
        if not isinstance(value, dict) or not isinstance(value.get("value"), str):
            raise CreateError(f"{prop} names a partId without a bodyValue", prop)
        return str(value["value"])

    if data.get("bodyStructure") is not None:
        raise CreateError("bodyStructure is not supported here; send textBody/htmlBody/attachments",
                          "bodyStructure")
    text = text_of(data.get("textBody"), "textBody", "plain")
    html = text_of(data.get("htmlBody"), "htmlBody", "html")
    if text is None and html is None:
        text = ""
    if text is not None:
        message.set_content(text, subtype="plain", cte="quoted-printable" if not text.isascii() else "7bit")
        if html is not None:
            message.add_alternative(html, subtype="html")
    elif html is not None:
        message.set_content(html, subtype="html")
    for index, attachment in enumerate(data.get("attachments") or []):
        prop = f"attachments/{index}"
        if not isinstance(attachment, dict) or not isinstance(attachment.get("blobId"), str):
            raise CreateError("an attachment needs a blobId", prop)
        found = blob(attachment["blobId"])
        if found is None:
            raise CreateError(f"no blob {attachment['blobId']}", prop)
        content, blob_type = found
        content_type = str(attachment.get("type") or blob_type or "application/octet-stream")
        maintype, _, subtype = content_type.partition("/")
        disposition = "inline" if attachment.get("disposition") == "inline" else "attachment"
        message.add_attachment(content, maintype=maintype or "application", subtype=subtype or "octet-stream",
                               filename=attachment.get("name") or None, disposition=disposition,
                               cid=f"<{attachment['cid']}>" if attachment.get("cid") else None)
    return message.as_bytes(policy=email.policy.SMTP)


def own_addresses(values: list[str]) -> list[str]:
    return [address for _, address in getaddresses(values) if address]
