"""DKIM (RFC 6376) signing with RSA-SHA256 and Ed25519-SHA256 (RFC 8463), verification, and key
generation, over dkimpy.

This module is in charge of the two signing keys each hosted domain has (created by `peerage init`
and `peerage domain add`: files under the data directory, or rows of the cluster's database in
cluster mode, ``shared_keys``), of signing outgoing mail with both, and of verifying every signature on incoming mail through the
configured nameservers.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from peerage.mail.auth.dnsquery import SyncLookup, TemporaryDnsError

# RFC 8301 §3.2 requires at least 1024 bits and recommends 2048; Gmail and Mox generate 2048.
RSA_KEY_BITS = 2048
RSA_SELECTOR = "rsa2048"
ED25519_SELECTOR = "ed25519"
# Headers signed, as RFC 6376 §5.4.1 recommends; listed once more each to stop later additions
# ("oversigning", as Mox and OpenDKIM do for From/To/Subject).
SIGNED_HEADERS = (
    b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"reply-to", b"in-reply-to",
    b"references", b"mime-version", b"content-type", b"content-transfer-encoding",
)
# A message is verified with at most this many signatures (RFC 6376 §6.1 lets a verifier limit
# them; OpenDKIM's MaximumSignaturesToVerify defaults to 3).
MAX_SIGNATURES_VERIFIED = 5


def key_dir(data_dir: Path, domain: str) -> Path:
    return Path(data_dir) / "dkim" / domain.lower()


def generate_keys(data_dir: Path, domain: str) -> None:
    """Create the RSA-2048 and Ed25519 signing keys of `domain` under `data_dir`, unless present."""
    folder = key_dir(data_dir, domain)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    for selector, make in KEY_MAKERS:
        path = folder / f"{selector}.pem"
        if not path.exists():
            _write_secret(path, make())


def new_rsa_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def new_ed25519_pem() -> bytes:
    key = ed25519.Ed25519PrivateKey.generate()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


#: Each selector with the maker of its private key (PEM), in the order the files and rows are made.
KEY_MAKERS: tuple[tuple[str, Callable[[], bytes]], ...] = (
    (RSA_SELECTOR, new_rsa_pem), (ED25519_SELECTOR, new_ed25519_pem))


class KeyRows(Protocol):
    """Where a cluster keeps its keys (``peerage.cluster.blobs.SharedKeys``)."""

    async def get(self, kind: str, name: str) -> bytes | None: ...

    async def get_or_create(self, kind: str, name: str, make: Callable[[], bytes]) -> bytes: ...


async def shared_keys(rows: KeyRows, domain: str, create: bool = False,
                      data_dir: Path | None = None) -> DomainKeys | None:
    """The keys of `domain` in a cluster's database (kind ``dkim``, name ``domain/selector``).

    With `create`, missing ones are made; nodes making them at once all end with the one stored
    first, so every node signs with the key DNS publishes. A key file this node has under
    `data_dir` (from before the cluster) is what is stored then, so the published key stays valid.
    """
    pems: list[bytes] = []
    for selector, make in KEY_MAKERS:
        name = f"{domain.lower()}/{selector}"
        if data_dir is not None:
            make = _file_or(key_dir(data_dir, domain) / f"{selector}.pem", make)
        pem = await rows.get_or_create("dkim", name, make) if create else await rows.get("dkim", name)
        if pem is None:
            return None
        pems.append(pem)
    return keys_from_pems(domain, pems[0], pems[1])


def _write_secret(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class DomainKeys:
    domain: str
    rsa_pem: bytes  # PKCS#1 PEM, the form dkimpy reads
    ed25519_seed_b64: bytes  # base64 of the 32-byte private seed, the form dkimpy reads
    rsa_public_b64: str
    ed25519_public_b64: str

    def dns_records(self) -> list[tuple[str, str]]:
        """(name, TXT value) for both selectors."""
        return [
            (f"{RSA_SELECTOR}._domainkey.{self.domain}", f"v=DKIM1; k=rsa; p={self.rsa_public_b64}"),
            (
                f"{ED25519_SELECTOR}._domainkey.{self.domain}",
                f"v=DKIM1; k=ed25519; p={self.ed25519_public_b64}",
            ),
        ]


def _file_or(path: Path, make: Callable[[], bytes]) -> Callable[[], bytes]:
    def made() -> bytes:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return make()
    return made


def load_keys(data_dir: Path, domain: str) -> DomainKeys | None:
    folder = key_dir(data_dir, domain)
    try:
        rsa_pem = (folder / f"{RSA_SELECTOR}.pem").read_bytes()
        ed_pem = (folder / f"{ED25519_SELECTOR}.pem").read_bytes()
    except FileNotFoundError:
        return None
    return keys_from_pems(domain, rsa_pem, ed_pem)


def keys_from_pems(domain: str, rsa_pem: bytes, ed_pem: bytes) -> DomainKeys:
    rsa_key = serialization.load_pem_private_key(rsa_pem, password=None)
    ed_key = serialization.load_pem_private_key(ed_pem, password=None)
    assert isinstance(rsa_key, rsa.RSAPrivateKey) and isinstance(ed_key, ed25519.Ed25519PrivateKey)
    rsa_public = rsa_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    seed = ed_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    ed_public = ed_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return DomainKeys(
        domain=domain.lower(),
        rsa_pem=rsa_pem,
        ed25519_seed_b64=base64.b64encode(seed),
        rsa_public_b64=base64.b64encode(rsa_public).decode("ascii"),
        ed25519_public_b64=base64.b64encode(ed_public).decode("ascii"),
    )


def sign(message: bytes, keys: DomainKeys) -> bytes:
    """Return `message` with an Ed25519 and an RSA DKIM-Signature header prepended."""
    present = {
        line.split(b":", 1)[0].strip().lower()
        for line in message.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
        if line[:1] not in (b" ", b"\t") and b":" in line
    }
    headers = [h for h in SIGNED_HEADERS if h in present] or [b"from"]
    domain = keys.domain.encode("ascii")
    rsa_header = dkim.sign(
        message, RSA_SELECTOR.encode(), domain, keys.rsa_pem, include_headers=headers, linesep=b"\r\n"
    )
    ed_header = dkim.sign(
        message,
        ED25519_SELECTOR.encode(),
        domain,
        keys.ed25519_seed_b64,
        include_headers=headers,
        signature_algorithm=b"ed25519-sha256",
        linesep=b"\r\n",
    )
    return ed_header + rsa_header + message


def strip_own_signatures(message: bytes, is_own: Callable[[str], bool]) -> tuple[str, bytes] | None:
    """Drop the DKIM-Signature fields whose d= is one of ours; return the first such domain and the
    message without them, or None when there is none."""
    block, separator, body = message.partition(b"\r\n\r\n")
    fields: list[list[bytes]] = []
    for line in block.split(b"\r\n"):
        if fields and line[:1] in (b" ", b"\t"):
            fields[-1].append(line)
        else:
            fields.append([line])
    kept: list[bytes] = []
    domain: str | None = None
    for lines in fields:
        name, _, value = b"".join(lines).partition(b":")
        if name.strip().lower() == b"dkim-signature":
            signer = _signature_tags(value).get(b"d", b"").decode("ascii", "replace").lower()
            if signer and is_own(signer):
                domain = domain or signer
                continue
        kept.extend(lines)
    if domain is None:
        return None
    return domain, b"\r\n".join(kept) + separator + body


@dataclass(frozen=True, slots=True)
class DkimResult:
    result: str  # pass, fail, neutral, temperror, permerror, none (RFC 8601 §2.7.1)
    domain: str = ""
    selector: str = ""
    algorithm: str = ""


def verify(message: bytes, lookup: SyncLookup) -> list[DkimResult]:
    """Verify each DKIM signature (up to MAX_SIGNATURES_VERIFIED). Blocking: run in a thread."""
    try:
        verifier = dkim.DKIM(message)
    except Exception:
        return [DkimResult("permerror")]
    signatures = [
        value for name, value in verifier.headers if name.lower() == b"dkim-signature"
    ][:MAX_SIGNATURES_VERIFIED]
    if not signatures:
        return [DkimResult("none")]
    results = []
    for index in range(len(signatures)):
        fields: dict[bytes, bytes] = {}
        outcome = "fail"
        try:
            ok = verifier.verify(idx=index, dnsfunc=lookup.dkim_txt)
            fields = dict(verifier.signature_fields or {})
            outcome = "pass" if ok else "fail"
        except TemporaryDnsError:
            outcome = "temperror"
        except dkim.ValidationError as exc:
            # A body hash mismatch is a failed verification (RFC 6376 §6.3); other validation errors
            # are malformed signatures or keys (RFC 8601 §2.7.1 permerror).
            outcome = "fail" if "mismatch" in str(exc) else "permerror"
        except Exception:
            outcome = "fail"
        if not fields:
            fields = _signature_tags(signatures[index])
        results.append(
            DkimResult(
                outcome,
                domain=fields.get(b"d", b"").decode("ascii", "replace").lower(),
                selector=fields.get(b"s", b"").decode("ascii", "replace"),
                algorithm=fields.get(b"a", b"").decode("ascii", "replace"),
            )
        )
    return results


def _signature_tags(value: bytes) -> dict[bytes, bytes]:
    tags: dict[bytes, bytes] = {}
    for part in value.split(b";"):
        name, sep, tag_value = part.partition(b"=")
        if sep:
            tags[name.strip()] = b"".join(tag_value.split())
    return tags
