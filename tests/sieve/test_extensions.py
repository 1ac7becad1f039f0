"""The Sieve extensions clients write rules with, without I/O: variables (RFC 5229), relational
(RFC 5231, with the i;ascii-numeric comparator of RFC 4790 §9.1) and body (RFC 5173). The examples
of the RFCs are among them; tests/sieve/test_pigeonhole.py checks the same ground against
Pigeonhole's own interpreter."""

from __future__ import annotations

import pytest

from peerage.mail.sieve.grammar import EXTENSIONS, MAX_VARIABLES, SieveError, parse
from peerage.mail.sieve.interpret import MAX_VARIABLE_SIZE, Envelope, evaluate, glob_spans

MESSAGE = (
    b"From: Carol Sender <carol@example.net>\r\n"
    b"To: alice@example.org, \"Team\" <team@lists.example.com>\r\n"
    b"Cc: bob@example.org\r\n"
    b"Subject: [acme-dev] Build 42 failed\r\n"
    b"List-Id: ACME developers <acme-dev.lists.example.com>\r\n"
    b"X-Spam-Score: 7\r\n"
    b"Received: from a.example by b.example; Tue, 1 Dec 2026 10:00:00 +0000\r\n"
    b"Received: from c.example by a.example; Tue, 1 Dec 2026 09:59:00 +0000\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary=\"b1\"\r\n"
    b"\r\n"
    b"This is the prologue.\r\n"
    b"--b1\r\n"
    b"Content-Type: text/plain; charset=iso-8859-1\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"The build of caf=E9 failed at step 3.\r\n"
    b"--b1\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n"
    b"\r\n"
    b"<html><style>p { color: red }</style><p>Tap <b>here</b> to unsubscribe</p></html>\r\n"
    b"--b1\r\n"
    b"Content-Type: application/octet-stream\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"U0VDUkVULUJMT0I=\r\n"
    b"--b1--\r\n"
    b"The epilogue.\r\n"
)
ENVELOPE = Envelope("carol@example.net", "alice@example.org")


def run(script: str, raw: bytes = MESSAGE, envelope: Envelope = ENVELOPE):
    return evaluate(parse(script), raw, envelope)


def folders(script: str, raw: bytes = MESSAGE) -> list[str]:
    return [folder for folder, _ in run(script, raw).keeps]


def test_the_capability_lists_the_extensions() -> None:
    for name in ("variables", "relational", "body", "comparator-i;ascii-numeric"):
        assert name in EXTENSIONS


# --- variables (RFC 5229) --------------------------------------------------------------------------


def test_set_and_references() -> None:
    script = '''require ["variables", "fileinto"];
set "Folder" "lists";
set "sub" "${folder}.acme";
fileinto "${SUB}";'''
    assert folders(script) == ["lists.acme"]
    # Unknown names are empty; "${" that is no reference stays as written; expansion happens once.
    script = '''require ["variables", "fileinto"];
set "dollar" "$";
set "a" "${dollar}{a}";
fileinto "x${nosuch}-${a}-${ not a ref}-${1a}";'''
    assert folders(script) == ["x-${a}-${ not a ref}-${1a}"]


def test_set_modifiers_apply_by_precedence() -> None:
    # RFC 5229 §4's examples.
    script = '''require ["variables", "fileinto"];
set "a" "juMBlEd lETteRS";
set :length "b" "${a}";
set :lower "c" "${a}";
set :upperfirst "d" "${a}";
set :upperfirst :lower "e" "${a}";
set :quotewildcard "f" "a*b?c\\\\d";
fileinto "${b}|${c}|${d}|${e}|${f}";'''
    assert folders(script) == ["15|jumbled letters|JuMBlEd lETteRS|Jumbled letters|a\\*b\\?c\\\\d"]
    with pytest.raises(SieveError, match="conflicts"):
        parse('require "variables"; set :upperfirst :lowerfirst "a" "b";')


def test_match_variables_from_the_last_successful_matches() -> None:
    script = '''require ["variables", "fileinto"];
if header :matches "List-Id" "*<*.lists.example.com>" { set "list" "${2}"; }
if header :matches "Subject" "[*] Build * *" { fileinto "${list}/${1}/${2}/${3}/${0}"; }'''
    assert folders(script) == ["acme-dev/acme-dev/42/failed/[acme-dev] Build 42 failed"]
    # A failing :matches leaves them; :is and :contains do not set them.
    script = '''require ["variables", "fileinto"];
if header :matches "Subject" "*Build*" { set "x" "1"; }
if header :matches "Subject" "nothing*" { set "x" "2"; }
if header :contains "Subject" "failed" { fileinto "${x}:${2}"; }'''
    assert folders(script) == ["1: 42 failed"]


