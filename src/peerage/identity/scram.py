"""SCRAM server exchange (RFC 5802, RFC 7677), sans-I/O, shared by XMPP SASL, SMTP AUTH and IMAP.

This module is in charge of one authentication exchange on the server side: parse client-first, produce
server-first from the stored credential, check client-final's proof and channel binding, produce
server-final. It never sees a password. The caller does the I/O and looks the credential up.

Channel binding (RFC 5929, RFC 9266): the caller passes the binding data it can compute for this
connection (`tls-exporter`, `tls-server-end-point`). The gs2 flag 'y' from a client while we offered
-PLUS mechanisms means someone stripped them: RFC 5802 §6 requires failing the exchange then.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass

from peerage.identity.credentials import SCRAM_HASHES, ScramCredential

# RFC 5802 does not bound the messages; 4 KiB is far above any real client-first (Prosody's
# util.sasl.scram accepts whatever the stanza size allows).
MAX_SCRAM_MESSAGE = 4096
NONCE_BYTES = 18


class ScramError(Exception):
    """The exchange failed. `condition` is the SASL failure condition (RFC 6120 §6.5)."""

    def __init__(self, condition: str, text: str, server_error: str | None = None) -> None:
        super().__init__(text)
        self.condition = condition
        self.server_error = server_error  # RFC 5802 "e=" value, sent in server-final where possible


@dataclass(slots=True)
class _ClientFirst:
    gs2_header: bytes
    cb_flag: str  # "n", "y" or "p"
    cb_name: str | None
    authzid: str | None
    username: str
    client_nonce: str
    bare: bytes


def _decode_saslname(value: str) -> str:
    # RFC 5802 §5.1: ',' is "=2C" and '=' is "=3D"; any other '=' is an error.
    out = []
    index = 0
    while index < len(value):
        char = value[index]
        if char == "=":
            code = value[index + 1 : index + 3]
            if code == "2C":
                out.append(",")
            elif code == "3D":
                out.append("=")
            else:
                raise ScramError("malformed-request", "invalid escape in SCRAM name", "invalid-encoding")
            index += 3
        else:
            out.append(char)
            index += 1
    return "".join(out)


@functools.lru_cache(maxsize=64)
def tls_server_end_point(certificate_der: bytes) -> bytes:
    """RFC 5929 §4.1: hash of the certificate; MD5 and SHA-1 signatures are hashed with SHA-256.

    Cached: a server presents the same few certificates on every connection, and parsing one is
    most of this function's cost on each login."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    cert = x509.load_der_x509_certificate(certificate_der)
    algorithm = cert.signature_hash_algorithm
    if algorithm is None or isinstance(algorithm, hashes.MD5 | hashes.SHA1):
        algorithm = hashes.SHA256()
    digest = hashes.Hash(algorithm)
    digest.update(certificate_der)
    return digest.finalize()


