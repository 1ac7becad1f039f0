"""Per-account ActivityPub signing keys: RSA-2048, one file per key, stored as the DKIM keys are.

This module is in charge of creating, loading and rotating the key that signs an account's outgoing
activities and signed fetches. A key is a PKCS#8 PEM file under
``<data_dir>/social/keys/<domain>/<local>/<key-id>.pem``, created with mode 0600 (O_EXCL, fsynced) in a
0700 folder, exactly as ``peerage.mail.auth.dkim`` stores DKIM keys: the database never holds a
private key, so a database dump or a PostgreSQL replica does not leak them, and `peerage backup`
copies the data folder with its modes. A cluster is the exception: its nodes must sign with the same
key, so there the keys are PEM rows of ``cluster_keys`` (kind ``social``, ``shared``), made once by the
first node that needs one; the database then holds them as it holds the password hashes.

Rotation (``rotate``) writes a new key and makes it current; the actor then shows the new public key
and an Update of the actor is sent to followers, which is how Mastodon learns a new key (it refetches
the actor when a signature fails with the cached key). Old key files are kept so that their key ids
still resolve while peers catch up.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

# RSA-2048 with SHA-256: what Mastodon generates (Account#generate_keys) and every ActivityPub server
# verifies; Ed25519 (FEP-8b32) is not yet understood by Mastodon.
RSA_KEY_BITS = 2048
_KEY_NAME = re.compile(r"^[a-z0-9-]{1,64}$")


@dataclass(frozen=True)
class AccountKey:
    name: str  # the fragment of the key id: https://DOMAIN/users/LOCAL#NAME
    private_key: rsa.RSAPrivateKey

    @property
    def public_pem(self) -> str:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")


def key_dir(data_dir: Path, address: str) -> Path:
    local, _, domain = address.lower().partition("@")
    return Path(data_dir) / "social" / "keys" / domain / local


def _write_secret(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def generate(data_dir: Path, address: str, name: str | None = None) -> AccountKey:
    """Create a new key file for `address` and return it (not yet current: see ``rotate``)."""
    folder = key_dir(data_dir, address)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    name = name or ("main-key" if not any(folder.glob("*.pem")) else f"key-{secrets.token_hex(4)}")
    key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    _write_secret(folder / f"{name}.pem", pem)
    return AccountKey(name, key)


def load(data_dir: Path, address: str, name: str) -> AccountKey | None:
    if not _KEY_NAME.match(name):
        return None
    try:
        pem = (key_dir(data_dir, address) / f"{name}.pem").read_bytes()
    except FileNotFoundError:
        return None
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return AccountKey(name, key)


def names(data_dir: Path, address: str) -> list[str]:
    folder = key_dir(data_dir, address)
    return sorted(p.stem for p in folder.glob("*.pem")) if folder.is_dir() else []


def new_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def new_name() -> str:
    """The id of a rotated key."""
    return f"key-{secrets.token_hex(4)}"


class KeyRows(Protocol):
    """A cluster's key rows (``peerage.cluster.blobs.SharedKeys``)."""

    async def get_or_create(self, kind: str, name: str, make: Callable[[], bytes]) -> bytes: ...


async def shared(rows: KeyRows, address: str, name: str, data_dir: Path | None = None) -> AccountKey:
    """The key ``name`` of ``address`` in a cluster's database, made once for every node; a key file
    this node has under ``data_dir`` (from before the cluster) is what is stored then."""
    def make() -> bytes:
        if data_dir is not None and _KEY_NAME.match(name):
            try:
                return (key_dir(data_dir, address) / f"{name}.pem").read_bytes()
            except FileNotFoundError:
                pass
        return new_pem()

    pem = await rows.get_or_create("social", f"{address.lower()}/{name}", make)
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return AccountKey(name, key)
