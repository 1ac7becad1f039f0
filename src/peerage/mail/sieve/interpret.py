"""Running a checked Sieve script against one message, sans-I/O: the list of actions it asks for.

This module is in charge of the semantics of RFC 5228 (tests, match types, comparators, address
parts, implicit keep §2.10.2, duplicate fileinto/keep collapsing §2.10.3) and of the extensions'
actions: fileinto (§4.1), envelope (§5.4), imap4flags (RFC 5232: the internal flags variable,
``:flags``, ``hasflag``), reject/ereject (RFC 5429), vacation (RFC 5230), copy (RFC 3894), variables
(RFC 5229: ``set`` with its modifiers, ``${name}`` and the match variables ``${0}``..``${9}`` of the
last successful ``:matches``, the ``string`` test), relational (RFC 5231: ``:value`` and ``:count``
with the i;ascii-numeric comparator of RFC 4790 §9.1) and body (RFC 5173: ``:raw``, ``:content``
and ``:text``). It does not perform anything: ``evaluate`` returns a ``Result`` the delivery code
carries out, so a script that fails half-way (a runtime error, RFC 5228 §2.10.6) performs nothing
but the implicit keep.

Execution limits (named, with precedent): ``MAX_ACTIONS`` (Pigeonhole's ``sieve_max_actions``
default, 32), ``MAX_REDIRECTS`` (Pigeonhole's ``sieve_max_redirects`` default, 4),
``MAX_VARIABLE_SIZE`` (Pigeonhole's ``sieve_variables_max_variable_size`` default, 4 KiB; a longer
value is cut, as Pigeonhole does) and ``MAX_MATCH_VARIABLES`` (``${0}``..``${9}``, the minimum
RFC 5229 §3.2 asks for and Pigeonhole's limit). ``:matches`` runs in time bounded by pattern × value
length (no backtracking regular expression).

Where we and Pigeonhole differ, on purpose: the ``string`` test compares with i;ascii-casemap by
default, as RFC 5228 §2.7.3 says of every test (Pigeonhole uses i;octet there); ``set :upper`` and
``:lower`` change every letter, not ASCII ones only (RFC 5229 §4.1 speaks of letters); and a
fileinto folder name loses surrounding spaces (IMAP clients show such names badly).
"""

from __future__ import annotations

import email.policy
import html.parser
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from email.header import decode_header, make_header
from email.message import Message
from email.utils import getaddresses

from peerage.mail.sieve.grammar import (
    VARIABLE_NAME,
    VARIABLE_REFERENCE,
    Command,
    Number,
    Script,
    Strings,
    Test,
)

MAX_ACTIONS = 32
MAX_REDIRECTS = 4
MAX_VARIABLE_SIZE = 4096
MAX_MATCH_VARIABLES = 10
# RFC 5230 §4.1: the default period is 7 days; an implementation may bound it. Pigeonhole's
# sieve_vacation_min_period is 1 day and sieve_vacation_max_period 90 days.
VACATION_DEFAULT_DAYS = 7
VACATION_MIN_DAYS = 1
VACATION_MAX_DAYS = 90
INBOX = "INBOX"


def _cut(value: str) -> str:
    return value if len(value) <= MAX_VARIABLE_SIZE else value[:MAX_VARIABLE_SIZE]


class SieveRuntimeError(Exception):
    """A script that cannot complete (RFC 5228 §2.10.6): only the implicit keep is performed."""


@dataclass(slots=True)
class Envelope:
    mail_from: str  # "" for the null reverse-path
    rcpt_to: str


@dataclass(slots=True)
class Vacation:
    reason: str
    days: int
    subject: str | None
    from_address: str | None
    addresses: list[str]
    mime: bool
    handle: str
    html: str | None = None  # an HTML alternative (the JMAP VacationResponse's htmlBody)


