"""The Sieve language without I/O: parsing errors with their line and column (RFC 5228 §8), the
semantics of tests and actions (RFC 5228, 5232, 5429, 5230, 3894) and the execution limits."""

from __future__ import annotations

import pytest

from peerage.mail.sieve.grammar import MAX_NESTING, MAX_SCRIPT_SIZE, SieveError, parse
from peerage.mail.sieve.interpret import (
    MAX_ACTIONS,
    MAX_REDIRECTS,
    Envelope,
    SieveRuntimeError,
    evaluate,
    glob_match,
)

MESSAGE = (
    b"From: Carol Sender <carol@example.net>\r\n"
    b"To: alice@example.org, \"Team\" <team@lists.example.com>\r\n"
    b"Cc: bob@example.org\r\n"
    b"Subject: =?utf-8?q?Caf=C3=A9_plans?=\r\n"
    b"Message-ID: <m1@example.net>\r\n"
    b"X-Spam-Score: 7\r\n"
    b"\r\n"
    b"Hello there.\r\n"
)
ENVELOPE = Envelope("carol@example.net", "alice@example.org")


def run(script: str, raw: bytes = MESSAGE, envelope: Envelope = ENVELOPE):
    return evaluate(parse(script), raw, envelope)


@pytest.mark.parametrize(("script", "line", "column", "words"), [
    ('keep', 1, 5, "expected ';'"),
    ('require "fileinto";\nfileinto "a"\nkeep;', 3, 1, "takes no test"),
    ('if true {\n  keep;\n', 3, 1, "missing '}'"),
    ('fileinto "Work";', 1, 1, 'require "fileinto"'),
    ('require "fileinto";\n\nfrobnicate;', 3, 1, 'unknown command "frobnicate"'),
    ('if header :is "Subject" { keep; }', 1, 4, "takes 2 positional"),
    ('require "nonsuch";', 1, 9, 'extension "nonsuch" is not supported'),
    ('keep;\nrequire "fileinto";', 2, 1, "require must come before"),
    ('if header :is :contains "a" "b" { keep; }', 1, 15, "conflicts"),
    ('redirect ["a@b.example", "c@d.example"];', 1, 10, "single string"),
    ('if size 10 { keep; }', 1, 4, "size needs :over or :under"),
    ('else { keep; }', 1, 1, "without a preceding if"),
    ('keep :flags "x";', 1, 6, 'needs require "imap4flags"'),
    ('if header :comparator "i;unicode" "a" "b" { keep; }', 1, 4, "not supported"),
    ('"text";', 1, 1, "expected a command"),
    ('keep; /* open comment', 1, 7, "unterminated comment"),
    ('require "vacation";\nvacation text:\nno dot line\n', 2, 14, "unterminated multi-line"),
    ('discard;\n  if header :is "a" "unterminated', 2, 21, "unterminated string"),
    ('if envelope :is "x" "y" { keep; }', 1, 4, 'require "envelope"'),
])
def test_bad_scripts_name_their_line_and_column(script: str, line: int, column: int, words: str) -> None:
    with pytest.raises(SieveError) as caught:
        parse(script)
    assert (caught.value.line, caught.value.column) == (line, column), str(caught.value)
    assert words in caught.value.message


def test_limits_of_the_parser() -> None:
    deep = "if true {" * (MAX_NESTING + 1) + "keep;" + "}" * (MAX_NESTING + 1)
    with pytest.raises(SieveError, match="nested deeper"):
        parse(deep)
    with pytest.raises(SieveError, match="larger than"):
        parse(b"#" * (MAX_SCRIPT_SIZE + 1))
    with pytest.raises(SieveError, match="UTF-8"):
        parse(b'keep;\n# \xff\n')


def test_implicit_keep_and_discard() -> None:
    assert run("").keeps == [("INBOX", ())]
    assert run("discard;").keeps == []
    assert run("keep;").keeps == [("INBOX", ())]


def test_fileinto_header_address_and_decoded_subject() -> None:
    script = '''require ["fileinto"];
# comments and /* block comments */ are allowed
if header :contains "subject" "café" { fileinto "Food"; stop; }
fileinto "Other";'''
    assert run(script).keeps == [("Food", ())]
    assert run('require "fileinto"; if address :domain :is "to" "lists.example.com" { fileinto "Lists"; }').keeps \
        == [("Lists", ())]
    assert run('require "fileinto"; if address :localpart "from" "CAROL" { fileinto "C"; }').keeps == [("C", ())]
    assert run('require "fileinto"; if address :comparator "i;octet" :localpart "from" "CAROL" '
               '{ fileinto "C"; }').keeps == [("INBOX", ())]
    # RFC 5228 §2.10.3: one copy per folder, however often named; :copy keeps the implicit keep.
    assert run('require ["fileinto", "copy"]; fileinto "A"; fileinto "A"; fileinto :copy "B";').keeps == \
        [("A", ()), ("B", ())]
    assert run('require ["fileinto", "copy"]; fileinto :copy "B";').keeps == [("B", ()), ("INBOX", ())]


