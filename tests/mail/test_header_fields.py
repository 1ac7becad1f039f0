"""The delivery path's fast header readers give what the standard library's parsers give: the header
split (`HeaderFields`) against `BytesHeaderParser` (compat32), the single-address path against
`getaddresses`, the encoded-word shortcut against `decode_header`/`make_header`, the MIME-less body text
against the MIME parse, and the readers built on them (DMARC's From domain, the thread id) against their
earlier standard-library forms. Each case also checks which path it took, so a fast path that silently
stopped being taken would fail here too."""

from __future__ import annotations

import hashlib
from email.header import decode_header, make_header
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerage.mail.auth.results import from_domain
from peerage.mail.jmap.index import decode_text, header_facts
from peerage.mail.jmap.mime import mime_searchable_text, searchable_text
from peerage.mail.mailbox.objectid import message_ids, thread_id
from peerage.mail.smtp.headers import HeaderFields, addresses_of, plain_address, plain_body_text

NAMES = ("From", "To", "Cc", "Subject", "Date", "Message-ID", "In-Reply-To", "References", "Content-Type",
         "Content-Transfer-Encoding", "X-Empty", "Received", "Missing")

# Blocks the plain split reads itself: folding (RFC 5322 §2.2.3, also of an empty first line), tabs,
# repeated fields, odd case, no space after the colon, trailing blanks, encoded words (kept as text
# here; decode_text reads them), the blank line present or not.
FAST_BLOCKS = [
    b"From: a@example.org\r\nTo: b@example.org\r\nSubject: hi\r\n\r\n",
    b"From: a@example.org\r\nSubject: hi",
    b"subject:no space\r\nSUBJECT: second\r\nSubject:   \t padded  \r\n",
    b"Subject: folded\r\n line two\r\n\tline three\r\nTo: b@example.org\r\n\r\n",
    b"Subject:\r\n starts on the next line\r\n\r\n",
    b"Subject: \r\n \r\nX-Empty:\r\n\r\n",
    b"Received: from a\r\n\tby b; Mon, 1 Dec 2026 10:00:00 +0000\r\nReceived: from c\r\n\r\n",
    b"References: <a@x> <b@x>\r\n <c@x>\r\nIn-Reply-To: <c@x>\r\nMessage-ID: <d@x>\r\n\r\n",
    b"Subject: =?utf-8?q?caf=C3=A9?=\r\nFrom: =?utf-8?b?w6k=?= <e@example.org>\r\n\r\n",
    b"Date: Tue, 01 Dec 2026 23:57:00 +0100\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n",
    b"X-Weird-Name!#$%&'*+-.^_`|~: value: with: colons\r\n\r\n",
]
# Blocks it leaves to the standard parser.
SLOW_BLOCKS = [
    "Subject: caf\u00e9\r\nFrom: a@example.org\r\n\r\n".encode(),  # 8-bit (compat32 gives Header objects)
    b" leading continuation\r\nSubject: x\r\n\r\n",
    b"From a@example.org Mon Dec  1 10:00:00 2026\r\nSubject: unix from\r\n\r\n",
    b"Subject: x\r\nnot a field\r\nTo: b@example.org\r\n\r\n",
    b"Subject : space before the colon\r\n\r\n",
    b": no name\r\nSubject: x\r\n\r\n",
    b"Subject: bare\rCR\r\n\r\n",
    b"Subject: bare\nLF\r\n\r\n",
    b"Subject: x\r\n\r\nTo: after the blank line\r\n\r\n",
    b"\r\nSubject: after an empty first line\r\n\r\n",
]


def _standard(header: bytes) -> object:
    return BytesHeaderParser(policy=compat32).parsebytes(header)


def _same_fields(header: bytes) -> HeaderFields:
    fields, reference = HeaderFields(header), _standard(header)
    for name in NAMES:
        assert fields.get(name) == reference.get(name), (header, name)  # type: ignore[attr-defined]
        assert fields.get_all(name) == reference.get_all(name), (header, name)  # type: ignore[attr-defined]
    return fields


@pytest.mark.parametrize("header", FAST_BLOCKS)
def test_plain_split_gives_the_standard_parsers_values(header: bytes) -> None:
    assert _same_fields(header).fast


