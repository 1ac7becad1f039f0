"""Unit tests of the SMTPUTF8 downgrade (peerage.mail.smtp.downgrade): when SMTPUTF8 is needed
(RFC 6531 §3.2/§3.4) and the RFC 6857 §3 rewriting of each kind of header field."""

from __future__ import annotations

import email
import email.policy

import pytest

from peerage.mail.auth.dkim import strip_own_signatures
from peerage.mail.smtp import downgrade


def _parse(data: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)  # type: ignore[return-value]


def test_only_addresses_and_headers_need_smtputf8() -> None:
    assert not downgrade.needs_smtputf8("a@x.org", ["b@y.org"], "Subject: hi\r\n\r\nGrüße\r\n".encode())
    assert downgrade.needs_smtputf8("a@x.org", ["b@y.org"], "Subject: Grüße\r\n\r\nhi\r\n".encode())
    assert downgrade.needs_smtputf8("jörg@x.org", ["b@y.org"], b"Subject: hi\r\n\r\nhi\r\n")
    # A UTF-8 header of a MIME part counts too (RFC 6531 §3.2: "at any level within its MIME structure").
    nested = ('Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
              'Content-Disposition: attachment; filename="ü.txt"\r\n\r\nx\r\n--b--\r\n').encode()
    assert downgrade.needs_smtputf8("a@x.org", ["b@y.org"], nested)


def test_envelope_addresses() -> None:
    assert downgrade.ascii_address("dave@bücher.example") == "dave@xn--bcher-kva.example"
    assert downgrade.ascii_address("jörg@example.org") is None
    planned = downgrade.plan("alice@example.org", ["zoë@legacy.example", "dave@legacy.example"],
                             b"Subject: plain\r\n\r\nbody\r\n")
    assert planned.refused == ["zoë@legacy.example"]
    assert planned.recipients == {"dave@legacy.example": "dave@legacy.example"}
    assert planned.data is None  # nothing in the message needed rewriting
    with pytest.raises(downgrade.CannotDowngrade, match="sender"):
        downgrade.plan("jörg@example.org", ["dave@legacy.example"], b"Subject: x\r\n\r\n")


def test_header_fields_are_rewritten_as_rfc6857_says() -> None:
    message = ("Received: from a by b with ESMTPSA id 1\r\n\tfor <jörg@example.org>; Tue, 1 Dec 2026 10:00:00 +0000\r\n"
               "From: Jörg Müller <alice@bücher.example>\r\n"
               "To: dave@legacy.example, jörg@example.org\r\n"
               "Cc: team: a@b.example;\r\n"
               "Subject: Grüße nach gestern\r\n"
               "X-Note: schön\r\n"
               "Message-ID: <grüße@example.org>\r\n"
               "MIME-Version: 1.0\r\n"
               'Content-Type: multipart/mixed; boundary="BB"\r\n\r\n'
               "preamble\r\n--BB\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nGrüße\r\n"
               '--BB\r\nContent-Type: application/pdf; name="Größe.pdf"\r\n'
               'Content-Disposition: attachment; filename="Größe.pdf"\r\n\r\nJVBERi0=\r\n--BB--\r\n').encode()
    out = downgrade.downgrade_message(message)
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.isascii()
    assert b"Received: from a by b with ESMTPSA id 1; Tue, 1 Dec 2026" in head  # FOR clause dropped
    parsed = _parse(out)
    assert parsed["Subject"] == "Grüße nach gestern"
    assert parsed["X-Note"] == "schön"
    assert str(parsed["From"]) == "Jörg Müller <alice@xn--bcher-kva.example>"
    to = parsed["To"]
    assert to.groups[0].addresses[0].addr_spec == "dave@legacy.example"
    assert to.groups[1].display_name == "jörg@example.org" and to.groups[1].addresses == ()
    assert str(parsed["Cc"]) == "team: a@b.example;"
    assert "Message-ID" not in parsed and parsed["Downgraded-Message-ID"] == "<grüße@example.org>"
    names = [part.get_filename() for part in parsed.walk() if part.get_content_type() == "application/pdf"]
    assert names == ["Größe.pdf"]
    # Bodies travel byte for byte.
    assert "Grüße\r\n".encode() in body and b"JVBERi0=\r\n--BB--\r\n" in body


def test_what_cannot_be_downgraded() -> None:
    with pytest.raises(downgrade.CannotDowngrade, match="UTF-8"):
        downgrade.downgrade_message(b"Subject: Gr\xfc\xdfe\r\n\r\nx\r\n")  # Latin-1, not UTF-8
    with pytest.raises(downgrade.CannotDowngrade, match="group"):
        downgrade.downgrade_message("To: team: jörg@example.org;\r\n\r\nx\r\n".encode())


def test_our_own_dkim_signatures_are_stripped_for_resigning() -> None:
    message = (b"DKIM-Signature: v=1; a=ed25519-sha256; d=example.org; s=e;\r\n\tb=abc\r\n"
               b"DKIM-Signature: v=1; a=rsa-sha256; d=other.example; s=r; b=def\r\n"
               b"From: a@example.org\r\n\r\nbody\r\n")
    found = strip_own_signatures(message, lambda d: d == "example.org")
    assert found is not None
    domain, stripped = found
    assert domain == "example.org"
    assert stripped == (b"DKIM-Signature: v=1; a=rsa-sha256; d=other.example; s=r; b=def\r\n"
                        b"From: a@example.org\r\n\r\nbody\r\n")
    assert strip_own_signatures(stripped, lambda d: d == "example.org") is None
