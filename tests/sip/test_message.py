"""Unit tests of the SIP message layer, organised by RFC 4475 torture categories."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerage.sip.message import (
    MAX_HEADER_BLOCK,
    SipMessage,
    SipParseError,
    StreamParser,
    UnsupportedScheme,
    make_response,
    parse_datagram,
    parse_name_addr,
    parse_uri,
    parse_via,
    split_values,
    without_top_via,
)


def msg(*lines: str, body: bytes = b"") -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


BASIC = (
    "INVITE sip:bob@b.test SIP/2.0",
    "Via: SIP/2.0/UDP 127.0.3.1:5060;branch=z9hG4bK1",
    "Max-Forwards: 70",
    "From: Alice <sip:alice@a.test>;tag=1",
    "To: <sip:bob@b.test>",
    "Call-ID: c1@a",
    "CSeq: 1 INVITE",
)


def test_basic_request_roundtrip() -> None:
    message = parse_datagram(msg(*BASIC, "Content-Length: 3", body=b"abc"))
    assert message.method == "INVITE" and message.uri == "sip:bob@b.test"
    assert message.body == b"abc"
    again = parse_datagram(message.serialize())
    assert again.headers == message.headers and again.body == b"abc"


# --- RFC 4475 §3.1.1.1 (wsinv): tortuous but valid: compact forms, folding, case, whitespace -------
def test_tortuous_valid_invite() -> None:
    data = msg(
        "INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0",
        "TO :",
        " sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n",
        'from   : "J Rosenberg \\\\\\""       <sip:jdrosen@example.com>',
        "  ;",
        "  tag = 98asjd8",
        "MaX-fOrWaRdS: 0068",
        "Call-ID: wsinv.ndaksdj@192.0.2.1",
        "Content-Length   : 0",
        "cseq: 0009",
        "  INVITE",
        "Via  : SIP  /   2.0",
        " /UDP",
        "    192.0.2.2;branch=390skdjuw",
        "s :",
        "NewFangledHeader:   newfangled value",
        " continued newfangled value",
        "UnknownHeaderWithUnusualValue: ;;,,;;,;",
        "m:\"Quoted string \\\"\\\"\" <sip:jdrosen@example.com> ; newparam =",
        "      newvalue ;",
        "  secondparam ; q = 0.33",
    )
    message = parse_datagram(data)
    assert message.cseq == (9, "INVITE")
    assert message.get("subject") == ""
    assert message.get("NewFangledHeader") == "newfangled value continued newfangled value"
    via = message.top_via()
    assert via.transport == "UDP" and via.host == "192.0.2.2" and via.branch == "390skdjuw"
    contact = parse_name_addr(message.get("m") or "")
    assert contact.display == 'Quoted string ""'
    assert contact.params["q"] == "0.33"
    sender = parse_name_addr(message.get("from") or "")
    assert sender.display == 'J Rosenberg \\"'
    assert message.from_tag() == "98asjd8"


# --- §3.1.1.2/3.1.1.3/3.1.1.4: escaped characters ----------------------------------------------
def test_escaped_user_and_null() -> None:
    uri = parse_uri("sip:sips%3Auser%40example.com@example.net")
    assert uri.user == "sips:user@example.com" and uri.host == "example.net"
    assert parse_uri("sip:null-%00-null@example.com").user == "null-\x00-null"
    assert parse_uri("sip:%61lice@example.com").user == "alice"


def test_ipv6_references() -> None:
    uri = parse_uri("sip:[2001:db8::10]:5070;transport=tcp")
    assert uri.host == "2001:db8::10" and uri.port == 5070 and uri.transport == "tcp"
    via = parse_via("SIP/2.0/UDP [2001:db8::9:1]:6050;branch=z9hG4bKas3;received=2001:db8::9:255")
    assert via.host == "2001:db8::9:1" and via.port == 6050
    assert via.params["received"] == "2001:db8::9:255"
    assert str(via).startswith("SIP/2.0/UDP [2001:db8::9:1]:6050")
    with pytest.raises(SipParseError):
        parse_uri("sip:user@2001:db8::10")  # RFC 5118 §4.10: IPv6 without brackets


def test_multi_value_headers_and_quotes() -> None:
    values = split_values('<sip:a@x;lr>, "a, b" <sip:b@y>,sip:c@z')
    assert values == ["<sip:a@x;lr>", '"a, b" <sip:b@y>', "sip:c@z"]
    data = msg(*BASIC, "Route: <sip:p1;lr>, <sip:p2;lr>", "Route: <sip:p3;lr>", "Content-Length: 0")
    message = parse_datagram(data)
    assert message.get_all("route") == ["<sip:p1;lr>", "<sip:p2;lr>", "<sip:p3;lr>"]
    assert message.pop_first_value("route") == "<sip:p1;lr>"
    assert message.get_all("route") == ["<sip:p2;lr>", "<sip:p3;lr>"]


def test_unusual_method_and_reason() -> None:
    data = msg(
        "!interesting-Method0123456789_*+`.%indeed'~ sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com SIP/2.0",
        "Via: SIP/2.0/TCP host1.example.com;branch=z9hG4bK-.!%66*_+`'~",
        "To: <sip:a@example.com>", "From: <sip:b@example.com>;tag=1", "Call-ID: x",
        "CSeq: 139122385 !interesting-Method0123456789_*+`.%indeed'~", "Content-Length: 0")
    message = parse_datagram(data)
    assert message.method == "!interesting-Method0123456789_*+`.%indeed'~"
    response = parse_datagram(msg("SIP/2.0 200 = 2**3 * 5**2 но сто девяносто девять - простое",
                                  "Via: SIP/2.0/UDP h;branch=z9hG4bK1", "To: <sip:a@b>;tag=2",
                                  "From: <sip:b@c>;tag=1", "Call-ID: y", "CSeq: 1 INVITE",
                                  "Content-Length: 0"))
    assert response.status == 200 and "простое" in response.reason


# --- §3.1.2 invalid messages ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("lines", "status"),
    [
        # ltgtruri: Request-URI in <>
        (("INVITE <sip:bob@b.test> SIP/2.0", *BASIC[1:], "Content-Length: 0"), 400),
        # lwsstart: several spaces in the Request-Line
        (("INVITE  sip:bob@b.test  SIP/2.0", *BASIC[1:], "Content-Length: 0"), 400),
        # trws: trailing whitespace after the version
        (("INVITE sip:bob@b.test SIP/2.0 ", *BASIC[1:], "Content-Length: 0"), 400),
        # escruri: unescaped space in the Request-URI
        (("INVITE sip:bob one@b.test SIP/2.0", *BASIC[1:], "Content-Length: 0"), 400),
        # badvers: SIP/7.0
        (("INVITE sip:bob@b.test SIP/7.0", *BASIC[1:], "Content-Length: 0"), 505),
        # mismatch01: CSeq method differs
        ((*BASIC[:-1], "CSeq: 1 OPTIONS", "Content-Length: 0"), 400),
        # scalar02: negative Content-Length
        ((*BASIC, "Content-Length: -999"), 400),
        # scalarlg: enormous CSeq
        ((*BASIC[:-1], "CSeq: 36893488147419103232 INVITE", "Content-Length: 0"), 400),
        # scalarlg: enormous Max-Forwards
        ((*BASIC[:1], *BASIC[1:2], "Max-Forwards: 300", *BASIC[3:], "Content-Length: 0"), 400),
        # quotbal: unterminated quote in To
        ((*BASIC[:4], 'To: "Mr. J. User <sip:j.user@example.com>', *BASIC[5:], "Content-Length: 0"), 400),
        # baddn: display name with non-token characters unquoted
        ((*BASIC[:3], "From: Bell, Alexander <sip:a.g.bell@bell-tel.com>;tag=43", *BASIC[4:],
          "Content-Length: 0"), 400),
        # badaspec: addr-spec with '?' and no <>
        ((*BASIC[:4], "To: sip:user@example.org?Route=%3Csip:example.com%3E", *BASIC[5:],
          "Content-Length: 0"), 400),
        # missing mandatory header (Call-ID)
        ((*BASIC[:5], *BASIC[6:], "Content-Length: 0"), 400),
    ],
)
def test_invalid_messages(lines: tuple[str, ...], status: int) -> None:
    with pytest.raises(SipParseError) as caught:
        parse_datagram(msg(*lines))
    assert caught.value.status == status


def test_bad_content_length_framing() -> None:
    # clerr: Content-Length larger than the datagram body -> 400 (RFC 3261 §18.3)
    with pytest.raises(SipParseError) as caught:
        parse_datagram(msg(*BASIC, "Content-Length: 9999", body=b"short"))
    assert caught.value.message is not None  # enough to answer 400
    # extra bytes after the declared length are discarded on UDP
    message = parse_datagram(msg(*BASIC, "Content-Length: 2", body=b"abcdef"))
    assert message.body == b"ab"


def test_unknown_scheme_is_416_not_parse_error() -> None:
    message = parse_datagram(msg("OPTIONS soap.beep://192.0.2.103:3002 SIP/2.0", *BASIC[1:-1],
                                 "CSeq: 1 OPTIONS", "Content-Length: 0"))
    with pytest.raises(UnsupportedScheme) as caught:
        parse_uri(message.uri or "")
    assert caught.value.status == 416


def test_garbage_and_truncation() -> None:
    for data in (b"", b"\x00\xff" * 50, b"INVITE", msg(*BASIC)[:40], b"\r\n\r\n",
                 b"SIP/2.0 99999 Huge\r\n\r\n", b"NOTSIP\r\nfoo\r\n\r\n"):
        with pytest.raises(SipParseError):
            parse_datagram(data)


def test_huge_header_and_too_large() -> None:
    with pytest.raises(SipParseError) as caught:
        parse_datagram(msg(*BASIC, "X-Big: " + "a" * 70000))
    assert caught.value.status in (400, 513)
    with pytest.raises(SipParseError):
        parse_datagram(msg(*BASIC, *[f"X-{i}: v" for i in range(400)]))


# --- streams ----------------------------------------------------------------------------------------
def test_stream_framing_and_keepalive() -> None:
    parser = StreamParser()
    one = msg(*BASIC, "Content-Length: 4", body=b"body")
    two = msg(*BASIC, "Content-Length: 0")
    data = b"\r\n\r\n" + one + two
    out: list[SipMessage | str] = []
    for index in range(0, len(data), 7):  # dribble in small pieces
        out += parser.feed(data[index:index + 7])
    assert out[0] == "ping"
    messages = [m for m in out if isinstance(m, SipMessage)]
    assert [m.body for m in messages] == [b"body", b""]
    assert parser.pending == 0


def test_stream_requires_content_length_and_bounds_headers() -> None:
    with pytest.raises(SipParseError):
        StreamParser().feed(msg(*BASIC))
    with pytest.raises(SipParseError):
        StreamParser().feed(b"INVITE sip:x@y SIP/2.0\r\n" + b"X: y\r\n" * (MAX_HEADER_BLOCK // 4))


def test_make_response_copies_headers() -> None:
    request = parse_datagram(msg(*BASIC, "Content-Length: 0"))
    response = make_response(request, 486, to_tag="abc")
    assert response.status == 486 and response.reason == "Busy Here"
    assert response.to_tag() == "abc" and response.from_tag() == "1"
    assert parse_datagram(response.serialize()).cseq == (1, "INVITE")


# --- property tests -----------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_parser_never_crashes_on_arbitrary_bytes(data: bytes) -> None:
    with contextlib.suppress(SipParseError):
        parse_datagram(data)


header_text = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E,
                                             blacklist_characters=","), min_size=1, max_size=30)


@settings(max_examples=200, deadline=None)
@given(value=header_text, body=st.binary(max_size=200), mutate_at=st.integers(0, 400),
       byte=st.integers(0, 255))
def test_roundtrip_and_mutation(value: str, body: bytes, mutate_at: int, byte: int) -> None:
    message = parse_datagram(msg(*BASIC, f"X-Test: {value}", f"Content-Length: {len(body)}", body=body))
    assert message.get("x-test") == value.strip()
    data = message.serialize()
    again = parse_datagram(data)
    assert again.body == body and again.get("x-test") == message.get("x-test")
    # a single corrupted byte either still parses or raises SipParseError, nothing else
    corrupted = bytearray(data)
    corrupted[mutate_at % len(corrupted)] = byte
    stream = StreamParser()
    for parse in (parse_datagram, stream.feed):
        with contextlib.suppress(SipParseError):
            parse(bytes(corrupted))


EDITS = st.lists(st.tuples(
    st.sampled_from(["add", "add_first", "set", "remove", "pop_first_value", "edit_in_place", "push_via"]),
    st.sampled_from(["Via", "v", "Route", "Record-Route", "Max-Forwards", "CSeq", "Contact", "X-Other"]),
    st.sampled_from(["SIP/2.0/UDP 127.0.3.9:5060;branch=z9hG4bKx", "<sip:p.test;lr>, <sip:q.test;lr>", "69",
                     "2 INVITE"])), max_size=12)


@given(EDITS)
@settings(max_examples=300, deadline=None)
def test_header_index_follows_every_edit(edits: list[tuple[str, str, str]]) -> None:
    """The index that lookups use is kept up to date by each edit (not rebuilt): after any sequence
    of edits every lookup answers what a fresh scan of the lines answers."""
    message = parse_datagram(msg(*BASIC, "Route: <sip:r1.test;lr>,<sip:r2.test;lr>", "Route: <sip:r3.test;lr>"))
    names = ("via", "route", "record-route", "max-forwards", "cseq", "contact", "x-other", "call-id")
    for operation, name, value in edits:
        message.get("via")  # the index exists before each edit, as in the proxy
        if operation == "edit_in_place":
            positions = [i for i, entry in enumerate(message.headers) if entry[0] == "via"]
            if positions:
                entry = message.headers[positions[0]]
                message.headers[positions[0]] = (entry[0], entry[1], entry[2] + ";received=127.0.3.8")
                message.headers_changed("via")
        elif operation == "push_via":
            message.push_via("UDP", "127.0.3.7", 5060, "z9hG4bKpushed")
        elif operation == "pop_first_value":
            message.pop_first_value(name)
        elif operation == "remove":
            message.remove(name)
        else:
            getattr(message, operation)(name, value)
        fresh = SipMessage(headers=list(message.headers))
        for key in names:
            assert message.get(key) == fresh.get(key), (operation, name, key)


def test_forwarded_copy_takes_over_the_index() -> None:
    """SipMessage.inherit_views: the copy answers from the original's index, but for the header that
    differs, and the original's later edits do not leak into the copy."""
    request = parse_datagram(msg(*BASIC))
    assert request.get("max-forwards") == "70" and request.cseq == (1, "INVITE")
    headers = [entry for entry in request.headers if entry[0] != "max-forwards"]
    headers.insert(1, ("max-forwards", "Max-Forwards", "69"))
    copy = SipMessage(method="INVITE", uri="sip:bob@127.0.3.2", headers=headers)
    copy.inherit_views(request, "max-forwards", "69")
    request.set("Call-ID", "other@a")
    assert copy.get("max-forwards") == "69" and copy.call_id == "c1@a" and copy.cseq == (1, "INVITE")
    assert request.call_id == "other@a"


