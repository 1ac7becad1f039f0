"""SEARCH, SORT and THREAD=REFERENCES over a selected mailbox (RFC 9051 §6.4.4, RFC 5256).

Criteria are evaluated per message against a ``Candidate`` that loads the expensive views lazily:
flags, size and dates come from the database row; header criteria decode encoded words from the
cached header block; BODY and TEXT read the message file. A message whose bytes are plain UTF-8 with
no transfer encoding or encoded words (``plain`` in the store) is searched directly on its bytes,
which gives the same answer as decoding and is an order of magnitude faster.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from email.utils import parsedate_to_datetime

from peerage.mail.imap import mime
from peerage.mail.imap.parser import SearchKey
from peerage.mail.mailbox.store import MessageRow

# Header fields a TEXT search looks at come from the whole header block, so nothing is listed here;
# these are the address fields the FROM/TO/CC/BCC keys name.
_ADDRESS_KEYS = {"FROM": "from", "TO": "to", "CC": "cc", "BCC": "bcc", "SUBJECT": "subject"}
_FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True),
    "DELETED": ("\\Deleted", True),
    "DRAFT": ("\\Draft", True),
    "FLAGGED": ("\\Flagged", True),
    "SEEN": ("\\Seen", True),
    "UNANSWERED": ("\\Answered", False),
    "UNDELETED": ("\\Deleted", False),
    "UNDRAFT": ("\\Draft", False),
    "UNFLAGGED": ("\\Flagged", False),
    "UNSEEN": ("\\Seen", False),
}


class Candidate:
    """One message under test, with lazily computed views."""

    def __init__(self, seq: int, row: MessageRow, largest_seq: int, largest_uid: int,
                 read_body: Callable[[MessageRow], bytes]) -> None:
        self.seq = seq
        self.row = row
        self.largest_seq = largest_seq
        self.largest_uid = largest_uid
        self._read_body = read_body
        self._raw: bytes | None = None
        self._headers: dict[str, list[str]] | None = None
        self._header_text: str | None = None
        self._body_text: str | None = None
        self._lower_flags: set[str] | None = None
        self.recent = False  # \Recent in the searching session (IMAP4rev1 only)

    @property
    def raw(self) -> bytes:
        if self._raw is None:
            try:
                self._raw = self._read_body(self.row)
            except (FileNotFoundError, LookupError):  # expunged by another session meanwhile
                self._raw = b""
        return self._raw

    @property
    def headers(self) -> dict[str, list[str]]:
        if self._headers is None:
            self._headers = mime.header_text(self.row.header)
        return self._headers

    @property
    def header_text(self) -> str:
        if self._header_text is None:
            if self.row.plain:
                self._header_text = self.row.header.decode("utf-8", "replace")
            else:
                self._header_text = "\n".join(
                    f"{name}: {value}" for name, values in self.headers.items() for value in values
                )
        return self._header_text

    @property
    def body_text(self) -> str:
        if self._body_text is None:
            self._body_text = mime.body_text(self.raw)
        return self._body_text

    def has_flag(self, flag: str) -> bool:
        if self._lower_flags is None:
            self._lower_flags = {f.lower() for f in self.row.flags}
        return flag.lower() in self._lower_flags

    def sent_date(self) -> date | None:
        values = self.headers.get("date")
        if not values:
            return None
        try:
            return parsedate_to_datetime(values[0]).date()
        except (TypeError, ValueError, IndexError):
            return None

    def internal_date(self) -> date:
        zone = timezone(timedelta(minutes=self.row.internal_zone))
        return datetime.fromtimestamp(self.row.internal_date, zone).date()


class Needle:
    """A search string, matched case-insensitively (RFC 9051 §6.4.4: substring, case-insensitive)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.folded = text.casefold()
        self.ascii = text.isascii()
        self.ascii_lower = text.lower().encode("ascii") if self.ascii else b""

    def in_text(self, haystack: str) -> bool:
        return self.folded in haystack.casefold()

    def in_plain_bytes(self, data: bytes) -> bool:
        if self.ascii:
            return self.ascii_lower in data.lower()
        return self.folded in data.decode("utf-8", "replace").casefold()


def compile_needles(key: SearchKey, cache: dict[str, Needle]) -> None:
    if key.op in ("AND", "OR", "NOT"):
        for arg in key.args:
            assert isinstance(arg, SearchKey)
            compile_needles(arg, cache)
    elif key.op in ("TEXT", "BODY", *_ADDRESS_KEYS):
        text = str(key.args[0])
        cache.setdefault(text, Needle(text))
    elif key.op == "HEADER":
        text = str(key.args[1])
        cache.setdefault(text, Needle(text))


