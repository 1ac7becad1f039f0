"""Two peerage servers federate: messages both ways, levels recorded, status visible."""

from __future__ import annotations

import pytest

from tests.harness import async_wait_for
from tests.s2s.helpers import FEDERATION_TIMEOUT, Federation, best_level, login, read_stanza, records


@pytest.fixture(scope="module")
def pair(federation: Federation):
    a = federation.server("alpha.s2s.test", "127.0.2.1", level="encrypted", users=("alice",))
    b = federation.server("beta.s2s.test", "127.0.2.2", level="encrypted", srv=False, users=("bob",))
    federation.start_all([a, b])
    return a, b


async def test_message_both_ways_and_level(pair) -> None:
    a, b = pair
    alice = await login(a, "alice@alpha.s2s.test")
    bob = await login(b, "bob@beta.s2s.test")
    try:
        await alice.send("<message to='bob@beta.s2s.test' id='m1' type='chat'><body>hello bob</body></message>")
        got = await read_stanza(bob, r"<message[^>]*id='m1'.*?</message>")
        assert "hello bob" in got and "alice@alpha.s2s.test" in got
        await bob.send("<message to='alice@alpha.s2s.test' id='m2' type='chat'><body>hi alice</body></message>")
        got = await read_stanza(alice, r"<message[^>]*id='m2'.*?</message>")
        assert "hi alice" in got
    finally:
        await alice.close()
        await bob.close()
    # Both CA-issued and both at the encrypted level: TLS then SASL EXTERNAL, so T on both sides.
    await async_wait_for(lambda: best_level(a, "out", "beta.s2s.test") == "T"
                         and best_level(b, "in", "alpha.s2s.test") == "T", FEDERATION_TIMEOUT,
                         "T recorded on both sides")
    out = next(r for r in records(a, "out", "beta.s2s.test") if r["level"] == "T")
    assert out["tls"].startswith("TLS") and out["authentication"] == "sasl-external"
    assert "SASL EXTERNAL" in out["reason"]


def test_s2s_status_command_shows_levels(pair) -> None:
    a, _ = pair
    result = a.cli("s2s", "status", "--all")
    assert "beta.s2s.test" in result.stdout
    line = next(line for line in result.stdout.splitlines() if "beta.s2s.test" in line and " T " in line)
    assert "SASL EXTERNAL" in line


def test_check_federation_explains_each_step(pair) -> None:
    a, _ = pair
    result = a.cli("check", "federation", "beta.s2s.test", check=False)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    for step in ("1. DNS", "2. TCP", "3. Stream and TLS", "4. SASL EXTERNAL"):
        assert step in out
    assert "no SRV records" in out  # beta has only an A record
    assert "it is valid for beta.s2s.test: DNS-ID beta.s2s.test" in out
    assert "RESULT level T" in out


def test_check_federation_unknown_domain(pair) -> None:
    a, _ = pair
    result = a.cli("check", "federation", "missing.s2s.test", check=False)
    assert result.returncode == 1
    assert "has no A or AAAA record" in result.stdout


async def test_check_federation_dialback_with_self_signed_peer(federation: Federation) -> None:
    c = federation.server("gamma.s2s.test", "127.0.2.3", level="verified", certificate="self",
                          users=("carl",))
    d = federation.server("delta.s2s.test", "127.0.2.4", level="encrypted", certificate="self",
                          users=("dora",))
    federation.start_all([c, d])
    result = d.cli("check", "federation", "gamma.s2s.test", check=False)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "the certificate is self-signed" in out
    assert "confirmed our identity" in out
    assert "RESULT level E" in out


async def test_piggybacked_domain_pairs_share_one_connection(federation: Federation) -> None:
    # Two hosted domains with self-signed certificates at the verified level: dialback on a clear
    # stream, so the second domain pair rides on the first connection (XEP-0220 section 2.3).
    multi = federation.server("m1.s2s.test", "127.0.2.5", level="verified", certificate="self",
                              extra_domains=("m2.s2s.test",), users=("u",))
    far = federation.server("far.s2s.test", "127.0.2.6", level="verified", certificate="self", users=("f",))
    federation.start_all([multi, far])
    u1 = await login(multi, "u@m1.s2s.test")
    u2 = await login(multi, "u@m2.s2s.test")
    f = await login(far, "f@far.s2s.test")
    try:
        await u1.send("<message to='f@far.s2s.test' id='pg1'><body>from m1</body></message>")
        await read_stanza(f, r"<message[^>]*id='pg1'.*?</message>")
        await u2.send("<message to='f@far.s2s.test' id='pg2'><body>from m2</body></message>")
        got = await read_stanza(f, r"<message[^>]*id='pg2'.*?</message>")
        assert "u@m2.s2s.test" in got
    finally:
        for client in (u1, u2, f):
            await client.close()
    await async_wait_for(lambda: best_level(far, "in", "m2.s2s.test") == "V", FEDERATION_TIMEOUT,
                         "the second pair verified")
    first = next(r for r in records(far, "in", "m1.s2s.test") if r["level"] == "V")
    second = next(r for r in records(far, "in", "m2.s2s.test") if r["level"] == "V")
    assert first["peer"] == second["peer"], "both pairs on the same TCP connection"
    # Each server writes its status file on its own schedule (STATUS_WRITE_DELAY): wait for multi's.
    await async_wait_for(lambda: best_level(multi, "out", "far.s2s.test") == "V" and all(
        r["state"] != "negotiating" for r in records(multi, "out", "far.s2s.test")),
        FEDERATION_TIMEOUT, "the piggybacked pair recorded")
    piggybacked = next(r for r in records(multi, "out", "far.s2s.test") if r["local"] == "m2.s2s.test")
    assert "piggybacked" in piggybacked["reason"] and piggybacked["level"] == "V"


