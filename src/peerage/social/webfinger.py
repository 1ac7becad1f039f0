"""WebFinger (RFC 7033) and NodeInfo 2.1 for every hosted domain.

This module is in charge of ``/.well-known/webfinger``, ``/.well-known/nodeinfo`` and
``/nodeinfo/2.1``. A WebFinger query names the account by any of its URIs, ``acct:``, ``xmpp:``,
``sip:`` or ``mailto:`` (RFC 7033 §4.1 lets the resource be any URI), and the answer lists the same
account under all of them in ``aliases`` (with the actor and profile URLs), so a client that knows one
of the address's faces finds the others. Only accounts that opted in are answered; any other resource
is 404, whether or not the account exists (RFC 7033 §4.2; no enumeration of private accounts). Every
answer is readable cross-origin (§5: ``Access-Control-Allow-Origin: *``).

The ``lrdd`` template in host-meta (RFC 6415 §3.1.1, which Mastodon still asks for) is registered by
the service through ``add_host_meta_link``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from peerage.identity.address import AddressError, parse_address
from peerage.web import DOMAIN, WebContext

NODEINFO_SCHEMA = "http://nodeinfo.diaspora.software/ns/schema/2.1"
JRD = "application/jrd+json"
# The URI schemes a resource may name the account by.
SCHEMES = ("acct:", "xmpp:", "sip:", "sips:", "mailto:")


def _cors(response: web.StreamResponse) -> web.StreamResponse:
    response.headers["Access-Control-Allow-Origin"] = "*"
    return response


class WebFingerRoutes:
    def __init__(self, social: Any) -> None:
        self.social = social

    def setup(self, ctx: WebContext) -> None:
        router = ctx.app.router
        router.add_get("/.well-known/webfinger", self.webfinger)
        router.add_route("OPTIONS", "/.well-known/webfinger", self.preflight)
        router.add_get("/.well-known/nodeinfo", self.nodeinfo_links)
        router.add_get("/nodeinfo/2.1", self.nodeinfo)

    async def preflight(self, _request: web.Request) -> web.StreamResponse:
        response = web.Response(status=204)
        response.headers["Access-Control-Allow-Methods"] = "GET"
        return _cors(response)

    async def webfinger(self, request: web.Request) -> web.StreamResponse:
        resource = request.query.get("resource", "")
        if not resource:
            # RFC 7033 §4.2: a missing resource is a bad request.
            raise _cors(web.HTTPBadRequest(text="the resource parameter is required\n"))  # type: ignore[misc]
        address = self._address(resource, request[DOMAIN])
        if address is None or not await self.social.discoverable(address):
            raise _cors(web.HTTPNotFound(text="no such resource\n"))  # type: ignore[misc]
        actor = self.social.actor_url(address)
        local, _, domain = address.partition("@")
        profile = f"{self.social.base(domain)}/@{local}"
        document = {
            "subject": f"acct:{address}",
            "aliases": [actor, profile, f"xmpp:{address}", f"sip:{address}", f"mailto:{address}"],
            "links": [
                {"rel": "self", "type": "application/activity+json", "href": actor},
                {"rel": "http://webfinger.net/rel/profile-page", "type": "text/html", "href": profile},
                # OStatus remote follow: where a user of this server goes to follow someone elsewhere.
                {"rel": "http://ostatus.org/schema/1.0/subscribe",
                 "template": f"{self.social.base(domain)}/authorize_interaction?uri={{uri}}"},
                {"rel": "http://webfinger.net/rel/avatar", "href": f"{actor}/avatar"},
            ],
        }
        rels = request.query.getall("rel", [])
        if rels:  # RFC 7033 §4.3: only the links asked for
            document["links"] = [link for link in document["links"] if link["rel"] in rels]
        return _cors(web.json_response(document, content_type=JRD))

    def _address(self, resource: str, request_domain: str) -> str | None:
        lowered = resource.lower()
        if lowered.startswith("https://"):
            return self.social.local_address(resource)
        if not lowered.startswith(SCHEMES):
            return None
        value = resource.split(":", 1)[1]
        if value.startswith("//"):  # sip://? not a URI form any client sends
            return None
        value = value.split(";", 1)[0].split("?", 1)[0]  # sip: URI parameters, mailto: headers
        try:
            parsed = parse_address(value.removeprefix("@"))
        except AddressError:
            return None
        return str(parsed)

    async def nodeinfo_links(self, request: web.Request) -> web.StreamResponse:
        base = self.social.base(request[DOMAIN])
        return _cors(web.json_response({"links": [{"rel": NODEINFO_SCHEMA, "href": f"{base}/nodeinfo/2.1"}]}))

    async def nodeinfo(self, request: web.Request) -> web.StreamResponse:
        from peerage.social import state

        domain = request[DOMAIN]
        users = 0
        for address in await self.social.host.accounts.list(domain):
            if await self.social.discoverable(address):
                users += 1
        from peerage import __version__

        document = {
            "version": "2.1",
            "software": {"name": "peerage", "version": __version__},
            "protocols": ["activitypub"],
            "services": {"inbound": [], "outbound": ["xmpp", "sip", "smtp"]},
            "openRegistrations": False,
            # Counts only discoverable accounts: the others are not part of the social network.
            "usage": {"users": {"total": users}, "localPosts": await state.count_local(self.social.host.store)},
            "metadata": {"nodeName": domain},
        }
        return _cors(web.json_response(
            document, content_type=f'application/json; profile="{NODEINFO_SCHEMA}#"'))