def test_copy_is_independent() -> None:
    """SipMessage.copy: edits to the copy (the proxy's Via and Record-Route) leave the original as it
    was, and both keep answering lookups from their own index."""
    request = parse_datagram(msg(*BASIC))
    assert request.first_value("via") == "SIP/2.0/UDP 127.0.3.1:5060;branch=z9hG4bK1"
    copy = request.copy()
    copy.push_via("UDP", "127.0.3.2", 5060, "z9hG4bKproxy")
    copy.add_first("Record-Route", "<sip:127.0.3.2;lr>")
    assert copy.first_value("via") == "SIP/2.0/UDP 127.0.3.2:5060;branch=z9hG4bKproxy;rport"
    assert copy.get("record-route") == "<sip:127.0.3.2;lr>" and copy.cseq == (1, "INVITE")
    assert request.first_value("via") == "SIP/2.0/UDP 127.0.3.1:5060;branch=z9hG4bK1"
    assert request.get("record-route") is None and len(request.headers) == len(copy.headers) - 2


RESPONSE = (b"SIP/2.0 180 Ringing\r\n"
            b"Via: SIP/2.0/UDP 127.0.3.200:5060;branch=z9hG4bK-pg-1;rport\r\n"
            b"Via: SIP/2.0/UDP 127.0.3.202:5401;branch=z9hG4bK-a;received=127.0.3.202\r\n"
            b"From: <sip:a@x.test>;tag=1\r\nTo: <sip:b@x.test>;tag=2\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n"
            b"Content-Length: 4\r\n\r\nbody")


