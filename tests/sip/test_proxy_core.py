"""The proxy core driven in-process with a fake clock, fake DNS and fake accounts (no sockets):
RFC 3263 failover on 503 and on timeout, and the 407 challenge of local callers."""

from __future__ import annotations

import types
from typing import Any

from peerage.sip.digest import DigestAuthenticator, client_authorization, digest_hex
from peerage.sip.locate import Locator
from peerage.sip.message import SipMessage, make_response, parse_datagram
from peerage.sip.policy import FloodGuard, PeeringPolicy
from peerage.sip.proxy import ProxyCore
from peerage.sip.registrar import Registrar
from peerage.sip.transaction import T1, Destination, TransactionLayer
from tests.harness import async_wait_for
from tests.sip.test_digest_locate import FakeDns, Naptr, Srv

UA = Destination("UDP", ("127.0.3.70", 5060))
FIRST, SECOND = ("127.0.3.71", 5060), ("127.0.3.72", 5060)
PASSWORD = "pw"


class Clock:
    now = 5000.0

    def __call__(self) -> float:
        return self.now


class Accounts:
    def is_local_domain(self, domain: str) -> bool:
        return domain == "a.test"

    async def sip_ha1(self, address: str, algorithm: str) -> str | None:
        user, _, domain = address.partition("@")
        return digest_hex(algorithm, f"{user}:{domain}:{PASSWORD}")

    async def sip_ha1_all(self, address: str, algorithm: str) -> list[str]:
        """The account's HA1 followed by its app passwords' (this account has none)."""
        return [await self.sip_ha1(address, algorithm)]

    async def sip_digest_ha1s(self, username: str, realm: str, algorithm: str) -> tuple[str, list[str]]:
        """The account a digest username names (`alice` or `alice@realm`) and its HA1s."""
        address = username if "@" in username else f"{username}@{realm}"
        ha1 = digest_hex(algorithm, f"{username}:{realm}:{PASSWORD}")
        return address, [ha1]

    async def exists(self, address: str) -> bool:
        return True


class Throttle:
    def check(self, ip: str, account: str | None = None) -> float:
        return 0.0

    def failure(self, ip: str, account: str | None = None) -> None: ...

    def success(self, ip: str, account: str | None = None) -> None: ...


def build() -> tuple[ProxyCore, Clock, list[tuple[bytes, Destination]]]:
    clock = Clock()
    sent: list[tuple[bytes, Destination]] = []

    def send(data: bytes, destination: Destination) -> None:
        sent.append((data, destination))

    dns = FakeDns()
    dns.naptr_records["far.test"] = [Naptr(10, 10, "s", "SIP+D2U", "", "_sip._udp.far.test.")]
    dns.srv_records["_sip._udp.far.test"] = [Srv(10, 1, 5060, "one.far.test."), Srv(20, 1, 5060, "two.far.test.")]
    dns.a_records = {"one.far.test": [FIRST[0]], "two.far.test": [SECOND[0]]}
    accounts = Accounts()
    sip = types.SimpleNamespace(max_message_size=65535, min_expires=60, max_expires=3600, default_expires=3600)
    host: Any = types.SimpleNamespace(config=types.SimpleNamespace(sip=sip, domains={"a.test": None}),
                                      accounts=accounts, limits=types.SimpleNamespace(auth=Throttle()))
    layer = TransactionLayer(send, clock)
    authenticator = DigestAuthenticator(algorithms=("MD5",))
    core = ProxyCore(host=host, layer=layer, send=send, registrar=Registrar(host, authenticator),
                     authenticator=authenticator, locator=Locator(dns), policy=PeeringPolicy(accounts.is_local_domain),
                     flood=FloodGuard(1e6, 1), local_endpoints={"UDP": ("127.0.3.69", 5060)},
                     local_hosts={"127.0.3.69"})
    return core, clock, sent