def test_wildcards_take_as_little_as_lets_the_rest_match() -> None:
    value = "a.b.c"
    spans = glob_spans("*.*", value)
    assert spans is not None and [value[a:b] for a, b in spans] == ["a", "b.c"]
    value = "xaybz"
    spans = glob_spans("?*b*", value)
    assert spans is not None and [value[a:b] for a, b in spans] == ["x", "ay", "z"]
    assert glob_spans("a*", "b") is None


def test_string_test() -> None:
    script = '''require ["variables", "fileinto", "relational", "comparator-i;ascii-numeric"];
set "n" "";
if string :is "${n}" "" { fileinto "empty"; }
if string :count "eq" :comparator "i;ascii-numeric" ["a", "", "b"] "2" { fileinto "two"; }
if string :matches " ${n}x" " *x" { fileinto "m"; }'''
    assert folders(script) == ["empty", "two", "m"]


def test_imap4flags_on_a_variable() -> None:
    script = '''require ["variables", "imap4flags", "fileinto"];
setflag "mine" "\\\\Seen";
addflag "mine" ["$Work", "$Work $Late"];
removeflag "mine" "$Late";
addflag "$Internal";
if hasflag "mine" "$work" { fileinto :flags "${mine}" "Work"; }
if hasflag :is "$Internal" { fileinto "Internal"; }'''
    result = run(script)
    assert result.keeps == [("Work", ("\\Seen", "$Work")), ("Internal", ("$Internal",))]
    with pytest.raises(SieveError, match="positional"):
        parse('require "imap4flags"; setflag "v" "x";')


def test_variable_limits_and_namespaces() -> None:
    with pytest.raises(SieveError, match="namespace"):
        parse('require "variables"; keep; if header :is "x" "${env.name}" { stop; }')
    with pytest.raises(SieveError, match="variable name"):
        parse('require "variables"; set "a-b" "x";')
    with pytest.raises(SieveError, match="variables"):
        parse('require "variables";' + "".join(f'set "v{i}" "x";' for i in range(MAX_VARIABLES + 1)))
    script = '''require ["variables", "fileinto"];
set "a" "0123456789abcdef";
set "a" "${a}${a}${a}${a}${a}${a}${a}${a}";
set "a" "${a}${a}${a}${a}${a}${a}${a}${a}";
set "a" "${a}${a}${a}${a}${a}${a}${a}${a}";
set :length "n" "${a}";
fileinto "${n}";'''
    assert folders(script) == [str(MAX_VARIABLE_SIZE)]
    # Header names may come from variables; one that is not a field name matches nothing.
    script = '''require ["variables", "fileinto"];
set "h" "x-spam-score";
set "bad" "no such: name";
if header :is "${h}" "7" { fileinto "a"; }
if exists "${bad}" { fileinto "b"; }'''
    assert folders(script) == ["a"]


# --- relational (RFC 5231) -------------------------------------------------------------------------


@pytest.mark.parametrize(("test", "expected"), [
    ('header :value "ge" :comparator "i;ascii-numeric" "X-Spam-Score" "5"', True),
    ('header :value "gt" :comparator "i;ascii-numeric" "X-Spam-Score" "10"', False),
    # i;ascii-casemap orders as strings: "7" > "10".
    ('header :value "gt" "X-Spam-Score" "10"', True),
    ('header :count "eq" :comparator "i;ascii-numeric" "Received" "2"', True),
    ('header :count "ge" :comparator "i;ascii-numeric" "Received" "3"', False),
    ('address :count "eq" :comparator "i;ascii-numeric" ["To", "Cc"] "3"', True),
    ('address :count "eq" :comparator "i;ascii-numeric" "Bcc" "0"', True),
    ('header :value "lt" :comparator "i;ascii-numeric" "Subject" "99999"', False),  # text is +infinity
    ('header :value "ne" :comparator "i;ascii-numeric" "X-Spam-Score" ["7", "007"]', False),
    ('header :value "eq" :comparator "i;ascii-numeric" "X-Spam-Score" "0007"', True),
    ('envelope :count "eq" :comparator "i;ascii-numeric" "to" "1"', True),
    ('address :value "lt" :domain "From" "example.org"', True),
])
def test_relational(test: str, expected: bool) -> None:
    script = f'require ["relational", "comparator-i;ascii-numeric", "envelope", "fileinto"]; if {test} ' \
             '{ fileinto "yes"; }'
    assert (folders(script) == ["yes"]) is expected


