"""The sans-I/O command reader and argument parsers: literals, limits, malformed input, fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerage.mail.imap.parser import (
    Command,
    CommandReader,
    Continue,
    LiteralRefused,
    Malformed,
    ParseError,
    decode_mailbox_name,
    encode_mailbox_name,
    format_sequence_set,
    parse_command,
    parse_fetch_attributes,
    parse_search,
    parse_sequence_set,
    quoted_or_literal,
)


def feed(reader: CommandReader, *chunks: bytes) -> list[object]:
    events: list[object] = []
    for chunk in chunks:
        events += reader.receive(chunk)
    while more := reader.receive(b""):
        events += more
    return events


def test_synchronising_literal_asks_for_continuation_then_completes() -> None:
    reader = CommandReader(append_limit=1000)
    events = feed(reader, b"a1 LOGIN {5}\r\n")
    assert events == [Continue()]
    events = feed(reader, b'alice "se\\"cret"\r\n')
    assert events == [Command("a1", "LOGIN", [b"alice", b'se"cret'])]


def test_non_synchronising_literal_and_split_input() -> None:
    reader = CommandReader(append_limit=1000)
    wire = b"t APPEND INBOX (\\Seen) {11+}\r\nhello world\r\nt2 NOOP\r\n"
    events = feed(reader, *[wire[i : i + 3] for i in range(0, len(wire), 3)])
    assert events == [
        Command("t", "APPEND", ["INBOX", ["\\Seen"], b"hello world"]),
        Command("t2", "NOOP", []),
    ]


def test_empty_literals() -> None:
    reader = CommandReader(append_limit=100)
    assert feed(reader, b"a LOGIN {0}\r\n") == [Continue()]
    assert feed(reader, b" {0+}\r\n\r\n") == [Command("a", "LOGIN", [b"", b""])]


def test_oversized_literal_is_refused_before_it_is_read() -> None:
    reader = CommandReader(append_limit=100)
    events = feed(reader, b"a APPEND INBOX {101}\r\n")
    assert events == [LiteralRefused("a", "APPEND", 101, 100, True)]
    # The client did not get "+", so the next line is a new command.
    assert feed(reader, b"b NOOP\r\n") == [Command("b", "NOOP", [])]
    # A non-synchronising one is skipped without being kept, and the session goes on.
    events = feed(reader, b"c APPEND INBOX {200+}\r\n", b"x" * 200, b"\r\nd NOOP\r\n")
    assert events == [LiteralRefused("c", "APPEND", 200, 100, False), Command("d", "NOOP", [])]
    assert len(reader._buffer) == 0


def test_literal_outside_append_has_a_small_limit() -> None:
    reader = CommandReader(append_limit=10**9)
    events = feed(reader, b"a SEARCH TEXT {100000000}\r\n")
    assert isinstance(events[0], LiteralRefused) and events[0].limit < 10**6


@pytest.mark.parametrize(
    "line",
    [b"", b"tag", b'a LOGIN "unterminated\r\n', b"a FETCH 1 (FLAGS\r\n", b"a FETCH 1 FLAGS)\r\n",
     b"+ NOOP\r\n", b"a\x00b NOOP\r\n", b'a LOGIN "bad\\escape" x\r\n'],
)
def test_malformed_lines_become_malformed_events(line: bytes) -> None:
    reader = CommandReader(append_limit=100)
    events = feed(reader, line + (b"" if line.endswith(b"\n") else b"\r\n"))
    assert len(events) == 1 and isinstance(events[0], Malformed)


def test_overlong_line_is_refused_and_reader_recovers() -> None:
    reader = CommandReader(append_limit=100, max_line=1000)
    events = feed(reader, b"a NOOP " + b"x" * 5000)
    assert isinstance(events[0], Malformed)
    events = feed(reader, b"yyy\r\nb NOOP\r\n")
    assert events == [Command("b", "NOOP", [])]


def test_sequence_sets() -> None:
    sequence = parse_sequence_set("1:3,7,10:*")
    assert sequence.select([1, 2, 3, 4, 7, 9, 10, 12]) == [1, 2, 3, 7, 10, 12]
    assert parse_sequence_set("*:4").resolve(9) == [(4, 9)]
    assert format_sequence_set([1, 2, 3, 5, 7, 8]) == "1:3,5,7:8"
    for bad in ("0", "1:", "a", "1,,2", "4294967296"):
        with pytest.raises(ParseError):
            parse_sequence_set(bad)


def test_fetch_attributes() -> None:
    command = parse_command([b"a FETCH 1 (UID BODY.PEEK[HEADER.FIELDS (From Subject)]<0.100> BINARY[1.2])"])
    attributes = parse_fetch_attributes(command.args[1])
    assert [a.name for a in attributes] == ["UID", "BODY", "BINARY"]
    assert attributes[1].peek and attributes[1].partial == (0, 100)
    assert attributes[1].response_name() == "BODY[HEADER.FIELDS (From Subject)]<0>"
    assert attributes[2].section is not None and attributes[2].section.part == (1, 2)
    assert [a.name for a in parse_fetch_attributes("FAST")] == ["FLAGS", "INTERNALDATE", "RFC822.SIZE"]
    for bad in ("BODY[1.0]", "BINARY[HEADER]", "BODY[HEADER.FIELDS]", "NOPE"):
        with pytest.raises(ParseError):
            parse_fetch_attributes(bad)


def test_search_keys() -> None:
    command = parse_command([b'a SEARCH OR FROM bob (SUBJECT "x y" UNSEEN) NOT 1:5 SINCE 1-Feb-2026'])
    key = parse_search(command.args)
    assert key.op == "AND" and [k.op for k in key.args] == ["OR", "NOT", "SINCE"]  # type: ignore[attr-defined]
    cases: list[list[object]] = [["FROM"], ["OR", "SEEN"], ["SINCE", "31-Foo-2020"], ["BOGUS"], [[]]]
    for bad in cases:
        with pytest.raises(ParseError):
            parse_search(bad)


def test_mailbox_name_modified_utf7_round_trip() -> None:
    assert encode_mailbox_name("Entwürfe") == "Entw&APw-rfe"
    assert decode_mailbox_name("Entw&APw-rfe") == "Entwürfe"
    assert decode_mailbox_name("A&-B") == "A&B"


def test_writer_quotes_or_uses_literals() -> None:
    assert quoted_or_literal('say "hi"') == b'"say \\"hi\\""'
    assert quoted_or_literal(b"two\r\nlines") == b"{10}\r\ntwo\r\nlines"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=8))
def test_reader_never_crashes_on_arbitrary_bytes(chunks: list[bytes]) -> None:
    reader = CommandReader(append_limit=512, max_line=256)
    for chunk in chunks:
        for event in reader.receive(chunk):
            assert isinstance(event, Command | Continue | Malformed | LiteralRefused)
    assert len(reader._buffer) <= 256 + 200 + 512


_atoms = st.sampled_from(["FLAGS", "1:*", "\\Seen", "BODY[]", "BODY.PEEK[HEADER]", "NIL", "INBOX", "UID"])
_strings = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=20)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_atoms, _strings.map(lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"')),
                max_size=8))
def test_well_formed_commands_round_trip(arguments: list[str]) -> None:
    line = ("t1 CMD " + " ".join(arguments)).rstrip().encode()
    command = parse_command([line])
    assert command.tag == "t1" and command.name == "CMD"
    assert len(command.args) == len(arguments)
    for token, argument in zip(command.args, arguments, strict=True):
        if argument.startswith('"'):
            assert quoted_or_literal(token) == argument.encode()  # type: ignore[arg-type]
        else:
            assert token == argument


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["ALL", "SEEN", "NOT", "OR", "(", ")", "FROM", "x", "1:3", "UID", "LARGER",
                                 "10", "SINCE", "1-Jan-2020", "HEADER", "KEYWORD"]), max_size=12))
def test_search_parser_only_raises_parse_error(words: list[str]) -> None:
    try:
        command = parse_command([("t SEARCH " + " ".join(words)).encode()])
        parse_search(command.args)
    except ParseError:
        pass
