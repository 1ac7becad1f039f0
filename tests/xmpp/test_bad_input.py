"""Bad input on client streams gets the RFC 6120 stream error and never disturbs other sessions."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.harness import PeerageServer
from tests.xmpp.conftest import PASSWORD, start_server
from tests.xmpp.rawclient import HEADER, RawClient

SERVER_ADDRESS = "127.0.1.4"
#: RFC 6120 section 13.12: servers must accept stanzas of at least 10000 bytes; use that minimum here.
STANZA_LIMIT = 10000


@pytest.fixture(scope="module")
def xmpp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PeerageServer]:
    server = start_server(tmp_path_factory.mktemp("bad"), SERVER_ADDRESS, ["alice@a.test", "bob@b.test", "eve@a.test"],
                          config={"xmpp": {"max_stanza_size": STANZA_LIMIT}})
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def witnesses(xmpp_server: PeerageServer) -> AsyncIterator[tuple[RawClient, RawClient]]:
    """Two sessions that keep chatting while the bad client misbehaves."""
    alice = RawClient(SERVER_ADDRESS, "a.test")
    bob = RawClient(SERVER_ADDRESS, "b.test")
    await alice.login("alice", PASSWORD, resource="w")
    await bob.login("bob", PASSWORD, resource="w")
    yield alice, bob
    await alice.close()
    await bob.close()


COUNTER = iter(range(10**6))


async def still_chatting(witnesses: tuple[RawClient, RawClient]) -> None:
    alice, bob = witnesses
    marker = f"ping-{next(COUNTER)}"
    await alice.send(f"<message to='bob@b.test/w' type='chat'><body>{marker}</body></message>")
    assert marker in await bob.read_until(f"<body>{marker}</body>.*?</message>")


async def stream_error_for(payload: bytes, *, authenticated: bool) -> str:
    client = RawClient(SERVER_ADDRESS, "a.test")
    try:
        if authenticated:
            await client.login("eve", PASSWORD, resource="bad")
        else:
            await client.connect()
            if not payload.startswith((b"<?xml", b"<!DOCTYPE")):
                await client.open_stream()
        await client.send(payload)
        text = await client.read_to_eof()
    finally:
        await client.close()
    assert "</stream:error></stream:stream>" in text, text
    return text


def condition(name: str) -> str:
    return f"<{name} xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"


CASES = [
    ("doctype", b"<?xml version='1.0'?><!DOCTYPE stream:stream [<!ENTITY a 'b'>]>"
     + HEADER.format(domain="a.test").encode()[21:], False, "restricted-xml"),
    ("billion-laughs", b"<!DOCTYPE x [<!ENTITY l 'lol'><!ENTITY l2 '&l;&l;&l;&l;'><!ENTITY l3 '&l2;&l2;&l2;'>]>",
     False, "restricted-xml"),
    ("external-entity", b"<!DOCTYPE x [<!ENTITY xxe SYSTEM 'file:///etc/passwd'>]>", False, "restricted-xml"),
    ("processing-instruction", b"<?evil data?>", True, "restricted-xml"),
    ("comment", b"<message to='bob@b.test'><!-- hidden --><body>x</body></message>", True, "restricted-xml"),
    ("mismatched-tags", b"<message><body>x</message>", True, "not-well-formed"),
    ("undefined-entity", b"<message><body>&nbsp;</body></message>", True, "not-well-formed"),
    ("binary-garbage", b"\x00\xff\xfe<<<>>>", True, "not-well-formed"),
    ("unbound-prefix", b"<foo:message/>", True, "not-well-formed"),
    ("oversized-stanza", b"<message to='bob@b.test'><body>" + b"A" * (STANZA_LIMIT * 2) + b"</body></message>",
     True, "policy-violation"),
    ("oversized-unfinished", b"<message><body>" + b"A" * (STANZA_LIMIT * 2), True, "policy-violation"),
    ("unknown-top-level-element", b"<hello xmlns='urn:example:unknown'/>", True, "unsupported-stanza-type"),
    ("stanza-before-auth", b"<message to='bob@b.test'><body>x</body></message>", False, "not-authorized"),
]


@pytest.mark.parametrize("name,payload,authenticated,expected", CASES, ids=[c[0] for c in CASES])
async def test_bad_input_gets_stream_error(witnesses: tuple[RawClient, RawClient], name: str, payload: bytes,
                                           authenticated: bool, expected: str) -> None:
    await still_chatting(witnesses)
    text = await stream_error_for(payload, authenticated=authenticated)
    assert condition(expected) in text
    await still_chatting(witnesses)


async def test_wrong_stream_namespace(witnesses: tuple[RawClient, RawClient]) -> None:
    client = RawClient(SERVER_ADDRESS, "a.test")
    await client.connect()
    await client.send("<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
                      "xmlns:stream='http://etherx.jabber.org/streams' to='a.test' version='1.0'>")
    text = await client.read_to_eof()
    await client.close()
    assert condition("invalid-namespace") in text
    await still_chatting(witnesses)


async def test_message_to_unknown_local_user_bounces(witnesses: tuple[RawClient, RawClient]) -> None:
    alice, _ = witnesses
    await alice.send("<message to='nobody@b.test' id='m1' type='chat'><body>x</body></message>")
    bounce = await alice.read_until(r"<message[^>]*id='m1'.*?</message>")
    assert "type='error'" in bounce and "<service-unavailable" in bounce


async def test_malformed_to_address_gets_jid_malformed(witnesses: tuple[RawClient, RawClient]) -> None:
    alice, _ = witnesses
    await alice.send("<iq type='get' id='j1' to='a@@b/'><ping xmlns='urn:xmpp:ping'/></iq>")
    reply = await alice.read_until(r"<iq[^>]*id='j1'.*?</iq>")
    assert "<jid-malformed" in reply
    await still_chatting(witnesses)
