"""Unit tests of what operators read about a failed negotiation: the SASL refusal with the peer's
``<text/>``, a peer's stream error, and which rows ``peerage s2s status`` prints."""

from __future__ import annotations

from peerage.xmpp.s2s import peer_stream_error
from peerage.xmpp.s2s_cli import _rows
from peerage.xmpp.s2s_stream import sasl_failure_text
from peerage.xmpp.stream import XmlStreamParser

HEADER = (b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' "
          b"version='1.0'>")


def _element(xml: str):
    return XmlStreamParser().feed(HEADER + xml.encode())[-1]


def test_sasl_failure_names_condition_and_text() -> None:
    failure = _element("<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/>"
                       "<text xml:lang='en'>self signed certificate</text></failure>")
    assert sasl_failure_text(failure) == "not-authorized: self signed certificate"
    bare = _element("<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><invalid-mechanism/></failure>")
    assert sasl_failure_text(bare) == "invalid-mechanism"


def test_peer_stream_error_keeps_its_text() -> None:
    error = peer_stream_error(_element(
        "<stream:error><host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
        "<text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>no such host here</text></stream:error>"))
    assert error.condition == "host-unknown"
    assert error.text == "the peer sent a stream error: no such host here"


def _record(id_: int, direction: str, remote: str, state: str) -> dict[str, object]:
    return {"id": id_, "direction": direction, "local": "a.example", "remote": remote, "state": state}


def test_status_shows_open_rows_and_the_latest_failure_of_a_pair_with_nothing_open() -> None:
    connections = [  # most recent first
        _record(5, "out", "down.example", "failed"),
        _record(4, "out", "up.example", "open"),
        _record(3, "out", "up.example", "failed"),
        _record(2, "out", "down.example", "failed"),
        _record(1, "in", "up.example", "closed"),
    ]
    assert [r["id"] for r in _rows(connections, False)] == [5, 4]
    assert [r["id"] for r in _rows(connections, True)] == [5, 4, 3, 2, 1]
