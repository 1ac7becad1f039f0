"""MIME views used by FETCH and SEARCH: exact section bytes, BODYSTRUCTURE, decoded text, and no
crash on arbitrary or hostile input."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from peerage.mail.imap import mime

NESTED = (
    b"From: a@example.net\r\nSubject: =?iso-8859-1?q?caf=E9?=\r\n"
    b"Content-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n"
    b"--outer\r\nContent-Type: multipart/alternative; boundary=inner\r\n\r\n"
    b"--inner\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nplain part\r\n"
    b"--inner\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>html part</p>\r\n"
    b"--inner--\r\n"
    b"--outer\r\nContent-Type: message/rfc822\r\n\r\n"
    b"From: b@example.net\r\nSubject: inner\r\nContent-Type: text/plain;\r\n charset*=utf-8''%C3%BCber\r\n\r\n"
    b"forwarded body\r\n"
    b"--outer--\r\n"
)


def test_sections_of_nested_multiparts_and_messages() -> None:
    assert mime.section_bytes(NESTED, (1, 1), "", ()) == b"plain part"
    assert mime.section_bytes(NESTED, (1, 2), "MIME", ()) == b"Content-Type: text/html; charset=utf-8\r\n\r\n"
    assert mime.section_bytes(NESTED, (2,), "HEADER.FIELDS", ("SUBJECT",)) == b"Subject: inner\r\n\r\n"
    assert mime.section_bytes(NESTED, (2,), "TEXT", ()) == b"forwarded body"
    assert mime.section_bytes(NESTED, (2, 1), "", ()) == b"forwarded body"
    assert mime.section_bytes(NESTED, (3,), "", ()) is None
    structure = mime.body_structure(NESTED)
    assert structure.startswith(b'((("TEXT" "PLAIN" ("CHARSET" "utf-8")')
    assert b'"ALTERNATIVE"' in structure and b'"MESSAGE" "RFC822"' in structure
    assert b'("CHARSET" "\xc3\xbcber")' in structure or b"\xc3\xbcber" in structure
    headers = mime.header_text(mime.split_header_body(NESTED)[0])
    assert headers["subject"] == ["café"]
    text = mime.body_text(NESTED)
    assert "plain part" in text and "html part" in text and "forwarded body" in text


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_crash(raw: bytes) -> None:
    mime.body_structure(raw)
    mime.envelope(mime.split_header_body(raw)[0])
    mime.body_text(raw)
    mime.section_bytes(raw, (1, 2), "MIME", ())
    mime.binary_section(raw, (1,))


_lines = st.sampled_from([
    b"Content-Type: multipart/mixed; boundary=b", b"--b", b"--b--", b"Content-Type: message/rfc822",
    b"Content-Transfer-Encoding: base64", b"Content-Transfer-Encoding: quoted-printable", b"", b"=C3=A9=",
    b"AAEC", b"Subject: =?utf-8?b?w6k=?=", b"From: \"x\" <a@b>", b"Content-Type: text/plain; charset=bogus",
])


@settings(max_examples=300, deadline=None)
@given(st.lists(_lines, max_size=30))
def test_mime_shaped_input_never_crashes(lines: list[bytes]) -> None:
    raw = b"\r\n".join(lines)
    mime.body_structure(raw)
    mime.body_text(raw)
    for part in ((1,), (1, 1), (2, 1, 1)):
        mime.section_bytes(raw, part, "", ())
        mime.binary_section(raw, part)


def _parsed_structures(raw: bytes) -> tuple[bytes, bytes]:
    root = mime.parse(raw)
    return mime._structure(root, True, 0), mime._structure(root, False, 0)


_FIELD_LINES = [
    b"Subject: s\r\n", b"From: a@example.net\r\n", b"MIME-Version: 1.0\r\n", b" folded\r\n",
    b"Content-Type: text/html; charset=utf-8\r\n", b"content-transfer-encoding: base64\r\n",
    b"Content-ID: <x@y>\r\n", b"CONTENT-DISPOSITION: attachment\r\n", b"Content-Language: en\r\n",
    b"X-Content-Note: not a MIME field\r\n", b"not a field\r\n",
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_FIELD_LINES), max_size=6), st.binary(max_size=80))
def test_structures_without_content_fields_match_the_parse(lines: list[bytes], body: bytes) -> None:
    # cached_structures skips the MIME parse for a header without Content-* fields; with or without
    # them, the delivery's cached BODYSTRUCTURE and BODY must be what the parse gives.
    raw = b"".join(lines) + b"\r\n" + body.replace(b"\r", b"").replace(b"\n", b"\r\n")
    assert mime.cached_structures(raw) == _parsed_structures(raw)


def test_a_plain_message_has_the_default_structure() -> None:
    raw = b"From: a@example.net\r\nSubject: s\r\n\r\nline one\r\nline two\r\n"
    assert mime.cached_structures(raw) == (
        b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 20 2 NIL NIL NIL NIL)',
        b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 20 2)',
    )
