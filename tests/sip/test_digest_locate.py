"""Digest authentication (RFC 8760) and RFC 3263 server location, without network."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from peerage.sip.digest import (
    DigestAuthenticator,
    Verdict,
    client_authorization,
    digest_hex,
    parse_credentials,
)
from peerage.sip.locate import Locator, Target
from peerage.sip.message import SipParseError, parse_uri


class Clock:
    now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_digest_roundtrip_replay_and_expiry(algorithm: str) -> None:
    clock = Clock()
    auth = DigestAuthenticator(clock=clock)
    challenges = auth.challenges("a.test")
    assert [c.split("algorithm=")[1].split(",")[0] for c in challenges] == ["MD5", "SHA-256"]
    challenge = next(c for c in challenges if f"algorithm={algorithm}," in c)
    ha1 = digest_hex(algorithm, "alice:a.test:secret")
    header = client_authorization(challenge, "REGISTER", "sip:a.test", "alice", "secret")
    creds = parse_credentials(header)
    assert auth.verify(creds, "REGISTER", ha1) == Verdict.OK
    assert auth.verify(creds, "REGISTER", ha1) == Verdict.FAILED  # same nc: replay
    next_nc = parse_credentials(
        client_authorization(challenge, "REGISTER", "sip:a.test", "alice", "secret", nc=2))
    assert auth.verify(next_nc, "REGISTER", ha1) == Verdict.OK
    wrong = parse_credentials(
        client_authorization(challenge, "REGISTER", "sip:a.test", "alice", "nope", nc=3))
    assert auth.verify(wrong, "REGISTER", ha1) == Verdict.FAILED
    clock.now += 10_000
    late = parse_credentials(
        client_authorization(challenge, "REGISTER", "sip:a.test", "alice", "secret", nc=4))
    assert auth.verify(late, "REGISTER", ha1) == Verdict.STALE


def test_forged_nonce_and_no_qop_refused() -> None:
    auth = DigestAuthenticator(clock=Clock())
    ha1 = digest_hex("MD5", "alice:a.test:secret")
    forged = 'Digest realm="a.test", nonce="5f00.abc.xyz", algorithm=MD5, qop="auth"'
    creds = parse_credentials(client_authorization(forged, "INVITE", "sip:b@b", "alice", "secret"))
    assert auth.verify(creds, "INVITE", ha1) == Verdict.FAILED
    challenge = auth.challenges("a.test")[1]
    creds = parse_credentials(client_authorization(challenge, "INVITE", "sip:b@b", "alice", "secret"))
    creds.qop = None
    assert auth.verify(creds, "INVITE", ha1) == Verdict.FAILED
    with pytest.raises(SipParseError):
        parse_credentials('Digest username="a", realm="x"')


@dataclass
class Naptr:
    order: int
    preference: int
    flags: str
    service: str
    regexp: str
    replacement: str


@dataclass
class Srv:
    priority: int
    weight: int
    port: int
    target: str


class FakeDns:
    def __init__(self) -> None:
        self.naptr_records: dict[str, list[Naptr]] = {}
        self.srv_records: dict[str, list[Srv]] = {}
        self.a_records: dict[str, list[str]] = {}

    async def naptr(self, name: str) -> list[Naptr]:
        return self.naptr_records.get(name, [])

    async def srv(self, name: str) -> list[Srv]:
        return self.srv_records.get(name, [])

    async def a(self, name: str) -> list[str]:
        if name not in self.a_records:
            raise LookupError(name)
        return self.a_records[name]

    async def aaaa(self, name: str) -> list[str]:
        return []


async def test_locate_naptr_srv_a_order() -> None:
    dns = FakeDns()
    dns.naptr_records["b.test"] = [
        Naptr(20, 10, "s", "SIP+D2U", "", "_sip._udp.b.test."),
        Naptr(10, 10, "s", "SIP+D2T", "", "_sip._tcp.b.test."),
        Naptr(5, 10, "s", "XMPP+D2S", "", "_x._tcp.b.test."),
    ]
    dns.srv_records["_sip._tcp.b.test"] = [Srv(10, 1, 5060, "p1.b.test."), Srv(20, 1, 5070, "p2.b.test.")]
    dns.srv_records["_sip._udp.b.test"] = [Srv(10, 1, 5060, "p1.b.test.")]
    dns.a_records = {"p1.b.test": ["127.0.3.21"], "p2.b.test": ["127.0.3.22"]}
    targets = await Locator(dns).locate(parse_uri("sip:bob@b.test"))
    assert targets == [
        Target("TCP", "p1.b.test", "127.0.3.21", 5060),
        Target("TCP", "p2.b.test", "127.0.3.22", 5070),
        Target("UDP", "p1.b.test", "127.0.3.21", 5060),
    ]


async def test_locate_fallbacks() -> None:
    dns = FakeDns()
    dns.srv_records["_sip._udp.c.test"] = [Srv(1, 1, 5080, "c.test.")]
    dns.a_records = {"c.test": ["127.0.3.30"], "d.test": ["127.0.3.31"]}
    locator = Locator(dns)
    assert await locator.locate(parse_uri("sip:x@c.test")) == [Target("UDP", "c.test", "127.0.3.30", 5080)]
    assert await locator.locate(parse_uri("sip:x@d.test")) == [Target("UDP", "d.test", "127.0.3.31", 5060)]
    assert await locator.locate(parse_uri("sips:x@d.test")) == [Target("TLS", "d.test", "127.0.3.31", 5061)]
    assert await locator.locate(parse_uri("sip:x@127.0.3.5:5099;transport=tcp")) == [
        Target("TCP", "127.0.3.5", "127.0.3.5", 5099)]
    assert await locator.locate(parse_uri("sip:x@nowhere.test")) == []


def test_dns_records_for_peerage_dns(tmp_path: Path) -> None:
    from peerage.config import load_config
    from peerage.sip.dnsrecords import records

    path = tmp_path / "peerage.toml"
    path.write_text(
        f'[server]\ndata_dir = "{tmp_path}"\npublic_hostname = "sip.example.org"\n'
        '[sip]\nudp_listen = ["0.0.0.0:5060"]\ntcp_listen = ["0.0.0.0:5060"]\ntls_listen = ["0.0.0.0:5061"]\n'
        '[[domain]]\nname = "example.org"\n')
    lines = records("example.org", load_config(path))
    assert 'example.org. 3600 IN NAPTR 10 10 "s" "SIPS+D2T" "" _sips._tcp.example.org.' in lines
    assert any(line.startswith('example.org. 3600 IN NAPTR 30 10 "s" "SIP+D2U"') for line in lines)
    assert "_sip._tcp.example.org. 3600 IN SRV 10 0 5060 sip.example.org." in lines
    assert "_sips._tcp.example.org. 3600 IN SRV 10 0 5061 sip.example.org." in lines