def test_response_forwarded_from_its_bytes_without_the_top_via() -> None:
    response = parse_datagram(RESPONSE)
    data = without_top_via(response)
    assert data == RESPONSE.replace(b"Via: SIP/2.0/UDP 127.0.3.200:5060;branch=z9hG4bK-pg-1;rport\r\n", b"")
    forwarded = parse_datagram(data)
    assert forwarded.get_all("via") == ["SIP/2.0/UDP 127.0.3.202:5401;branch=z9hG4bK-a;received=127.0.3.202"]
    assert forwarded.body == b"body"


@pytest.mark.parametrize("datagram", [
    RESPONSE + b"extra",  # bytes past Content-Length are not forwarded
    RESPONSE.replace(b"Content-Length: 4\r\n", b""),  # no Content-Length on UDP
    RESPONSE.replace(b";rport\r\nVia: ", b";rport, "),  # two values on one line
    RESPONSE.replace(b";branch=z9hG4bK-pg-1", b"\r\n ;branch=z9hG4bK-pg-1"),  # folded
])
def test_response_bytes_not_used_when_they_are_not_its_wire_form(datagram: bytes) -> None:
    response = parse_datagram(datagram)
    assert without_top_via(response) is None
    upstream = response.copy()
    upstream.pop_first_value("via")
    assert upstream.get("via") == "SIP/2.0/UDP 127.0.3.202:5401;branch=z9hG4bK-a;received=127.0.3.202"


