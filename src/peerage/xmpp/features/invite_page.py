"""The invitation's web page (XEP-0401 section 5's "landing page", as Snikket serves one).

This module is in charge of ``https://DOMAIN/invite/TOKEN``, the link ``peerage invite create --web``
prints, for the person who got an invitation and has no XMPP app that understands the ``xmpp:`` URI:

- ``GET`` shows who invites them to which server, a button that opens the ``xmpp:…;preauth=`` URI in
  their app (which registers with the token, or, for an existing account, subscribes to the inviter
  with it: XEP-0379), and a form to create the account right here;
- ``POST`` creates the account through the same code as in-band registration
  (``Registration.create_account``: the password policy, the per-IP hourly limit, the single use of the
  token, the mutual subscription with the inviter).

Nothing is shown for a token that is unknown, used, expired or of another domain (404, the same page
for all: the page must not tell which tokens exist). The form is protected against cross-site posts
twice: the same-origin check (Fetch Metadata / Origin) and a double-submit token, a random value both
in a ``__Host-`` cookie (Secure, HttpOnly, SameSite=Strict) and in the form. The pages carry the web
service's strict CSP (no script at all, same-origin styles, ``form-action 'self'``, never framed),
``Referrer-Policy: no-referrer`` (the token is in the URL) and ``Cache-Control: no-store``.
"""

from __future__ import annotations

import hmac
import html
import secrets
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from aiohttp import web

from peerage.web import DOMAIN
from peerage.web.auth import client_ip
from peerage.web.login import page
from peerage.web.security import read_body, same_origin

if TYPE_CHECKING:
    from peerage.xmpp.features.register import Registration

#: The double-submit cookie; ``__Host-`` makes browsers insist on Secure, Path=/ and no Domain.
CSRF_COOKIE = "__Host-invite-csrf"
#: Largest form post: a username and two passwords fit many times over (the login form's bound).
FORM_LIMIT = 8192
#: Apps whose users can open the xmpp: link directly (they implement XEP-0401), as Snikket lists them.
APPS = ("Conversations (Android)", "Monal (iOS, macOS)", "Siskin IM (iOS)", "Gajim (Windows, Linux)",
        "Dino (Linux)")


def landing_url(domain: str, token: str, port_suffix: str = "") -> str:
    return f"https://{domain}{port_suffix}/invite/{token}"


def add_routes(web_ctx: Any, registration: Registration) -> None:
    pages = InvitePages(registration, web_ctx.config.body_timeout)
    web_ctx.app.router.add_get("/invite/{token}", pages.show)
    web_ctx.app.router.add_post("/invite/{token}", pages.submit)


class InvitePages:
    def __init__(self, registration: Registration, body_timeout: float) -> None:
        self.registration = registration
        self.body_timeout = body_timeout

    async def _invitation(self, request: web.Request) -> Any:
        return await self.registration.valid_token(request.match_info["token"], request[DOMAIN])

    async def show(self, request: web.Request) -> web.Response:
        invitation = await self._invitation(request)
        if invitation is None:
            return not_valid()
        csrf = secrets.token_urlsafe(24)
        response = self._form(request, invitation, csrf)
        response.set_cookie(CSRF_COOKIE, csrf, secure=True, httponly=True, samesite="Strict", path="/")
        return response

    async def submit(self, request: web.Request) -> web.Response:
        invitation = await self._invitation(request)
        if invitation is None:
            return not_valid()
        fields = parse_qs((await read_body(request, FORM_LIMIT, self.body_timeout)).decode("utf-8", "replace"))

        def field(name: str) -> str:
            values = fields.get(name) or [""]
            return values[0]

        cookie = request.cookies.get(CSRF_COOKIE, "")
        if not same_origin(request) or not cookie or not hmac.compare_digest(cookie.encode(), field("csrf").encode()):
            return page("Refused", "<h1>Refused</h1><p class=error role=alert>This form was not sent from this "
                        "page. Open the invitation link again.</p>", status=403)
        username, password = field("username").strip(), field("password")
        if password != field("password2"):
            return self._form(request, invitation, cookie, "The two passwords differ.", username, 400)
        outcome = await self.registration.create_account(request[DOMAIN], username, password, client_ip(request),
                                                         invitation)
        if not isinstance(outcome, str):
            status = {"conflict": 409, "resource-constraint": 429, "not-allowed": 410}.get(outcome.condition, 400)
            if outcome.condition == "not-allowed":  # used meanwhile (another tab, another person)
                return not_valid(status)
            return self._form(request, invitation, cookie, outcome.text[:1].upper() + outcome.text[1:] + ".",
                              username, status)
        address = html.escape(outcome)
        contact = (f"<p>{html.escape(invitation.inviter)} is in your contacts.</p>" if invitation.inviter else "")
        response = page("Your account is ready", (
            f"<h1>Welcome!</h1><p>Your account <strong>{address}</strong> is ready.</p>{contact}"
            "<p class=note>Log in with any XMPP app with this address and the password you chose.</p>"))
        response.del_cookie(CSRF_COOKIE, path="/")
        return response

    def _form(self, request: web.Request, invitation: Any, csrf: str, error: str = "", username: str = "",
              status: int = 200) -> web.Response:
        # Through the feature object, not an import: register.py imports this module to add the routes.
        invitation_uri = self.registration.invitation_uri
        domain = invitation.domain
        token = request.match_info["token"]
        uri = html.escape(invitation_uri(domain, invitation.inviter, token))
        inviter = html.escape(invitation.inviter or "")
        if invitation.inviter:
            title = f"{invitation.inviter} invites you to chat"
            intro = (f"<p><strong>{inviter}</strong> invites you to chat on {html.escape(domain)}.</p>"
                     f"<p class=note>Already have an XMPP account? Open the button's link with it and "
                     f"{inviter} is added to your contacts.</p>")
        else:
            title = f"Join {domain}"
            intro = f"<p>You are invited to create an account on <strong>{html.escape(domain)}</strong>.</p>"
        apps = ", ".join(html.escape(app) for app in APPS)
        error_html = f"<p class=error role=alert>{html.escape(error)}</p>" if error else ""
        body = (
            f"<h1>{html.escape(title)}</h1>{intro}"
            f'<p><a href="{uri}" rel=nofollow>Open in your XMPP app</a></p>'
            f"<p class=note>Apps that understand this link: {apps}.</p>"
            f"<h2>Or create your account here</h2>{error_html}"
            f'<form method=post action="/invite/{html.escape(token)}">'
            f'<input type=hidden name=csrf value="{html.escape(csrf)}">'
            "<label for=username>Username</label>"
            f'<input id=username name=username autocomplete=username required maxlength=64 value="{html.escape(username)}">'
            f"<p class=note>Your address will be username@{html.escape(domain)}.</p>"
            "<label for=password>Password</label>"
            "<input id=password name=password type=password autocomplete=new-password required>"
            "<label for=password2>Password again</label>"
            "<input id=password2 name=password2 type=password autocomplete=new-password required>"
            "<button type=submit>Create account</button></form>"
        )
        response = page(title, body, status=status)
        response.headers["X-Robots-Tag"] = "noindex"
        return response


def not_valid(status: int = 404) -> web.Response:
    response = page("Invitation not valid", "<h1>This invitation is not valid</h1><p>It may have been used "
                    "already or have expired. Ask for a new one.</p>", status=status)
    response.headers["X-Robots-Tag"] = "noindex"
    return response