def test_match_types_exists_size_and_logic() -> None:
    assert run('if header :matches "Subject" "Caf? *" { discard; }').keeps == []
    assert run('if header :matches "Subject" "*x*" { discard; }').keeps == [("INBOX", ())]
    assert run('if allof (exists "X-Spam-Score", not exists "X-Nope") { discard; }').keeps == []
    assert run('if anyof (false, size :over 10K) { discard; }').keeps == [("INBOX", ())]
    assert run('if size :under 1M { discard; }').keeps == []
    assert run('if header :is "x-spam-score" "7" { discard; } else { keep; }').keeps == []
    assert run('if false { discard; } elsif true { fileinto "x"; } else { discard; }'.replace(
        'fileinto "x"', 'keep')).keeps == [("INBOX", ())]


def test_envelope() -> None:
    script = 'require ["envelope", "fileinto"]; if envelope :domain :is "from" "example.net" { fileinto "Net"; }'
    assert run(script).keeps == [("Net", ())]
    script = 'require "envelope"; if envelope :localpart :is "to" "alice" { discard; }'
    assert run(script).keeps == []
    bounce = Envelope("", "alice@example.org")
    assert run('require "envelope"; if envelope :is "from" "" { discard; }', envelope=bounce).keeps == []


def test_imap4flags() -> None:
    script = '''require ["imap4flags", "fileinto"];
addflag "\\\\seen $Important";
if hasflag :contains "$important" { addflag "Work"; }
removeflag "Work";
fileinto :flags "\\\\Flagged bad(flag" "Flagged";
'''
    result = run(script)
    # fileinto :flags uses its own list (invalid flags ignored); the implicit keep... is cancelled.
    assert result.keeps == [("Flagged", ("\\Flagged",))]
    result = run('require "imap4flags"; setflag "\\\\Seen"; addflag ["$a", "$a $b"];')
    assert result.keeps == [("INBOX", ("\\Seen", "$a", "$b"))]


def test_reject_and_its_conflicts() -> None:
    result = run('require "reject"; reject "go away";')
    assert result.reject == "go away" and result.keeps == []
    result = run('require "ereject"; ereject "no";')
    assert result.ereject
    with pytest.raises(SieveRuntimeError):
        run('require ["reject", "fileinto"]; fileinto "x"; reject "no";')
    with pytest.raises(SieveRuntimeError):
        run('require ["reject", "vacation"]; vacation "away"; reject "no";')


def test_vacation_arguments() -> None:
    result = run('require "vacation"; vacation :days 400 :subject "Away" :addresses ["me@example.org"] text:\n'
                 'I am away.\n..dot stuffed\n.\n;')
    vacation = result.vacation
    assert vacation is not None
    assert vacation.days == 90 and vacation.subject == "Away" and vacation.addresses == ["me@example.org"]
    assert vacation.reason == "I am away.\r\n.dot stuffed\r\n"
    assert result.keeps == [("INBOX", ())]  # vacation does not cancel the implicit keep
    with pytest.raises(SieveRuntimeError):
        run('require "vacation"; vacation "a"; vacation "b";')


def test_redirect_limits() -> None:
    script = "".join(f'redirect "u{i}@example.net";' for i in range(MAX_REDIRECTS))
    assert len(run(script).redirects) == MAX_REDIRECTS
    with pytest.raises(SieveRuntimeError, match="redirects"):
        run(script + 'redirect "one-more@example.net";')
    assert run('redirect "a@example.net"; redirect "A@example.net";').redirects == ["a@example.net"]
    with pytest.raises(SieveRuntimeError, match="actions"):
        run('require "fileinto";' + "".join(f'fileinto "f{i}";' for i in range(MAX_ACTIONS + 1)))


def test_glob_is_linear_and_exact() -> None:
    assert glob_match("a*b?c", "axxxbyc")
    assert glob_match("\\*", "*") and not glob_match("\\*", "x")
    assert not glob_match("a*a*a*a*a*a*a*a*b", "a" * 5000)
    assert glob_match("*", "") and not glob_match("?", "")