def test_relational_errors() -> None:
    with pytest.raises(SieveError, match="needs one of"):
        parse('require "relational"; if header :value "bigger" "a" "b" { keep; }')
    with pytest.raises(SieveError, match='require "relational"'):
        parse('if header :count "eq" "a" "1" { keep; }')
    with pytest.raises(SieveError, match="conflicts"):
        parse('require "relational"; if header :count "eq" :is "a" "1" { keep; }')
    with pytest.raises(SieveError, match="cannot be used"):
        parse('require "comparator-i;ascii-numeric"; if header :contains :comparator "i;ascii-numeric" "a" "1"'
              ' { keep; }')
    with pytest.raises(SieveError, match='require "comparator-i;ascii-numeric"'):
        parse('require "relational"; if header :value "eq" :comparator "i;ascii-numeric" "a" "1" { keep; }')
    # A digit string too long for an integer conversion still compares.
    long = "9" * 10000
    script = (f'require ["relational", "comparator-i;ascii-numeric", "fileinto"]; if string :value "gt" '
              f':comparator "i;ascii-numeric" "{long}" "{long[:-1]}" {{ fileinto "yes"; }}')
    with pytest.raises(SieveError):  # string needs "variables"
        parse(script)
    assert folders(script.replace('require [', 'require ["variables", ')) == ["yes"]


# --- body (RFC 5173) -------------------------------------------------------------------------------


@pytest.mark.parametrize(("test", "expected"), [
    ('body :contains "café failed"', True),  # quoted-printable and Latin-1 undone
    ('body :text :contains "unsubscribe"', True),  # the HTML part, as text
    ('body :text :contains "color"', False),  # its style sheet is not text
    ('body :text :contains "<b>"', False),
    ('body :content "text/html" :contains "<b>here</b>"', True),
    ('body :content "text" :contains "step 3"', True),
    ('body :content "application/octet-stream" :contains "SECRET-BLOB"', True),  # base64 undone
    ('body :text :contains "SECRET-BLOB"', False),
    ('body :content "multipart" :contains "prologue"', True),
    ('body :content "multipart" :contains "step 3"', False),
    ('body :raw :contains "caf=E9"', True),
    ('body :raw :contains "SECRET-BLOB"', False),
    ('body :contains "Build 42"', False),  # the header is not the body
    ('body :content "" :contains "epilogue"', True),
    ('body :matches "*failed at step ?.*"', True),
])
def test_body(test: str, expected: bool) -> None:
    script = f'require ["body", "fileinto"]; if {test} {{ fileinto "yes"; }}'
    assert (folders(script) == ["yes"]) is expected


def test_body_of_a_nested_message_and_a_plain_one() -> None:
    nested = (
        b"From: a@example.net\r\nSubject: fwd\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: message/rfc822\r\n\r\n"
        b"From: inner@example.com\r\nSubject: the inner one\r\n\r\nInner body text.\r\n"
    )
    script = 'require ["body", "fileinto"]; if body :content "message/rfc822" :contains "%s" { fileinto "yes"; }'
    assert folders(script % "the inner one", nested) == ["yes"]  # the nested header stands for it
    assert folders(script % "Inner body", nested) == ["INBOX"]
    assert folders('require ["body", "fileinto"]; if body :contains "inner body" { fileinto "yes"; }', nested) \
        == ["yes"]
    plain = b"From: a@example.net\r\nSubject: s\r\n\r\nJust text.\r\n"
    assert folders('require ["body", "fileinto"]; if body :is "just text.\r\n" { fileinto "yes"; }', plain) \
        == ["yes"]
    with pytest.raises(SieveError, match="conflicts"):
        parse('require "body"; if body :raw :text :contains "x" { keep; }')
    with pytest.raises(SieveError, match='require "body"'):
        parse('if body :contains "x" { keep; }')