@pytest.mark.parametrize("header", SLOW_BLOCKS)
def test_unusual_blocks_go_to_the_standard_parser(header: bytes) -> None:
    assert not _same_fields(header).fast


_FIELD_TEXT = st.lists(st.sampled_from([*list('ab <>@.,;:"()=?\\-\t'), "\r\n ", "\r\n\t", "=?utf-8?q?x?="]),
                       max_size=30).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from((*NAMES, "X-A", "x-a")), _FIELD_TEXT), max_size=6), st.booleans())
def test_plain_split_matches_on_generated_blocks(fields: list[tuple[str, str]], blank_line: bool) -> None:
    header = "".join(f"{name}:{value}\r\n" for name, value in fields).encode() + (b"\r\n" if blank_line else b"")
    _same_fields(header)


PLAIN_ADDRESSES = [
    "a@example.org", "  a@example.org  ", "<a@example.org>", "Alice <a@example.org>",
    "Alice Bob <first.last@sub.example.org>", "o'brien+tag@example.org", "Load <load@example.net>",
    "a/b!c#d$e%f&g*h=i?j^k_l`m{n|o}p~q-r@ex-ample.org", "A@EXAMPLE.ORG", "1 2 3 <9@9.9>",
]
OTHER_ADDRESSES = [
    "a@example.org, b@example.org", '"Alice, A." <a@example.org>', "Alice (work) <a@example.org>",
    "a@example.org (comment)", "group: a@example.org, b@example.org;", "undisclosed-recipients:;",
    "=?utf-8?q?Ali=C3=A7e?= <a@example.org>", "a.@example.org", "a..b@example.org", "a@example..org",
    "a@[127.0.0.1]", "Alice  Bob <a@example.org>", "Alice<a@example.org>", "<a@example.org", "a@example.org>",
    "", "   ", "no address", "Alice <a@example.org>\r\n", "Alice\r\n <a@example.org>", "A. Person <a@example.org>",
    "<@route:a@example.org>", "a@b@example.org", "Alice <a@example.org> extra",
    "x=?y@example.org",  # could open an encoded word: left to the standard parser
]


@pytest.mark.parametrize("value", PLAIN_ADDRESSES)
def test_single_plain_address_takes_the_fast_path(value: str) -> None:
    assert plain_address(value) is not None
    assert addresses_of([value]) == getaddresses([value])


@pytest.mark.parametrize("value", OTHER_ADDRESSES)
def test_other_address_lists_go_to_getaddresses(value: str) -> None:
    assert plain_address(value) is None
    assert addresses_of([value]) == getaddresses([value])


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("aZ9.@<> \t\"(),:;-_'=?[]\\")), max_size=25))
def test_addresses_match_getaddresses_on_generated_values(value: str) -> None:
    assert addresses_of([value]) == getaddresses([value])
    assert addresses_of([value, "b@example.org"]) == getaddresses([value, "b@example.org"])


@pytest.mark.parametrize("value", [
    "plain subject", "  padded  ", "folded\r\n subject", "tab\tinside", "50% = half?", "a =? b", "x?=y",
    "=?utf-8?q?caf=C3=A9?=", "=?utf-8?b?w6k=?= and text", "=?broken", "caf\u00e9",
])
def test_decode_text_equals_decode_header(value: str) -> None:
    assert decode_text(value) == str(make_header(decode_header(value)))


def test_facts_of_the_fast_split_equal_those_of_the_standard_parser() -> None:
    for header in FAST_BLOCKS + SLOW_BLOCKS:
        facts = header_facts(header)  # read through HeaderFields and the fast paths
        parsed = _standard(header)
        assert facts["subject"] == decode_text(parsed.get("Subject"))  # type: ignore[attr-defined]
        assert facts["messageId"] == message_ids(parsed.get("Message-ID"))  # type: ignore[attr-defined]
        froms = parsed.get_all("From")  # type: ignore[attr-defined]
        expected = None
        if froms:
            expected = [{"name": decode_text(n) or None, "email": a} for n, a in getaddresses(froms) if a or n] or None
        assert facts["from"] == expected, header


