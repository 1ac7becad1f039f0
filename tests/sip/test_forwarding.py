"""What the proxy forwards, line by line (RFC 3261 §16.6), and the parses it remembers between a
call's messages (the Record-Route MAC and URI, well-formed values, CSeq, the simple top Via).

A record-routed call goes through the transport's datagram entry point (parse, received/rport
stamp) into the proxy core, which sends into a list: the sans-I/O path of every UDP call.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerage.sip.message import (
    Recent,
    SipParseError,
    parse_cseq,
    parse_datagram,
    parse_name_addr,
    parse_uri,
    take_simple_via,
)
from peerage.sip.proxy import route_uri
from peerage.sip.registrar import Binding
from peerage.sip.transaction import Destination
from peerage.sip.transport import SipTransport
from tests.sip.test_proxy_core import build

CALLER = ("127.0.3.80", 5062)
CALLEE = ("127.0.3.81", 5064)
SDP = b"v=0\r\no=- 1 1 IN IP4 127.0.3.80\r\ns=-\r\nc=IN IP4 127.0.3.80\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n"


def setup() -> tuple[SipTransport, list[tuple[bytes, Destination]]]:
    core, clock, sent = build()
    core.registrar.bindings["sip:bob@a.test"] = [Binding(
        aor="sip:bob@a.test", contact=f"sip:bob@{CALLEE[0]}:{CALLEE[1]}", expires_at=clock.now + 10**10, q=1.0,
        call_id="reg", cseq=1, path=[], received=f"UDP {CALLEE[0]} {CALLEE[1]}")]
    transport = SipTransport(core.receive, max_message_size=65535)
    return transport, sent


def lines(data: bytes) -> list[str]:
    return data.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")


def to_callee(sent: list[tuple[bytes, Destination]]) -> list[bytes]:
    return [data for data, destination in sent if destination.address == CALLEE]


INVITE = [
    "INVITE sip:bob@a.test SIP/2.0",
    f"Via: SIP/2.0/UDP {CALLER[0]}:{CALLER[1]};branch=z9hG4bK-fw1;rport",
    "From: <sip:carol@far.test>;tag=c1",
    "To: <sip:bob@a.test>",
    "Call-ID: fw-1@127.0.3.80",
    "CSeq: 1 INVITE",
    "X-Unknown: kept as it came",
    "Max-Forwards: 70",
    f"Contact: <sip:carol@{CALLER[0]}:{CALLER[1]}>",
    "Content-Type: application/sdp",
    f"Content-Length: {len(SDP)}",
]


def test_a_forwarded_invite_keeps_its_lines_in_order_with_ours_on_top() -> None:
    transport, sent = setup()
    transport.datagram(("\r\n".join(INVITE) + "\r\n\r\n").encode() + SDP, CALLER)
    [invite] = to_callee(sent)
    got = lines(invite)
    assert got[0] == f"INVITE sip:bob@{CALLEE[0]}:{CALLEE[1]} SIP/2.0"  # §16.6 step 2: the target
    # step 4: our Record-Route on top (as Kamailio writes it), then step 8: our Via
    assert got[1].startswith("Record-Route: <sip:") and ";lr;pr=" in got[1]
    assert got[2].startswith("Via: SIP/2.0/UDP 127.0.3.69:5060;branch=z9hG4bK-pg-")
    # the caller's Via stamped (RFC 3581 §4), every other line as it came, Max-Forwards one
    # less in its own place (step 3), the body and its size unchanged
    assert got[3] == f"Via: SIP/2.0/UDP {CALLER[0]}:{CALLER[1]};branch=z9hG4bK-fw1;rport={CALLER[1]};received={CALLER[0]}"
    assert got[4:] == [line if not line.startswith("Max-Forwards") else "Max-Forwards: 69" for line in INVITE[2:]]
    assert invite.endswith(b"\r\n\r\n" + SDP)


def test_in_dialog_requests_lose_our_route_and_keep_the_rest() -> None:
    transport, sent = setup()
    transport.datagram(("\r\n".join(INVITE) + "\r\n\r\n").encode() + SDP, CALLER)
    record_route = lines(to_callee(sent)[0])[1].split(": ", 1)[1]
    for method, cseq, branch in (("ACK", 1, "fw2"), ("BYE", 2, "fw3")):
        sent.clear()
        request = [
            f"{method} sip:bob@{CALLEE[0]}:{CALLEE[1]} SIP/2.0",
            f"v: SIP/2.0/UDP {CALLER[0]}:{CALLER[1]};branch=z9hG4bK-{branch};rport",  # compact form
            "f: <sip:carol@far.test>;tag=c1",
            "t: <sip:bob@a.test>;tag=b1",
            "i: fw-1@127.0.3.80",
            f"CSeq: {cseq} {method}",
            f"Route: {record_route}",
            "Max-Forwards: 70",
            "X-Unknown: kept",
            "l: 0",
        ]
        transport.datagram(("\r\n".join(request) + "\r\n\r\n").encode(), CALLER)
        [forwarded] = to_callee(sent)
        # received lines keep their compact names (RFC 3261 §7.3.3), as Kamailio forwards them
        assert lines(forwarded)[3:7] == request[2:6]
        message = parse_datagram(forwarded)
        got = [(entry[0], entry[2]) for entry in message.headers]
        assert got[0][0] == "via" and "127.0.3.69:5060;branch=z9hG4bK-pg" in got[0][1]
        assert got[1] == ("via", f"SIP/2.0/UDP {CALLER[0]}:{CALLER[1]};branch=z9hG4bK-{branch};"
                                 f"rport={CALLER[1]};received={CALLER[0]}")
        # §16.4: our Route is gone; the rest in order, Max-Forwards one less where it was
        assert got[2:] == [("from", "<sip:carol@far.test>;tag=c1"), ("to", "<sip:bob@a.test>;tag=b1"),
                           ("call-id", "fw-1@127.0.3.80"), ("cseq", f"{cseq} {method}"),
                           ("max-forwards", "69"), ("x-unknown", "kept"), ("content-length", "0")]


def test_a_record_route_uri_is_known_as_parse_uri_reads_it() -> None:
    transport, sent = setup()
    transport.datagram(("\r\n".join(INVITE) + "\r\n\r\n").encode() + SDP, CALLER)
    value = lines(to_callee(sent)[0])[1].split(": ", 1)[1]
    assert route_uri(value) == parse_uri(parse_name_addr(value).uri)  # remembered, not parsed
    assert route_uri("<sip:127.0.3.69:5060;lr>") == parse_uri("sip:127.0.3.69:5060;lr")
    with pytest.raises(SipParseError):
        route_uri("<sip:127.0.3.69:5060;lr")


def test_recent_keeps_two_generations() -> None:
    recent = Recent(2)
    for key in "abc":
        recent.put(key, key.upper())
    # "a" and "b" filled the first generation; "c" started the second
    assert [recent[key] for key in "abcd"] == ["A", "B", "C", None]
    recent.put("d", "D")
    recent.put("e", "E")  # the second generation full: the first is dropped
    assert [recent[key] for key in "abcde"] == [None, None, "C", "D", "E"]


def test_remembered_parses_refuse_what_they_refused() -> None:
    assert parse_cseq("7 INVITE") == parse_cseq("7 INVITE") == (7, "INVITE")
    for bad in ("x INVITE", "1 IN VITE", "2147483648 BYE"):
        for _ in range(2):  # a refusal is never remembered as a parse
            with pytest.raises(SipParseError):
                parse_cseq(bad)
    ok = ("\r\n".join(INVITE) + "\r\n\r\n").encode() + SDP
    assert parse_datagram(ok).method == "INVITE"
    # the same From seen well-formed does not make a broken one pass, nor a good Request-URI a
    # bad From with the same text
    broken = ok.replace(b"From: <sip:carol@far.test>;tag=c1", b"From: <sip:carol@far.test;tag=c1")
    with pytest.raises(SipParseError):
        parse_datagram(broken)
    addr_spec = ok.replace(b"From: <sip:carol@far.test>;tag=c1", b"From: sip:bob@a.test?x")
    parse_datagram(ok.replace(b"INVITE sip:bob@a.test SIP", b"INVITE sip:bob@a.test?x SIP"))
    with pytest.raises(SipParseError):
        parse_datagram(addr_spec)


def test_the_simple_top_via_parse_is_handed_over_once() -> None:
    message = parse_datagram(("\r\n".join(INVITE) + "\r\n\r\n").encode() + SDP)
    raw = message.headers[0][2]
    first = take_simple_via(raw)
    second = take_simple_via(raw)
    assert first is not None and second is not None and first is not second
    assert first == second and first.branch == "z9hG4bK-fw1"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["branch=z9hG4bK-a", "branch=z9hG4bK-b", "rport", "ttl=1", "Branch=X",
                                 "received=127.0.3.9", " branch = z9hG4bK-c", "maddr=127.0.3.8"]),
                max_size=4),
       st.sampled_from(["SIP/2.0/UDP 127.0.3.7:5060", "SIP/2.0/TCP host.test", "SIP / 2.0 / UDP [::1]:5070"]))
def test_top_branch_agrees_with_the_parsed_via(params: list[str], sent_by: str) -> None:
    value = sent_by + "".join(f";{param}" for param in params)
    data = (f"SIP/2.0 200 OK\r\nVia: {value}\r\nVia: SIP/2.0/UDP 127.0.3.6;branch=z9hG4bK-z\r\n"
            "From: <sip:a@a.test>;tag=1\r\nTo: <sip:b@a.test>;tag=2\r\nCall-ID: tb\r\nCSeq: 1 INVITE\r\n"
            "Content-Length: 0\r\n\r\n").encode()
    try:
        expected = parse_datagram(data).top_via().branch
    except SipParseError:
        return
    assert parse_datagram(data).top_branch() == expected