@dataclass(slots=True)
class Result:
    # (folder, flags) of every copy to store, INBOX for keep; empty when the message is not kept.
    keeps: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    redirects: list[str] = field(default_factory=list)
    reject: str | None = None
    ereject: bool = False
    vacation: Vacation | None = None
    discarded: bool = False


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def glob_spans(pattern: str, value: str) -> list[tuple[int, int]] | None:
    """RFC 5228 §2.7.1 :matches: ``*`` any run, ``?`` one character, backslash quotes the next one.
    Greedy with one resume point per star: O(len(pattern) × len(value)), never exponential. On a
    match, the span of ``value`` each wildcard took, in order (RFC 5229 §3.2's match variables; each
    star takes as little as lets the rest match, as Pigeonhole's do); None otherwise."""
    tokens: list[tuple[str, str]] = []  # ("lit", ch) / ("any", "") / ("star", "")
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            tokens.append(("lit", pattern[i + 1]))
            i += 2
            continue
        tokens.append(("star", "") if ch == "*" else ("any", "") if ch == "?" else ("lit", ch))
        i += 1
    spans: dict[int, tuple[int, int]] = {}
    p = v = 0
    star_p, star_v = -1, 0
    while v < len(value):
        if p < len(tokens) and (tokens[p][0] == "any" or (tokens[p][0] == "lit" and tokens[p][1] == value[v])):
            if tokens[p][0] == "any":
                spans[p] = (v, v + 1)
            p += 1
            v += 1
        elif p < len(tokens) and tokens[p][0] == "star":
            star_p, star_v = p, v
            spans[p] = (v, v)
            p += 1
        elif star_p >= 0:
            p = star_p + 1
            star_v += 1
            v = star_v
            spans[star_p] = (spans[star_p][0], star_v)
        else:
            return None
    while p < len(tokens) and tokens[p][0] == "star":
        spans[p] = (len(value), len(value))
        p += 1
    if p != len(tokens):
        return None
    return [spans[k] for k in sorted(spans)]


def glob_match(pattern: str, value: str) -> bool:
    return glob_spans(pattern, value) is not None


def _numeric(value: str) -> tuple[int, int, str]:
    # RFC 4790 §9.1.1: the leading digits as a number; a string that does not start with a digit is
    # positive infinity (all such strings are equal). Compared by length then digits, so a long
    # digit string needs no conversion.
    digits = re.match(r"[0-9]*", value).group()  # type: ignore[union-attr]
    if not digits:
        return (1, 0, "")
    digits = digits.lstrip("0") or "0"
    return (0, len(digits), digits)


def _comparator_key(comparator: str) -> Callable[[str], object]:
    if comparator == "i;ascii-numeric":
        return _numeric
    if comparator == "i;ascii-casemap":
        return lambda value: value.translate(_ASCII_LOWER)
    return lambda value: value


_RELATIONS: dict[str, Callable[[object, object], bool]] = {
    "gt": lambda a, b: a > b, "ge": lambda a, b: a >= b,  # type: ignore[operator]
    "lt": lambda a, b: a < b, "le": lambda a, b: a <= b,  # type: ignore[operator]
    "eq": lambda a, b: a == b, "ne": lambda a, b: a != b,
}


def match_values(values: list[str], keys: list[str], match: str, comparator: str,
                 relation: str = "eq") -> tuple[bool, list[str] | None]:
    """Whether any value matches any key, and for a :matches success the match variables
    (``${0}`` the whole value, then each wildcard's text). ``match`` is is, contains, matches,
    value or count (RFC 5228 §2.7.1, RFC 5231 §§4-5)."""
    key_of = _comparator_key(comparator)
    if match == "count":
        # RFC 5231 §4.2: the number of values, compared as a decimal string with the comparator.
        count = key_of(str(len(values)))
        op = _RELATIONS[relation]
        return any(op(count, key_of(k)) for k in keys), None
    folded_keys = [key_of(k) for k in keys]
    for value in values:
        folded = key_of(value)
        for k in folded_keys:
            if match == "is" and folded == k:
                return True, None
            if match == "value" and _RELATIONS[relation](folded, k):
                return True, None
            if match == "contains" and str(k) in str(folded):
                return True, None
            if match == "matches":
                spans = glob_spans(str(k), str(folded))
                if spans is not None:
                    # The comparator folds ASCII only, so positions in the folded value are the
                    # original's: the variables keep the message's own case.
                    return True, [value] + [value[a:b] for a, b in spans]
    return False, None


def _match(values: list[str], keys: list[str], match: str, comparator: str) -> bool:
    return match_values(values, keys, match, comparator)[0]


