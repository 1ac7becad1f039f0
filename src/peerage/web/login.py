"""The one login: the /login form, logout, the session API and the optional TOTP second factor.

This module is in charge of these routes:

- ``GET /login`` the form; ``POST /login`` (form fields or JSON: ``account``, ``password``, ``totp``,
  ``next``) checks the password through the Authenticator (argon2id and the shared throttle), then the
  TOTP code when the account has one, and sets the session cookie;
- ``POST /logout`` ends the session (CSRF token required, as for every state change);
- ``GET /auth/session`` → ``{"account": ..., "csrf": ...}`` (401 when not logged in);
- ``GET /auth/sessions`` lists the user's sessions; ``DELETE /auth/sessions/{id}`` revokes one;
- ``GET/POST/DELETE /auth/totp`` and ``POST /auth/totp/confirm`` manage the second factor.
"""

from __future__ import annotations

import html
import json
from typing import Any
from urllib.parse import quote

from aiohttp import web

from peerage.web import totp
from peerage.web.auth import (
    Authenticator,
    LoginRefused,
    Principal,
    clear_session_cookie,
    client_ip,
    needs_same_site_reload,
    set_session_cookie,
)
from peerage.web.security import JsonError, parse_json, read_body, same_origin
from peerage.web.sessions import hash_token

# Largest login request; an address and a password fit many times over.
LOGIN_BODY_LIMIT = 8192

LOGIN_CSS = """
body{font-family:system-ui,sans-serif;background:#f3f4f6;margin:0;display:flex;min-height:100vh;
align-items:center;justify-content:center;color:#111827}
main{background:#fff;padding:2rem 2.5rem;border-radius:12px;box-shadow:0 4px 24px rgba(0,0,0,.08);width:20rem}
h1{font-size:1.25rem;margin:0 0 1.25rem}label{display:block;font-size:.875rem;margin:.75rem 0 .25rem}
input{width:100%;box-sizing:border-box;padding:.55rem .6rem;border:1px solid #d1d5db;border-radius:6px;font-size:1rem}
button{margin-top:1.25rem;width:100%;padding:.6rem;border:0;border-radius:6px;background:#2563eb;color:#fff;
font-size:1rem;cursor:pointer}p.error{color:#b91c1c;font-size:.875rem}p.note{color:#4b5563;font-size:.875rem}
"""


def safe_next(value: str | None, default: str = "/mail/") -> str:
    """Only a path on this site: "/x", never "//host" or "/\\host" (an open redirect otherwise)."""
    if not value or not value.startswith("/") or value.startswith("//") or value.startswith("/\\"):
        return default
    return value


def page(title: str, body: str, status: int = 200) -> web.Response:
    text = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{html.escape(title)}</title><link rel=stylesheet href=/auth/login.css></head>"
        f"<body><main>{body}</main></body></html>"
    )
    response = web.Response(text=text, content_type="text/html", status=status)
    response.headers["Cache-Control"] = "no-store"
    return response


def login_form(next_url: str, error: str = "", account: str = "", need_totp: bool = False,
               status: int = 200) -> web.Response:
    error_html = f"<p class=error role=alert>{html.escape(error)}</p>" if error else ""
    if need_totp:
        fields = (
            f'<input type=hidden name=account value="{html.escape(account)}">'
            '<p class=note>Enter the code from your authenticator app, and your password again.</p>'
            '<label for=password>Password</label>'
            '<input id=password name=password type=password autocomplete=current-password required autofocus>'
            '<label for=totp>Code</label>'
            '<input id=totp name=totp inputmode=numeric autocomplete=one-time-code pattern="[0-9]{6}" required>'
        )
    else:
        fields = (
            '<label for=account>Address</label>'
            f'<input id=account name=account type=email autocomplete=username required autofocus '
            f'value="{html.escape(account)}">'
            '<label for=password>Password</label>'
            '<input id=password name=password type=password autocomplete=current-password required>'
        )
    body = (
        "<h1>Sign in</h1>" + error_html
        + f'<form method=post action="/login?next={html.escape(quote(next_url, safe="/"))}">'
        + fields + f'<input type=hidden name=next value="{html.escape(next_url)}">'
        + "<button type=submit>Sign in</button></form>"
    )
    return page("Sign in", body, status)


