"""The chat and phone page at /chat/ (converse.js and JsSIP), and the credentials it opens its sessions with.

This module is in charge of:

- serving ``src/peerage/webui/dist/chat/`` (built by npm from ``chatui/``) to a logged-in browser only,
  under the chat CSP (``chat_csp``): the page's own scripts, ``'wasm-unsafe-eval'`` because converse.js's
  OMEMO (libsignal compiled to WebAssembly) needs it, and connections to this origin (XMPP over
  WebSocket at ``/xmpp-websocket``) and to the SIP WSS listener of the same host name, nothing else;
- ``GET /chat/config``: where the page's sessions connect (XMPP WebSocket URL, SIP WSS URL, the
  account's SIP URI), so the page hard-codes no host or port;
- ``POST /auth/sip-credentials`` (CSRF token required: it creates state): a short-lived SIP digest
  password for the logged-in account (``peerage.identity.sip_tokens``; only its HA1s are stored), with
  which JsSIP registers over SIP WSS without a second password prompt; ``DELETE`` ends this web
  session's ones (the page's "Log out" does, with the XMPP ones);
- ``GET /chat/ice-servers``: WebRTC ICE servers with time-limited TURN credentials
  (``peerage.turn``, coturn's use-auth-secret scheme), fetched by the page before each call.

The XMPP side's credential (``GET /auth/xmpp-credentials``, converse.js's ``credentials_url``) belongs to
the XMPP WebSocket module; this page only points converse.js at it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web

from peerage.web import HOST_NAME
from peerage.web.auth import Authenticator
from peerage.web.spa import serve_app

DIST = Path(__file__).resolve().parent.parent / "webui" / "dist" / "chat"
BUILD_HINT = (
    "<h1>Chat not built</h1><p class=note>This installation has no chat files in "
    "<code>src/peerage/webui/dist/chat/</code>. Build them with Node.js 18 or later:</p>"
    "<p class=note><code>npm --prefix chatui ci &amp;&amp; npm --prefix chatui run build</code></p>"
    "<p class=note>then reload this page. XMPP and SIP clients work without it.</p>"
)
XMPP_WEBSOCKET_PATH = "/xmpp-websocket"
XMPP_BOSH_PATH = "/http-bind"


def chat_csp(sip_origin: str | None) -> str:
    """The /chat/ policy. style-src needs 'unsafe-inline' (converse.js's lit templates set style
    attributes); media-src blob: and mediastream: for the call's remote audio and converse's sounds."""
    connect = "'self'" + (f" {sip_origin}" if sip_origin else "")
    return (
        "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data: blob:; font-src 'self'; media-src 'self' blob: mediastream:; "
        f"connect-src {connect}; worker-src 'self'; manifest-src 'self'; form-action 'self'; base-uri 'none'; "
        "frame-ancestors 'none'"
    )


def _shown(name: str) -> str:
    return f"[{name}]" if ":" in name else name


class Chat:
    def __init__(self, host: Any, auth: Authenticator, root: Path = DIST) -> None:
        self.host = host
        self.auth = auth
        self.root = root

    def setup(self, app: web.Application) -> None:
        app.router.add_get("/chat", self.redirect)
        app.router.add_get("/chat/config", self.config)
        app.router.add_get("/chat/ice-servers", self.ice_servers)
        app.router.add_post("/auth/sip-credentials", self.sip_credentials)
        app.router.add_delete("/auth/sip-credentials", self.revoke_sip_credentials)
        app.router.add_get("/chat/{path:.*}", self.serve)

    # --- where things are ------------------------------------------------------------------------

    def sip_wss_url(self, request: web.Request) -> str | None:
        """wss://<the host name the page was loaded from>:<port of [sip] wss_listen>, or None."""
        from peerage.config import parse_listen

        sip = self.host.config.sip
        if not sip.enabled or not sip.wss_listen:
            return None
        port = parse_listen(sip.wss_listen[0])[1]
        suffix = "" if port == 443 else f":{port}"
        return f"wss://{_shown(request[HOST_NAME])}{suffix}"

    def csp(self, request: web.Request) -> str:
        return chat_csp(self.sip_wss_url(request))

    async def _account(self, request: web.Request) -> str:
        account = await self.auth.account(request)
        if account is None:
            raise web.HTTPUnauthorized(text="log in first\n")
        return account

    # --- the JSON endpoints ------------------------------------------------------------------------

    async def config(self, request: web.Request) -> web.Response:
        account = await self._account(request)
        port = request.url.port
        origin_port = "" if port in (None, 443) else f":{port}"
        sip = self.sip_wss_url(request)
        from peerage.turn import turn_for

        return _no_store(web.json_response({
            "account": account,
            "xmpp": {"websocket": f"wss://{_shown(request[HOST_NAME])}{origin_port}{XMPP_WEBSOCKET_PATH}",
                     "credentials": "/auth/xmpp-credentials",
                     # XEP-0206, same origin: for a browser without WebSocket, or /chat/?transport=bosh
                     "bosh": XMPP_BOSH_PATH if self.host.config.xmpp.bosh.enabled else None},
            "sip": None if sip is None else {"websocket": sip, "uri": f"sip:{account}",
                                             "credentials": "/auth/sip-credentials"},
            "turn": turn_for(self.host) is not None,
        }))

    async def sip_credentials(self, request: web.Request) -> web.Response:
        principal = await self.auth.principal(request)  # a POST: the CSRF token is checked here
        if principal is None:
            raise web.HTTPUnauthorized(text="log in first\n")
        if self.sip_wss_url(request) is None:
            raise web.HTTPNotFound(text="this server offers no SIP over WebSocket ([sip] wss_listen)\n")
        from peerage.identity.address import parse_address
        from peerage.web.sessions import hash_token

        address = parse_address(principal.account)
        web_session = hash_token(principal.token) if principal.token else None
        password, expires = await self.host.accounts.sip_tokens.issue(address, web_session=web_session)
        # The digest username is the local part, as JsSIP sends its URI's user; the full address works too.
        return _no_store(web.json_response({"uri": f"sip:{address}", "username": address.local,
                                            "password": password, "expires": int(expires)}))

    async def revoke_sip_credentials(self, request: web.Request) -> web.Response:
        """End the SIP tokens this web session was given (the page calls it when logging out)."""
        principal = await self.auth.principal(request)  # a DELETE: the CSRF token is checked here
        if principal is None or not principal.token:
            raise web.HTTPUnauthorized(text="log in first\n")
        from peerage.web.sessions import hash_token

        count = await self.host.accounts.sip_tokens.revoke_web_session(hash_token(principal.token))
        return _no_store(web.json_response({"revoked": count}))

    async def ice_servers(self, request: web.Request) -> web.Response:
        account = await self._account(request)
        from peerage.turn import turn_for

        turn = turn_for(self.host)
        if turn is None:
            return _no_store(web.json_response({"iceServers": [], "expires": None}))
        return _no_store(web.json_response(turn.ice_servers(account)))

    # --- the page ----------------------------------------------------------------------------------

    async def redirect(self, _request: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently("/chat/")

    async def serve(self, request: web.Request) -> web.StreamResponse:
        return await serve_app(request, self.auth, self.root, not_built_title="Chat not built",
                               build_hint=BUILD_HINT, csp=self.csp(request))


def _no_store(response: web.Response) -> web.Response:
    response.headers["Cache-Control"] = "no-store"
    return response
