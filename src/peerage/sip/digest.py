"""SIP digest authentication (RFC 3261 §22, RFC 7616 semantics, RFC 8760 algorithms), no I/O.

This module is in charge of issuing challenges and checking credentials against a stored HA1.  Only
HA1 = H(user:realm:password) is ever used; the password is never needed.  Both MD5 and SHA-256 are
offered (RFC 8760 §2.4: one challenge per algorithm, most preferred first), always with qop=auth.

Nonces are self-validating: ``<issued-at>.<random>.<HMAC>`` keyed with a server secret, so they
survive across worker processes and need no storage to check.  They expire after
:data:`NONCE_LIFETIME` (the client is told ``stale=true`` and retries silently).  Replays are refused
by remembering, per nonce, the highest nonce-count (nc) accepted: a request with a lower or equal nc
is a replay (RFC 7616 §3.4.5).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from peerage.sip.message import SipParseError, _split_outside_quotes, unquote_string

# How long a nonce is honoured.  Kamailio's auth module uses nonce_expire = 300 s; Asterisk 30 s
# (per request); 300 s lets a REGISTER refresh reuse it while capping replay windows.
NONCE_LIFETIME = 300.0
# How many nonces we remember the last nonce-count of (replay protection).  Kamailio's auth module
# uses a nonce-count array of 1M one-byte entries (nc_array_size); 200,000 entries x ~150 bytes stays
# under 30 MiB.  When full, the oldest are forgotten (they are about to expire anyway).
MAX_TRACKED_NONCES = 200_000
# Longest credentials header we parse (a normal one is ~300 bytes).
MAX_CREDENTIALS_LENGTH = 4096

ALGORITHMS = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}
# RFC 8760 §2.4: one challenge per algorithm in one 401/407, listed in order of preference; a client
# answers the topmost it supports. MD5 comes first by default because widely deployed clients stop at
# the first challenge and fail on SHA-256 instead of reading the next (sipsak 0.9.8, SIPp 3.6), and
# JsSIP reads only the first and knows MD5 only; SHA-256 stays in the same answer for clients that
# look further, and clients proven to support it get SHA-256 first by User-Agent
# ([sip] digest_sha256_first_user_agents). Kamailio's auth module likewise defaults to MD5.
DEFAULT_ALGORITHMS = ("MD5", "SHA-256")
# User-Agent prefixes that get the MD5 challenge alone. baresip's SIP stack (libre 1.x, baresip 1.0 in
# Debian 12) walks every WWW-Authenticate header and gives up the whole 401 with ENOSYS at the first
# algorithm other than MD5, wherever it is listed ([sip] digest_md5_only_user_agents). JsSIP (3.10 to
# 3.13, User-Agent "JsSIP <version>") keeps only the last WWW-/Proxy-Authenticate header of a response
# (its parser replaces the header each time) and aborts on any algorithm but MD5, so MD5 then SHA-256
# fails it too.
MD5_ONLY_USER_AGENTS = ("baresip", "JsSIP")


def digest_hex(algorithm: str, text: str) -> str:
    return ALGORITHMS[algorithm](text.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(slots=True)
class Credentials:
    """Parsed Authorization / Proxy-Authorization (RFC 3261 §25.1 digest-response)."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str
    qop: str | None
    nc: str | None
    cnonce: str | None
    opaque: str | None


def parse_credentials(value: str) -> Credentials:
    value = value.strip()
    if len(value) > MAX_CREDENTIALS_LENGTH:
        raise SipParseError("credentials too long")
    scheme, _, rest = value.partition(" ")
    if scheme.lower() != "digest":
        raise SipParseError("not a Digest credential")
    fields: dict[str, str] = {}
    for item in _split_outside_quotes(rest, ","):
        name, sep, raw = item.strip().partition("=")
        if not sep:
            continue
        raw = raw.strip()
        fields[name.strip().lower()] = unquote_string(raw) if raw.startswith('"') else raw
    try:
        return Credentials(
            username=fields["username"], realm=fields["realm"], nonce=fields["nonce"],
            uri=fields["uri"], response=fields["response"].lower(),
            algorithm=(fields.get("algorithm") or "MD5").upper(), qop=fields.get("qop"),
            nc=fields.get("nc"), cnonce=fields.get("cnonce"), opaque=fields.get("opaque"),
        )
    except KeyError as missing:
        raise SipParseError(f"credentials lack {missing.args[0]}") from None


def expected_response(algorithm: str, ha1: str, method: str, credentials: Credentials) -> str:
    """RFC 7616 §3.4.1 response with qop=auth (RFC 2617 form without qop kept for completeness)."""
    ha2 = digest_hex(algorithm, f"{method}:{credentials.uri}")
    if credentials.qop:
        return digest_hex(algorithm, f"{ha1}:{credentials.nonce}:{credentials.nc}:"
                                     f"{credentials.cnonce}:{credentials.qop}:{ha2}")
    return digest_hex(algorithm, f"{ha1}:{credentials.nonce}:{ha2}")


class Verdict:
    OK = "ok"
    STALE = "stale"  # good password, old nonce: challenge again with stale=true
    FAILED = "failed"


