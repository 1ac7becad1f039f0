"""The DNS module against the harness's authoritative server: SRV order, MX, NAPTR, TLSA, TXT."""

import random

import pytest

from peerage.config import DnsConfig
from peerage.net.dns import Resolver, SrvTarget, order_srv
from tests.harness import LocalDNS

DNS_ADDRESS = "127.0.0.153"


def test_srv_priority_then_weight() -> None:
    records = [SrvTarget("c", 1, 20, 0), SrvTarget("a", 1, 10, 60), SrvTarget("b", 1, 10, 40)]
    counts = {"a": 0, "b": 0}
    rng = random.Random(7)
    for _ in range(1000):
        ordered = order_srv(records, rng)
        assert ordered[-1].host == "c"
        counts[ordered[0].host] += 1
    # Weighted selection: a (60) first about 60% of the time.
    assert 520 < counts["a"] < 680


def test_srv_dot_target_means_no_service() -> None:
    assert order_srv([SrvTarget(".", 0, 0, 0)]) == []


@pytest.fixture(scope="module")
def dns() -> LocalDNS:
    server = LocalDNS(DNS_ADDRESS, 53)
    server.add_a("a.test", "127.0.0.2")
    server.add_aaaa("a.test", "::1")
    server.add_srv("_xmpp-server._tcp.a.test", 10, 0, 5269, "xmpp.a.test")
    server.add_srv("_xmpp-server._tcp.a.test", 5, 0, 5270, "xmpp2.a.test")
    server.add_mx("a.test", 20, "mx2.a.test")
    server.add_mx("a.test", 10, "mx1.a.test")
    server.add_naptr("a.test", 10, 10, "S", "SIP+D2T", "", "_sip._tcp.a.test")
    server.add_naptr("a.test", 5, 10, "S", "SIPS+D2T", "", "_sips._tcp.a.test")
    server.add_txt("a.test", "v=spf1 ip4:127.0.0.2 -all")
    server.add_txt("_dmarc.a.test", "v=DMARC1; p=reject; " + "x" * 300)
    server.add_tlsa("_25._tcp.mx1.a.test", 3, 1, 1, b"\xab" * 32)
    server.start()
    yield server
    server.stop()


async def test_resolver_against_local_dns(dns: LocalDNS) -> None:
    resolver = Resolver(DnsConfig(nameservers=[DNS_ADDRESS], port=53, timeout=10.0))
    srv = await resolver.srv("_xmpp-server._tcp.a.test")
    assert [(s.host, s.port) for s in srv] == [("xmpp2.a.test", 5270), ("xmpp.a.test", 5269)]
    assert [m.host for m in await resolver.mx("a.test")] == ["mx1.a.test", "mx2.a.test"]
    assert [n.service for n in await resolver.naptr("a.test")] == ["SIPS+D2T", "SIP+D2T"]
    assert await resolver.a("a.test") == ["127.0.0.2"]
    assert await resolver.addresses("a.test") == ["::1", "127.0.0.2"]
    assert await resolver.txt("a.test") == ["v=spf1 ip4:127.0.0.2 -all"]
    assert (await resolver.txt("_dmarc.a.test"))[0].endswith("x" * 300)
    tlsa, secure = await resolver.tlsa("_25._tcp.mx1.a.test")
    assert tlsa[0].usage == 3 and tlsa[0].data == b"\xab" * 32
    assert secure is False  # the test server does not sign; DANE must not trust this
    assert await resolver.srv("_xmpp-server._tcp.nowhere.test") == []
    assert await resolver.a("missing.a.test") == []


async def test_resolver_timeout_is_distinct_from_nxdomain() -> None:
    from peerage.net.dns import DnsTimeout

    resolver = Resolver(DnsConfig(nameservers=["127.0.0.154"], port=53, timeout=0.5))
    with pytest.raises(DnsTimeout):
        await resolver.a("a.test")


async def test_answers_are_reused_until_their_ttl_runs_out(dns: LocalDNS) -> None:
    import asyncio
    import time

    resolver = Resolver(DnsConfig(nameservers=[DNS_ADDRESS], port=53, timeout=10.0))
    dns.add_txt("changing.a.test", "first")
    assert await resolver.txt("changing.a.test") == ["first"]
    asked = time.monotonic()
    dns.remove("changing.a.test")
    dns.add_txt("changing.a.test", "second")
    # Within the TTL (the harness serves 5 s) the kept answer stands, as a caching resolver's does.
    assert await resolver.txt("changing.a.test") == ["first"]
    deadline = asked + 15.0
    while (found := await resolver.txt("changing.a.test")) == ["first"] and time.monotonic() < deadline:
        await asyncio.sleep(0.1)  # waiting for the TTL to pass, with a bound
    assert found == ["second"]
    assert time.monotonic() - asked >= 4.0  # not before the TTL ran out
