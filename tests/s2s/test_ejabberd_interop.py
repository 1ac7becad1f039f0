"""Interop with Debian's ejabberd 23.01, both directions, at each level its operator can configure:

- verified: no TLS on s2s (``s2s_use_starttls: false``), dialback (XEP-0220);
- encrypted: STARTTLS required, self-signed certificates on both sides, then dialback;
- trusted: CA-issued certificates on both sides, SASL EXTERNAL (XEP-0178), no dialback module.

Each level exchanges messages both ways, a presence subscription each way, and an iq (XEP-0199 ping)
each way, then checks the level both of our connection records reached.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import async_wait_for
from tests.s2s.ejabberd import EjabberdServer
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
from tests.xmpp.rawclient import RawClient

pytestmark = [pytest.mark.interop, pytest.mark.slow]

#: level -> (peerage domain, peerage address, ejabberd domain, ejabberd address, letter)
LEVELS = {
    "verified": ("pv.ej.test", "127.0.2.121", "ev.ej.test", "127.0.2.131", "V"),
    "encrypted": ("pe.ej.test", "127.0.2.122", "ee.ej.test", "127.0.2.132", "E"),
    "trusted": ("pt.ej.test", "127.0.2.123", "et.ej.test", "127.0.2.133", "T"),
}


@pytest.fixture(scope="module", params=list(LEVELS))
def pair(request: pytest.FixtureRequest, federation: Federation, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[tuple]:
    level = request.param
    ours, our_address, theirs, their_address, letter = LEVELS[level]
    ca = federation.ca
    if level == "trusted":
        cert, key = ca.issue(theirs)
        cafile = ca.cert_path
    else:
        cert, key = ca.self_signed(theirs)
        cafile = None
    ejabberd = EjabberdServer(tmp_path_factory.mktemp(f"ejabberd-{level}"), theirs, their_address, DNS_ADDRESS,
                              level=level, cert=cert, key=key, cafile=cafile, users={"bob": PASSWORD})
    federation.dns.add_a(theirs, their_address)
    federation.dns.add_srv(f"_xmpp-server._tcp.{theirs}", 0, 5, 5269, theirs)
    peerage = federation.server(ours, our_address, level=level,
                                certificate="ca" if level == "trusted" else "self", users=("alice",))
    federation.start_all([peerage])
    ejabberd.start()
    try:
        yield level, letter, peerage, ejabberd
    finally:
        ejabberd.stop()
        peerage.kill()


async def _ejabberd_login(ejabberd: EjabberdServer, user: str) -> RawClient:
    client = RawClient(ejabberd.address, ejabberd.domain)
    await client.login(user, PASSWORD, "interop", mechanism="PLAIN")
    await client.send("<presence/>")
    return client


def _result(answer: str) -> bool:
    return "type='result'" in answer or 'type="result"' in answer


async def test_messages_presence_iq_both_ways(pair) -> None:
    level, letter, peerage, ejabberd = pair
    ours, theirs = peerage.domains[0], ejabberd.domain
    alice_jid, bob_jid = f"alice@{ours}", f"bob@{theirs}"
    alice = await login(peerage, alice_jid)
    bob = await _ejabberd_login(ejabberd, "bob")
    try:
        # Messages, peerage -> ejabberd first (our outbound stream), then back (ejabberd's).
        await alice.send(f"<message to='{bob_jid}' id='{level}-1' type='chat'><body>to ejabberd</body></message>")
        got = await read_stanza(bob, rf"<message[^>]*id=.{level}-1.*?</message>")
        assert "to ejabberd" in got and alice_jid in got
        await bob.send(f"<message to='{alice_jid}' id='{level}-2' type='chat'><body>to peerage</body></message>")
        got = await read_stanza(alice, rf"<message[^>]*id='{level}-2'.*?</message>")
        assert "to peerage" in got and bob_jid in got
        # Presence subscription each way, each approved.
        await alice.send(f"<presence to='{bob_jid}' type='subscribe'/>")
        await read_stanza(bob, r"<presence[^>]*type=[\"']subscribe[\"'][^>]*>")
        await bob.send(f"<presence to='{alice_jid}' type='subscribed'/>")
        await read_stanza(alice, r"<presence[^>]*type='subscribed'[^>]*/?>")
        await bob.send(f"<presence to='{alice_jid}' type='subscribe'/>")
        await read_stanza(alice, r"<presence[^>]*type='subscribe'[^>]*/?>")
        await alice.send(f"<presence to='{bob_jid}' type='subscribed'/>")
        await read_stanza(bob, r"<presence[^>]*type=.subscribed.[^>]*>")
        # iq both ways: each user pings the other's server.
        await alice.send(f"<iq type='get' id='ping-{level}-1' to='{theirs}'><ping xmlns='urn:xmpp:ping'/></iq>")
        assert _result(await read_stanza(alice, rf"<iq[^>]*id='ping-{level}-1'[^>]*>"))
        await bob.send(f"<iq type='get' id='ping-{level}-2' to='{ours}'><ping xmlns='urn:xmpp:ping'/></iq>")
        assert _result(await read_stanza(bob, rf"<iq[^>]*id=.ping-{level}-2.[^>]*>"))
    finally:
        await alice.close()
        await bob.close()
    await async_wait_for(lambda: best_level(peerage, "out", theirs) == letter, FEDERATION_TIMEOUT,
                         f"level {letter} towards ejabberd")
    await async_wait_for(lambda: best_level(peerage, "in", theirs) == letter, FEDERATION_TIMEOUT,
                         f"level {letter} from ejabberd")
    out = next(r for r in records(peerage, "out", theirs) if r["level"] == letter)
    incoming = next(r for r in records(peerage, "in", theirs) if r["level"] == letter)
    expected = "sasl-external" if level == "trusted" else "dialback"
    assert out["authentication"] == expected and incoming["authentication"] == expected
    if level == "verified":
        assert not out["tls"] and not incoming["tls"]
    else:
        assert out["tls"].startswith("TLS") and incoming["tls"].startswith("TLS")
    if level == "encrypted":
        # ejabberd offers SASL EXTERNAL to anyone showing a certificate, then refuses a self-signed
        # one; we fall back to dialback on the same stream, as Prosody and ejabberd do.
        assert "SASL EXTERNAL refused (not-authorized: self signed certificate), fell back to dialback" \
            in out["reason"]


def test_check_federation_reaches_the_level(pair) -> None:
    level, letter, peerage, ejabberd = pair
    result = peerage.cli("check", "federation", ejabberd.domain, check=False)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert f"RESULT level {letter}" in out, out
    if level == "encrypted":
        assert "refused: not-authorized: self signed certificate" in out
        assert "fall back to it on this stream" in out


@pytest.fixture(scope="module")
def mismatch(federation: Federation, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    """An encrypted-level peerage (self-signed) against a trusted-only ejabberd (no dialback): TLS
    works, SASL EXTERNAL is offered and refused, and nothing else is left: level U."""
    ca = federation.ca
    cert, key = ca.issue("em.ej.test")
    ejabberd = EjabberdServer(tmp_path_factory.mktemp("ejabberd-mismatch"), "em.ej.test", "127.0.2.134",
                              DNS_ADDRESS, level="trusted", cert=cert, key=key, cafile=ca.cert_path,
                              users={"bob": PASSWORD})
    federation.dns.add_a("em.ej.test", "127.0.2.134")
    federation.dns.add_srv("_xmpp-server._tcp.em.ej.test", 0, 5, 5269, "em.ej.test")
    peerage = federation.server("pm.ej.test", "127.0.2.124", level="encrypted", certificate="self",
                                users=("alice",))
    federation.start_all([peerage])
    ejabberd.start()
    try:
        yield peerage, ejabberd
    finally:
        ejabberd.stop()
        peerage.kill()


async def test_failure_after_tls_is_explained(mismatch) -> None:
    peerage, _ejabberd = mismatch
    alice = await login(peerage, "alice@pm.ej.test")
    try:
        await alice.send("<message to='bob@em.ej.test' id='m-1' type='chat'><body>lost</body></message>")
        bounce = await read_stanza(alice, r"<message[^>]*id='m-1'[^>]*type='error'.*?</message>|"
                                          r"<message[^>]*type='error'[^>]*id='m-1'.*?</message>")
        assert "error" in bounce
    finally:
        await alice.close()
    await async_wait_for(lambda: best_level(peerage, "out", "em.ej.test") == "U", FEDERATION_TIMEOUT,
                         "a finished attempt towards ejabberd")
    failed = next(r for r in records(peerage, "out", "em.ej.test") if r["state"] == "failed")
    assert failed["level"] == "U" and failed["tls"].startswith("TLS"), failed
    assert "not-authorized: self signed certificate" in failed["reason"], failed
    # Without --all too: a pair with nothing open shows its latest failure.
    for options in ((), ("--all",)):
        status = peerage.cli("s2s", "status", *options).stdout
        row = next(line for line in status.splitlines() if "em.ej.test" in line and " U " in line)
        assert "TLSv1" in row and "self signed certificate" in row, status
    check = peerage.cli("check", "federation", "em.ej.test", check=False)
    assert check.returncode == 1, check.stdout
    assert "refused: not-authorized: self signed certificate" in check.stdout, check.stdout
    assert "RESULT level U (unsuccessful): the stream was encrypted (TLSv1" in check.stdout, check.stdout
