"""Our Sieve interpreter against Dovecot's Pigeonhole (Debian's dovecot-sieve, `sieve-test`): the
same script on the same message must give the same actions. The cases lean on the extensions clients
write rules with (variables RFC 5229, relational RFC 5231, body RFC 5173) and on imap4flags, whose
flag lists Pigeonhole prints. Where the two differ on purpose (the `string` test's default
comparator; :upper and :lower on letters beyond ASCII; a folder name's surrounding spaces; see
peerage.mail.sieve.interpret) no case relies on it."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from peerage.mail.sieve.grammar import parse
from peerage.mail.sieve.interpret import Envelope, evaluate
from tests.harness.peers import require_binary
from tests.sieve.test_extensions import MESSAGE

SENDER = "carol@example.net"
RECIPIENT = "alice@example.org"
NOBODY = 65534

REQUIRE = ('require ["variables", "relational", "body", "fileinto", "imap4flags", "reject", "copy",'
           ' "envelope", "comparator-i;ascii-numeric"];\n')

CASES = {
    "list-folder": '''if header :matches "List-Id" "*<*.lists.example.com>" { fileinto "Lists.${2}"; }''',
    "subject-parts": '''if header :matches "Subject" "[*] Build * *" { fileinto "B/${1}/${2}/${3}"; }''',
    "two-stars": '''if header :matches "From" "*@*" { fileinto "F.${1}.${2}"; }''',
    "question-marks": '''if header :matches "X-Spam-Score" "?" { fileinto "S.${1}.${0}"; }''',
    "modifiers": '''set "a" "juMBlEd";
set :upperfirst :lower "b" "${a}";
set :length "c" "${a}${b}";
set :quotewildcard "d" "x*y";
fileinto "${b}.${c}.${d}";''',
    "failed-match-keeps-variables": '''if header :matches "Subject" "*Build*" { set "x" "${2}"; }
if header :matches "Subject" "nothing*" { set "x" "none"; }
fileinto "X${x}";''',
    "spam-score": '''if header :value "ge" :comparator "i;ascii-numeric" "X-Spam-Score" "5" { fileinto "Junk"; }''',
    "spam-score-low": '''if header :value "ge" :comparator "i;ascii-numeric" "X-Spam-Score" "8" { fileinto "Junk"; }''',
    "casemap-order": '''if header :value "gt" "X-Spam-Score" "10" { fileinto "Gt"; }''',
    "received-count": '''if header :count "eq" :comparator "i;ascii-numeric" "Received" "2" { fileinto "R2"; }''',
    "address-count": '''if address :count "ge" :comparator "i;ascii-numeric" ["To", "Cc"] "3" { fileinto "Many"; }''',
    "text-infinity": '''if header :value "gt" :comparator "i;ascii-numeric" "Subject" "999999" { fileinto "Inf"; }''',
    "string-count": '''if string :count "eq" :comparator "i;ascii-numeric" ["a", "", "b"] "2" { fileinto "Two"; }''',
    "envelope-variables": '''if envelope :matches "from" "*@*" { set "dom" "${2}"; }
if envelope :domain :is "to" "example.org" { fileinto "Env.${dom}"; }''',
    "body-text": '''if body :contains "café failed" { fileinto "Body"; }''',
    "body-html-as-text": '''if body :text :contains "unsubscribe" { fileinto "Unsub"; }''',
    "body-content-html": '''if body :content "text/html" :contains "<b>here</b>" { fileinto "Html"; }''',
    "body-content-binary": '''if body :content "application" :contains "SECRET-BLOB" { fileinto "Blob"; }''',
    "body-prologue": '''if body :content "multipart" :contains "prologue" { fileinto "Pro"; }''',
    "body-raw": '''if body :raw :contains "caf=E9" { fileinto "Raw"; }''',
    "body-not-header": '''if body :contains "Build 42" { fileinto "Wrong"; }''',
    "flags-variable": '''setflag "mine" "\\\\Seen";
addflag "mine" ["$Work", "$Work $Late"];
removeflag "mine" "$Late";
addflag "$Internal";
if hasflag "mine" "$Work" { fileinto :flags "${mine}" "Work"; }
fileinto :copy "Copy";''',
    "address-first-match": '''if address :localpart :matches ["To", "Cc"] "*" { fileinto "A.${1}"; }''',
    "first-key-wins": '''if header :matches "Subject" ["*42*", "*Build*"] { fileinto "K${1}x"; }''',
    "anyof-last-success": '''if anyof (header :matches "Subject" "*Build*", header :matches "From" "*@*") {
  fileinto "Any${1}x"; }''',
    "count-absent": '''if header :count "eq" :comparator "i;ascii-numeric" "X-Nothing" "0" { fileinto "Zero"; }''',
    "names-fold": '''set "MiXed" "v"; fileinto "N.${mixed}.${MIXED}";''',
    "leading-zeros": '''if header :value "eq" :comparator "i;ascii-numeric" "X-Spam-Score" "007" { fileinto "Z"; }''',
    "value-casemap": '''if header :value "eq" "Subject" "[ACME-DEV] BUILD 42 FAILED" { fileinto "Eq"; }''',
    "length-in-characters": '''set :upper "u" "cafe"; set :length "n" "café"; fileinto "${u}${n}";''',
    "redirect-variable": '''if header :matches "From" "*<*>" { redirect "archive+${2}"; }''',
    "reject-variable": '''if header :matches "Subject" "*failed" { reject "Not here: ${1}"; }''',
}


@pytest.fixture(scope="module")
def pigeonhole() -> Iterator[Path]:
    """A directory with a sieve-test configuration. As root, sieve-test refuses to run as root and
    drops to mail_uid (nobody), so the directory belongs to nobody: it reads the scripts and writes
    their compiled form there."""
    require_binary("sieve-test")
    with tempfile.TemporaryDirectory(prefix="peerage-pigeonhole-") as name:
        workdir = Path(name)
        drop = f"mail_uid = {NOBODY}\nmail_gid = {NOBODY}\n" if os.geteuid() == 0 else ""
        (workdir / "dovecot.conf").write_text(
            f"log_path = /dev/stderr\n{drop}mail_location = maildir:{workdir}/Maildir\n"
            "plugin {\n  sieve_extensions = +variables +relational +body +comparator-i;ascii-numeric\n}\n")
        (workdir / "message.eml").write_bytes(MESSAGE)
        _give_to_nobody(workdir, *workdir.iterdir())
        workdir.chmod(0o755)
        yield workdir


def _give_to_nobody(*paths: Path) -> None:
    if os.geteuid() == 0:
        for path in paths:
            os.chown(path, NOBODY, NOBODY)


def _normalise_flags(flags: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted(f.lower() if f.startswith("\\") else f for f in flags))


def pigeonhole_actions(workdir: Path, name: str, script: str) -> set[tuple[str, ...]]:
    path = workdir / f"{name}.sieve"
    path.write_text(script)
    _give_to_nobody(path)
    done = subprocess.run(
        ["sieve-test", "-c", str(workdir / "dovecot.conf"), "-f", SENDER, "-a", RECIPIENT, "-r", RECIPIENT,
         str(path), str(workdir / "message.eml")],
        capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert "final result: success" in done.stderr, done.stderr
    actions: set[tuple[str, ...]] = set()
    lines = done.stdout.splitlines()
    for i, line in enumerate(lines):
        if found := re.match(r"\s*\* store message in folder: (.*)$", line):
            flags: list[str] = []
            for following in lines[i + 1:]:
                if not re.match(r"\s*\+ ", following):
                    break
                if more := re.match(r"\s*\+ add IMAP flags: (.*)$", following):
                    flags = more.group(1).split()
            actions.add(("store", found.group(1), *_normalise_flags(flags)))
        elif found := re.match(r"\s*\* redirect message to: <(.*)>$", line):
            actions.add(("redirect", found.group(1)))
        elif found := re.match(r"\s*\* reject message with reason: (.*)$", line):
            actions.add(("reject", found.group(1)))
        elif re.match(r"\s*\* discard$", line):
            actions.add(("discard",))
    return actions


def our_actions(script: str) -> set[tuple[str, ...]]:
    result = evaluate(parse(script), MESSAGE, Envelope(SENDER, RECIPIENT))
    actions: set[tuple[str, ...]] = {("store", folder, *_normalise_flags(flags)) for folder, flags in result.keeps}
    actions |= {("redirect", address) for address in result.redirects}
    if result.reject is not None:
        actions.add(("reject", result.reject))
    if result.discarded:
        actions.add(("discard",))
    return actions


def test_the_same_actions_as_pigeonhole(pigeonhole: Path) -> None:
    differences = {}
    for name, body in CASES.items():
        script = REQUIRE + body + "\n"
        theirs = pigeonhole_actions(pigeonhole, name, script)
        ours = our_actions(script)
        assert theirs, f"{name}: Pigeonhole printed no action"
        if ours != theirs:
            differences[name] = (ours, theirs)
    assert not differences, differences
    # Each case decides something: none of them only keeps.
    kept_only = [name for name in CASES if our_actions(REQUIRE + CASES[name]) == {("store", "INBOX")}]
    assert sorted(kept_only) == ["body-not-header", "spam-score-low"]
