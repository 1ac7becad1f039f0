"""peerage.turn: URI parsing, the TURN REST credential scheme, the [turn] checks."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from pathlib import Path

import pytest

from peerage.config import ConfigError, TurnConfig
from peerage.turn import Service, Turn, make_credential, parse_uri


def test_parses_uris() -> None:
    assert parse_uri("stun:turn.example.org") == Service("stun", "turn.example.org", 3478, "udp")
    assert parse_uri("turns:turn.example.org") == Service("turns", "turn.example.org", 5349, "tcp")
    assert parse_uri("turn:Turn.Example.org:3479?transport=tcp") == Service("turn", "turn.example.org", 3479, "tcp")
    assert parse_uri("turn:[2001:db8::1]:3478").host == "2001:db8::1"
    assert parse_uri("turn:[2001:db8::1]:3478").uri() == "turn:[2001:db8::1]:3478?transport=udp"
    assert parse_uri("stun:127.0.0.1:3478").uri() == "stun:127.0.0.1:3478"
    for bad in ("http://x", "turn:", "turn:host:99999", "turn:host:port", "stun:host?transport=tcp",
                "turn:host?transport=sctp"):
        with pytest.raises(ValueError):
            parse_uri(bad)


def test_credential_matches_coturn_scheme() -> None:
    # What coturn computes for use-auth-secret (turn_server's get_user_key with a REST username): the
    # base64 HMAC-SHA1 of the whole username under the secret.
    credential = make_credential("north-south-east-west", "alice@example.org", 1700000000.9)
    assert credential.username == "1700000000:alice@example.org"
    expected = base64.b64encode(hmac.new(b"north-south-east-west", b"1700000000:alice@example.org",
                                         hashlib.sha1).digest()).decode()
    assert credential.password == expected
    assert credential.expires == 1700000000


def secret_file(tmp_path: Path, text: str = "0123456789abcdef0123", mode: int = 0o600) -> Path:
    path = tmp_path / "secret"
    path.write_text(text + "\n")
    os.chmod(path, mode)
    return path


def test_turn_from_config(tmp_path: Path) -> None:
    turn = Turn(TurnConfig(servers=["stun:t.example.org", "turn:t.example.org?transport=udp"],
                           secret_file=secret_file(tmp_path), credential_lifetime=600), clock=lambda: 1000.0)
    ice = turn.ice_servers("bob@example.org")
    assert ice["expires"] == 1600
    assert ice["iceServers"] == [
        {"urls": ["stun:t.example.org:3478"]},
        {"urls": ["turn:t.example.org:3478?transport=udp"], "username": "1600:bob@example.org",
         "credential": make_credential("0123456789abcdef0123", "bob@example.org", 1600).password},
    ]
    assert not Turn(TurnConfig()).enabled


def test_config_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="secret_file"):
        Turn(TurnConfig(servers=["turn:t.example.org"]))
    with pytest.raises(ConfigError, match="readable by other users"):
        Turn(TurnConfig(servers=["turn:t.example.org"], secret_file=secret_file(tmp_path, mode=0o644)))
    with pytest.raises(ConfigError, match="16 to"):
        Turn(TurnConfig(servers=["turn:t.example.org"], secret_file=secret_file(tmp_path, "short")))
    with pytest.raises(ConfigError, match="credential_lifetime"):
        Turn(TurnConfig(servers=["stun:t.example.org"], credential_lifetime=5))
    with pytest.raises(ConfigError, match=r"\[turn\] servers"):
        Turn(TurnConfig(servers=["turn:"]))
    # Only STUN: no secret is needed.
    assert Turn(TurnConfig(servers=["stun:t.example.org"])).enabled