async def test_direct_tls_between_peerage_servers(federation: Federation) -> None:
    source = federation.server("dt-a.s2s.test", "127.0.2.7", level="encrypted", users=("a",))
    sink = federation.server("dt-b.s2s.test", "127.0.2.8", level="encrypted", srv=False,
                             direct_tls_srv=True, users=("b",))
    federation.start_all([source, sink])
    a = await login(source, "a@dt-a.s2s.test")
    b = await login(sink, "b@dt-b.s2s.test")
    try:
        await a.send("<message to='b@dt-b.s2s.test' id='dt1'><body>direct</body></message>")
        await read_stanza(b, r"<message[^>]*id='dt1'.*?</message>")
    finally:
        await a.close()
        await b.close()
    await async_wait_for(lambda: best_level(source, "out", "dt-b.s2s.test") == "T", FEDERATION_TIMEOUT,
                         "the level to be recorded")
    out = next(r for r in records(source, "out", "dt-b.s2s.test") if r["level"] == "T")
    assert out["reason"].startswith("Direct TLS (XEP-0368)")


async def test_unknown_domain_bounces_remote_server_not_found(pair) -> None:
    a, _ = pair
    alice = await login(a, "alice@alpha.s2s.test")
    try:
        await alice.send("<message to='nobody@nxdomain.s2s.test' id='nx1'><body>?</body></message>")
        error = await read_stanza(alice, r"<message[^>]*id='nx1'.*?</message>")
        assert "type='error'" in error and "remote-server-not-found" in error
    finally:
        await alice.close()


async def test_idle_connections_close_and_reopen(federation: Federation) -> None:
    quick = {"idle_timeout": 1.0}
    one = federation.server("idle1.s2s.test", "127.0.2.9", level="verified", users=("i",), federation=quick)
    two = federation.server("idle2.s2s.test", "127.0.2.10", level="verified", users=("j",), federation=quick)
    federation.start_all([one, two])
    i = await login(one, "i@idle1.s2s.test")
    j = await login(two, "j@idle2.s2s.test")
    try:
        await i.send("<message to='j@idle2.s2s.test' id='id1'><body>1</body></message>")
        await read_stanza(j, r"<message[^>]*id='id1'.*?</message>")
        await async_wait_for(lambda: any(r["state"] == "closed" for r in records(one, "out", "idle2.s2s.test")),
                             FEDERATION_TIMEOUT, "the idle stream to be closed")
        await i.send("<message to='j@idle2.s2s.test' id='id2'><body>2</body></message>")
        await read_stanza(j, r"<message[^>]*id='id2'.*?</message>")
        await async_wait_for(
            lambda: len([r for r in records(one, "out", "idle2.s2s.test") if r["level"] == "E"]) == 2,
            FEDERATION_TIMEOUT, "a second connection after the idle close")
    finally:
        await i.close()
        await j.close()


async def test_bidirectional_stream_carries_both_directions(federation: Federation) -> None:
    both = {"bidi": True}
    west = federation.server("west.s2s.test", "127.0.2.17", level="verified", certificate="self",
                             users=("w",), federation=both)
    east = federation.server("east.s2s.test", "127.0.2.18", level="verified", certificate="self",
                             users=("e",), federation=both)
    federation.start_all([west, east])
    w = await login(west, "w@west.s2s.test")
    e = await login(east, "e@east.s2s.test")
    try:
        await w.send("<message to='e@east.s2s.test' id='bd1'><body>over</body></message>")
        await read_stanza(e, r"<message[^>]*id='bd1'.*?</message>")
        await e.send("<message to='w@west.s2s.test' id='bd2'><body>and back</body></message>")
        await read_stanza(w, r"<message[^>]*id='bd2'.*?</message>")
    finally:
        await w.close()
        await e.close()
    await async_wait_for(lambda: best_level(west, "out", "east.s2s.test") == "V", FEDERATION_TIMEOUT,
                         "the outbound level")
    out = next(r for r in records(west, "out", "east.s2s.test") if r["level"] == "V")
    assert out["bidi"] is True
    # XEP-0288: east answered over west's stream and never opened its own.
    assert records(east, "out", "west.s2s.test") == []