def needs(key: SearchKey) -> tuple[bool, bool]:
    """(header needed, body needed) to evaluate ``key``."""
    if key.op in ("AND", "OR", "NOT"):
        header = body = False
        for arg in key.args:
            assert isinstance(arg, SearchKey)
            h, b = needs(arg)
            header, body = header or h, body or b
        return header, body
    if key.op in ("TEXT", "BODY"):
        return True, True
    if key.op in ("HEADER", "SENTBEFORE", "SENTON", "SENTSINCE", *_ADDRESS_KEYS):
        return True, False
    return False, False


def matches(key: SearchKey, message: Candidate, needles: dict[str, Needle]) -> bool:
    op = key.op
    args = key.args
    if op == "AND":
        return all(matches(arg, message, needles) for arg in args)  # type: ignore[arg-type]
    if op == "OR":
        return matches(args[0], message, needles) or matches(args[1], message, needles)  # type: ignore[arg-type]
    if op == "NOT":
        return not matches(args[0], message, needles)  # type: ignore[arg-type]
    if op == "ALL":
        return True
    if op in _FLAG_KEYS:
        flag, wanted = _FLAG_KEYS[op]
        return message.has_flag(flag) == wanted
    if op == "RECENT":
        return message.recent
    if op == "NEW":  # RFC 3501 §6.4.4: RECENT UNSEEN
        return message.recent and not message.has_flag("\\Seen")
    if op == "OLD":
        return not message.recent
    if op == "KEYWORD":
        return message.has_flag(str(args[0]))
    if op == "UNKEYWORD":
        return not message.has_flag(str(args[0]))
    if op == "SEQ":
        return args[0].contains(message.seq, message.largest_seq)  # type: ignore[attr-defined]
    if op == "UID":
        return args[0].contains(message.row.uid, message.largest_uid)  # type: ignore[attr-defined]
    if op == "UIDIN":
        return message.row.uid in args[0]  # type: ignore[operator]
    if op == "LARGER":
        return message.row.size > int(args[0])  # type: ignore[call-overload]
    if op == "SMALLER":
        return message.row.size < int(args[0])  # type: ignore[call-overload]
    if op == "MODSEQ":
        return message.row.modseq >= int(args[0])  # type: ignore[call-overload]
    if op in ("BEFORE", "ON", "SINCE"):
        return _compare_date(op, message.internal_date(), args[0])  # type: ignore[arg-type]
    if op in ("SENTBEFORE", "SENTON", "SENTSINCE"):
        sent = message.sent_date()
        return sent is not None and _compare_date(op[4:], sent, args[0])  # type: ignore[arg-type]
    if op in ("OLDER", "YOUNGER"):
        import time

        age = time.time() - message.row.internal_date
        return age >= int(args[0]) if op == "OLDER" else age <= int(args[0])  # type: ignore[call-overload]
    if op in _ADDRESS_KEYS:
        needle = needles[str(args[0])]
        fields = message.headers.get(_ADDRESS_KEYS[op]) or []
        if any(needle.in_text(value) for value in fields):
            return True
        if op == "SUBJECT":
            return False
        # The addresses as parsed too (comments and folding gone, "Name <local@domain>"), as Dovecot
        # matches them: `FROM user@domain` finds `<user (comment)@ (comment) domain>`.
        from email.utils import getaddresses

        return any(needle.in_text(f"{display.strip()} <{address}>")
                   for display, address in getaddresses(list(fields)) if address or display)
    if op == "HEADER":
        needle = needles[str(args[1])]
        values = message.headers.get(str(args[0]).lower())
        if values is None:
            return False
        return not needle.text or any(needle.in_text(value) for value in values)
    if op == "BODY":
        needle = needles[str(args[0])]
        if message.row.plain:
            header_length = len(message.row.header)
            return needle.in_plain_bytes(message.raw[header_length:])
        return needle.in_text(message.body_text)
    if op == "TEXT":
        needle = needles[str(args[0])]
        if message.row.plain:
            return needle.in_plain_bytes(message.raw)
        return needle.in_text(message.header_text) or needle.in_text(message.body_text)
    return False


def _compare_date(op: str, value: date, limit: date) -> bool:
    if op == "BEFORE":
        return value < limit
    if op == "ON":
        return value == limit
    return value >= limit


# -- SORT (RFC 5256 §3) ---------------------------------------------------------------------

