"""Unit and property tests of the sans-I/O XML stream parser and serializer."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from peerage.xmpp.stream import (
    Element,
    StreamClosed,
    StreamFailure,
    StreamOpened,
    XmlStreamParser,
    error_reply,
    serialize,
    stream_error,
)

HEADER = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
          b"xmlns:stream='http://etherx.jabber.org/streams' to='example.org' version='1.0'>")


def opened_parser(limit: int = 65536) -> XmlStreamParser:
    parser = XmlStreamParser(max_stanza_bytes=limit)
    events = parser.feed(HEADER)
    assert isinstance(events[0], StreamOpened)
    return parser


def test_header_attributes_and_content_namespace() -> None:
    parser = XmlStreamParser()
    (event,) = parser.feed(HEADER[:-1] + b" xml:lang='fr'>")
    assert isinstance(event, StreamOpened)
    assert event.attrs["to"] == "example.org"
    assert event.attrs["xml:lang"] == "fr"
    assert event.content_ns == "jabber:client"


def test_stanzas_split_across_feeds_and_closing() -> None:
    parser = opened_parser()
    data = b"<message to='bob@example.org' type='chat'><body>a &amp; b &lt;c&gt;</body></message><iq type='get' id='1'/>"
    events = []
    for index in range(len(data)):
        events += parser.feed(data[index:index + 1])
    assert [e.name for e in events] == ["message", "iq"]  # type: ignore[union-attr]
    message = events[0]
    assert isinstance(message, Element)
    assert message.xmlns == ""
    assert message.find_text("body") == "a & b <c>"
    closing = parser.feed(b"</stream:stream>")
    assert len(closing) == 1 and isinstance(closing[0], StreamClosed)


def test_close_event() -> None:
    parser = opened_parser()
    events = parser.feed(b" <presence/> </stream:stream>")
    assert isinstance(events[0], Element)
    assert isinstance(events[1], StreamClosed)


def test_extension_namespaces_and_roundtrip() -> None:
    parser = opened_parser()
    raw = (b"<iq type='set' id='x'><query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'>"
           b"<conference jid='r@m.org' name='It&apos;s'/></storage></query></iq>")
    (iq,) = parser.feed(raw)
    assert isinstance(iq, Element)
    query = iq.find("query", "jabber:iq:private")
    assert query is not None and query.find("storage", "storage:bookmarks") is not None
    again = opened_parser().feed(serialize(iq).encode())[0]
    assert isinstance(again, Element)
    assert serialize(again) == serialize(iq)


def test_serialize_onto_server_stream_and_nested_content_namespace() -> None:
    message = Element("message", "", {"to": "a@b.org"})
    forwarded = message.add("forwarded", "urn:xmpp:forward:0")
    forwarded.children.append(Element("message", "", {"from": "c@d.org"}, ["x"]))
    text = serialize(message, content_ns="jabber:server")
    assert text.startswith("<message to='a@b.org'><forwarded xmlns='urn:xmpp:forward:0'>")
    assert "<message xmlns='jabber:server' from='c@d.org'>x</message>" in text


def test_escaping_attributes_and_text() -> None:
    el = Element("x", "", {"a": "'\"<&>"}, ["<&>\"'"])
    assert serialize(el) == "<x a='&apos;&quot;&lt;&amp;&gt;'>&lt;&amp;&gt;\"'</x>"


def _failure(data: bytes, limit: int = 65536) -> StreamFailure:
    parser = XmlStreamParser(max_stanza_bytes=limit)
    events = parser.feed(data)
    failure = events[-1]
    assert isinstance(failure, StreamFailure), events
    assert parser.failed
    assert parser.feed(b"<more/>") == []
    return failure


def test_doctype_is_restricted() -> None:
    assert _failure(b"<?xml version='1.0'?><!DOCTYPE stream [<!ENTITY x 'y'>]>").condition == "restricted-xml"


def test_billion_laughs_is_restricted() -> None:
    bomb = b"<!DOCTYPE lolz [<!ENTITY lol 'lol'><!ENTITY lol2 '&lol;&lol;&lol;'>]>" + HEADER
    assert _failure(bomb).condition == "restricted-xml"


def test_external_entity_is_restricted() -> None:
    xxe = b"<!DOCTYPE x [<!ENTITY e SYSTEM 'file:///etc/passwd'>]>" + HEADER
    assert _failure(xxe).condition == "restricted-xml"


def test_processing_instruction_and_comment_are_restricted() -> None:
    assert _failure(HEADER + b"<?php echo 1; ?>").condition == "restricted-xml"
    assert _failure(HEADER + b"<message><!-- hi --></message>").condition == "restricted-xml"


def test_malformed_xml() -> None:
    assert _failure(HEADER + b"<message></iq>").condition == "not-well-formed"
    assert _failure(HEADER + b"<message>&undefined;</message>").condition == "not-well-formed"
    assert _failure(HEADER + b"<a:message/>").condition == "not-well-formed"  # unbound prefix
    assert _failure(HEADER + b"\xff\xfe").condition == "not-well-formed"


def test_wrong_root_element() -> None:
    assert _failure(b"<html xmlns='http://www.w3.org/1999/xhtml'>").condition == "invalid-namespace"


def test_stanza_size_limit_complete_and_partial() -> None:
    big = b"<message><body>" + b"x" * 5000 + b"</body></message>"
    assert _failure(HEADER + big, limit=1000).condition == "policy-violation"
    parser = opened_parser(limit=1000)
    parser.feed(b"<message><body>")
    events = parser.feed(b"y" * 2000)
    assert isinstance(events[-1], StreamFailure) and events[-1].condition == "policy-violation"


def test_many_small_stanzas_are_not_counted_together() -> None:
    parser = opened_parser(limit=200)
    stanza = b"<message to='a@b.c'><body>hello</body></message>"
    events = parser.feed(stanza * 100)
    assert len(events) == 100 and all(isinstance(e, Element) for e in events)


def test_depth_limit() -> None:
    assert _failure(HEADER + b"<a>" * 100).condition == "policy-violation"


def test_stream_error_bytes() -> None:
    data = stream_error("host-unknown", "no <such> host")
    assert data == (b"<stream:error><host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
                    b"<text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>no &lt;such&gt; host</text>"
                    b"</stream:error></stream:stream>")
    assert b"undefined-condition" in stream_error("made-up")


def test_error_reply_swaps_addresses() -> None:
    iq = Element("iq", "", {"type": "get", "id": "7", "from": "a@b/c", "to": "d@e"}, [Element("q", "urn:x")])
    reply = error_reply(iq, "service-unavailable")
    text = serialize(reply)
    assert "to='a@b/c'" in text and "from='d@e'" in text and "type='error'" in text
    assert "<error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>" in text


# --- property tests ----------------------------------------------------------------------------

names = st.sampled_from(["message", "body", "x", "item", "query", "a-b", "z9"])
texts = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=30)


@st.composite
def elements(draw: st.DrawFn, depth: int = 0) -> Element:
    el = Element(draw(names), draw(st.sampled_from(["", "urn:a", "urn:b"])),
                 draw(st.dictionaries(st.sampled_from(["id", "to", "type", "x"]), texts, max_size=3)))
    for _ in range(draw(st.integers(0, 3 if depth < 3 else 0))):
        if draw(st.booleans()):
            el.children.append(draw(elements(depth + 1)))
        else:
            text = draw(texts)
            if text:
                el.children.append(text)
    return el


def _normalise(el: Element) -> tuple:
    merged: list = []
    for child in el.children:
        if isinstance(child, str):
            if merged and isinstance(merged[-1], str):
                merged[-1] += child
            else:
                merged.append(child)
        else:
            merged.append(_normalise(child))
    return (el.name, el.xmlns, sorted(el.attrs.items()), [m for m in merged if m != ""])


@settings(max_examples=200, deadline=None)
@given(elements(), st.integers(1, 64))
def test_serialize_then_parse_roundtrips_in_any_chunking(el: Element, chunk: int) -> None:
    data = serialize(el).encode()
    parser = opened_parser(limit=1 << 20)
    events = []
    for start in range(0, len(data), chunk):
        events += parser.feed(data[start:start + chunk])
    assert len(events) == 1 and isinstance(events[0], Element)
    text_ok = _normalise(events[0])
    # XML normalises CR and CRLF to LF in text and attribute values.
    expected = _normalise(opened_parser(limit=1 << 20).feed(data)[0])  # type: ignore[arg-type]
    assert text_ok == expected
    assert _normalise(events[0])[0] == el.name


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(1, 50))
def test_arbitrary_bytes_never_crash(data: bytes, chunk: int) -> None:
    parser = opened_parser(limit=4096)
    for start in range(0, len(data), chunk):
        events = parser.feed(data[start:start + chunk])
        for event in events:
            assert isinstance(event, Element | StreamClosed | StreamFailure)
        if parser.failed:
            assert isinstance(events[-1], StreamFailure)
            assert events[-1].condition in ("not-well-formed", "restricted-xml", "policy-violation",
                                            "invalid-namespace")
            break


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([b"<message>", b"</message>", b"<body>", b"</body>", b"hi", b"&amp;",
                                 b"<!DOCTYPE", b"<?pi?>", b"<!--c-->", b"<x xmlns='u'/>", b"&lt;", b"<iq/>",
                                 b"</stream:stream>", b"\x00", b"<![CDATA[x]]>"]), max_size=30))
def test_token_soup_never_crashes(tokens: list[bytes]) -> None:
    parser = opened_parser(limit=4096)
    for token in tokens:
        parser.feed(token)
        if parser.failed:
            break


# --- compaction (idle connections drop their expat parser) ------------------------------------

def test_compact_only_between_stanzas_and_parsing_continues() -> None:
    parser = opened_parser()
    assert parser.compact()  # right after the header
    assert parser.feed(b"<message><body>one</body></message>")[0].name == "message"  # type: ignore[union-attr]
    assert parser.compact()
    assert parser.feed(b"<message><bo") == []
    assert not parser.compact()  # mid-stanza
    (message,) = parser.feed(b"dy>two</body></message>  ")
    assert isinstance(message, Element) and message.find_text("body") == "two"
    assert parser.compact()
    closing = parser.feed(b"</stream:stream>")
    assert isinstance(closing[0], StreamClosed)


def test_compact_keeps_extra_namespace_prefixes_and_limits() -> None:
    parser = XmlStreamParser(max_stanza_bytes=500)
    parser.feed(b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' "
                b"xmlns:x='urn:extra'>")
    assert parser.compact()
    (el,) = parser.feed(b"<x:thing a='1'/>")
    assert isinstance(el, Element) and el.xmlns == "urn:extra"
    assert parser.compact()
    events = parser.feed(b"<message>" + b"z" * 1000 + b"</message>")
    assert isinstance(events[-1], StreamFailure) and events[-1].condition == "policy-violation"


def test_attribute_with_gt_is_still_a_boundary() -> None:
    parser = opened_parser()
    parser.feed(b"<presence><status>a</status></presence><iq a='x>y' id='1'/>")
    assert parser.compact()
    assert parser.feed(b"<iq id='2'/>")[0].attrs["id"] == "2"  # type: ignore[union-attr]


@settings(max_examples=200, deadline=None)
@given(st.lists(elements(), min_size=1, max_size=4), st.integers(1, 40), st.lists(st.booleans(), max_size=200))
def test_compaction_never_changes_what_is_parsed(els: list[Element], chunk: int, compact_at: list[bool]) -> None:
    data = b"".join(serialize(el).encode() + b" " for el in els)
    plain = opened_parser(limit=1 << 20).feed(data)
    parser = opened_parser(limit=1 << 20)
    events: list = []
    for index, start in enumerate(range(0, len(data), chunk)):
        if index < len(compact_at) and compact_at[index]:
            parser.compact()
        events += parser.feed(data[start:start + chunk])
    assert [_normalise(e) for e in events] == [_normalise(e) for e in plain]  # type: ignore[arg-type]


def test_partial_start_tag_with_gt_in_attribute_is_not_a_boundary() -> None:
    parser = opened_parser()
    parser.feed(b"<iq id='1'/><message a='x>y'")
    assert not parser.compact()
    parser = opened_parser()
    parser.feed(b"<iq id='1'></iq><message a='x>y'")
    assert not parser.compact()
    (message,) = parser.feed(b"><body>ok</body></message>")
    assert isinstance(message, Element) and message.attrs["a"] == "x>y"


# --- release (a parser is freed by reference counting, not by the cyclic collector) ------------

def _live_parsers() -> int:
    import gc

    return sum(1 for obj in gc.get_objects() if type(obj) is XmlStreamParser)


def test_release_frees_parsers_without_the_cyclic_collector() -> None:
    import gc

    from peerage.xmpp.bosh import BoshEndpoint
    from peerage.xmpp.stream import parse_stored

    gc.collect()
    gc.disable()  # what survives now is what only the cyclic collector would free
    try:
        before = _live_parsers()
        kept = [opened_parser() for _ in range(3)]
        for parser in kept:
            parser.feed(b"<message><body>x</body></message>")
        assert _live_parsers() == before + 3
        for parser in kept:
            parser.release()
            assert parser.feed(b"<iq id='1'/>") == []  # a released parser takes no more input
        del kept, parser
        assert _live_parsers() == before
        # One-shot parses let theirs go too: a stored stanza, a BOSH request body (XEP-0124).
        for _ in range(3):
            assert parse_stored("<message><body>stored</body></message>").name == "message"
        endpoint = BoshEndpoint.__new__(BoshEndpoint)
        endpoint.max_body = 65536
        body = endpoint._parse(b"<body xmlns='http://jabber.org/protocol/httpbind' rid='1'><message/></body>")
        assert body is not None and body.name == "body"
        assert _live_parsers() == before
    finally:
        gc.enable()
