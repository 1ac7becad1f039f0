"""Serving a built single-page app behind the one login: the webmail at /mail/, the chat at /chat/.

This module is in charge of one answer: a browser that is not logged in is sent to
``/login?next=...``; a folder without ``index.html`` gets a page saying how to build it; a path with a
file behind it gets that file, any other path without a suffix ``index.html`` (the app routes on the
client), a missing asset 404. Each app gives its own CSP; ``index.html`` is revalidated (it names the
hashed assets), files with a content hash in their name are kept for good, others for a day, all by
this browser only (they are behind the login). A ``.br``/``.gz`` copy beside a file is sent to a
browser that accepts it (aiohttp's FileResponse does the choosing).
"""

from __future__ import annotations

import mimetypes
import re
from pathlib import Path
from urllib.parse import quote

from aiohttp import web

from peerage.web.auth import Authenticator, needs_same_site_reload
from peerage.web.login import page, reload_page

# A content hash in a built file's name, as esbuild's [name]-[hash] writes it (8 base32 characters).
HASHED = re.compile(r"-[A-Z0-9]{8}\.[a-z0-9.]+$")


async def serve_app(request: web.Request, auth: Authenticator, root: Path, *, not_built_title: str,
                    build_hint: str, csp: str) -> web.StreamResponse:
    if needs_same_site_reload(request):
        return reload_page(request)
    if await auth.session(request) is None:
        raise web.HTTPSeeOther("/login?next=" + quote(request.path_qs, safe="/"))
    index = root / "index.html"
    if not index.is_file():
        return page(not_built_title, build_hint, status=503)
    resolved = root.resolve()
    target = (resolved / request.match_info["path"]).resolve()
    if not target.is_relative_to(resolved):
        raise web.HTTPNotFound()
    if not target.is_file():
        if Path(request.match_info["path"]).suffix:
            raise web.HTTPNotFound()  # a missing asset, not an app route
        target = index
    response = web.FileResponse(target)
    content_type, _ = mimetypes.guess_type(target.name)
    if target.suffix == ".wasm":
        content_type = "application/wasm"  # WebAssembly.instantiateStreaming insists on it
    if content_type:
        response.content_type = content_type
    response.headers["Content-Security-Policy"] = csp
    if target == index:
        cache = "no-cache"
    elif HASHED.search(target.name):
        # The name changes with the content (the webmail's build names its files so): never stale.
        cache = "private, max-age=31536000, immutable"
    else:
        cache = "private, max-age=86400"
    response.headers["Cache-Control"] = cache
    return response
