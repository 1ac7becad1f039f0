"""Well-known documents every hosted domain serves: security.txt (RFC 9116) and host-meta (RFC 6415).

This module is in charge of ``/.well-known/security.txt`` and of ``/.well-known/host-meta`` (XRD XML) and
``/.well-known/host-meta.json`` (JRD), which list the links protocols registered with
``WebRoutes.add_host_meta_link`` (XEP-0156 connection methods, filled in by the browser chat service).
Protocol-specific discovery (mail autoconfig, MTA-STS, JMAP) is registered by those protocols.
"""

from __future__ import annotations

import time
from typing import Any
from xml.sax.saxutils import quoteattr

from aiohttp import web

from peerage.web import DOMAIN, WebRoutes
from peerage.web.security import HostNames

# RFC 9116 §2.5.5: Expires is required and "SHOULD be less than a year into the future"; we keep it
# 180 days ahead of every answer, so it never goes stale on a running server.
SECURITY_TXT_DAYS = 180
XRD_NS = "http://docs.oasis-open.org/ns/xri/xrd-1.0"


class WellKnown:
    def __init__(self, host: Any, names: HostNames, routes: WebRoutes) -> None:
        self.host = host
        self.names = names
        self.routes = routes

    def setup(self, app: web.Application) -> None:
        app.router.add_get("/.well-known/security.txt", self.security_txt)
        app.router.add_get("/security.txt", self.security_txt)
        app.router.add_get("/.well-known/host-meta", self.host_meta)
        app.router.add_get("/.well-known/host-meta.json", self.host_meta_json)

    def _domain(self, request: web.Request) -> str:
        return request.get(DOMAIN) or self.names.domain(self.names.name(request) or "")

    async def security_txt(self, request: web.Request) -> web.Response:
        domain = self._domain(request)
        contact = self.host.config.web.security_contact or f"mailto:security@{domain}"
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + SECURITY_TXT_DAYS * 86400))
        text = (f"Contact: {contact}\nExpires: {expires}\nPreferred-Languages: en\n"
                f"Canonical: https://{domain}/.well-known/security.txt\n")
        return web.Response(text=text, content_type="text/plain")

    def _links(self, domain: str, request: web.Request | None = None) -> list[tuple[str, str]]:
        # "{authority}" is the name and port this request reached (the Host header, which the middleware
        # checked is ours): a wss: link must name the port the web service really listens on.
        authority = (request.host if request is not None else "") or domain
        return [(rel, href.replace("{domain}", domain).replace("{authority}", authority))
                for rel, href in self.routes.host_meta_links]

    async def host_meta(self, request: web.Request) -> web.Response:
        # A link whose href holds "{uri}" is a template (RFC 6415 §3.1.1.1, WebFinger's lrdd).
        links = "".join(f"\n  <Link rel={quoteattr(rel)} {'template' if '{uri}' in href else 'href'}={quoteattr(href)}/>"
                        for rel, href in self._links(self._domain(request), request))
        text = f"<?xml version='1.0' encoding='utf-8'?>\n<XRD xmlns='{XRD_NS}'>{links}\n</XRD>\n"
        response = web.Response(text=text, content_type="application/xrd+xml")
        response.headers["Access-Control-Allow-Origin"] = "*"  # XEP-0156 §3.3: readable cross-origin
        return response

    async def host_meta_json(self, request: web.Request) -> web.Response:
        links = [{"rel": rel, ("template" if "{uri}" in href else "href"): href}
                 for rel, href in self._links(self._domain(request), request)]
        response = web.json_response({"links": links}, content_type="application/jrd+json")
        response.headers["Access-Control-Allow-Origin"] = "*"
        return response
