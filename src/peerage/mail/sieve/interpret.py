"""Running a checked Sieve script against one message, sans-I/O: the list of actions it asks for.

This module is in charge of the semantics of RFC 5228 (tests, match types, comparators, address
parts, implicit keep §2.10.2, duplicate fileinto/keep collapsing §2.10.3) and of the extensions'
actions: fileinto (§4.1), envelope (§5.4), imap4flags (RFC 5232: the internal flags variable,
``:flags``, ``hasflag``), reject/ereject (RFC 5429), vacation (RFC 5230) and copy (RFC 3894). It does
not perform anything: ``evaluate`` returns a ``Result`` the delivery code carries out, so a script
that fails half-way (a runtime error, RFC 5228 §2.10.6) performs nothing but the implicit keep.

Execution limits (named, with precedent): ``MAX_ACTIONS`` (Pigeonhole's ``sieve_max_actions``
default, 32) and ``MAX_REDIRECTS`` (Pigeonhole's ``sieve_max_redirects`` default, 4). ``:matches``
runs in time bounded by pattern × value length (no backtracking regular expression).
"""

from __future__ import annotations

import email.policy
from dataclasses import dataclass, field
from email.header import decode_header, make_header
from email.message import Message
from email.utils import getaddresses

from peerage.mail.sieve.grammar import Command, Number, Script, Strings, Test

MAX_ACTIONS = 32
MAX_REDIRECTS = 4
# RFC 5230 §4.1: the default period is 7 days; an implementation may bound it. Pigeonhole's
# sieve_vacation_min_period is 1 day and sieve_vacation_max_period 90 days.
VACATION_DEFAULT_DAYS = 7
VACATION_MIN_DAYS = 1
VACATION_MAX_DAYS = 90
INBOX = "INBOX"


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


def _fold(value: str, comparator: str) -> str:
    return value.translate(_ASCII_LOWER) if comparator == "i;ascii-casemap" else value


def glob_match(pattern: str, value: str) -> bool:
    """RFC 5228 §2.7.1 :matches: ``*`` any run, ``?`` one character, backslash quotes the next one.
    Greedy with one resume point per star: O(len(pattern) × len(value)), never exponential."""
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
    p = v = 0
    star_p, star_v = -1, 0
    while v < len(value):
        if p < len(tokens) and (tokens[p][0] == "any" or (tokens[p][0] == "lit" and tokens[p][1] == value[v])):
            p += 1
            v += 1
        elif p < len(tokens) and tokens[p][0] == "star":
            star_p, star_v = p, v
            p += 1
        elif star_p >= 0:
            p = star_p + 1
            star_v += 1
            v = star_v
        else:
            return False
    while p < len(tokens) and tokens[p][0] == "star":
        p += 1
    return p == len(tokens)


def _match(values: list[str], keys: list[str], match: str, comparator: str) -> bool:
    for value in values:
        folded = _fold(value, comparator)
        for key in keys:
            k = _fold(key, comparator)
            if match == "is" and folded == k:
                return True
            if match == "contains" and k in folded:
                return True
            if match == "matches" and glob_match(k, folded):
                return True
    return False


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
    def __init__(self, message: Message, envelope: Envelope, size: int) -> None:
        self.message = message
        self.envelope = envelope
        self.size = size

    # --- tests ----------------------------------------------------------------------------------

    def _headers(self, names: list[str]) -> list[str]:
        out: list[str] = []
        for name in names:
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
        match = next((m for m in ("is", "contains", "matches") if m in tagged), "is")
        comparator = str(tagged.get("comparator", "i;ascii-casemap")).lower()
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
            names = pos[0]
            assert isinstance(names, Strings)
            return all(self.message.get_all(h) for h in names.values)
        names_arg, keys_arg = pos[0], pos[-1]
        assert isinstance(keys_arg, Strings)
        keys = keys_arg.values
        if name == "header":
            assert isinstance(names_arg, Strings)
            return _match(self._headers(names_arg.values), keys, match, comparator)
        if name == "hasflag":
            return _match(state.flags, keys, match, comparator)
        part = next((p for p in ("localpart", "domain", "all") if p in tagged), "all")
        assert isinstance(names_arg, Strings)
        if name == "address":
            addresses = [a for _, a in getaddresses(self._headers(names_arg.values)) if a]
            return _match([self._part(a, part) for a in addresses], keys, match, comparator)
        if name == "envelope":
            values: list[str] = []
            for which in names_arg.values:
                address = self.envelope.mail_from if which.lower() == "from" else self.envelope.rcpt_to
                # RFC 5228 §5.4: the null reverse-path is the empty string, whatever the part.
                values.append(self._part(address, part) if address else "")
            return _match(values, keys, match, comparator)
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
        flags = self._flag_list(list(flags_arg)) if isinstance(flags_arg, list) else list(state.flags)
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
        if name in ("setflag", "addflag", "removeflag"):
            arg = pos[-1]
            assert isinstance(arg, Strings)
            flags = self._flag_list(arg.values)
            if name == "setflag":
                state.flags = flags
            elif name == "addflag":
                state.flags = self._flag_list(state.flags + flags)
            else:
                drop = {f.lower() if f.startswith("\\") else f for f in flags}
                state.flags = [f for f in state.flags if (f.lower() if f.startswith("\\") else f) not in drop]
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
            arg = pos[0]
            assert isinstance(arg, Strings)
            folder = arg.values[0].strip() or INBOX
            if folder.upper() == INBOX:
                folder = INBOX
            self._store(state, folder, tagged.get("flags"))
            if "copy" not in tagged:
                state.cancel_implicit = True
        elif name == "redirect":
            arg = pos[0]
            assert isinstance(arg, Strings)
            target = arg.values[0].strip()
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
            arg = pos[0]
            assert isinstance(arg, Strings)
            if result.reject is not None:
                raise SieveRuntimeError("more than one reject")
            result.reject = arg.values[0]
            result.ereject = name == "ereject"
            state.cancel_implicit = True
        elif name == "vacation":
            if result.vacation is not None:
                raise SieveRuntimeError("more than one vacation (RFC 5230 §4.7)")
            arg = pos[0]
            assert isinstance(arg, Strings)
            reason = arg.values[0]
            days = int(tagged.get("days", VACATION_DEFAULT_DAYS))  # type: ignore[call-overload]
            days = min(max(days, VACATION_MIN_DAYS), VACATION_MAX_DAYS)
            subject = tagged.get("subject")
            from_address = tagged.get("from")
            given = tagged.get("handle")
            # RFC 5230 §4.2: without :handle, vacations differ by their arguments.
            handle = "sieve:" + (str(given) if given is not None else "\0".join(
                [reason, str(subject or ""), str(from_address or ""), str("mime" in tagged)]))
            also = tagged.get("addresses")
            result.vacation = Vacation(reason, days, str(subject) if subject is not None else None,
                                       str(from_address) if from_address is not None else None,
                                       [str(a) for a in also] if isinstance(also, list) else [],
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
    interpreter = Interpreter(message, envelope, len(raw))
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