class LoginRoutes:
    def __init__(self, auth: Authenticator, cookie_max_age: float, body_timeout: float) -> None:
        self.auth = auth
        self.cookie_max_age = cookie_max_age
        self.body_timeout = body_timeout

    def setup(self, app: web.Application) -> None:
        app.router.add_get("/login", self.get_login)
        app.router.add_post("/login", self.post_login)
        app.router.add_post("/logout", self.logout)
        app.router.add_get("/auth/login.css", self.css)
        app.router.add_get("/auth/session", self.get_session)
        app.router.add_get("/auth/sessions", self.list_sessions)
        app.router.add_delete("/auth/sessions/{id}", self.revoke_session)
        app.router.add_get("/auth/totp", self.totp_status)
        app.router.add_post("/auth/totp", self.totp_begin)
        app.router.add_post("/auth/totp/confirm", self.totp_confirm)
        app.router.add_delete("/auth/totp", self.totp_disable)
        app.router.add_get("/", self.root)

    async def css(self, _request: web.Request) -> web.Response:
        response = web.Response(text=LOGIN_CSS, content_type="text/css")
        response.headers["Cache-Control"] = "public, max-age=86400"
        return response

    async def root(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/mail/")

    async def get_login(self, request: web.Request) -> web.Response:
        if needs_same_site_reload(request):
            return reload_page(request)
        next_url = safe_next(request.query.get("next"))
        if await self.auth.session(request) is not None:
            raise web.HTTPSeeOther(next_url)
        return login_form(next_url)

    async def post_login(self, request: web.Request) -> web.StreamResponse:
        wants_json = request.content_type == "application/json"
        if not same_origin(request):
            raise web.HTTPForbidden(text="cross-origin login refused\n")
        body = await read_body(request, LOGIN_BODY_LIMIT, self.body_timeout)
        fields = _login_fields(body, wants_json)
        account_in, password = fields.get("account", ""), fields.get("password", "")
        code = fields.get("totp", "")
        next_url = safe_next(fields.get("next") or request.query.get("next"))
        ip = client_ip(request)

        def refuse(message: str, status: int, need_totp: bool = False) -> web.Response:
            if wants_json:
                return web.json_response({"error": message, "totp": need_totp}, status=status)
            return login_form(next_url, message, account_in, need_totp, status)

        try:
            account = await self.auth.check_password(ip, account_in, password)
        except LoginRefused as exc:
            return refuse(str(exc), 429)
        if account is None:
            return refuse("Wrong address or password.", 401)
        factor = await totp.load(self.auth.host.store, account)
        if factor is not None and factor.enabled:
            if not code:
                return refuse("This account asks for a second factor.", 401, need_totp=True)
            if not await totp.verify(self.auth.host.store, factor, code):
                self.auth.host.limits.auth.failure(ip, account, protocol="web", mechanism="TOTP")
                return refuse("Wrong code.", 401, need_totp=True)
        token, session = await self.auth.sessions.create(account, ip, request.headers.get("User-Agent", ""))
        for listener in self.auth.login_listeners:
            listener(account)
        response: web.StreamResponse
        if wants_json:
            response = web.json_response({"account": account, "csrf": session.csrf})
        else:
            response = web.Response(status=303, headers={"Location": next_url})
        set_session_cookie(response, token, self.cookie_max_age)
        response.headers["Cache-Control"] = "no-store"
        return response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        principal = await self.auth.principal(request)
        if principal is not None and principal.token is not None:
            await self.auth.sessions.end(principal.token)
            # The XMPP and SIP tokens this session gave the chat page end with it.
            await self.auth.host.accounts.end_web_session_tokens(hash_token(principal.token), principal.account)
        response: web.StreamResponse
        if request.content_type == "application/x-www-form-urlencoded":
            response = web.Response(status=303, headers={"Location": "/login"})
        else:
            response = web.Response(status=204)
        clear_session_cookie(response)
        return response

    async def _principal(self, request: web.Request) -> Principal:
        principal = await self.auth.principal(request)
        if principal is None or principal.session is None:
            raise web.HTTPUnauthorized(text=json.dumps({"error": "not logged in"}), content_type="application/json")
        return principal

    async def get_session(self, request: web.Request) -> web.Response:
        principal = await self._principal(request)
        assert principal.session is not None
        response = web.json_response({"account": principal.account, "csrf": principal.session.csrf})
        response.headers["Cache-Control"] = "no-store"
        return response

    async def list_sessions(self, request: web.Request) -> web.Response:
        principal = await self._principal(request)
        assert principal.session is not None
        current = principal.session.public_id
        sessions = await self.auth.sessions.list(principal.account)
        response = web.json_response({"sessions": [s.as_json(s.public_id == current) for s in sessions]})
        response.headers["Cache-Control"] = "no-store"
        return response

    async def revoke_session(self, request: web.Request) -> web.Response:
        principal = await self._principal(request)
        ended = await self.auth.sessions.revoke(principal.account, request.match_info["id"])
        if ended is None:
            raise web.HTTPNotFound(text=json.dumps({"error": "no such session"}), content_type="application/json")
        await self.auth.host.accounts.end_web_session_tokens(ended, principal.account)
        return web.Response(status=204)

    # --- TOTP --------------------------------------------------------------------------------------

    async def totp_status(self, request: web.Request) -> web.Response:
        principal = await self._principal(request)
        factor = await totp.load(self.auth.host.store, principal.account)
        return web.json_response({"enabled": bool(factor and factor.enabled)})

    async def totp_begin(self, request: web.Request) -> web.Response:
        """Start (or restart) enrolment: a new secret, not yet enforced until confirmed with a code."""
        principal = await self._principal(request)
        factor = await totp.load(self.auth.host.store, principal.account)
        if factor is not None and factor.enabled:
            raise web.HTTPConflict(text=json.dumps({"error": "a second factor is already enabled"}),
                                   content_type="application/json")
        secret = await totp.begin(self.auth.host.store, principal.account)
        return web.json_response({"secret": secret, "uri": totp.provisioning_uri(secret, principal.account)})

    async def totp_confirm(self, request: web.Request) -> web.Response:
        principal = await self._principal(request)
        code = await self._code(request)
        factor = await totp.load(self.auth.host.store, principal.account)
        if factor is None or not await totp.verify(self.auth.host.store, factor, code):
            raise web.HTTPBadRequest(text=json.dumps({"error": "wrong code"}), content_type="application/json")
        await totp.enable(self.auth.host.store, principal.account)
        return web.json_response({"enabled": True})

    async def totp_disable(self, request: web.Request) -> web.Response:
        principal = await self._principal(request)
        code = await self._code(request)
        factor = await totp.load(self.auth.host.store, principal.account)
        if factor is None or not factor.enabled:
            return web.json_response({"enabled": False})
        if not await totp.verify(self.auth.host.store, factor, code):
            raise web.HTTPBadRequest(text=json.dumps({"error": "wrong code"}), content_type="application/json")
        await totp.disable(self.auth.host.store, principal.account)
        return web.json_response({"enabled": False})

    async def _code(self, request: web.Request) -> str:
        body = await read_body(request, LOGIN_BODY_LIMIT, self.body_timeout)
        try:
            data = parse_json(body) if body else {}
        except JsonError:
            data = {}
        code = data.get("code") if isinstance(data, dict) else None
        return code if isinstance(code, str) else ""


def _login_fields(body: bytes, wants_json: bool) -> dict[str, str]:
    if wants_json:
        try:
            data: Any = parse_json(body)
        except JsonError:
            raise web.HTTPBadRequest(text="the login body is not JSON\n") from None
        if not isinstance(data, dict):
            raise web.HTTPBadRequest(text="the login body must be a JSON object\n")
        return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}
    from urllib.parse import parse_qsl

    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=16)
    except (UnicodeDecodeError, ValueError):
        raise web.HTTPBadRequest(text="the login form could not be read\n") from None
    return dict(pairs)


def reload_page(request: web.Request) -> web.Response:
    """Answer a cross-site navigation with a same-origin reload, which carries the Strict cookie."""
    target = html.escape(request.path_qs)
    response = web.Response(
        text=f'<!doctype html><meta charset=utf-8><meta http-equiv=refresh content="0;url={target}">'
             f'<title>Opening…</title><a href="{target}">Continue</a>',
        content_type="text/html",
    )
    response.headers["Cache-Control"] = "no-store"
    return response
