"""Interop with Debian's Prosody 0.12: messages, a presence subscription and iq in both directions,
at the encrypted level (STARTTLS with self-signed certificates, then dialback) and at the trusted
level (CA-issued certificates, SASL EXTERNAL, Prosody's s2s_secure_auth = true), reaching Prosody
over Direct TLS (XEP-0368) when the SRV record points there."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import async_wait_for
from tests.s2s.helpers import (
    DNS_ADDRESS,
    FEDERATION_TIMEOUT,
    PASSWORD,
    Federation,
    best_level,
    login,
    read_stanza,
    records,
)
from tests.s2s.prosody import ProsodyServer
from tests.xmpp.rawclient import RawClient

pytestmark = [pytest.mark.interop, pytest.mark.slow]


@pytest.fixture(scope="module")
def encrypted(federation: Federation, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    ca = federation.ca
    cert, key = ca.self_signed("pe.s2s.test")
    prosody = ProsodyServer(tmp_path_factory.mktemp("prosody-e"), "pe.s2s.test", "127.0.2.60", DNS_ADDRESS,
                            cert=cert, key=key, users={"bob": PASSWORD})
    federation.dns.add_a("pe.s2s.test", "127.0.2.60")
    federation.dns.add_srv("_xmpp-server._tcp.pe.s2s.test", 0, 5, 5269, "pe.s2s.test")
    peerage = federation.server("pa.s2s.test", "127.0.2.51", level="encrypted", certificate="self",
                                users=("alice",), federation={"bidi": True})
    federation.start_all([peerage])
    prosody.start()
    try:
        yield peerage, prosody
    finally:
        prosody.stop()


@pytest.fixture(scope="module")
def trusted(federation: Federation, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    ca = federation.ca
    cert, key = ca.issue("pt.s2s.test")
    prosody = ProsodyServer(tmp_path_factory.mktemp("prosody-t"), "pt.s2s.test", "127.0.2.61", DNS_ADDRESS,
                            cert=cert, key=key, cafile=ca.cert_path, secure_auth=True, users={"tom": PASSWORD})
    federation.dns.add_a("pt.s2s.test", "127.0.2.61")
    # XEP-0368: Direct TLS first; the plain SRV stays for Prosody's own lookups of itself.
    federation.dns.add_srv("_xmpps-server._tcp.pt.s2s.test", 0, 5, 5270, "pt.s2s.test")
    federation.dns.add_srv("_xmpp-server._tcp.pt.s2s.test", 0, 5, 5269, "pt.s2s.test")
    # No XEP-0288 here, so that Prosody opens its own stream to us and both directions are proven T.
    peerage = federation.server("pb.s2s.test", "127.0.2.52", level="trusted", certificate="ca",
                                users=("amy",), federation={"bidi": False})
    federation.start_all([peerage])
    prosody.start()
    try:
        yield peerage, prosody
    finally:
        prosody.stop()


async def _prosody_login(prosody: ProsodyServer, user: str) -> RawClient:
    client = RawClient(prosody.address, prosody.domain)
    await client.login(user, PASSWORD, "interop", mechanism="PLAIN")
    await client.send("<presence/>")
    return client


async def _exchange(peerage_user: RawClient, prosody_user: RawClient, peerage_jid: str, prosody_jid: str,
                    tag: str) -> None:
    await peerage_user.send(f"<message to='{prosody_jid}' id='{tag}-1' type='chat'><body>to prosody</body></message>")
    got = await read_stanza(prosody_user, rf"<message[^>]*id='{tag}-1'.*?</message>")
    assert "to prosody" in got and peerage_jid in got
    await prosody_user.send(f"<message to='{peerage_jid}' id='{tag}-2' type='chat'><body>to peerage</body></message>")
    got = await read_stanza(peerage_user, rf"<message[^>]*id='{tag}-2'.*?</message>")
    assert "to peerage" in got and prosody_jid in got


async def test_encrypted_level_messages_presence_iq(encrypted) -> None:
    peerage, prosody = encrypted
    alice = await login(peerage, "alice@pa.s2s.test")
    bob = await _prosody_login(prosody, "bob")
    try:
        await _exchange(alice, bob, "alice@pa.s2s.test", "bob@pe.s2s.test", "e")
        # Presence subscription, peerage user -> Prosody user, approved.
        await alice.send("<presence to='bob@pe.s2s.test' type='subscribe'/>")
        await read_stanza(bob, r"<presence[^>]*type='subscribe'[^>]*>|<presence[^>]*from='alice@pa.s2s.test'[^>]*type='subscribe'")
        await bob.send("<presence to='alice@pa.s2s.test' type='subscribed'/>")
        await read_stanza(alice, r"<presence[^>]*type='subscribed'[^>]*/?>")
        # iq both ways: each user pings the other's server.
        await alice.send("<iq type='get' id='ping-e1' to='pe.s2s.test'><ping xmlns='urn:xmpp:ping'/></iq>")
        answer = await read_stanza(alice, r"<iq[^>]*id='ping-e1'[^>]*>")
        assert "type='result'" in answer or 'type="result"' in answer
        await bob.send("<iq type='get' id='ping-e2' to='pa.s2s.test'><ping xmlns='urn:xmpp:ping'/></iq>")
        answer = await read_stanza(bob, r"<iq[^>]*id=.ping-e2.[^>]*>")
        assert "result" in answer
    finally:
        await alice.close()
        await bob.close()
    await async_wait_for(lambda: best_level(peerage, "out", "pe.s2s.test") == "E", FEDERATION_TIMEOUT,
                         "level E towards Prosody")
    out = next(r for r in records(peerage, "out", "pe.s2s.test") if r["level"] == "E")
    assert out["authentication"] == "dialback" and out["tls"].startswith("TLS")
    # Prosody's own stream to us (it asked for XEP-0288 bidi on ours, and we on its) is E as well.
    await async_wait_for(lambda: best_level(peerage, "in", "pe.s2s.test") == "E", FEDERATION_TIMEOUT,
                         "level E from Prosody")


async def test_trusted_level_sasl_external_and_direct_tls(trusted) -> None:
    peerage, prosody = trusted
    amy = await login(peerage, "amy@pb.s2s.test")
    tom = await _prosody_login(prosody, "tom")
    try:
        await _exchange(amy, tom, "amy@pb.s2s.test", "tom@pt.s2s.test", "t")
        await amy.send("<iq type='get' id='ping-t1' to='pt.s2s.test'><ping xmlns='urn:xmpp:ping'/></iq>")
        assert "result" in await read_stanza(amy, r"<iq[^>]*id='ping-t1'[^>]*>")
    finally:
        await amy.close()
        await tom.close()
    await async_wait_for(lambda: best_level(peerage, "out", "pt.s2s.test") == "T", FEDERATION_TIMEOUT,
                         "level T towards Prosody")
    out = next(r for r in records(peerage, "out", "pt.s2s.test") if r["level"] == "T")
    assert out["authentication"] == "sasl-external"
    assert out["reason"].startswith("Direct TLS (XEP-0368)")
    await async_wait_for(lambda: best_level(peerage, "in", "pt.s2s.test") == "T", FEDERATION_TIMEOUT,
                         "level T from Prosody")
    incoming = next(r for r in records(peerage, "in", "pt.s2s.test") if r["level"] == "T")
    assert incoming["authentication"] == "sasl-external"


def test_check_federation_against_prosody(trusted) -> None:
    peerage, _ = trusted
    result = peerage.cli("check", "federation", "pt.s2s.test", check=False)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "_xmpps-server._tcp.pt.s2s.test -> pt.s2s.test:5270 (Direct TLS, XEP-0368)" in out
    assert "with Direct TLS" in out
    assert "chain: chains to a trusted CA" in out
    assert "authenticated as pb.s2s.test by our certificate" in out
    assert "RESULT level T" in out
