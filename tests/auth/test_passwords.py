"""Password policy at `peerage user add` / `user passwd`, and the cache of successful verifications."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from peerage.identity.accounts import AccountService
from peerage.identity.credentials import PasswordError
from peerage.identity.policy import check_password
from peerage.store import Store
from tests.auth.conftest import make_server


@pytest.mark.parametrize("weak", ["1", " ", "        ", "short", "password", "Password1!", "qwerty123",
                                  "iloveyou", "alice@example.org", "Alice2024"])
def test_weak_passwords_are_refused(weak: str) -> None:
    with pytest.raises(PasswordError):
        check_password(weak, address="alice@example.org")


@pytest.mark.parametrize("good", ["correct horse battery staple", "tram-lantern-47-oboe", "Zq8#wLp2vR"])
def test_reasonable_passwords_pass(good: str) -> None:
    check_password(good, address="alice@example.org")


def test_cli_refuses_weak_passwords_with_a_clear_error(tmp_path: Path) -> None:
    server = make_server(tmp_path, services=())
    weak = server.cli("user", "add", "alice@example.org", "--password-file", "-", input="1\n", check=False)
    assert weak.returncode == 1
    assert "at least 8" in weak.stderr and "Traceback" not in weak.stderr
    common = server.cli("user", "add", "alice@example.org", "--password-file", "-", input="password123\n",
                        check=False)
    assert common.returncode == 1 and "most common" in common.stderr
    assert server.cli("user", "list").stdout.split() == []
    server.add_user("alice@example.org", "correct horse battery staple")
    again = server.cli("user", "passwd", "alice@example.org", "--password-file", "-", input=" \n", check=False)
    assert again.returncode == 1 and "password" in again.stderr


async def test_verification_cache_is_used_and_invalidated_by_passwd(tmp_path: Path) -> None:
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'p.db'}")
    await store.migrate()
    try:
        accounts = AccountService(store, ["example.org"])
        await accounts.add("alice@example.org", "first password here")
        started = time.perf_counter()
        assert await accounts.verify_password("alice@example.org", "first password here")
        slow = time.perf_counter() - started
        started = time.perf_counter()
        assert await accounts.verify_password("Alice@example.org", "first password here")
        fast = time.perf_counter() - started
        assert fast < slow / 3, (fast, slow)  # argon2id skipped
        assert not await accounts.verify_password("alice@example.org", "wrong")
        # Another process (the command line) changes the password: the stored hash changes, so the
        # server's entry cannot match any more, even though this process was never told.
        other = AccountService(store, ["example.org"])
        await other.passwd("alice@example.org", "second password here")
        assert not await accounts.verify_password("alice@example.org", "first password here")
        assert await accounts.verify_password("alice@example.org", "second password here")
        # Bounded: the least recently used entry goes first.
        small = AccountService(store, ["example.org"], cache_size=1)
        await small.add("bob@example.org", "bob password here")
        assert await small.verify_password("alice@example.org", "second password here")
        assert await small.verify_password("bob@example.org", "bob password here")
        assert len(small.cache._entries) == 1
    finally:
        await store.close()