# RFC 5256 §5 ABNF: subj-blob = "[" *BLOBCHAR "]" *WSP; subj-refwd = ("re" / ("fw" ["d"])) *WSP
# [subj-blob] ":"; subj-leader = (*subj-blob subj-refwd) / WSP; subj-trailer = "(fwd)" / WSP.
_BLOB = r"\[[^\[\]]*\]\s*"
_SUBJECT_LEADER = re.compile(rf"^(?:(?:{_BLOB})*(?:re|fwd?)\s*(?:{_BLOB})?:|\s+)", re.I)
_SUBJECT_BLOB = re.compile(rf"^{_BLOB}")
_SUBJECT_TRAILER = re.compile(r"(?:\(fwd\)|\s)+$", re.I)


def base_subject(subject: str) -> str:
    """RFC 5256 §2.1 base subject (the value already decoded to Unicode), for i;ascii-casemap
    comparison: upper case."""
    text = " ".join(subject.split())
    while True:
        text = _SUBJECT_TRAILER.sub("", text)  # step 2
        while True:
            before = text
            while (match := _SUBJECT_LEADER.match(text)) and match.end() > 0:  # step 3
                text = text[match.end() :]
            blob = _SUBJECT_BLOB.match(text)  # step 4: a leading blob goes unless it is all there is
            if blob and text[blob.end() :].strip():
                text = text[blob.end() :]
            if text == before:  # step 5
                break
        if text[:5].lower() == "[fwd:" and text.endswith("]"):  # step 6
            text = text[5:-1]
            continue
        break
    return text.strip().upper()


def _first_address(message: Candidate, field_name: str) -> str:
    """RFC 5256 §3: the addr-mailbox (local part) of the first address; a group's first address
    is the group itself, whose name stands in that place (as in its ENVELOPE start marker)."""
    from email.utils import getaddresses

    values = message.headers.get(field_name)
    if not values:
        return ""
    for kind, text in mime.address_segments(values[0]):
        if kind == "start":
            return text.upper()
        if kind == "addresses" and text.strip():
            addresses = [a for a in getaddresses([text]) if a[0] or a[1]]
            if addresses:
                return addresses[0][1].split("@")[0].upper()
    return ""


def _sent_timestamp(message: Candidate) -> float:
    values = message.headers.get("date")
    if values:
        try:
            return parsedate_to_datetime(values[0]).timestamp()
        except (TypeError, ValueError, IndexError):
            pass
    return float(message.row.internal_date)


def sort_key(criteria: list[str], message: Candidate) -> tuple[object, ...]:
    parts: list[object] = []
    reverse = False
    for criterion in criteria:
        if criterion == "REVERSE":
            reverse = True
            continue
        if criterion == "ARRIVAL":
            value: object = message.row.internal_date
        elif criterion == "DATE":
            value = _sent_timestamp(message)
        elif criterion == "SIZE":
            value = message.row.size
        elif criterion == "SUBJECT":
            value = base_subject((message.headers.get("subject") or [""])[0])
        elif criterion in ("FROM", "TO", "CC"):
            value = _first_address(message, criterion.lower())
        elif criterion in ("DISPLAYFROM", "DISPLAYTO"):
            value = _first_address(message, criterion[7:].lower())
        else:
            raise ValueError(criterion)
        parts.append(_Reversed(value) if reverse else value)
        reverse = False
    parts.append(message.seq)
    return tuple(parts)


class _Reversed:
    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __lt__(self, other: _Reversed) -> bool:
        return other.value < self.value  # type: ignore[operator]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Reversed) and other.value == self.value


# -- THREAD=REFERENCES (RFC 5256 §3) ---------------------------------------------------------

_MESSAGE_ID = re.compile(r"<[^<>\s]+>")


class _Container:
    __slots__ = ("children", "ident", "message", "parent")

    def __init__(self, ident: str) -> None:
        self.ident = ident
        self.message: Candidate | None = None
        self.parent: _Container | None = None
        self.children: list[_Container] = []


def _subject_of(node: _Container) -> tuple[str, bool]:
    """(base subject, is a reply) of a thread root, looking into a dummy's first child."""
    message = node.message
    if message is None and node.children:
        message = node.children[0].message
    if message is None:
        return "", False
    subject = (message.headers.get("subject") or [""])[0]
    base = base_subject(subject)
    return base, base != " ".join(subject.split()).upper()


