"""Unit tests of the XEP-0238 policy core (no network)."""

from __future__ import annotations

import pytest

from peerage.xmpp.federation import (
    CertificateKind,
    FederationPolicy,
    Level,
    ServerProfile,
    TlsChoice,
    initiator_starttls,
    level_reached,
    predict_level,
)
from tests.s2s.xep0238 import EXPECTED, format_matrix, profile


def test_prediction_reproduces_the_xep0238_table() -> None:
    observed = {(i, r): predict_level(profile(i), profile(r)).level.letter
                for i in range(1, 7) for r in range(1, 7)}
    print("\n" + format_matrix(observed))
    assert observed == EXPECTED


@pytest.mark.parametrize(("initiator", "receiver"), sorted(EXPECTED))
def test_each_cell_has_a_reason(initiator: int, receiver: int) -> None:
    prediction = predict_level(profile(initiator), profile(receiver))
    assert prediction.level.letter == EXPECTED[(initiator, receiver)]
    assert prediction.reason


def test_the_table_is_not_symmetric_where_the_xep_says_so() -> None:
    asymmetric = {(i, r) for (i, r), v in EXPECTED.items() if EXPECTED[(r, i)] != v}
    assert asymmetric == {(2, 3), (3, 2), (2, 5), (5, 2), (3, 5), (5, 3)}


def test_opportunistic_tls_falls_back_only_when_optional() -> None:
    verified = ServerProfile(Level.VERIFIED, CertificateKind.SELF_SIGNED)
    assert initiator_starttls(verified, offered=True, required_by_receiver=False) is TlsChoice.IF_AUTHENTICATED
    assert initiator_starttls(verified, offered=True, required_by_receiver=True) is TlsChoice.REQUIRED
    assert initiator_starttls(verified, offered=False, required_by_receiver=False) is TlsChoice.NO
    legacy = ServerProfile(Level.VERIFIED, CertificateKind.NONE, legacy=True)
    assert initiator_starttls(legacy, offered=True, required_by_receiver=True) is TlsChoice.NO


def test_levels_reached() -> None:
    assert level_reached(True, "sasl-external") is Level.TRUSTED
    assert level_reached(True, "dialback") is Level.ENCRYPTED
    assert level_reached(False, "dialback") is Level.VERIFIED
    assert level_reached(False, "none") is Level.PERMISSIVE
    assert [lv.letter for lv in Level] == ["U", "P", "V", "E", "T"]


def test_policy_default_overrides_allow_and_deny() -> None:
    policy = FederationPolicy.build(
        "encrypted", allow=[], deny=["spam.example", "*.bad.example"],
        overrides={"old.example": ("verified", True), "bank.example": ("trusted", False)})
    assert policy.for_domain("other.example").required is Level.ENCRYPTED
    assert policy.for_domain("OLD.example.").required is Level.VERIFIED
    assert policy.for_domain("old.example").legacy is True
    assert policy.for_domain("bank.example").required is Level.TRUSTED
    assert not policy.for_domain("spam.example").allowed
    assert not policy.for_domain("a.bad.example").allowed
    assert policy.for_domain("bad.example").allowed
    only = FederationPolicy.build("verified", allow=["friend.example"])
    assert only.for_domain("friend.example").allowed
    refused = only.for_domain("stranger.example")
    assert not refused.allowed and "allow list" in refused.why_refused


def test_unknown_level_word_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown federation level"):
        Level.from_name("paranoid")


def test_policy_from_config_dataclass() -> None:
    from peerage.config import FederationConfig, FederationDomainPolicy

    config = FederationConfig(level="verified", deny=["x.example"],
                              domains={"t.example": FederationDomainPolicy(level="trusted")})
    policy = FederationPolicy.from_config(config)
    assert policy.default is Level.VERIFIED
    assert policy.for_domain("t.example").required is Level.TRUSTED
    assert not policy.for_domain("x.example").allowed
