"""Module turn is in charge of the STUN/TURN servers peerage hands to its users, and of their credentials.

peerage does not relay media itself: a TURN server does (coturn, Debian's ``coturn``), configured with
``use-auth-secret`` and a ``static-auth-secret`` it shares with peerage. peerage then mints time-limited
credentials per the "REST API for access to TURN services" (draft-uberti-behave-turn-rest-00 §2.2,
the scheme coturn implements): the username is ``<expiry>:<account>`` (a Unix time, then who it is for)
and the password is ``base64(HMAC-SHA1(secret, username))``. The TURN server checks the HMAC and the
expiry itself, so nothing is stored and nothing needs revoking; a credential stops working at its
expiry. RFC 8489 §9.2 (long-term credentials) and RFC 8656 §3 are what the TURN server then runs.

Two consumers: XEP-0215 external service discovery (``peerage.xmpp.features.external_services``) and
the ICE servers of the web chat page (``GET /chat/ice-servers``, see ``peerage.web.chat``).

Configured in ``[turn]``: ``servers`` (STUN/TURN URIs, RFC 7064/7065), ``secret_file`` (the shared
secret, one line, in a file no other user may read) and ``credential_lifetime``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import stat
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peerage.config import ConfigError, TurnConfig

# Shortest and longest credential lifetimes accepted in [turn] credential_lifetime. The draft's example
# is 86400 s (one day), Prosody's mod_turn_external defaults to 86400 too. An allocation outlives the
# credential that made it only until its next Refresh (RFC 8656 §7: 600 s by default), so a provider
# keeps hours; the floor of 10 s is what a client needs to fetch a credential and allocate with it,
# and lets tests watch an expiry happen.
MIN_LIFETIME = 10
MAX_LIFETIME = 7 * 86400
# The secret: coturn reads static-auth-secret as a string; a short one is guessable offline from one
# observed credential (HMAC-SHA1 with a low-entropy key), so ask for at least 128 bits' worth of text.
MIN_SECRET_LENGTH = 16
MAX_SECRET_LENGTH = 1024

DEFAULT_PORTS = {"stun": 3478, "turn": 3478, "stuns": 5349, "turns": 5349}


@dataclass(frozen=True)
class Service:
    """One STUN/TURN endpoint, as XEP-0215 §4 describes it (type, host, port, transport)."""

    type: str  # stun | stuns | turn | turns
    host: str
    port: int
    transport: str  # udp | tcp

    @property
    def needs_credentials(self) -> bool:
        return self.type in ("turn", "turns")

    def uri(self) -> str:
        """The RFC 7064/7065 URI (WebRTC's RTCIceServer.urls)."""
        shown = f"[{self.host}]" if ":" in self.host else self.host
        base = f"{self.type}:{shown}:{self.port}"
        if self.needs_credentials:
            return f"{base}?transport={self.transport}"
        return base


@dataclass(frozen=True)
class Credential:
    username: str
    password: str
    expires: float  # Unix time


def parse_uri(uri: str) -> Service:
    """A STUN/TURN URI (RFC 7064 §3.1, RFC 7065 §3.1) as a Service; ValueError naming what is wrong."""
    scheme, sep, rest = uri.strip().partition(":")
    scheme = scheme.lower()
    if not sep or scheme not in DEFAULT_PORTS:
        raise ValueError(f"'{uri}' is not a stun:, stuns:, turn: or turns: URI")
    rest, _, query = rest.partition("?")
    if rest.startswith("["):
        host, _, after = rest[1:].partition("]")
        port_text = after[1:] if after.startswith(":") else ""
        if after and not after.startswith(":"):
            raise ValueError(f"'{uri}': bad text after the IPv6 address")
    else:
        host, _, port_text = rest.partition(":")
    if not host:
        raise ValueError(f"'{uri}' names no host")
    try:
        port = int(port_text) if port_text else DEFAULT_PORTS[scheme]
    except ValueError:
        raise ValueError(f"'{uri}': port '{port_text}' is not a number") from None
    if not 0 < port < 65536:
        raise ValueError(f"'{uri}': port {port} is out of range")
    # RFC 7065 §3.1: turn: defaults to UDP, turns: to TCP (TLS); stun: is UDP, stuns: TCP (TLS).
    transport = "tcp" if scheme in ("stuns", "turns") else "udp"
    if query:
        key, _, value = query.partition("=")
        if key.lower() != "transport" or value.lower() not in ("udp", "tcp") or scheme not in ("turn", "turns"):
            raise ValueError(f"'{uri}': only turn:/turns: URIs take a query, and only ?transport=udp or tcp")
        transport = value.lower()
    return Service(scheme, host.lower(), port, transport)


def read_secret(path: Path) -> str:
    """The shared secret from `path` (first line), refusing a file other users may read."""
    try:
        info = path.stat()
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"[turn] secret_file: cannot read {path}: {exc.strerror}") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO) and os.name == "posix":
        raise ConfigError(f"[turn] secret_file: {path} is readable by other users; `chmod 600 {path}`")
    secret = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not MIN_SECRET_LENGTH <= len(secret) <= MAX_SECRET_LENGTH:
        raise ConfigError(f"[turn] secret_file: {path} must hold a secret of {MIN_SECRET_LENGTH} to "
                          f"{MAX_SECRET_LENGTH} characters (e.g. `openssl rand -hex 32`), the same as "
                          "coturn's static-auth-secret")
    return secret


