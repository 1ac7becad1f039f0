"""The webmail's static files at /mail/, only for a logged-in browser, under the webmail CSP.

This module is in charge of serving ``src/peerage/webui/dist/mail/`` (built by npm from ``webui/``):
``/mail/`` and any path without a file behind it get ``index.html`` (the single-page app routes on the
client), other paths their file. A browser that is not logged in is sent to ``/login?next=...``. When the
folder has no ``index.html`` the answer is a page saying how to build it.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path
from urllib.parse import quote

from aiohttp import web

from peerage.web.auth import Authenticator, needs_same_site_reload
from peerage.web.login import page, reload_page
from peerage.web.security import WEBMAIL_CSP

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
        if needs_same_site_reload(request):
            return reload_page(request)
        if await self.auth.session(request) is None:
            raise web.HTTPSeeOther("/login?next=" + quote(request.path_qs, safe="/"))
        index = self.root / "index.html"
        if not index.is_file():
            return page("Webmail not built", BUILD_HINT, status=503)
        root = self.root.resolve()
        target = (root / request.match_info["path"]).resolve()
        if not target.is_relative_to(root):
            raise web.HTTPNotFound()
        if not target.is_file():
            if Path(request.match_info["path"]).suffix:
                raise web.HTTPNotFound()  # a missing asset, not an app route
            target = index
        response = web.FileResponse(target)
        content_type, _ = mimetypes.guess_type(target.name)
        if content_type:
            response.content_type = content_type
        response.headers["Content-Security-Policy"] = WEBMAIL_CSP
        # index.html names the hashed assets, so it must be revalidated; the assets may be cached, but
        # only by this browser (they are behind the login).
        response.headers["Cache-Control"] = "no-cache" if target == index else "private, max-age=86400"
        return response