def _group_by_subject(roots: list[_Container]) -> list[_Container]:
    """RFC 5256 REFERENCES step (5): gather roots that share a base subject under one thread."""
    table: dict[str, _Container] = {}
    for root in roots:
        subject, is_reply = _subject_of(root)
        if not subject:
            continue
        current = table.get(subject)
        if current is None:
            table[subject] = root
            continue
        current_reply = _subject_of(current)[1]
        # Prefer a dummy, then a message that is not a reply, as the thread's representative.
        if (root.message is None and current.message is not None) or (
            current.message is not None and current_reply and not is_reply
        ):
            table[subject] = root
    result: list[_Container] = []
    for root in roots:
        if root.parent is not None:
            continue  # already gathered under a subject dummy
        subject, is_reply = _subject_of(root)
        holder = table.get(subject) if subject else None
        if holder is None or holder is root:
            result.append(root)
            continue
        if holder.message is None and root.message is None:
            holder.children.extend(root.children)
            for child in root.children:
                child.parent = holder
        elif holder.message is None or (is_reply and not _subject_of(holder)[1]):
            holder.children.append(root)
            root.parent = holder
        else:
            dummy = _Container(f"<subject-{subject}>")
            index = result.index(holder) if holder in result else -1
            for node in (holder, root):
                node.parent = dummy
                dummy.children.append(node)
            table[subject] = dummy
            if index >= 0:
                result[index] = dummy
            else:
                result.append(dummy)
    return result


def thread_references(messages: list[Candidate], use_uid: bool) -> str:
    containers: dict[str, _Container] = {}

    def get(ident: str) -> _Container:
        container = containers.get(ident)
        if container is None:
            container = containers[ident] = _Container(ident)
        return container

    def is_ancestor(candidate: _Container, node: _Container) -> bool:
        walker: _Container | None = candidate
        steps = 0
        while walker is not None and steps < 10000:
            if walker is node:
                return True
            walker = walker.parent
            steps += 1
        return False

    for message in messages:
        ids = _MESSAGE_ID.findall((message.headers.get("message-id") or [""])[0])
        ident = ids[0] if ids else f"<unique-{message.seq}@local>"
        if ident in containers and containers[ident].message is not None:
            ident = f"<dup-{message.seq}@local>"
        container = get(ident)
        container.message = message
        references = _MESSAGE_ID.findall(" ".join(message.headers.get("references") or []))
        if not references:
            references = _MESSAGE_ID.findall((message.headers.get("in-reply-to") or [""])[0])[:1]
        previous: _Container | None = None
        for reference in references:
            node = get(reference)
            if previous is not None and node.parent is None and not is_ancestor(previous, node) and node is not previous:
                node.parent = previous
                previous.children.append(node)
            previous = node
        # RFC 5256 REFERENCES step (1)(C): the message's own References decide its parent. A link
        # made from another message's References is broken first; the new one is made unless it
        # would close a loop, and then the message is a root.
        if container.parent is not None:
            container.parent.children.remove(container)
            container.parent = None
        if previous is not None and previous is not container and not is_ancestor(previous, container):
            container.parent = previous
            previous.children.append(container)

    roots = [c for c in containers.values() if c.parent is None]

    def prune(nodes: list[_Container], is_root: bool) -> list[_Container]:
        result: list[_Container] = []
        for node in nodes:
            node.children = prune(node.children, False)
            for child in node.children:
                child.parent = node  # promoted grandchildren now hang here
            if node.message is None:
                if not node.children:
                    continue
                if not is_root or len(node.children) == 1:
                    result.extend(node.children)
                    continue
            result.append(node)
        return result

    roots = prune(roots, True)
    for root in roots:
        root.parent = None
    roots = _group_by_subject(roots)

    def first_date(node: _Container) -> float:
        if node.message is not None:
            return _sent_timestamp(node.message)
        return min((first_date(child) for child in node.children), default=0.0)

    def order(node: _Container) -> tuple[float, int]:
        seq = node.message.seq if node.message else min(
            (c.message.seq for c in node.children if c.message), default=0
        )
        return first_date(node), seq

    def render(node: _Container) -> str:
        node.children.sort(key=order)
        label = ""
        if node.message is not None:
            label = str(node.message.row.uid if use_uid else node.message.seq)
        if not node.children:
            return label
        if len(node.children) == 1:
            inner = render(node.children[0])
            if label:
                return f"{label} {inner}"
            return inner
        branches = "".join(f"({render(child)})" for child in node.children)
        return f"{label} {branches}" if label else branches

    roots.sort(key=order)
    return "".join(f"({render(root)})" for root in roots)