class _TextOfHTML(html.parser.HTMLParser):
    """The text of an HTML part for ``body :text`` (RFC 5173 §5.3 lets an implementation turn
    other formats into text): character data outside script and style."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: object) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in ("br", "p", "div", "tr", "li"):
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def _html_text(markup: str) -> str:
    parser = _TextOfHTML()
    try:
        parser.feed(markup)
        parser.close()
    except (ValueError, AssertionError):
        return markup
    return "".join(parser.parts)


def _part_text(part: Message) -> str:
    # RFC 5173 §5.2: the content with its transfer encoding undone, and for text/* in its charset.
    payload = part.get_payload(decode=True)
    data = payload if isinstance(payload, bytes) else b""
    if part.get_content_maintype() != "text":
        return data.decode("latin-1")
    charset = part.get_content_charset() or "us-ascii"
    try:
        return data.decode(charset, errors="replace")
    except LookupError:
        return data.decode("utf-8", errors="replace")


def _type_matches(part: Message, wanted: list[str]) -> bool:
    # RFC 5173 §5.2: "" is every part, a type alone ("text") its subtypes, type/subtype exactly.
    full = part.get_content_type().lower()
    main = full.split("/", 1)[0]
    for spec in wanted:
        spec = spec.strip().lower()
        if not spec or spec == full or ("/" not in spec and spec == main):
            return True
    return False


def body_values(message: Message, raw_body: bytes, transform: str, types: list[str]) -> list[str]:
    """The strings ``body`` compares (RFC 5173 §5): the undecoded body for :raw; for :content each
    matching part, with a multipart part's prologue and epilogue and a message/rfc822 part's nested
    header standing for that part; for :text the text parts, HTML turned to text."""
    if transform == "raw":
        return [raw_body.decode("utf-8", errors="replace")]
    if transform == "text":
        types = ["text"]
    out: list[str] = []
    for part in message.walk():
        if not _type_matches(part, types):
            continue
        if part.is_multipart():
            if part.get_content_maintype() == "message":
                nested = part.get_payload(0)
                if isinstance(nested, Message):
                    out.append("".join(f"{name}: {value}\r\n" for name, value in nested.items()))
            else:
                out.extend(text for text in (part.preamble, part.epilogue) if text)
            continue
        text = _part_text(part)
        if transform == "text" and part.get_content_type().lower() == "text/html":
            text = _html_text(text)
        out.append(text)
    return out


_SYSTEM_FLAGS = {"\\seen": "\\Seen", "\\answered": "\\Answered", "\\flagged": "\\Flagged",
                 "\\deleted": "\\Deleted", "\\draft": "\\Draft"}
# IMAP atom-specials (RFC 9051 §9: "(" ")" "{" SP CTL "%" "*" DQUOTE "\\" "]") cannot be in a keyword.
_ATOM_SPECIALS = set('(){ %*"\\]')


def _valid_flag(flag: str) -> bool:
    if flag.startswith("\\"):
        return flag.lower() in _SYSTEM_FLAGS
    return bool(flag) and len(flag) <= 255 and all(0x20 < ord(c) < 0x7F and c not in _ATOM_SPECIALS for c in flag)


def _decoded(value: str) -> str:
    # RFC 5228 §2.7.2: comparisons are on the decoded header value (RFC 2047 encoded words).
    try:
        return str(make_header(decode_header(value)))
    except (ValueError, LookupError, UnicodeError):
        return value


@dataclass(slots=True)
class _State:
    result: Result
    flags: list[str]
    actions: int = 0
    kept_explicitly: bool = False
    cancel_implicit: bool = False
    stopped: bool = False


class _Stop(Exception):
    pass


class Interpreter:
    def __init__(self, message: Message, envelope: Envelope, size: int, raw: bytes = b"",
                 require: set[str] | None = None) -> None:
        self.message = message
        self.envelope = envelope
        self.size = size
        self.raw = raw
        self.use_variables = "variables" in (require or ())
        self.variables: dict[str, str] = {}
        self.match_variables: list[str] = []
        self._full: Message | None = None

    # --- variables (RFC 5229) -------------------------------------------------------------------

    def _reference(self, found: re.Match[str]) -> str:
        if found.group(1) is not None:
            index = int(found.group(1)) if len(found.group(1)) < 4 else MAX_MATCH_VARIABLES
            return self.match_variables[index] if index < min(len(self.match_variables), MAX_MATCH_VARIABLES) else ""
        # Names are case-insensitive; an unset one is the empty string (RFC 5229 §3).
        return self.variables.get(found.group(3).lower(), "")

    def expand(self, value: str) -> str:
        """``value`` with its variable references replaced, once (a value that itself holds
        "${...}" is not expanded again, RFC 5229 §3)."""
        if not self.use_variables or "${" not in value:
            return value
        return VARIABLE_REFERENCE.sub(self._reference, value)

    def strings(self, arg: object) -> list[str]:
        assert isinstance(arg, Strings)
        return [self.expand(v) for v in arg.values]

    def string(self, value: object) -> str:
        return self.expand(str(value))

    def _set(self, command: Command) -> None:
        name, value_arg = command.positional
        assert isinstance(name, Strings)
        value = self.strings(value_arg)[0]
        tagged = command.tagged
        # RFC 5229 §4: modifiers apply from the highest precedence down: lower/upper (40),
        # lowerfirst/upperfirst (30), quotewildcard (20), length (10).
        if "lower" in tagged:
            value = value.lower()
        if "upper" in tagged:
            value = value.upper()
        if "lowerfirst" in tagged:
            value = value[:1].lower() + value[1:]
        if "upperfirst" in tagged:
            value = value[:1].upper() + value[1:]
        if "quotewildcard" in tagged:
            value = re.sub(r"([*?\\])", r"\\\1", value)
        if "length" in tagged:
            value = str(len(value))
        self.variables[name.values[0].lower()] = _cut(value)

    # --- body (RFC 5173) ------------------------------------------------------------------------

    def _body(self, tagged: dict[str, object]) -> list[str]:
        header_end = self.raw.find(b"\r\n\r\n")
        raw_body = b"" if header_end < 0 else self.raw[header_end + 4:]
        if "raw" in tagged:
            return body_values(self.message, raw_body, "raw", [])
        if self._full is None:
            from email.parser import BytesParser

            self._full = BytesParser(policy=email.policy.compat32).parsebytes(self.raw)
        if "content" in tagged:
            types = [self.expand(str(t)) for t in tagged["content"]]  # type: ignore[attr-defined]
            return body_values(self._full, raw_body, "content", types)
        return body_values(self._full, raw_body, "text", [])

    def _matched(self, values: list[str], keys: list[str], tagged: dict[str, object]) -> bool:
        match = next((m for m in ("is", "contains", "matches", "value", "count") if m in tagged), "is")
        comparator = str(tagged.get("comparator", "i;ascii-casemap")).lower()
        relation = str(tagged.get(match, "eq")).lower() if match in ("value", "count") else "eq"
        ok, captured = match_values(values, keys, match, comparator, relation)
        # RFC 5229 §3.2: only a successful :matches changes the match variables.
        if ok and captured is not None and self.use_variables:
            self.match_variables = [_cut(v) for v in captured[:MAX_MATCH_VARIABLES]]
        return ok

    # --- tests ----------------------------------------------------------------------------------

    def _headers(self, names: list[str]) -> list[str]:
        out: list[str] = []
        for name in names:
            if not name or any(ord(c) <= 32 or ord(c) >= 127 or c == ":" for c in name):
                continue  # an expanded name that is no field name names no field
            for value in self.message.get_all(name) or []:
                out.append(_decoded(str(value)).replace("\r\n", "").replace("\n", ""))
        return out

    @staticmethod
    def _part(address: str, part: str) -> str:
        if part == "all":
            return address
        local, at, domain = address.rpartition("@")
        if not at:
            return address if part == "localpart" else ""
        return local if part == "localpart" else domain

    def test(self, test: Test, state: _State) -> bool:
        name = test.name
        tagged = test.tagged
        pos = test.positional
        if name == "true":
            return True
        if name == "false":
            return False
        if name == "not":
            return not self.test(test.tests[0], state)
        if name == "allof":
            return all(self.test(t, state) for t in test.tests)
        if name == "anyof":
            return any(self.test(t, state) for t in test.tests)
        if name == "size":
            limit = pos[0]
            assert isinstance(limit, Number)
            return self.size > limit.value if "over" in tagged else self.size < limit.value
        if name == "exists":
            return all(self.message.get_all(h) for h in self.strings(pos[0]))
        keys = self.strings(pos[-1])
        if name == "header":
            return self._matched(self._headers(self.strings(pos[0])), keys, tagged)
        if name == "string":
            sources = self.strings(pos[0])
            if "count" in tagged:
                sources = [v for v in sources if v]  # RFC 5229 §5: empty strings are not counted
            return self._matched(sources, keys, tagged)
        if name == "body":
            return self._matched(self._body(tagged), keys, tagged)
        if name == "hasflag":
            if len(pos) == 2:
                flags = self._flag_list([self.variables.get(v.lower(), "") for v in self.strings(pos[0])])
            else:
                flags = state.flags
            return self._matched(flags, keys, tagged)
        part = next((p for p in ("localpart", "domain", "all") if p in tagged), "all")
        names = self.strings(pos[0])
        if name == "address":
            addresses = [a for _, a in getaddresses(self._headers(names)) if a]
            return self._matched([self._part(a, part) for a in addresses], keys, tagged)
        if name == "envelope":
            values: list[str] = []
            for which in names:
                if which.lower() not in ("from", "to"):
                    continue  # an expanded part we do not know has no value
                address = self.envelope.mail_from if which.lower() == "from" else self.envelope.rcpt_to
                # RFC 5228 §5.4: the null reverse-path is the empty string, whatever the part.
                values.append(self._part(address, part) if address else "")
            return self._matched(values, keys, tagged)
        raise SieveRuntimeError(f"unknown test {name}")

    # --- commands -------------------------------------------------------------------------------

    def _count(self, state: _State) -> None:
        state.actions += 1
        if state.actions > MAX_ACTIONS:
            raise SieveRuntimeError(f"more than {MAX_ACTIONS} actions")

    @staticmethod
    def _flag_list(values: list[str]) -> list[str]:
        # RFC 5232 §3: each string is a space-separated list of flags; duplicates collapse, and the
        # system flags compare without regard to case.
        out: list[str] = []
        seen: set[str] = set()
        for value in values:
            for flag in value.split():
                key = flag.lower() if flag.startswith("\\") else flag
                if key not in seen:
                    seen.add(key)
                    out.append(flag)
        return out

    def _store(self, state: _State, folder: str, flags_arg: object) -> None:
        flags = (self._flag_list([self.string(f) for f in flags_arg]) if isinstance(flags_arg, list)
                 else list(state.flags))
        # RFC 5232 §3: flags that cannot be IMAP flags are ignored.
        entry = (folder, tuple(_SYSTEM_FLAGS.get(f.lower(), f) for f in flags if _valid_flag(f)))
        # RFC 5228 §2.10.3: one copy per mailbox however often it is named.
        for i, (existing, _) in enumerate(state.result.keeps):
            if existing == folder:
                state.result.keeps[i] = entry
                return
        state.result.keeps.append(entry)

    def run_block(self, commands: list[Command], state: _State) -> None:
        branch_taken = False
        for command in commands:
            name = command.name
            if name == "require":
                continue
            if name == "if":
                branch_taken = self.test(command.tests[0], state)
                if branch_taken:
                    assert command.block is not None
                    self.run_block(command.block, state)
                continue
            if name == "elsif":
                if not branch_taken:
                    branch_taken = self.test(command.tests[0], state)
                    if branch_taken:
                        assert command.block is not None
                        self.run_block(command.block, state)
                continue
            if name == "else":
                if not branch_taken:
                    assert command.block is not None
                    self.run_block(command.block, state)
                branch_taken = True
                continue
            self.action(command, state)

    def action(self, command: Command, state: _State) -> None:
        name = command.name
        tagged = command.tagged
        pos = command.positional
        result = state.result
        if name == "stop":
            raise _Stop()
        if name == "set":
            self._set(command)
            return
        if name in ("setflag", "addflag", "removeflag"):
            flags = self._flag_list(self.strings(pos[-1]))
            # RFC 5232 §3: with a variable name the action works on that variable, not the
            # internal flags; the variable holds the flags separated by spaces.
            variable = self.strings(pos[0])[0].lower() if len(pos) == 2 else None
            current = self._flag_list([self.variables.get(variable, "")]) if variable else state.flags
            if name == "setflag":
                current = flags
            elif name == "addflag":
                current = self._flag_list(current + flags)
            else:
                drop = {f.lower() if f.startswith("\\") else f for f in flags}
                current = [f for f in current if (f.lower() if f.startswith("\\") else f) not in drop]
            if variable:
                if not VARIABLE_NAME.match(variable):
                    raise SieveRuntimeError(f"{variable!r} is not a variable name")
                self.variables[variable] = _cut(" ".join(current))
            else:
                state.flags = current
            return
        self._count(state)
        if name == "keep":
            self._store(state, INBOX, tagged.get("flags"))
            state.kept_explicitly = True
            state.cancel_implicit = True
        elif name == "discard":
            state.cancel_implicit = True
            result.discarded = True
        elif name == "fileinto":
            folder = self.strings(pos[0])[0].strip() or INBOX
            if folder.upper() == INBOX:
                folder = INBOX
            self._store(state, folder, tagged.get("flags"))
            if "copy" not in tagged:
                state.cancel_implicit = True
        elif name == "redirect":
            target = self.strings(pos[0])[0].strip()
            addresses = [a for _, a in getaddresses([target]) if a and "@" in a]
            if len(addresses) != 1:
                raise SieveRuntimeError(f"redirect to {target!r}: not one address")
            # RFC 5228 §4.2: duplicate redirects to one address are one.
            if addresses[0].lower() not in (r.lower() for r in result.redirects):
                if len(result.redirects) >= MAX_REDIRECTS:
                    raise SieveRuntimeError(f"more than {MAX_REDIRECTS} redirects")
                result.redirects.append(addresses[0])
            if "copy" not in tagged:
                state.cancel_implicit = True
        elif name in ("reject", "ereject"):
            if result.reject is not None:
                raise SieveRuntimeError("more than one reject")
            result.reject = self.strings(pos[0])[0]
            result.ereject = name == "ereject"
            state.cancel_implicit = True
        elif name == "vacation":
            if result.vacation is not None:
                raise SieveRuntimeError("more than one vacation (RFC 5230 §4.7)")
            reason = self.strings(pos[0])[0]
            days = int(tagged.get("days", VACATION_DEFAULT_DAYS))  # type: ignore[call-overload]
            days = min(max(days, VACATION_MIN_DAYS), VACATION_MAX_DAYS)
            subject = self.string(tagged["subject"]) if "subject" in tagged else None
            from_address = self.string(tagged["from"]) if "from" in tagged else None
            given = self.string(tagged["handle"]) if "handle" in tagged else None
            # RFC 5230 §4.2: without :handle, vacations differ by their arguments.
            handle = "sieve:" + (str(given) if given is not None else "\0".join(
                [reason, str(subject or ""), str(from_address or ""), str("mime" in tagged)]))
            also = tagged.get("addresses")
            result.vacation = Vacation(reason, days, str(subject) if subject is not None else None,
                                       str(from_address) if from_address is not None else None,
                                       [self.string(a) for a in also] if isinstance(also, list) else [],
                                       "mime" in tagged, str(handle))
        else:
            raise SieveRuntimeError(f"unknown command {name}")


def evaluate(script: Script, raw: bytes, envelope: Envelope) -> Result:
    """The actions ``script`` asks for on the message ``raw``; raise ``SieveRuntimeError`` when it
    cannot complete (the caller then keeps the message, RFC 5228 §2.10.6)."""
    from email.parser import BytesHeaderParser

    header_end = raw.find(b"\r\n\r\n")
    header = raw if header_end < 0 else raw[: header_end + 4]
    message = BytesHeaderParser(policy=email.policy.compat32).parsebytes(header)
    state = _State(Result(), [])
    interpreter = Interpreter(message, envelope, len(raw), raw, script.require)
    try:
        interpreter.run_block(script.commands, state)
    except _Stop:
        pass
    except RecursionError:
        raise SieveRuntimeError("script too deep") from None
    result = state.result
    # RFC 5429 §2.1: reject cannot go with keep, fileinto, redirect or vacation; such a script is in
    # error.
    if result.reject is not None and (result.keeps or result.vacation is not None or result.redirects):
        raise SieveRuntimeError("reject together with keep, fileinto, redirect or vacation")
    # RFC 5228 §2.10.2 and RFC 5232 §3: the implicit keep carries the final flags.
    if not state.cancel_implicit and not any(folder == INBOX for folder, _ in result.keeps):
        result.keeps.append((INBOX, tuple(f for f in state.flags if _valid_flag(f))))
    return result
