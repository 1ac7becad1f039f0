"""The peering policy and the flood guard, without network (sans-I/O)."""

from __future__ import annotations

from peerage.sip.policy import (
    AUTHENTICATE_OUTBOUND,
    DELIVER_LOCAL,
    REFUSE_DOMAIN,
    REFUSE_RELAY,
    FloodGuard,
    PeeringPolicy,
)


def local(domain: str) -> bool:
    return domain in ("a.test", "b.test")


def test_mod_sip_rules() -> None:
    policy = PeeringPolicy(local)
    assert policy.decide("a.test", "anywhere.example") == DELIVER_LOCAL  # (a) anyone may call us
    assert policy.decide("a.test", "b.test") == DELIVER_LOCAL
    assert policy.decide("far.example", "a.test") == AUTHENTICATE_OUTBOUND  # (b)
    assert policy.decide("far.example", "other.example") == REFUSE_RELAY  # (c) never a relay


def test_allow_and_deny_lists() -> None:
    denying = PeeringPolicy(local, deny=["spam.example"])
    assert denying.decide("a.test", "sip.spam.example") == REFUSE_DOMAIN  # subdomains too
    assert denying.decide("spam.example", "a.test") == REFUSE_DOMAIN
    assert denying.decide("a.test", "ok.example") == DELIVER_LOCAL
    allowing = PeeringPolicy(local, allow=["partner.example"])
    assert allowing.decide("a.test", "partner.example") == DELIVER_LOCAL
    assert allowing.decide("a.test", "stranger.example") == REFUSE_DOMAIN
    assert allowing.decide("stranger.example", "a.test") == REFUSE_DOMAIN
    assert allowing.decide("partner.example", "a.test") == AUTHENTICATE_OUTBOUND


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def test_flood_guard_bans_then_forgives() -> None:
    clock = Clock()
    guard = FloodGuard(rate=10, ban_seconds=60, clock=clock, exempt=["127.0.3.99"])
    allowed = sum(guard.allow("192.0.2.1") for _ in range(100))
    assert allowed == 20  # a two-second burst, then the ban
    assert guard.is_banned("192.0.2.1") and not guard.allow("192.0.2.1")
    assert guard.allow("192.0.2.2")  # other sources are unaffected
    assert all(guard.allow("127.0.3.99") for _ in range(1000))  # exempt
    clock.now += 61
    assert not guard.is_banned("192.0.2.1") and guard.allow("192.0.2.1")
