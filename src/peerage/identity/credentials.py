"""Per-protocol secrets derived from one password, so no protocol ever needs the cleartext again.

This module is in charge of turning a password into:
- SCRAM salted keys (RFC 5802, RFC 7677) for SHA-1 and SHA-256: XMPP, IMAP and SMTP AUTH;
- SIP digest HA1 = H(user:realm:password) for MD5 and SHA-256 (RFC 8760), realm = the domain, once
  with the local part as digest username (`alice`) and once with the full address (`alice@example.org`,
  which RFC 7616 §3.4.4 and RFC 8760 allow): the one login-name rule, for digest too;
- an argon2id hash (RFC 9106) for PLAIN and web logins.

Passwords are prepared with PRECIS OpaqueString (RFC 8265 §4), the successor of SASLprep that RFC 7677
and RFC 6120 point to, so that the same password typed on any client derives the same keys.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

import precis_i18n
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from peerage.identity.address import Address

# RFC 7677 §4 requires at least 4096 iterations; Prosody's mod_auth_internal_hashed uses 10000 (its
# `default_iteration_count`), ejabberd 4096. We follow Prosody: slower to brute-force, same cost as the
# server most clients already talk to.
SCRAM_ITERATIONS = 10000
SCRAM_SALT_BYTES = 16
# A password longer than this is refused before any hashing: argon2 and PBKDF2 cost grows with it and
# RFC 8265 sets no bound. 1024 bytes is what Django uses as its maximum (MAXIMUM_PASSWORD_LENGTH 4096
# chars) scaled to bytes; no person types more.
MAX_PASSWORD_BYTES = 1024
SCRAM_HASHES = {"SHA-1": "sha1", "SHA-256": "sha256"}
SIP_DIGEST_HASHES = {"MD5": "md5", "SHA-256": "sha256"}

_OPAQUE = precis_i18n.get_profile("OpaqueString")
# argon2-cffi's defaults follow RFC 9106 §4 "second recommended option" (t=3, m=64 MiB, p=4).
_ARGON2 = PasswordHasher()


class PasswordError(ValueError):
    """The password cannot be used; the message says why."""


@dataclass(frozen=True, slots=True)
class ScramCredential:
    hash_name: str  # "SHA-1" or "SHA-256"
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes
    # (stored_key, server_key) of the account's app passwords, derived under the same salt and
    # iteration count: the one server-first message serves them all, and the proof says which matched.
    alternates: tuple[tuple[bytes, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class Credentials:
    scram: dict[str, ScramCredential]
    sip_ha1: dict[str, str]
    argon2: str
    # HA1s with the full address as digest username: H("alice@example.org":realm:password).
    sip_ha1_full: dict[str, str]


def prepare_password(password: str) -> str:
    """Apply PRECIS OpaqueString (RFC 8265 §4.2), refusing empty or oversized passwords."""
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        raise PasswordError(f"the password is longer than {MAX_PASSWORD_BYTES} bytes")
    try:
        prepared = _OPAQUE.enforce(password)
    except UnicodeEncodeError as exc:
        raise PasswordError(f"the password contains characters PRECIS does not allow: {exc.reason}") from None
    if not prepared:
        raise PasswordError("the password is empty")
    return prepared


def scram_credential(hash_name: str, password: str, salt: bytes, iterations: int) -> ScramCredential:
    algorithm = SCRAM_HASHES[hash_name]
    salted = hashlib.pbkdf2_hmac(algorithm, password.encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", algorithm)
    stored_key = hashlib.new(algorithm, client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", algorithm)
    return ScramCredential(hash_name, salt, iterations, stored_key, server_key)


def sip_ha1(algorithm: str, user: str, realm: str, password: str) -> str:
    """HA1 = H(username ":" realm ":" password) (RFC 2617 §3.2.2.2, RFC 8760 §2.4)."""
    return hashlib.new(SIP_DIGEST_HASHES[algorithm], f"{user}:{realm}:{password}".encode()).hexdigest()


def derive_credentials(address: Address, password: str, *, iterations: int = SCRAM_ITERATIONS,
                       salt: bytes | None = None) -> Credentials:
    """Every protocol's secret for ``password``. ``salt`` keeps the account's SCRAM salt (a password
    change keeps it, so app passwords derived under it stay valid); new accounts get a random one."""
    prepared = prepare_password(password)
    salt = salt or os.urandom(SCRAM_SALT_BYTES)
    return Credentials(
        scram={name: scram_credential(name, prepared, salt, iterations) for name in SCRAM_HASHES},
        sip_ha1={alg: sip_ha1(alg, address.local, address.domain, prepared) for alg in SIP_DIGEST_HASHES},
        argon2=_ARGON2.hash(prepared),
        sip_ha1_full={alg: sip_ha1(alg, str(address), address.domain, prepared) for alg in SIP_DIGEST_HASHES},
    )


def verify_argon2(encoded: str, password: str) -> bool:
    try:
        return _ARGON2.verify(encoded, prepare_password(password))
    except (VerificationError, InvalidHashError, PasswordError):
        return False