def message(extra: list[tuple[str, str]] | None = None, cseq: int = 1) -> SipMessage:
    return SipMessage.request("MESSAGE", "sip:bob@far.test", [
        ("Via", f"SIP/2.0/UDP 127.0.3.70:5060;branch=z9hG4bK-core{cseq}"), ("Max-Forwards", "70"),
        ("From", "<sip:alice@a.test>;tag=a1"), ("To", "<sip:bob@far.test>"), ("Call-ID", "core-1"),
        ("CSeq", f"{cseq} MESSAGE"), *(extra or [])], b"hi")


def responses_to_ua(sent: list[tuple[bytes, Destination]]) -> list[int]:
    return [parse_datagram(d).status for d, dest in sent if dest.address == UA.address and d.startswith(b"SIP/")]


async def authenticated(core: ProxyCore, sent: list[tuple[bytes, Destination]]) -> None:
    core.receive(message(), UA)
    await async_wait_for(lambda: 407 in responses_to_ua(sent), timeout=5, message="407")
    challenge = parse_datagram(sent[-1][0]).get("proxy-authenticate") or ""
    credentials = client_authorization(challenge, "MESSAGE", "sip:bob@far.test", "alice", PASSWORD)
    core.receive(message([("Proxy-Authorization", credentials)], cseq=2), UA)


def forwarded_to(sent: list[tuple[bytes, Destination]], address: tuple[str, int]) -> list[SipMessage]:
    return [parse_datagram(d) for d, dest in sent if dest.address == address and d.startswith(b"MESSAGE")]


async def test_failover_to_the_next_srv_target_on_503() -> None:
    core, _, sent = build()
    await authenticated(core, sent)
    await async_wait_for(lambda: forwarded_to(sent, FIRST), timeout=5, message="first target")
    first = forwarded_to(sent, FIRST)[0]
    assert first.get("proxy-authorization") is None  # our credentials are consumed, not forwarded
    core.receive(make_response(first, 503, to_tag="x"), Destination("UDP", FIRST))
    second = forwarded_to(sent, SECOND)
    assert len(second) == 1
    core.receive(make_response(second[0], 200, to_tag="y"), Destination("UDP", SECOND))
    assert responses_to_ua(sent)[-1] == 200


async def test_failover_on_timeout_and_500_when_all_fail() -> None:
    core, clock, sent = build()
    await authenticated(core, sent)
    await async_wait_for(lambda: forwarded_to(sent, FIRST), timeout=5, message="first target")
    for _ in range(80):  # Timer E retransmissions, then Timer F at 64*T1
        clock.now += T1
        core.layer.tick()
    assert len(forwarded_to(sent, FIRST)) > 3  # retransmitted over UDP
    second = forwarded_to(sent, SECOND)
    assert second, "no failover after Timer F"
    core.receive(make_response(second[0], 503, to_tag="y"), Destination("UDP", SECOND))
    assert responses_to_ua(sent)[-1] == 500  # §16.7 step 6: a 503 is not passed upstream as such


def invite(branch: str, to_tag: str | None = None) -> SipMessage:
    to = "<sip:bob@a.test>" + (f";tag={to_tag}" if to_tag else "")
    return SipMessage.request("INVITE", "sip:bob@a.test", [
        ("Via", f"SIP/2.0/UDP 127.0.3.70:5060;branch=z9hG4bK-{branch}"), ("Max-Forwards", "70"),
        ("From", "<sip:alice@a.test>;tag=a1"), ("To", to), ("Call-ID", f"call-{branch}"),
        ("CSeq", "1 INVITE")])


