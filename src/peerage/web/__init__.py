"""Package web is in charge of the HTTPS front door every protocol hangs its pages and APIs on.

The web service (``peerage.web.service.WebService``, started by the Host) listens for HTTPS with a
certificate per hosted domain chosen by SNI, and for plain HTTP that only redirects and answers ACME
HTTP-01 challenges. It owns the one login (``/login``, a database-backed session cookie, CSRF tokens,
optional TOTP), the security headers and the request limits; it knows no protocol.

Adding routes (the one way in; the web package imports nobody)::

    from peerage.web import routes_for

    def setup(ctx: WebContext) -> None:          # called once, while the HTTPS app is built
        ctx.app.router.add_get("/jmap/api", handler)

    routes_for(host).add("jmap", setup)           # from the protocol's own Service.start()

A protocol's service calls ``routes_for(host).add`` in its ``start``; the Host starts the web service
after the protocol services, so every registration is in before the app is frozen. Handlers use
``ctx.auth`` (``peerage.web.auth.Authenticator``) to find who is asking: ``await ctx.auth.account(
request)`` returns the logged-in account (web session, with the CSRF check on state changes, or HTTP
Basic when ``basic=True``) or None.

Other registries on the same object: ``challenges_for(host)`` holds ACME HTTP-01 key authorisations the
port-80 handler serves, and ``routes_for(host).host_meta_links`` the XEP-0156 links host-meta lists.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from peerage.config import WebConfig
    from peerage.web.auth import Authenticator

__all__ = ["DOMAIN", "HOST_NAME", "AcmeChallenges", "WebContext", "WebRoutes", "challenges_for", "routes_for"]


@dataclass
class WebContext:
    """What a route setup function gets: the HTTPS app to add routes to and the shared helpers."""

    host: Any
    app: web.Application
    auth: Authenticator
    config: WebConfig


RouteSetup = Callable[[WebContext], None]


@dataclass
class WebRoutes:
    setups: list[tuple[str, RouteSetup]] = field(default_factory=list)
    # XEP-0156 links host-meta lists: (rel, href), href may contain "{domain}".
    host_meta_links: list[tuple[str, str]] = field(default_factory=list)

    def add(self, name: str, setup: RouteSetup) -> None:
        """Call `setup(ctx)` when the HTTPS app is built. A second registration under the same `name`
        (a service started again on the same host) replaces the first."""
        self.setups = [(existing, fn) for existing, fn in self.setups if existing != name]
        self.setups.append((name, setup))

    def add_host_meta_link(self, rel: str, href: str) -> None:
        """List a link in /.well-known/host-meta(.json), e.g. XEP-0156's urn:xmpp:alt-connections:websocket."""
        self.host_meta_links.append((rel, href))


class AcmeChallenges:
    """ACME HTTP-01 (RFC 8555 §8.3): token -> key authorisation, served at /.well-known/acme-challenge/."""

    def __init__(self) -> None:
        self._tokens: dict[str, str] = {}

    def set(self, token: str, key_authorization: str) -> None:
        self._tokens[token] = key_authorization

    def remove(self, token: str) -> None:
        self._tokens.pop(token, None)

    def get(self, token: str) -> str | None:
        return self._tokens.get(token)


# Set on every HTTPS request by the web service: the host name asked for, and the hosted domain it
# belongs to (autoconfig.example.org -> example.org; an IP literal -> the first domain).
HOST_NAME = web.RequestKey("peerage.host_name", str)
DOMAIN = web.RequestKey("peerage.domain", str)

_routes: weakref.WeakKeyDictionary[Any, WebRoutes] = weakref.WeakKeyDictionary()
_challenges: weakref.WeakKeyDictionary[Any, AcmeChallenges] = weakref.WeakKeyDictionary()


def routes_for(host: Any) -> WebRoutes:
    """The route registrations of `host` (created on first use)."""
    routes = _routes.get(host)
    if routes is None:
        routes = _routes[host] = WebRoutes()
    return routes


def challenges_for(host: Any) -> AcmeChallenges:
    """The ACME HTTP-01 challenge registry of `host` (created on first use)."""
    registry = _challenges.get(host)
    if registry is None:
        registry = _challenges[host] = AcmeChallenges()
    return registry
