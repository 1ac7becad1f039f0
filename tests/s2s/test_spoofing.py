"""Permissive acceptance, and what a verifying server refuses: unverified peers, wrong dialback keys,
and stanzas from a domain the stream never authenticated."""

from __future__ import annotations

import pytest

from tests.harness import async_wait_for
from tests.s2s.helpers import FEDERATION_TIMEOUT, Federation, best_level, login, read_stanza, records
from tests.s2s.rawpeer import RawPeer


@pytest.fixture(scope="module")
def servers(federation: Federation):
    permissive = federation.server("open.s2s.test", "127.0.2.31", level="permissive", users=("pat",))
    verified = federation.server("strict.s2s.test", "127.0.2.32", level="verified", users=("vic",))
    honest = federation.server("honest.s2s.test", "127.0.2.33", level="verified", users=("hal",))
    federation.start_all([permissive, verified, honest])
    return permissive, verified, honest


async def test_permissive_accepts_a_peer_that_never_verifies(servers) -> None:
    permissive, _, _ = servers
    pat = await login(permissive, "pat@open.s2s.test")
    peer = RawPeer(permissive.address, "nowhere.invalid", "open.s2s.test")
    try:
        await peer.connect()
        await peer.send("<message from='ghost@nowhere.invalid' to='pat@open.s2s.test' id='p1'>"
                        "<body>unverified hello</body></message>")
        got = await read_stanza(pat, r"<message[^>]*id='p1'.*?</message>")
        assert "unverified hello" in got
        await async_wait_for(lambda: best_level(permissive, "in", "nowhere.invalid") == "P",
                             FEDERATION_TIMEOUT, "level P recorded")
    finally:
        await peer.close()
        await pat.close()


async def test_verified_server_refuses_unverified_stanzas(servers) -> None:
    _, verified, _ = servers
    vic = await login(verified, "vic@strict.s2s.test")
    peer = RawPeer(verified.address, "honest.s2s.test", "strict.s2s.test")
    try:
        await peer.connect()
        await peer.send("<message from='hal@honest.s2s.test' to='vic@strict.s2s.test' id='s1'>"
                        "<body>spoofed</body></message>")
        closing = await peer.read_to_eof()
        assert "<invalid-from" in closing and "</stream:stream>" in closing
        # Nothing was delivered: a legitimate message sent afterwards is the first one vic sees.
        await vic.send("<message to='vic@strict.s2s.test' id='s2'><body>marker</body></message>")
        got = await read_stanza(vic, r"<message[^>]*id='s2'.*?</message>")
        assert "spoofed" not in got
    finally:
        await peer.close()
        await vic.close()


async def test_wrong_dialback_key_is_invalid_then_closed(servers) -> None:
    _, verified, _honest = servers
    vic = await login(verified, "vic@strict.s2s.test")
    peer = RawPeer(verified.address, "honest.s2s.test", "strict.s2s.test")
    try:
        await peer.connect()
        await peer.send("<db:result from='honest.s2s.test' to='strict.s2s.test'>"
                        + "0" * 64 + "</db:result>")
        answer = await peer.read_until(r"<(db:)?result[^>]*type='(invalid|valid|error)'[^>]*/?>")
        assert "type='invalid'" in answer
        await peer.send("<message from='hal@honest.s2s.test' to='vic@strict.s2s.test' id='k1'>"
                        "<body>after invalid key</body></message>")
        closing = await peer.read_to_eof()
        assert "</stream:stream>" in closing or closing == ""
        await vic.send("<message to='vic@strict.s2s.test' id='k2'><body>marker</body></message>")
        got = await read_stanza(vic, r"<message[^>]*id='k2'.*?</message>")
        assert "after invalid key" not in got
        await async_wait_for(
            lambda: any("wrong dialback key" in r["reason"] for r in records(verified, "in", "honest.s2s.test")),
            FEDERATION_TIMEOUT, "the refusal to be recorded")
    finally:
        await peer.close()
        await vic.close()


async def test_stanza_from_a_domain_not_authenticated_on_the_stream(servers, test_ca) -> None:
    _, verified, _ = servers
    cert, key = test_ca.issue("mallory.s2s.test")
    peer = RawPeer(verified.address, "mallory.s2s.test", "strict.s2s.test")
    vic = await login(verified, "vic@strict.s2s.test")
    try:
        features = await peer.connect()
        assert "starttls" in features
        features = await peer.starttls(cert, key)
        assert "EXTERNAL" in features
        assert "<success" in await peer.sasl_external()
        await peer.send("<message from='hal@honest.s2s.test' to='vic@strict.s2s.test' id='f1'>"
                        "<body>forged origin</body></message>")
        closing = await peer.read_to_eof()
        assert "<invalid-from" in closing
        await vic.send("<message to='vic@strict.s2s.test' id='f2'><body>marker</body></message>")
        got = await read_stanza(vic, r"<message[^>]*id='f2'.*?</message>")
        assert "forged origin" not in got
    finally:
        await peer.close()
        await vic.close()


async def test_missing_addresses_are_improper(servers) -> None:
    permissive, _, _ = servers
    peer = RawPeer(permissive.address, "nowhere.invalid", "open.s2s.test")
    try:
        await peer.connect()
        await peer.send("<message to='pat@open.s2s.test'><body>no from</body></message>")
        assert "<improper-addressing" in await peer.read_to_eof()
    finally:
        await peer.close()


async def test_dialback_errors_for_several_pairs_on_one_stream(servers) -> None:
    _, verified, _ = servers
    peer = RawPeer(verified.address, "nxdomain.s2s.test", "strict.s2s.test")
    try:
        await peer.connect()
        # Two pairs on one stream (XEP-0220 section 2.3), each answered with its own dialback error
        # (section 2.4): a receiving domain not served here, and an originating domain DNS knows not.
        await peer.send("<db:result from='nxdomain.s2s.test' to='elsewhere.s2s.test'>" + "1" * 64 + "</db:result>")
        unknown = await peer.read_until(r"<(db:)?result[^>]*type='error'.*?</(db:)?result>")
        assert "item-not-found" in unknown and "elsewhere.s2s.test" in unknown
        await peer.send("<db:result from='nxdomain.s2s.test' to='strict.s2s.test'>" + "2" * 64 + "</db:result>")
        missing = await peer.read_until(r"<(db:)?result[^>]*type='error'.*?</(db:)?result>")
        assert "remote-server-not-found" in missing and "strict.s2s.test" in missing
    finally:
        await peer.close()