class DigestAuthenticator:
    """Issues nonces and checks responses; ``clock`` is injected for tests."""

    def __init__(self, secret: bytes | None = None, clock: Callable[[], float] = time.time,
                 algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS,
                 nonce_lifetime: float = NONCE_LIFETIME, sha256_first: tuple[str, ...] = (),
                 md5_only: tuple[str, ...] = MD5_ONLY_USER_AGENTS) -> None:
        self.secret = secret or os.urandom(32)
        self.sha256_first = sha256_first
        self.md5_only = md5_only
        self.clock = clock
        self.algorithms = tuple(a for a in algorithms if a in ALGORITHMS)
        self.nonce_lifetime = nonce_lifetime
        self._last_nc: dict[str, int] = {}

    # -- nonces
    def new_nonce(self) -> str:
        issued = f"{int(self.clock()):x}.{base64.urlsafe_b64encode(os.urandom(9)).decode()}"
        return f"{issued}.{self._mac(issued)}"

    def _mac(self, issued: str) -> str:
        mac = hmac.new(self.secret, issued.encode(), hashlib.sha256).digest()[:12]
        return base64.urlsafe_b64encode(mac).decode()

    def nonce_state(self, nonce: str) -> str:
        issued, _, mac = nonce.rpartition(".")
        if not issued or not hmac.compare_digest(mac, self._mac(issued)):
            return Verdict.FAILED
        try:
            stamp = int(issued.partition(".")[0], 16)
        except ValueError:
            return Verdict.FAILED
        age = self.clock() - stamp
        if age < -5 or age > self.nonce_lifetime:
            return Verdict.STALE
        return Verdict.OK

    # -- challenges
    def challenges(self, realm: str, stale: bool = False, user_agent: str | None = None) -> list[str]:
        """One WWW-/Proxy-Authenticate value per algorithm, same nonce (RFC 8760 §2.4); SHA-256 first
        for a User-Agent that starts with one of ``sha256_first``."""
        nonce = self.new_nonce()
        suffix = ", stale=true" if stale else ""
        order = self.algorithms
        if user_agent and "MD5" in order and any(user_agent.startswith(p) for p in self.md5_only):
            order = ("MD5",)
        elif user_agent and "SHA-256" in order and any(user_agent.startswith(p) for p in self.sha256_first):
            order = ("SHA-256", *(a for a in order if a != "SHA-256"))
        return [
            f'Digest realm="{realm}", nonce="{nonce}", algorithm={algorithm}, qop="auth"{suffix}'
            for algorithm in order
        ]

    # -- verification
    def verify_any(self, credentials: Credentials, method: str, ha1s: Sequence[str]) -> str:
        """`verify` against the account's HA1 and then its app passwords' (the response names none,
        so each is tried; a wrong HA1 fails before the nonce's replay state is touched)."""
        return self.verify_which(credentials, method, ha1s)[0]

    def verify_which(self, credentials: Credentials, method: str, ha1s: Sequence[str]) -> tuple[str, int]:
        """`verify_any`, and the index of the HA1 that decided it (-1 when none matched)."""
        for index, ha1 in enumerate(ha1s):
            verdict = self.verify(credentials, method, ha1)
            if verdict != Verdict.FAILED:
                return verdict, index
        return Verdict.FAILED, -1

    def verify(self, credentials: Credentials, method: str, ha1: str | None) -> str:
        """Check ``credentials`` for a request with ``method`` given the user's stored HA1."""
        if ha1 is None or credentials.algorithm not in self.algorithms:
            return Verdict.FAILED
        if credentials.qop != "auth" or not credentials.nc or not credentials.cnonce:
            return Verdict.FAILED  # qop=auth is required, so nc replay checks always apply
        expected = expected_response(credentials.algorithm, ha1, method, credentials)
        if not hmac.compare_digest(expected, credentials.response):
            return Verdict.FAILED
        state = self.nonce_state(credentials.nonce)
        if state != Verdict.OK:
            return state
        try:
            count = int(credentials.nc, 16)
        except ValueError:
            return Verdict.FAILED
        last = self._last_nc.get(credentials.nonce)
        if last is not None and count <= last:
            return Verdict.FAILED  # replayed nonce-count
        if last is None and len(self._last_nc) >= MAX_TRACKED_NONCES:
            self._forget_oldest()
        self._last_nc[credentials.nonce] = count
        return Verdict.OK

    def _forget_oldest(self) -> None:
        """Drop expired nonces, then the oldest tenth if still full (dicts keep insertion order)."""
        for nonce in list(self._last_nc):
            if self.nonce_state(nonce) != Verdict.OK:
                del self._last_nc[nonce]
        if len(self._last_nc) >= MAX_TRACKED_NONCES:
            for nonce in list(self._last_nc)[: MAX_TRACKED_NONCES // 10]:
                del self._last_nc[nonce]


def client_authorization(challenge: str, method: str, uri: str, username: str, password: str,
                         nc: int = 1, cnonce: str | None = None) -> str:
    """Answer a challenge (used by tests and by the proxy's own requests): RFC 7616 §3.4."""
    fields: dict[str, str] = {}
    for item in _split_outside_quotes(challenge.partition(" ")[2], ","):
        name, _, raw = item.strip().partition("=")
        raw = raw.strip()
        fields[name.strip().lower()] = unquote_string(raw) if raw.startswith('"') else raw
    algorithm = fields.get("algorithm", "MD5").upper()
    realm, nonce = fields["realm"], fields["nonce"]
    cnonce = cnonce or base64.b16encode(os.urandom(8)).decode().lower()
    ha1 = digest_hex(algorithm, f"{username}:{realm}:{password}")
    creds = Credentials(username, realm, nonce, uri, "", algorithm, "auth", f"{nc:08x}", cnonce, None)
    response = expected_response(algorithm, ha1, method, creds)
    return (f'Digest username="{username}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
            f'response="{response}", algorithm={algorithm}, qop=auth, nc={nc:08x}, '
            f'cnonce="{cnonce}"')
