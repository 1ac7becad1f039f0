"""The Sieve language (RFC 5228): lexer, parser and validator, sans-I/O.

This module is in charge of turning a script's text into a checked tree, or refusing it with the line
and column of the first error, so that ManageSieve (RFC 5804 §2.6) can refuse a bad PUTSCRIPT with a
message a person can act on and delivery never meets a script it cannot run. It knows the core
language (RFC 5228 §§3-5) and the extensions of ``EXTENSIONS``; each command's arguments are checked
against its signature, and an extension's command is an error unless the script ``require``s it
(RFC 5228 §3.2). With "variables" (RFC 5229) a string may hold ``${name}`` references, expanded when
the script runs; what must be known beforehand (a ``set`` name, a relational operator, a comparator)
must be a constant, and a name or header that holds a reference is checked when it is expanded.

Limits (named, with their precedent; a script over any is refused at upload):
``MAX_SCRIPT_SIZE`` (Pigeonhole's ``sieve_max_script_size`` default, 1 MiB), ``MAX_NESTING``
(Pigeonhole's block nesting limit, 32), ``MAX_STRING_LIST`` and ``MAX_TEST_LIST`` (bounds on one
argument so a script cannot make the interpreter's work quadratic in its size), ``MAX_VARIABLES``
(Pigeonhole's ``sieve_variables_max_scope_size`` default, 255 distinct names per script).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MAX_SCRIPT_SIZE = 1024 * 1024
MAX_NESTING = 32
MAX_STRING_LIST = 1024
MAX_TEST_LIST = 256
MAX_VARIABLES = 255

#: Extensions this implementation offers (ManageSieve's SIEVE capability, RFC 5804 §1.7).
#: comparator-i;octet and comparator-i;ascii-casemap are built in (RFC 5228 §2.7.3) and may be
#: required too.
EXTENSIONS = ("fileinto", "reject", "ereject", "envelope", "imap4flags", "vacation", "copy", "variables",
              "relational", "body", "comparator-i;ascii-numeric")
_BUILTIN_REQUIRABLE = {"comparator-i;octet", "comparator-i;ascii-casemap"}
COMPARATORS = ("i;octet", "i;ascii-casemap", "i;ascii-numeric")
#: RFC 5231 §5: the relational operators of :value and :count.
RELATIONAL_OPERATORS = ("gt", "ge", "lt", "le", "eq", "ne")
#: RFC 5229 §3: variable-name = (ALPHA / "_") *(ALPHA / DIGIT / "_"), and a reference
#: "${" [namespace "."] name "}" or "${" digits "}" for a match variable.
VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
VARIABLE_REFERENCE = re.compile(r"\$\{(?:([0-9]+)|((?:[A-Za-z_][A-Za-z0-9_]*\.)*)([A-Za-z_][A-Za-z0-9_]*))\}")
_QUANTIFIERS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
# Numbers are unsigned 31-bit at least (RFC 5228 §2.4.1 asks for 2^31 as the usable range).
MAX_NUMBER = (1 << 63) - 1


class SieveError(ValueError):
    """A script that is not valid Sieve; ``line`` and ``column`` count from 1."""

    def __init__(self, line: int, column: int, message: str) -> None:
        super().__init__(f"line {line}, column {column}: {message}")
        self.line = line
        self.column = column
        self.message = message


# --- the tree ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class Tag:
    name: str  # without the colon, lower case
    line: int
    column: int


@dataclass(slots=True)
class Number:
    value: int
    line: int
    column: int


@dataclass(slots=True)
class Strings:
    values: list[str]
    line: int
    column: int
    is_list: bool = False  # written with brackets


Argument = Tag | Number | Strings


@dataclass(slots=True)
class Test:
    name: str
    arguments: list[Argument]
    tests: list[Test]
    line: int
    column: int
    # Filled in by validation: tagged arguments by name (value or True) and the positional ones.
    tagged: dict[str, object] = field(default_factory=dict)
    positional: list[Argument] = field(default_factory=list)


@dataclass(slots=True)
class Command:
    name: str
    arguments: list[Argument]
    tests: list[Test]
    block: list[Command] | None
    line: int
    column: int
    tagged: dict[str, object] = field(default_factory=dict)
    positional: list[Argument] = field(default_factory=list)


@dataclass(slots=True)
class Script:
    commands: list[Command]
    require: set[str]


# --- lexer ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Token:
    kind: str  # identifier, tag, number, string, multiline, punct, end
    value: object
    line: int
    column: int


class _Lexer:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1
        self.line_start = 0

    def error(self, message: str, pos: int | None = None) -> SieveError:
        pos = self.pos if pos is None else pos
        line = self.text.count("\n", 0, pos) + 1
        column = pos - (self.text.rfind("\n", 0, pos) + 1) + 1
        return SieveError(line, column, message)

    def _where(self, pos: int) -> tuple[int, int]:
        line = self.text.count("\n", 0, pos) + 1
        return line, pos - (self.text.rfind("\n", 0, pos) + 1) + 1

    def _skip(self) -> None:
        text = self.text
        while self.pos < len(text):
            ch = text[self.pos]
            if ch in " \t\r\n":
                self.pos += 1
            elif ch == "#":
                end = text.find("\n", self.pos)
                self.pos = len(text) if end < 0 else end + 1
            elif text.startswith("/*", self.pos):
                end = text.find("*/", self.pos + 2)
                if end < 0:
                    raise self.error("unterminated comment")
                self.pos = end + 2
            else:
                break

    def tokens(self) -> list[_Token]:
        out: list[_Token] = []
        text = self.text
        while True:
            self._skip()
            start = self.pos
            line, column = self._where(start)
            if start >= len(text):
                out.append(_Token("end", None, line, column))
                return out
            ch = text[start]
            if ch.isascii() and (ch.isalpha() or ch == "_"):
                end = start + 1
                while end < len(text) and text[end].isascii() and (text[end].isalnum() or text[end] == "_"):
                    end += 1
                word = text[start:end]
                self.pos = end
                if word.lower() == "text" and text.startswith(":", end):
                    out.append(_Token("string", self._multiline(), line, column))
                else:
                    out.append(_Token("identifier", word.lower(), line, column))
            elif ch == ":":
                end = start + 1
                while end < len(text) and text[end].isascii() and (text[end].isalnum() or text[end] == "_"):
                    end += 1
                if end == start + 1 or text[start + 1].isdigit():
                    raise self.error("a tag needs a name after ':'")
                out.append(_Token("tag", text[start + 1:end].lower(), line, column))
                self.pos = end
            elif ch.isascii() and ch.isdigit():
                end = start
                while end < len(text) and text[end].isascii() and text[end].isdigit():
                    end += 1
                value = int(text[start:end])
                if end < len(text) and text[end].upper() in _QUANTIFIERS:
                    value *= _QUANTIFIERS[text[end].upper()]
                    end += 1
                if value > MAX_NUMBER:
                    raise self.error("number too large")
                out.append(_Token("number", value, line, column))
                self.pos = end
            elif ch == '"':
                out.append(_Token("string", self._quoted(), line, column))
            elif ch in "[](){},;":
                out.append(_Token("punct", ch, line, column))
                self.pos += 1
            else:
                raise self.error(f"unexpected character {ch!r}")

    def _quoted(self) -> str:
        text = self.text
        i = self.pos + 1
        parts: list[str] = []
        while True:
            if i >= len(text):
                raise self.error("unterminated string", self.pos)
            ch = text[i]
            if ch == '"':
                self.pos = i + 1
                return "".join(parts)
            if ch == "\\":
                # RFC 5228 §2.4.2: backslash quotes the next character; any other escape is the
                # character itself (the backslash is dropped).
                if i + 1 >= len(text):
                    raise self.error("unterminated string", self.pos)
                parts.append(text[i + 1])
                i += 2
                continue
            parts.append(ch)
            i += 1

    def _multiline(self) -> str:
        # text: [spaces] (comment / CRLF) lines... "." CRLF (RFC 5228 §2.4.2, §8.1); a line starting
        # with "." has it doubled ("dot-stuffing").
        text = self.text
        i = self.pos + 1  # after the colon
        while i < len(text) and text[i] in " \t":
            i += 1
        if text.startswith("#", i):
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
        if text.startswith("\r\n", i):
            i += 2
        elif text.startswith("\n", i):
            i += 1
        else:
            raise self.error("'text:' must end its line", i)
        lines: list[str] = []
        while True:
            if i >= len(text):
                raise self.error("unterminated multi-line string ('.' line missing)", self.pos)
            end = text.find("\n", i)
            raw = text[i:] if end < 0 else text[i:end]
            nxt = len(text) if end < 0 else end + 1
            line = raw[:-1] if raw.endswith("\r") else raw
            if line == ".":
                self.pos = nxt
                return "".join(lines)
            if line.startswith(".."):
                line = line[1:]
            lines.append(line + "\r\n")
            i = nxt
            if end < 0:
                raise self.error("unterminated multi-line string ('.' line missing)", self.pos)


# --- parser -----------------------------------------------------------------------------------------


class _Parser:
    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.i = 0

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def take(self) -> _Token:
        token = self.tokens[self.i]
        self.i += 1
        return token

    @staticmethod
    def fail(token: _Token, message: str) -> SieveError:
        return SieveError(token.line, token.column, message)

    def commands(self, depth: int, closing: bool) -> list[Command]:
        out: list[Command] = []
        while True:
            token = self.peek()
            if token.kind == "end":
                if closing:
                    raise self.fail(token, "missing '}'")
                return out
            if token.kind == "punct" and token.value == "}" and closing:
                self.take()
                return out
            out.append(self.command(depth))

    def command(self, depth: int) -> Command:
        token = self.take()
        if token.kind != "identifier":
            raise self.fail(token, f"expected a command, found {self._describe(token)}")
        arguments, tests = self.arguments(depth)
        end = self.take()
        block: list[Command] | None = None
        if end.kind == "punct" and end.value == ";":
            pass
        elif end.kind == "punct" and end.value == "{":
            if depth + 1 > MAX_NESTING:
                raise self.fail(end, f"blocks nested deeper than {MAX_NESTING}")
            block = self.commands(depth + 1, closing=True)
        else:
            raise self.fail(end, f"expected ';' or '{{' after {token.value}, found {self._describe(end)}")
        return Command(str(token.value), arguments, tests, block, token.line, token.column)

    def arguments(self, depth: int) -> tuple[list[Argument], list[Test]]:
        arguments: list[Argument] = []
        while True:
            token = self.peek()
            if token.kind == "tag":
                self.take()
                arguments.append(Tag(str(token.value), token.line, token.column))
            elif token.kind == "number":
                self.take()
                arguments.append(Number(int(token.value), token.line, token.column))  # type: ignore[call-overload]
            elif token.kind == "string":
                self.take()
                arguments.append(Strings([str(token.value)], token.line, token.column))
            elif token.kind == "punct" and token.value == "[":
                arguments.append(self.string_list())
            else:
                break
        tests: list[Test] = []
        token = self.peek()
        if token.kind == "identifier":
            tests = [self.test(depth + 1)]
        elif token.kind == "punct" and token.value == "(":
            tests = self.test_list(depth + 1)
        return arguments, tests

    def string_list(self) -> Strings:
        start = self.take()
        values: list[str] = []
        while True:
            token = self.take()
            if token.kind != "string":
                raise self.fail(token, f"expected a string in the list, found {self._describe(token)}")
            values.append(str(token.value))
            if len(values) > MAX_STRING_LIST:
                raise self.fail(token, f"string list longer than {MAX_STRING_LIST}")
            token = self.take()
            if token.kind == "punct" and token.value == "]":
                return Strings(values, start.line, start.column, is_list=True)
            if not (token.kind == "punct" and token.value == ","):
                raise self.fail(token, f"expected ',' or ']', found {self._describe(token)}")

    def test(self, depth: int) -> Test:
        if depth > MAX_NESTING:
            raise self.fail(self.peek(), f"tests nested deeper than {MAX_NESTING}")
        token = self.take()
        if token.kind != "identifier":
            raise self.fail(token, f"expected a test, found {self._describe(token)}")
        arguments, tests = self.arguments(depth)
        return Test(str(token.value), arguments, tests, token.line, token.column)

    def test_list(self, depth: int) -> list[Test]:
        self.take()
        tests: list[Test] = []
        while True:
            tests.append(self.test(depth))
            if len(tests) > MAX_TEST_LIST:
                raise self.fail(self.peek(), f"test list longer than {MAX_TEST_LIST}")
            token = self.take()
            if token.kind == "punct" and token.value == ")":
                return tests
            if not (token.kind == "punct" and token.value == ","):
                raise self.fail(token, f"expected ',' or ')', found {self._describe(token)}")

    @staticmethod
    def _describe(token: _Token) -> str:
        if token.kind == "end":
            return "the end of the script"
        if token.kind == "punct":
            return f"'{token.value}'"
        if token.kind == "tag":
            return f"':{token.value}'"
        if token.kind == "string":
            return "a string"
        return f"{token.kind} {token.value!r}"


# --- validation -------------------------------------------------------------------------------------

# Tagged arguments: name -> kind of the value that follows ("string", "strings", "number") or None
# for a flag. Groups of mutually exclusive tags share a group name (RFC 5228 §2.7.1: a match type,
# an address part and a comparator each at most once).
_MATCH: dict[str, str | None] = {"is": None, "contains": None, "matches": None, "value": "string", "count": "string"}
_ADDRESS_PART = {"localpart": None, "domain": None, "all": None}
_COMPARATOR = {"comparator": "string"}


@dataclass(frozen=True, slots=True)
class _Signature:
    extension: str | None
    tags: dict[str, str | None]
    positional: tuple[str, ...]  # "string", "strings", "number"
    tests: str = "none"  # "none", "one", "list"
    block: bool = False
    # Positional arguments that may be absent from the front (imap4flags' optional variable name).
    optional_front: int = 0


_TESTS: dict[str, _Signature] = {
    "address": _Signature(None, {**_MATCH, **_ADDRESS_PART, **_COMPARATOR}, ("strings", "strings")),
    "envelope": _Signature("envelope", {**_MATCH, **_ADDRESS_PART, **_COMPARATOR}, ("strings", "strings")),
    "header": _Signature(None, {**_MATCH, **_COMPARATOR}, ("strings", "strings")),
    "exists": _Signature(None, {}, ("strings",)),
    "size": _Signature(None, {"over": None, "under": None}, ("number",)),
    "allof": _Signature(None, {}, (), tests="list"),
    "anyof": _Signature(None, {}, (), tests="list"),
    "not": _Signature(None, {}, (), tests="one"),
    "true": _Signature(None, {}, ()),
    "false": _Signature(None, {}, ()),
    "hasflag": _Signature("imap4flags", {**_MATCH, **_COMPARATOR}, ("strings", "strings"), optional_front=1),
    "string": _Signature("variables", {**_MATCH, **_COMPARATOR}, ("strings", "strings")),
    "body": _Signature("body", {**_MATCH, **_COMPARATOR, "raw": None, "text": None, "content": "strings"},
                       ("strings",)),
}

_COMMANDS: dict[str, _Signature] = {
    "require": _Signature(None, {}, ("strings",)),
    "if": _Signature(None, {}, (), tests="one", block=True),
    "elsif": _Signature(None, {}, (), tests="one", block=True),
    "else": _Signature(None, {}, (), block=True),
    "stop": _Signature(None, {}, ()),
    "keep": _Signature(None, {"flags": "strings"}, ()),
    "discard": _Signature(None, {}, ()),
    "redirect": _Signature(None, {"copy": None}, ("string",)),
    "fileinto": _Signature("fileinto", {"copy": None, "flags": "strings"}, ("string",)),
    "reject": _Signature("reject", {}, ("string",)),
    "ereject": _Signature("ereject", {}, ("string",)),
    "vacation": _Signature("vacation", {"days": "number", "subject": "string", "from": "string",
                                        "addresses": "strings", "mime": None, "handle": "string"}, ("string",)),
    "setflag": _Signature("imap4flags", {}, ("string", "strings"), optional_front=1),
    "addflag": _Signature("imap4flags", {}, ("string", "strings"), optional_front=1),
    "removeflag": _Signature("imap4flags", {}, ("string", "strings"), optional_front=1),
    "set": _Signature("variables", {"lower": None, "upper": None, "lowerfirst": None, "upperfirst": None,
                                    "quotewildcard": None, "length": None}, ("string", "string")),
}

# Tags that belong to an extension other than the command's own (RFC 3894 :copy, RFC 5232 :flags).
_TAG_EXTENSIONS = {"copy": "copy", "flags": "imap4flags", "value": "relational", "count": "relational"}
# RFC 5229 §4: one modifier of each precedence; RFC 5173 §5: one body transform.
_EXCLUSIVE = (set(_MATCH), set(_ADDRESS_PART), {"over", "under"}, {"lower", "upper"},
              {"lowerfirst", "upperfirst"}, {"raw", "text", "content"})


def has_reference(value: str) -> bool:
    """Whether ``value`` holds a variable reference that expansion would replace (RFC 5229 §3)."""
    return VARIABLE_REFERENCE.search(value) is not None


def _check(node: Command | Test, signature: _Signature, required: set[str], kind: str) -> None:
    def fail(arg: Argument | Command | Test, message: str) -> SieveError:
        return SieveError(arg.line, arg.column, message)

    if signature.extension and signature.extension not in required:
        raise fail(node, f'{kind} "{node.name}" needs require "{signature.extension}"')
    tagged: dict[str, object] = {}
    positional: list[Argument] = []
    args = node.arguments
    i = 0
    while i < len(args):
        arg = args[i]
        if isinstance(arg, Tag):
            if positional:
                raise fail(arg, f"tagged argument ':{arg.name}' after a positional argument of {node.name}")
            if arg.name not in signature.tags:
                raise fail(arg, f"{node.name} has no argument ':{arg.name}'")
            extension = _TAG_EXTENSIONS.get(arg.name)
            if extension and extension not in required:
                raise fail(arg, f'":{arg.name}" needs require "{extension}"')
            if arg.name in tagged:
                raise fail(arg, f"':{arg.name}' given twice")
            for group in _EXCLUSIVE:
                if arg.name in group and group & tagged.keys():
                    raise fail(arg, f"':{arg.name}' conflicts with ':{next(iter(group & tagged.keys()))}'")
            value_kind = signature.tags[arg.name]
            if value_kind is None:
                tagged[arg.name] = True
            else:
                if i + 1 >= len(args):
                    raise fail(arg, f"':{arg.name}' needs a value")
                value = args[i + 1]
                if value_kind == "number":
                    if not isinstance(value, Number):
                        raise fail(value, f"':{arg.name}' needs a number")
                    tagged[arg.name] = value.value
                else:
                    if not isinstance(value, Strings) or (value_kind == "string" and value.is_list):
                        raise fail(value, f"':{arg.name}' needs a {'string' if value_kind == 'string' else 'string list'}")
                    tagged[arg.name] = value.values[0] if value_kind == "string" else value.values
                i += 1
        else:
            positional.append(arg)
        i += 1
    wanted = signature.positional
    if signature.optional_front and len(positional) == len(wanted) - signature.optional_front:
        wanted = wanted[signature.optional_front:]
    elif signature.optional_front and "variables" not in required:
        # RFC 5232 §3: the variable argument exists only with "variables".
        wanted = wanted[signature.optional_front:]
    if len(positional) != len(wanted):
        raise fail(node, f"{node.name} takes {len(wanted)} positional argument{'s' if len(wanted) != 1 else ''}, "
                         f"{len(positional)} given")
    for arg, want in zip(positional, wanted, strict=True):
        if want == "number" and not isinstance(arg, Number):
            raise fail(arg, f"{node.name} needs a number here")
        if want in ("string", "strings") and not isinstance(arg, Strings):
            raise fail(arg, f"{node.name} needs a {'string' if want == 'string' else 'string list'} here")
        if want == "string" and isinstance(arg, Strings) and arg.is_list:
            raise fail(arg, f"{node.name} needs a single string here, not a list")
    if node.name == "size" and not tagged:
        raise fail(node, "size needs :over or :under")
    comparator = tagged.get("comparator")
    if comparator is not None and str(comparator).lower() not in COMPARATORS:
        raise fail(node, f'comparator "{comparator}" is not supported')
    if comparator is not None and f"comparator-{str(comparator).lower()}" not in required | _BUILTIN_REQUIRABLE:
        raise fail(node, f'comparator "{comparator}" needs require "comparator-{comparator}"')
    for relational in ("value", "count"):
        if relational in tagged and str(tagged[relational]).lower() not in RELATIONAL_OPERATORS:
            raise fail(node, f'":{relational}" needs one of {", ".join(RELATIONAL_OPERATORS)}, '
                             f'not "{tagged[relational]}" (RFC 5231 §5)')
    # RFC 4790 §9.1: i;ascii-numeric offers equality and order, not substrings.
    if str(comparator).lower() == "i;ascii-numeric" and ("contains" in tagged or "matches" in tagged):
        raise fail(node, 'comparator "i;ascii-numeric" cannot be used with :contains or :matches')
    if node.name == "set":
        name = positional[0]
        assert isinstance(name, Strings)
        if not VARIABLE_NAME.match(name.values[0]):
            raise fail(name, f'"{name.values[0]}" is not a variable name (RFC 5229 §4)')
    if signature.optional_front and len(positional) == len(signature.positional):
        names = positional[0]
        assert isinstance(names, Strings)
        for variable in names.values:
            if not VARIABLE_NAME.match(variable):
                raise fail(names, f'"{variable}" is not a variable name (RFC 5229 §4)')
    if signature.tests == "none" and node.tests:
        raise fail(node.tests[0], f"{node.name} takes no test")
    if signature.tests == "one" and len(node.tests) != 1:
        raise fail(node, f"{node.name} needs exactly one test")
    if signature.tests == "list" and not node.tests:
        raise fail(node, f"{node.name} needs a test list")
    node.tagged = tagged
    node.positional = positional
    if node.name in ("address", "envelope"):
        headers = positional[0]
        assert isinstance(headers, Strings)
        for header in headers.values:
            if "variables" in required and has_reference(header):
                continue  # checked when expanded
            if node.name == "envelope" and header.lower() not in ("from", "to"):
                raise fail(headers, f'envelope part "{header}" is not supported (only "from" and "to")')
    if node.name in ("header", "address", "exists"):
        headers = positional[0]
        assert isinstance(headers, Strings)
        for header in headers.values:
            if "variables" in required and has_reference(header):
                continue
            if not header or any(ord(c) <= 32 or ord(c) >= 127 or c == ":" for c in header):
                raise fail(headers, f'"{header}" is not a header field name')


def _validate_tests(tests: list[Test], required: set[str]) -> None:
    for test in tests:
        signature = _TESTS.get(test.name)
        if signature is None:
            raise SieveError(test.line, test.column, f'unknown test "{test.name}"')
        _check(test, signature, required, "test")
        _validate_tests(test.tests, required)


def _validate(commands: list[Command], required: set[str], top: bool) -> None:
    previous: str | None = None
    seen_other = False
    for command in commands:
        signature = _COMMANDS.get(command.name)
        if signature is None:
            raise SieveError(command.line, command.column, f'unknown command "{command.name}"')
        if command.name == "require":
            if not top or seen_other:
                raise SieveError(command.line, command.column, "require must come before any other command")
            _check(command, signature, required, "command")
            names = command.positional[0]
            assert isinstance(names, Strings)
            for name in names.values:
                if name not in EXTENSIONS and name.lower() not in _BUILTIN_REQUIRABLE:
                    raise SieveError(names.line, names.column, f'extension "{name}" is not supported')
                required.add(name.lower() if name.lower() in _BUILTIN_REQUIRABLE else name)
            continue
        seen_other = True
        if command.name in ("elsif", "else") and previous not in ("if", "elsif"):
            raise SieveError(command.line, command.column, f"{command.name} without a preceding if")
        _check(command, signature, required, "command")
        if signature.block and command.block is None:
            raise SieveError(command.line, command.column, f"{command.name} needs a block")
        if not signature.block and command.block is not None:
            raise SieveError(command.line, command.column, f"{command.name} takes no block")
        _validate_tests(command.tests, required)
        if command.block is not None:
            _validate(command.block, required, top=False)
        previous = command.name
    if top and "reject" in required and "vacation" in required:
        pass  # both may be required; using both in one run is a runtime error (RFC 5429 §2.1)


def _check_variables(commands: list[Command]) -> None:
    """RFC 5229 §3: a reference to a namespace no extension provides is an error; and the number of
    distinct variables a script sets is bounded (``MAX_VARIABLES``)."""
    names: set[str] = set()

    def strings(node: Command | Test) -> None:
        for arg in node.arguments:
            if isinstance(arg, Strings):
                for value in arg.values:
                    for found in VARIABLE_REFERENCE.finditer(value):
                        if found.group(2):
                            raise SieveError(arg.line, arg.column,
                                             f'variable namespace "{found.group(2)[:-1]}" is not supported')
        for test in node.tests:
            strings(test)

    def walk(block: list[Command]) -> None:
        for command in block:
            strings(command)
            if command.name == "set":
                name = command.positional[0]
                assert isinstance(name, Strings)
                names.add(name.values[0].lower())
                if len(names) > MAX_VARIABLES:
                    raise SieveError(command.line, command.column, f"more than {MAX_VARIABLES} variables")
            if command.block is not None:
                walk(command.block)

    walk(commands)


def parse(text: str | bytes) -> Script:
    """The checked tree of ``text``; raise ``SieveError`` (with line and column) if it is not valid."""
    if isinstance(text, bytes):
        data = text
        if len(data) > MAX_SCRIPT_SIZE:
            raise SieveError(1, 1, f"script larger than {MAX_SCRIPT_SIZE} octets")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            before = data[: exc.start]
            raise SieveError(before.count(b"\n") + 1, exc.start - (before.rfind(b"\n") + 1) + 1,
                             "not UTF-8 (RFC 5228 §2.1)") from None
    if len(text.encode("utf-8")) > MAX_SCRIPT_SIZE:
        raise SieveError(1, 1, f"script larger than {MAX_SCRIPT_SIZE} octets")
    tokens = _Lexer(text).tokens()
    commands = _Parser(tokens).commands(0, closing=False)
    required: set[str] = set()
    _validate(commands, required, top=True)
    if "variables" in required:
        _check_variables(commands)
    return Script(commands, required)
