"""Who is asking: the web session cookie (with its CSRF token on state changes) or HTTP Basic.

This module is in charge of checking passwords for the web (through the AccountService's argon2id and
the shared failure throttle), of turning a request into an account, and of the session cookie's shape.
The cookie is ``__Host-peerage_session``: Secure, HttpOnly, Path=/ and no Domain (the ``__Host-`` prefix
makes browsers enforce that), and SameSite=Strict, so a browser never sends it with a request another
site starts, not even a top-level link; a page reached from another site's link reloads itself once
(``needs_same_site_reload``) to get a same-site request that carries it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from peerage.web.security import SAFE_METHODS, same_origin
from peerage.web.sessions import SessionStore, WebSession

log = logging.getLogger(__name__)

COOKIE_NAME = "__Host-peerage_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf"
# A successful Basic login is remembered this long (keyed by a hash of the credentials), so a JMAP
# client sending Basic with every request does not pay an argon2id verification (~50 ms) each time.
# A changed password stops working for other clients within this delay.
BASIC_CACHE_SECONDS = 60.0
BASIC_CACHE_ENTRIES = 10000
# RFC 5321 §4.5.3.1.3 bounds a path (so an address) at 256 octets; a password longer than 1 KiB is
# not a password (argon2 would still hash it, at a cost an attacker chooses).
MAX_ADDRESS_LENGTH = 320
MAX_PASSWORD_LENGTH = 1024


class LoginRefused(Exception):
    """Too many failures from this address or for this account; try later."""


@dataclass(frozen=True)
class Principal:
    account: str
    session: WebSession | None  # None for HTTP Basic
    token: str | None = None


def client_ip(request: web.BaseRequest) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport is not None else None
    return str(peer[0]) if peer else ""


class Authenticator:
    def __init__(self, host: Any, sessions: SessionStore) -> None:
        self.host = host
        self.sessions = sessions
        self._basic_cache: dict[bytes, tuple[str, float]] = {}
        # Called with the account after each successful form login (JMAP starts loading the
        # account's mail while the browser is still fetching the webmail).
        self.login_listeners: list[Callable[[str], None]] = []

    async def check_password(self, ip: str, address: str, password: str, protocol: str = "web") -> str | None:
        """The account when `password` is right, else None, through the shared authentication layer
        (peerage.identity.login: the login-name rule, the throttle's delays, the failure log line).
        Raises LoginRefused when the throttle refuses the attempt outright."""
        from peerage.identity.login import authenticate, login_names
        from peerage.identity.sasl import SaslServer, Success

        if len(password) > MAX_PASSWORD_LENGTH or len(address) > MAX_ADDRESS_LENGTH:
            self.host.limits.auth.failure(ip, None, protocol=protocol, mechanism="PLAIN")
            return None
        server = SaslServer(mechanisms=["PLAIN"], login=login_names(self.host, None), channel_bindings={},
                            secure=True)
        initial = b"\0" + address.strip().encode() + b"\0" + password.encode()

        async def no_challenge(_challenge: bytes) -> bytes | None:
            return None  # PLAIN with an initial response never asks again

        result = await authenticate(server, "PLAIN", initial, exchange=no_challenge, host=self.host, ip=ip,
                                    protocol=protocol)
        if isinstance(result, Success):
            return result.account
        if result.condition == "temporary-auth-failure":
            raise LoginRefused("too many failed logins; try again later")
        log.info("web login failed for %s from %s", result.account or "-", ip)
        return None

    async def basic(self, request: web.BaseRequest) -> str | None:
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic" or not value:
            return None
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, sep, password = decoded.partition(":")
        if not sep:
            return None
        key = hashlib.sha256(decoded.encode()).digest()
        now = time.monotonic()
        cached = self._basic_cache.get(key)
        if cached is not None and cached[1] > now:
            return cached[0]
        account = await self.check_password(client_ip(request), user, password, protocol="jmap")
        if account is not None:
            if len(self._basic_cache) >= BASIC_CACHE_ENTRIES:
                self._basic_cache.clear()
            self._basic_cache[key] = (account, now + BASIC_CACHE_SECONDS)
        return account

    async def session(self, request: web.BaseRequest) -> tuple[str, WebSession] | None:
        token = request.cookies.get(COOKIE_NAME)
        if not token:
            return None
        session = await self.sessions.lookup(token)
        return None if session is None else (token, session)

    async def principal(self, request: web.Request, *, basic: bool = False) -> Principal | None:
        """The account behind `request`, or None. A cookie session must, on any method that is not
        safe, come from this origin and carry its CSRF token (header or form field); otherwise
        HTTPForbidden is raised. HTTP Basic is tried when `basic` is set and there is no session."""
        found = await self.session(request)
        if found is not None:
            token, session = found
            if request.method not in SAFE_METHODS:
                self.check_csrf(request, session, await _form_csrf(request))
            return Principal(session.account, session, token)
        if basic:
            if request.method not in SAFE_METHODS and not same_origin(request):
                raise web.HTTPForbidden(text="cross-origin request refused\n")
            try:
                account = await self.basic(request)
            except LoginRefused as exc:
                raise web.HTTPTooManyRequests(text=f"{exc}\n") from None
            if account is not None:
                return Principal(account, None)
        return None

    async def account(self, request: web.Request, *, basic: bool = False) -> str | None:
        principal = await self.principal(request, basic=basic)
        return None if principal is None else principal.account

    @staticmethod
    def check_csrf(request: web.BaseRequest, session: WebSession, form_value: str | None = None) -> None:
        if not same_origin(request):
            raise web.HTTPForbidden(text="cross-origin request refused\n")
        supplied = request.headers.get(CSRF_HEADER) or form_value or ""
        if not hmac.compare_digest(supplied.encode(), session.csrf.encode()):
            raise web.HTTPForbidden(text=f"missing or wrong {CSRF_HEADER}\n")


async def _form_csrf(request: web.Request) -> str | None:
    """The csrf field of an urlencoded form post (read within the app's body limit), else None."""
    if CSRF_HEADER in request.headers or request.content_type != "application/x-www-form-urlencoded":
        return None
    form = await request.post()
    value = form.get(CSRF_FIELD)
    return value if isinstance(value, str) else None


def set_session_cookie(response: web.StreamResponse, token: str, max_age: float) -> None:
    response.set_cookie(COOKIE_NAME, token, max_age=int(max_age), path="/", secure=True, httponly=True,
                        samesite="Strict")


def clear_session_cookie(response: web.StreamResponse) -> None:
    response.del_cookie(COOKIE_NAME, path="/", secure=True, httponly=True, samesite="Strict")


def needs_same_site_reload(request: web.BaseRequest) -> bool:
    """A top-level navigation from another site: the Strict cookie was withheld, so reload once."""
    return (request.headers.get("Sec-Fetch-Site") == "cross-site"
            and request.headers.get("Sec-Fetch-Mode") == "navigate" and COOKIE_NAME not in request.cookies)
