"""A peer's ``<stream:error/>`` on an inbound stream (RFC 6120 section 4.9): we close our side with
``</stream:stream>``, never answer with a stream error of our own, and record the peer's condition
and ``<text/>`` for ``peerage s2s status``."""

from __future__ import annotations

import pytest

from tests.harness import async_wait_for
from tests.s2s.helpers import FEDERATION_TIMEOUT, Federation, records
from tests.s2s.rawpeer import RawPeer


@pytest.fixture(scope="module")
def server(federation: Federation):
    server = federation.server("errors.s2s.test", "127.0.2.126", level="verified", users=("eve",))
    federation.start_all([server])
    return server


async def test_peer_stream_error_is_closed_not_answered(server) -> None:
    peer = RawPeer(server.address, "angry.example", "errors.s2s.test")
    try:
        await peer.connect()
        await peer.send("<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
                        "<text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>we do not like you</text>"
                        "</stream:error></stream:stream>")
        closing = await peer.read_to_eof()
    finally:
        await peer.close()
    assert "</stream:stream>" in closing
    assert "<stream:error" not in closing, closing
    await async_wait_for(lambda: records(server, "in", "angry.example"), FEDERATION_TIMEOUT,
                         "the inbound record")
    record = records(server, "in", "angry.example")[0]
    assert record["level"] == "U"
    assert "<policy-violation/>" in record["reason"] and "we do not like you" in record["reason"], record
