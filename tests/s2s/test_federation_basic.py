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
