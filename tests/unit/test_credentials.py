"""Derived credentials: SCRAM keys, SIP HA1 and argon2id from one password, never the password."""

import hashlib
import hmac

import pytest

from peerage.identity.address import parse_address
from peerage.identity.credentials import (
    SCRAM_ITERATIONS,
    PasswordError,
    derive_credentials,
    prepare_password,
    scram_credential,
    verify_argon2,
)


def test_rfc7677_test_vector() -> None:
    # RFC 7677 §3: user "user", password "pencil", salt W22ZaJ0SNY7soEsUEjb6gQ==, 4096 iterations.
    import base64

    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    cred = scram_credential("SHA-256", "pencil", salt, 4096)
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", salt, 4096)
    assert cred.server_key == hmac.digest(salted, b"Server Key", "sha256")
    assert base64.b64encode(cred.stored_key) != b""


def test_derives_every_protocol_secret() -> None:
    addr = parse_address("alice@example.org")
    creds = derive_credentials(addr, "correct horse", iterations=4096)
    assert set(creds.scram) == {"SHA-1", "SHA-256"}
    assert creds.scram["SHA-256"].iterations == 4096
    assert creds.sip_ha1["MD5"] == hashlib.md5(b"alice:example.org:correct horse").hexdigest()
    assert creds.sip_ha1["SHA-256"] == hashlib.sha256(b"alice:example.org:correct horse").hexdigest()
    assert creds.argon2.startswith("$argon2id$")
    assert "correct horse" not in repr(creds)
    assert verify_argon2(creds.argon2, "correct horse")
    assert not verify_argon2(creds.argon2, "wrong")


def test_default_iterations_at_least_rfc7677_minimum() -> None:
    assert SCRAM_ITERATIONS >= 4096


def test_password_preparation() -> None:
    assert prepare_password("pass\u00a0word") == "pass word"  # RFC 8265: non-ASCII space -> ASCII space
    with pytest.raises(PasswordError):
        prepare_password("")
    with pytest.raises(PasswordError):
        prepare_password("x" * 2000)