def make_credential(secret: str, account: str, expires: float) -> Credential:
    """draft-uberti-behave-turn-rest-00 §2.2: username `expiry:account`, password its HMAC-SHA1."""
    username = f"{int(expires)}:{account}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return Credential(username, base64.b64encode(digest).decode("ascii"), float(int(expires)))


class Turn:
    """The configured services and a credential minter; built once per host from [turn]."""

    def __init__(self, config: TurnConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        try:
            self.services = tuple(parse_uri(uri) for uri in config.servers)
        except ValueError as exc:
            raise ConfigError(f"[turn] servers: {exc}") from None
        if not MIN_LIFETIME <= config.credential_lifetime <= MAX_LIFETIME:
            raise ConfigError(f"[turn] credential_lifetime must be between {MIN_LIFETIME} and {MAX_LIFETIME} "
                              f"seconds (the default is 86400)")
        self.lifetime = config.credential_lifetime
        needs_secret = any(s.needs_credentials for s in self.services)
        if needs_secret and config.secret_file is None:
            raise ConfigError("[turn] servers lists a turn:/turns: server, so set secret_file to the file holding "
                              "coturn's static-auth-secret (use-auth-secret)")
        self.secret = read_secret(config.secret_file) if config.secret_file is not None else ""

    @property
    def enabled(self) -> bool:
        return bool(self.services)

    def credential(self, account: str) -> Credential:
        return make_credential(self.secret, account, self.clock() + self.lifetime)

    def ice_servers(self, account: str) -> dict[str, object]:
        """WebRTC's RTCConfiguration.iceServers (W3C webrtc §4.2.4) for `account`, with the expiry."""
        credential = self.credential(account)
        servers: list[dict[str, object]] = []
        stun = [s.uri() for s in self.services if not s.needs_credentials]
        turn = [s.uri() for s in self.services if s.needs_credentials]
        if stun:
            servers.append({"urls": stun})
        if turn:
            servers.append({"urls": turn, "username": credential.username, "credential": credential.password})
        return {"iceServers": servers, "expires": int(credential.expires)}


_turns: weakref.WeakKeyDictionary[Any, tuple[TurnConfig, Turn]] = weakref.WeakKeyDictionary()


def turn_for(host: Any) -> Turn | None:
    """The host's Turn, built from its current [turn] (again after a reload changed it), or None when
    [turn] lists no server."""
    config: TurnConfig = host.config.turn
    cached = _turns.get(host)
    if cached is None or cached[0] is not config:
        cached = _turns[host] = (config, Turn(config))
    return cached[1] if cached[1].enabled else None
