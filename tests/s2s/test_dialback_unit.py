"""Unit tests of the dialback core: XEP-0185 keys, persistence, elements, errors, piggybacking."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest

from peerage.xmpp import dialback
from peerage.xmpp.dialback import DialbackError, DialbackParseError, DialbackSecret, PairTable
from peerage.xmpp.stream import XmlStreamParser, serialize


def test_key_follows_xep0185_example() -> None:
    # XEP-0185 section 3 example: the HMAC key is the hex SHA-256 of the secret.
    secret = b"s3cr3tf0rd14lb4ck"
    key = DialbackSecret(secret).key("example.net", "example.com", "D60000229F")
    expected = hmac.new(hashlib.sha256(secret).hexdigest().encode(),
                        b"example.net example.com D60000229F", hashlib.sha256).hexdigest()
    assert key == expected
    assert len(key) == 64


def test_key_depends_on_every_input() -> None:
    s = DialbackSecret(b"x" * 32)
    base = s.key("a.example", "b.example", "id1")
    assert base != s.key("b.example", "a.example", "id1")
    assert base != s.key("a.example", "b.example", "id2")
    assert s.check("a.example", "b.example", "id1", base)
    assert not s.check("a.example", "b.example", "id1", "0" * 64)


def test_secret_persists_across_restarts(tmp_path: Path) -> None:
    first = DialbackSecret.load_or_create(tmp_path)
    key = first.key("r.example", "o.example", "s1")
    second = DialbackSecret.load_or_create(tmp_path)
    assert second.key("r.example", "o.example", "s1") == key
    assert (tmp_path / dialback.SECRET_FILE_NAME).stat().st_mode & 0o077 == 0


def _parse(xml: str):
    parser = XmlStreamParser()
    events = parser.feed(("<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' "
                          f"xmlns:db='jabber:server:dialback'>{xml}").encode())
    return events[-1]


def test_elements_round_trip() -> None:
    request = dialback.result_request("o.example", "r.example", "abc")
    text = serialize(request, "jabber:server")
    message = dialback.parse(_parse(text))
    assert (message.kind, message.from_, message.to, message.key, message.is_request) == (
        "result", "o.example", "r.example", "abc", True)
    verify = dialback.parse(_parse("<db:verify from='R.example' to='o.example' id='S1'>k</db:verify>"))
    assert verify.stream_id == "S1" and verify.from_ == "r.example"
    answer = dialback.verify_response(dialback.verify_request("r.example", "o.example", "S1", "k"), True)
    assert answer.attrs == {"from": "o.example", "to": "r.example", "id": "S1", "type": "valid"}


def test_error_elements() -> None:
    element = dialback.error_response("result", "r.example", "o.example", DialbackError.ITEM_NOT_FOUND)
    message = dialback.parse(_parse(serialize(element, "jabber:server")))
    assert message.type == "error" and message.error == "item-not-found"
    assert DialbackError.REMOTE_SERVER_TIMEOUT.error_type == "wait"


@pytest.mark.parametrize("xml", [
    "<db:result to='r.example'>k</db:result>",
    "<db:result from='o.example' to='r.example'></db:result>",
    "<db:verify from='o.example' to='r.example'>k</db:verify>",
    "<db:result from='o.example' to='r.example' type='maybe'>k</db:result>",
    "<db:result from='o.example' to='r.example'>" + "k" * 2000 + "</db:result>",
])
def test_bad_elements_are_refused(xml: str) -> None:
    with pytest.raises(DialbackParseError):
        dialback.parse(_parse(xml))


def test_piggybacked_pairs_are_tracked_separately() -> None:
    table = PairTable()
    assert table.request("o1.example", "r.example") is None
    assert table.request("o2.example", "r.example") is None
    assert table.request("o1.example", "r.example") is not None  # already pending
    table.settle("o1.example", "r.example", True)
    table.settle("o2.example", "r.example", False)
    assert table.authorised("o1.example", "r.example")
    assert not table.authorised("o2.example", "r.example")
    assert not table.authorised("o1.example", "other.example")
    assert table.remote_domains() == {"o1.example"}


def test_pending_pairs_are_bounded() -> None:
    table = PairTable()
    for index in range(dialback.MAX_PENDING_PAIRS):
        assert table.request(f"o{index}.example", "r.example") is None
    assert "too many" in (table.request("late.example", "r.example") or "")


def _reparse(wire: str) -> dialback.DialbackMessage:
    """Parse ``wire`` as the first element of a stream that declares the db prefix, as ours does."""
    parser = XmlStreamParser()
    header = ("<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'"
              f"{dialback.STREAM_DIALBACK_DECLARATION} version='1.0'>")
    events = parser.feed(header.encode() + wire.encode())
    return dialback.parse(events[-1])


def test_elements_are_written_with_the_db_prefix() -> None:
    # ejabberd (p1_xmpp) matches the qualified name db:result literally; Prosody writes it too.
    request = dialback.to_wire(dialback.result_request("a.example", "b.example", "k&y"))
    assert request == "<db:result from='a.example' to='b.example'>k&amp;y</db:result>"
    verify = dialback.to_wire(dialback.verify_response(
        dialback.verify_request("b.example", "a.example", "id1", "key"), True))
    assert verify == "<db:verify from='a.example' to='b.example' id='id1' type='valid'/>"
    message = _reparse(request)
    assert (message.kind, message.from_, message.to, message.key) == ("result", "a.example", "b.example", "k&y")


def test_error_child_is_unprefixed_as_in_xep0220() -> None:
    wire = dialback.to_wire(dialback.error_response("result", "b.example", "a.example",
                                                    DialbackError.REMOTE_SERVER_TIMEOUT))
    assert wire.startswith("<db:result from='b.example' to='a.example' type='error'><error type='")
    assert "<remote-server-timeout xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></db:result>" in wire
    message = _reparse(wire)
    assert message.type == "error" and message.error == "remote-server-timeout"