def _old_from_domain(message: bytes) -> str:
    end = message.find(b"\r\n\r\n")
    values = _standard(message[: end + 2] if end >= 0 else message).get_all("From") or []  # type: ignore[attr-defined]
    if len(values) != 1:
        return ""
    addresses = getaddresses([str(values[0])])
    return addresses[0][1].rpartition("@")[2].lower() if len(addresses) == 1 else ""


@pytest.mark.parametrize("header", [
    *(f"From: {value}\r\n".encode() for value in PLAIN_ADDRESSES + OTHER_ADDRESSES if "\r" not in value),
    b"From: a@example.org\r\nFrom: b@example.net\r\n", b"To: a@example.org\r\n",
    "From: Ren\u00e9 <r@Example.ORG>\r\n".encode(), b"From: Alice\r\n <a@Example.org>\r\n",
])
def test_dmarc_from_domain_is_unchanged(header: bytes) -> None:
    message = header + b"Subject: s\r\n\r\nFrom: body@example.com\r\n"
    assert from_domain(message) == _old_from_domain(message)


def _old_thread_id(header: bytes, email_id: str) -> str:
    parsed = _standard(header)
    root = (message_ids(parsed.get("References")) or message_ids(parsed.get("In-Reply-To"))  # type: ignore[attr-defined]
            or message_ids(parsed.get("Message-ID")) or [email_id])[0]  # type: ignore[attr-defined]
    return "t" + hashlib.sha256(root.encode("utf-8", "replace")).hexdigest()[:16]


@pytest.mark.parametrize("header", FAST_BLOCKS + SLOW_BLOCKS)
def test_thread_id_is_unchanged(header: bytes) -> None:
    assert thread_id(HeaderFields(header), "e1") == thread_id(header, "e1") == _old_thread_id(header, "e1")


MIME_LESS = [
    b"From: a@example.org\r\nSubject: s\r\n\r\nHello\r\nworld\r\n",
    b"Subject: s\r\n\r\n",
    b"Subject: s\r\n\r\nno final line ending",
    "Subject: s\r\n\r\ncaf\u00e9 in UTF-8\r\n".encode(),
    b"Subject: s\r\n\r\nLatin-1 caf\xe9\r\n",
    b"Subject: s\r\n\r\n<p>looks like HTML</p>\r\n--boundary\r\n",
    b"Subject: s\r\n folded\r\nMIME-Version: 1.0\r\n\r\n=?utf-8?q?x?= =3D body\r\n",
]
WITH_MIME = [
    b"Content-Type: text/html\r\n\r\n<p>Hello</p>\r\n",
    b"content-type: text/plain; charset=iso-8859-1\r\n\r\ncaf\xe9\r\n",
    b"Content-Transfer-Encoding: quoted-printable\r\n\r\ncaf=C3=A9\r\n",
    b"Subject: s\r\nContent-transfer-encoding: base64\r\n\r\nY2Fmw6k=\r\n",
    b"Content-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nx\r\n--b--\r\n",
    "Subject: caf\u00e9\r\n\r\nbody\r\n".encode(),
    b"Subject: s\r\nnot a field\r\n\r\nbody\r\n",
    b"\r\nSubject: not a header\r\n\r\nbody\r\n",
    b"Subject: no body at all\r\n",
]


@pytest.mark.parametrize("raw", MIME_LESS)
def test_mime_less_text_skips_the_mime_parse(raw: bytes) -> None:
    assert plain_body_text(raw) is not None
    assert searchable_text(raw) == mime_searchable_text(raw)


@pytest.mark.parametrize("raw", WITH_MIME)
def test_messages_with_mime_fields_are_parsed(raw: bytes) -> None:
    assert plain_body_text(raw) is None
    assert searchable_text(raw) == mime_searchable_text(raw)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60), st.sampled_from([b"", b"MIME-Version: 1.0\r\n", b"Content-Type: text/plain\r\n"]))
def test_body_text_matches_the_mime_parse_on_generated_bodies(body: bytes, extra: bytes) -> None:
    raw = b"Subject: s\r\n" + extra + b"\r\n" + body.replace(b"\r", b"").replace(b"\n", b"\r\n")
    assert searchable_text(raw) == mime_searchable_text(raw)