def test_response_bytes_dropped_on_edit() -> None:
    response = parse_datagram(RESPONSE)
    response.add("Warning", '399 x "y"')
    assert without_top_via(response) is None


@pytest.mark.parametrize(("via", "stamped"), [
    ("SIP/2.0/UDP 127.0.3.2:5401;branch=z9hG4bK-a;rport", "SIP/2.0/UDP 127.0.3.2:5401;branch=z9hG4bK-a;rport=5999;received=127.0.3.9"),
    ("SIP/2.0/UDP 127.0.3.9:5401;branch=z9hG4bK-a;RPort", "SIP/2.0/UDP 127.0.3.9:5401;branch=z9hG4bK-a;rport=5999;received=127.0.3.9"),
    ("SIP/2.0/UDP 127.0.3.9:5401;branch=z9hG4bK-a", "SIP/2.0/UDP 127.0.3.9:5401;branch=z9hG4bK-a"),
    ("SIP/2.0/UDP a.test;branch=z9hG4bK-a;received=127.0.3.1", "SIP/2.0/UDP a.test;branch=z9hG4bK-a;received=127.0.3.1"),
    ("SIP/2.0/UDP a.test;branch=z9hG4bK-a", "SIP/2.0/UDP a.test;branch=z9hG4bK-a;received=127.0.3.9"),
    ("SIP/2.0/UDP a.test ;branch=z9hG4bK-a ; rport", "SIP/2.0/UDP a.test ;branch=z9hG4bK-a ;rport=5999;received=127.0.3.9"),
])
def test_received_and_rport_stamped_on_the_top_via(via: str, stamped: str) -> None:
    from peerage.sip.transport import stamp_via

    request = parse_datagram(msg(*BASIC[:1], f"Via: {via}", "Via: SIP/2.0/UDP 127.0.3.5;branch=z9hG4bK-b",
                                 *BASIC[2:]))
    stamp_via(request, "127.0.3.9", 5999)
    assert request.get_all("via")[0] == stamped
    assert request.top_via() == parse_via(stamped)
    assert request.get_all("via")[1] == "SIP/2.0/UDP 127.0.3.5;branch=z9hG4bK-b"