async def test_overload_sheds_new_invites_with_503_and_retry_after() -> None:
    core, _, sent = build()
    core.receive(invite("before"), UA)
    assert responses_to_ua(sent)[0] == 100  # 100 Trying at once, before any lookup
    core.overloaded = True
    sent.clear()
    core.receive(invite("during"), UA)
    answer = parse_datagram(sent[-1][0])
    assert answer.status == 503 and answer.get("retry-after") == "5"  # RFC 3261 §21.5.4
    assert core.shed == 1
    # work in progress goes on: a retransmission of the earlier INVITE is absorbed, not shed,
    # and an in-dialog request is not refused either
    sent.clear()
    core.receive(invite("before"), UA)
    assert 503 not in responses_to_ua(sent)
    core.receive(invite("dialog", to_tag="b1"), UA)
    assert 503 not in responses_to_ua(sent)
    core.overloaded = False
    sent.clear()
    core.receive(invite("after"), UA)
    assert responses_to_ua(sent)[0] == 100


async def test_udp_wait_is_how_long_the_oldest_datagram_waited_unread() -> None:
    """Overload is measured where requests wait: the kernel's arrival stamp of the first datagram
    of each read batch (the oldest queued), not the time since the socket was last emptied."""
    import socket
    import time

    from peerage.sip.transport import UDP_READ_BATCH, UdpEndpoint

    read: list[bytes] = []
    owner: Any = types.SimpleNamespace(datagram=lambda data, address: read.append(data))
    endpoint = UdpEndpoint(owner, "127.0.3.249", 0)
    try:
        assert endpoint.timestamps
        address = endpoint.sock.getsockname()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for n in range(UDP_READ_BATCH + 10):
                sender.sendto(b"OPTIONS %d" % n, address)
            queued = time.monotonic()
            # the datagrams are made to wait (loopback delivers them before sendto returns)
            time.sleep(0.2)
            endpoint._readable()  # one full batch, the oldest first
            waited = time.monotonic() - queued
            assert len(read) == UDP_READ_BATCH and read[0] == b"OPTIONS 0"
            longest, drained = endpoint.waited()
            assert 0.2 <= longest <= waited + 0.05
            assert not drained  # ten more are queued
            assert endpoint.waited() == (0.0, True)  # reset once looked at; nothing read since
            endpoint._readable()  # the 10 left over, as old, then the socket is empty
            assert len(read) == UDP_READ_BATCH + 10
            longest, drained = endpoint.waited()
            assert longest >= 0.2 and drained
            sender.sendto(b"OPTIONS fresh", address)
            endpoint._readable()  # read as soon as it came: next to no wait
            assert read[-1] == b"OPTIONS fresh"
            longest, drained = endpoint.waited()
            assert 0.0 <= longest < 0.15 and drained
    finally:
        endpoint.close()


def local_message(extra: list[tuple[str, str]] | None = None, cseq: int = 1) -> SipMessage:
    return SipMessage.request("MESSAGE", "sip:bob@a.test", [
        ("Via", f"SIP/2.0/UDP 127.0.3.70:5060;branch=z9hG4bK-spoof{cseq}"), ("Max-Forwards", "70"),
        ("From", "<sip:alice@a.test>;tag=s1"), ("To", "<sip:bob@a.test>"), ("Call-ID", "spoof-1"),
        ("CSeq", f"{cseq} MESSAGE"), *(extra or [])], b"I am alice, honest")


async def test_a_request_claiming_a_local_caller_is_challenged_even_to_a_local_callee() -> None:
    # Without this anyone could message or call bob as alice (Kamailio's default: from_uri==myself
    # -> auth_check). Unanswered, nothing is delivered; answered, bob (no binding here) gets 480.
    core, _, sent = build()
    core.receive(local_message(), UA)
    await async_wait_for(lambda: 407 in responses_to_ua(sent), timeout=5, message="407 for a spoofable From")
    assert not [d for d, dest in sent if d.startswith(b"MESSAGE")]
    challenge = parse_datagram(sent[-1][0]).get("proxy-authenticate") or ""
    credentials = client_authorization(challenge, "MESSAGE", "sip:bob@a.test", "alice", PASSWORD)
    core.receive(local_message([("Proxy-Authorization", credentials)], cseq=2), UA)
    await async_wait_for(lambda: 480 in responses_to_ua(sent), timeout=5, message="480 after authenticating")
