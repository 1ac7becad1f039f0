"""peerage.identity.sip_tokens: the web session's short-lived SIP digest secrets."""

from __future__ import annotations

import hashlib

from peerage.identity.address import parse_address
from peerage.identity.sip_tokens import MAX_TOKENS_PER_ACCOUNT, SipTokens

ALICE = parse_address("alice@example.org")


def test_tokens_add_their_ha1s_until_they_expire() -> None:
    now = [1000.0]
    tokens = SipTokens(clock=lambda: now[0])
    token, expires = tokens.issue(ALICE, lifetime=60)
    assert expires == 1060
    assert tokens.ha1s("alice@example.org", "md5") == [hashlib.md5(f"alice:example.org:{token}".encode()).hexdigest()]
    assert tokens.ha1s("alice@example.org", "SHA-256", full=True) == [
        hashlib.sha256(f"alice@example.org:example.org:{token}".encode()).hexdigest()]
    assert tokens.ha1s("bob@example.org", "MD5") == []
    now[0] = 1061
    assert tokens.ha1s("alice@example.org", "MD5") == []


def test_tokens_are_bounded_per_account_and_revocable() -> None:
    tokens = SipTokens()
    issued = [tokens.issue(ALICE)[0] for _ in range(MAX_TOKENS_PER_ACCOUNT + 3)]
    assert len(set(issued)) == len(issued)
    live = tokens.ha1s("alice@example.org", "MD5")
    assert len(live) == MAX_TOKENS_PER_ACCOUNT
    assert hashlib.md5(f"alice:example.org:{issued[0]}".encode()).hexdigest() not in live  # the oldest went
    assert hashlib.md5(f"alice:example.org:{issued[-1]}".encode()).hexdigest() in live
    tokens.revoke("alice@example.org")
    assert tokens.ha1s("alice@example.org", "MD5") == []


def test_a_web_session_ends_its_own_tokens_only() -> None:
    tokens = SipTokens()
    tokens.issue(ALICE, web_session="session-a")
    other, _ = tokens.issue(ALICE, web_session="session-b")
    assert tokens.revoke_web_session("alice@example.org", "session-a") == 1
    live = tokens.ha1s("alice@example.org", "MD5")
    assert live == [hashlib.md5(f"alice:example.org:{other}".encode()).hexdigest()]
    assert tokens.revoke_web_session("alice@example.org", "session-a") == 0
