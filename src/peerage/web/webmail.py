"""The webmail's static files at /mail/, only for a logged-in browser, under the webmail CSP.

This module is in charge of serving ``src/peerage/webui/dist/mail/`` (built by npm from ``webui/``):
``/mail/`` and any path without a file behind it get ``index.html`` (the single-page app routes on the
client), other paths their file. A browser that is not logged in is sent to ``/login?next=...``. When the
folder has no ``index.html`` the answer is a page saying how to build it.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from peerage.web.auth import Authenticator
from peerage.web.security import WEBMAIL_CSP
from peerage.web.spa import serve_app

DIST = Path(__file__).resolve().parent.parent / "webui" / "dist" / "mail"
BUILD_HINT = (
    "<h1>Webmail not built</h1><p class=note>This installation has no webmail files in "
    "<code>src/peerage/webui/dist/mail/</code>. Build them with Node.js 18 or later:</p>"
    "<p class=note><code>npm --prefix webui ci &amp;&amp; npm --prefix webui run build</code></p>"
    "<p class=note>then reload this page. JMAP clients work without it.</p>"
)


class Webmail:
    def __init__(self, auth: Authenticator, root: Path = DIST) -> None:
        self.auth = auth
        self.root = root

    def setup(self, app: web.Application) -> None:
        app.router.add_get("/mail", self.redirect)
        app.router.add_get("/mail/{path:.*}", self.serve)

    async def redirect(self, _request: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently("/mail/")

    async def serve(self, request: web.Request) -> web.StreamResponse:
        return await serve_app(request, self.auth, self.root, not_built_title="Webmail not built",
                               build_hint=BUILD_HINT, csp=WEBMAIL_CSP)