class ScramServer:
    """One SCRAM exchange. Call `client_first`, then `server_first`, then `client_final`."""

    def __init__(
        self,
        hash_name: str,
        *,
        plus: bool,
        channel_bindings: Mapping[str, bytes],
        offered_plus: bool,
        fake_salt_key: bytes = b"",
    ) -> None:
        if hash_name not in SCRAM_HASHES:
            raise ValueError(f"unsupported SCRAM hash {hash_name}")
        self.hash_name = hash_name
        self._algorithm = SCRAM_HASHES[hash_name]
        self._plus = plus
        self._bindings = channel_bindings
        self._offered_plus = offered_plus
        self._fake_salt_key = fake_salt_key or os.urandom(16)
        self._first: _ClientFirst | None = None
        self._credential: ScramCredential | None = None
        self._server_first: bytes = b""
        self._nonce = ""
        self.username = ""
        self.authzid: str | None = None
        self.channel_binding: str | None = None

    def client_first(self, message: bytes) -> str:
        """Parse client-first-message; return the username to look the credential up for."""
        if len(message) > MAX_SCRAM_MESSAGE:
            raise ScramError("malformed-request", "SCRAM message too long")
        try:
            text = message.decode("utf-8")
        except UnicodeDecodeError:
            raise ScramError("malformed-request", "SCRAM message is not UTF-8", "invalid-encoding") from None
        parts = text.split(",", 2)
        if len(parts) != 3:
            raise ScramError("malformed-request", "client-first-message is malformed")
        flag, authz, bare = parts
        cb_name = None
        if flag.startswith("p="):
            cb_name = flag[2:]
            flag = "p"
        if flag not in ("n", "y", "p"):
            raise ScramError("malformed-request", "invalid gs2 channel binding flag")
        if self._plus and flag != "p":
            raise ScramError("malformed-request", "a -PLUS mechanism requires channel binding")
        if not self._plus and flag == "p":
            raise ScramError("malformed-request", "channel binding requested on a non-PLUS mechanism")
        if flag == "y" and self._offered_plus:
            # RFC 5802 §6: the client supports channel binding and we offered it: a downgrade.
            raise ScramError("not-authorized", "channel binding downgrade detected", "server-does-support-channel-binding")
        if flag == "p":
            if cb_name not in self._bindings:
                raise ScramError(
                    "not-authorized", f"channel binding type {cb_name} is not supported",
                    "unsupported-channel-binding-type",
                )
            self.channel_binding = cb_name
        authzid = None
        if authz:
            if not authz.startswith("a="):
                raise ScramError("malformed-request", "invalid authzid in gs2 header")
            authzid = _decode_saslname(authz[2:])
        attrs = bare.split(",")
        if attrs and attrs[0].startswith("m="):
            raise ScramError("malformed-request", "mandatory extensions are not supported", "extensions-not-supported")
        if len(attrs) < 2 or not attrs[0].startswith("n=") or not attrs[1].startswith("r="):
            raise ScramError("malformed-request", "client-first-message needs n= and r=")
        username = _decode_saslname(attrs[0][2:])
        nonce = attrs[1][2:]
        if not username or not nonce:
            raise ScramError("malformed-request", "empty username or nonce")
        gs2_header = f"{parts[0]},{authz},".encode()
        self._first = _ClientFirst(gs2_header, flag, cb_name, authzid, username, nonce, bare.encode())
        self.username = username
        self.authzid = authzid
        return username

    def server_first(self, credential: ScramCredential | None) -> bytes:
        """Build server-first-message. With no credential, a fake one hides whether the user exists."""
        assert self._first is not None
        if credential is None or credential.hash_name != self.hash_name:
            salt = hmac.digest(self._fake_salt_key, self._first.username.encode(), "sha256")[:16]
            credential = ScramCredential(self.hash_name, salt, 10000, os.urandom(32), os.urandom(32))
            self._credential = None
            self._fake = credential
        else:
            self._credential = credential
            self._fake = credential
        self._nonce = self._first.client_nonce + base64.b64encode(os.urandom(NONCE_BYTES)).decode()
        salt_b64 = base64.b64encode(self._fake.salt).decode()
        self._server_first = f"r={self._nonce},s={salt_b64},i={self._fake.iterations}".encode()
        return self._server_first

    #: After a successful ``client_final``: the stored key of the alternate that matched, None for the
    #: account's own.
    matched_alternate: bytes | None = None

    def client_final(self, message: bytes) -> bytes:
        """Check client-final-message; return server-final-message or raise ScramError."""
        assert self._first is not None
        if len(message) > MAX_SCRAM_MESSAGE:
            raise ScramError("malformed-request", "SCRAM message too long")
        try:
            text = message.decode("utf-8")
        except UnicodeDecodeError:
            raise ScramError("malformed-request", "SCRAM message is not UTF-8") from None
        without_proof, sep, proof_b64 = text.rpartition(",p=")
        if not sep:
            raise ScramError("malformed-request", "client-final-message has no proof")
        attrs = without_proof.split(",")
        if len(attrs) < 2 or not attrs[0].startswith("c=") or not attrs[1].startswith("r="):
            raise ScramError("malformed-request", "client-final-message needs c= and r=")
        try:
            cbind = base64.b64decode(attrs[0][2:], validate=True)
            proof = base64.b64decode(proof_b64, validate=True)
        except ValueError:
            raise ScramError("malformed-request", "invalid base64 in client-final-message", "invalid-encoding") from None
        expected_cbind = self._first.gs2_header
        if self._first.cb_flag == "p":
            assert self._first.cb_name is not None
            expected_cbind += self._bindings[self._first.cb_name]
        if not hmac.compare_digest(cbind, expected_cbind):
            raise ScramError("not-authorized", "channel bindings do not match", "channel-bindings-dont-match")
        if attrs[1][2:] != self._nonce:
            raise ScramError("not-authorized", "nonce mismatch", "other-error")
        auth_message = self._first.bare + b"," + self._server_first + b"," + without_proof.encode()
        credential = self._credential
        if credential is None:
            raise ScramError("not-authorized", "invalid username or password", "invalid-proof")
        # The account's own keys first, then its app passwords' (same salt and iterations).
        for index, (stored_key, server_key) in enumerate(((credential.stored_key, credential.server_key),
                                                          *credential.alternates)):
            signature = hmac.digest(stored_key, auth_message, self._algorithm)
            if len(proof) != len(signature):
                break
            client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
            if hmac.compare_digest(hashlib.new(self._algorithm, client_key).digest(), stored_key):
                # an alternate's stored key (an app password or login token): the caller may ask which
                self.matched_alternate = stored_key if index else None
                server_signature = hmac.digest(server_key, auth_message, self._algorithm)
                return b"v=" + base64.b64encode(server_signature)
        raise ScramError("not-authorized", "invalid username or password", "invalid-proof")


def scram_client_proof(
    hash_name: str, password: str, salt: bytes, iterations: int, auth_message: bytes
) -> tuple[bytes, bytes]:
    """Client side helper (tests and the federation checker): return (proof, expected server signature)."""
    algorithm = SCRAM_HASHES[hash_name]
    salted = hashlib.pbkdf2_hmac(algorithm, password.encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", algorithm)
    stored_key = hashlib.new(algorithm, client_key).digest()
    signature = hmac.digest(stored_key, auth_message, algorithm)
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    server_key = hmac.digest(salted, b"Server Key", algorithm)
    return proof, hmac.digest(server_key, auth_message, algorithm)
