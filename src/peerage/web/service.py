"""WebService: the HTTPS and HTTP listeners of a peerage host.

This module is in charge of building the HTTPS application (login, webmail mount, well-known documents
and every route a protocol registered through ``peerage.web.routes_for``), serving it on
``[web] https_listen`` with an SNI context per hosted domain, and serving plain HTTP on
``[web] http_listen``, which answers ACME HTTP-01 challenges and redirects everything else to HTTPS.
It also enforces the connection-level limits aiohttp leaves open: a client must finish its first
request head within ``header_timeout`` or is disconnected. Later heads on a keep-alive connection are
bounded by aiohttp itself: its keep-alive timer closes the connection ``keepalive_timeout`` after the
previous response unless a whole new head has arrived, even while one is being dripped in
(tests/web/test_login.py proves both bounds).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from peerage.config import parse_listen
from peerage.net.listen import start_listeners
from peerage.net.tls import SniServerContexts
from peerage.web import DOMAIN, HOST_NAME, WebContext, challenges_for, routes_for, wellknown
from peerage.web.auth import Authenticator
from peerage.web.chat import Chat
from peerage.web.login import LoginRoutes
from peerage.web.security import HostNames, security_headers
from peerage.web.sessions import SessionStore
from peerage.web.webmail import Webmail

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# aiohttp's own bounds on the request head (its defaults, the same as Node's 8 KiB line limit and
# nginx's large_client_header_buffers of 8 KiB): one line, one header field, and the header count.
MAX_LINE_SIZE = 8190
MAX_FIELD_SIZE = 8190
MAX_HEADERS = 100
# Seconds requests in progress get to finish when the service stops (aiohttp's default is 60; systemd
# waits 90 s before SIGKILL, and the other services stop after this one).
SHUTDOWN_TIMEOUT = 5.0


class WebService:
    def __init__(self) -> None:
        self.host: Any = None
        self.servers: list[asyncio.AbstractServer] = []
        self.runners: list[web.AppRunner] = []
        self.app: web.Application | None = None
        self.auth: Authenticator | None = None
        self.contexts: SniServerContexts | None = None
        # ids of connections that have not finished a request head yet; each leaves at its first
        # request or when _expire runs (the timer holds the protocol, so an id is not reused meanwhile).
        # Not a WeakSet: uvloop's transports and aiohttp's protocols take no weak references.
        self._waiting: set[int] = set()

    async def start(self, host: Any) -> None:
        self.host = host
        config = host.config.web
        self.names = HostNames(list(host.config.domains), host.config.server.public_hostname)
        self.https_port = parse_listen(config.https_listen[0])[1] if config.https_listen else 443
        sessions = SessionStore(host.store, config.session_lifetime, config.session_idle_timeout)
        self.auth = Authenticator(host, sessions)
        self.app = self.build_app()
        if config.https_listen:
            if not host.tls.available:
                raise RuntimeError("[web] https_listen is set but no hosted domain has a certificate; "
                                   "set cert and key in [[domain]] or empty https_listen")
            # Kept on the service: a certificate reload (SIGHUP) reaches every live SNI set.
            self.contexts = SniServerContexts(host.tls.certificates, lambda ctx: ctx.set_alpn_protocols(["http/1.1"]))
            assert self.contexts.default is not None
            await self._serve(self.app, "web-https", "[web] https_listen", config.https_listen,
                              self.contexts.default)
        if config.http_listen:
            await self._serve(self.build_http_app(), "web-http", "[web] http_listen", config.http_listen, None)

    def build_app(self) -> web.Application:
        config = self.host.config.web
        assert self.auth is not None
        app = web.Application(client_max_size=config.max_request_size, middlewares=[self._middleware],
                              handler_args={"max_line_size": MAX_LINE_SIZE, "max_field_size": MAX_FIELD_SIZE,
                                            "max_headers": MAX_HEADERS})
        app.on_response_prepare.append(self._headers)
        LoginRoutes(self.auth, config.session_lifetime, config.body_timeout).setup(app)
        Webmail(self.auth).setup(app)
        Chat(self.host, self.auth).setup(app)
        registry = routes_for(self.host)
        wellknown.WellKnown(self.host, self.names, registry).setup(app)
        context = WebContext(self.host, app, self.auth, config)
        for name, setup in registry.setups:
            log.debug("adding web routes of %s", name)
            setup(context)
        return app

    def build_http_app(self) -> web.Application:
        app = web.Application(client_max_size=4096, middlewares=[self._mark_started])
        app.router.add_get("/.well-known/acme-challenge/{token}", self._acme)
        app.router.add_route("*", "/{tail:.*}", self._redirect)
        return app

    async def _serve(self, app: web.Application, name: str, setting: str, specs: list[str],
                     context: ssl.SSLContext | None) -> None:
        config = self.host.config.web
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT,
                               keepalive_timeout=config.keepalive_timeout)
        await runner.setup()
        self.runners.append(runner)
        server = runner.server
        assert server is not None
        loop = asyncio.get_running_loop()

        def factory() -> asyncio.BaseProtocol:
            protocol = server()
            self._waiting.add(id(protocol))
            loop.call_later(config.header_timeout, self._expire, protocol)
            return protocol

        self.servers += await start_listeners(name, setting, specs, protocol_factory=factory, ssl_context=context)

    def _expire(self, protocol: Any) -> None:
        """Close a connection that has not finished one request head within header_timeout."""
        if id(protocol) not in self._waiting:
            return
        self._waiting.discard(id(protocol))
        transport = protocol.transport
        if transport is not None and not transport.is_closing():
            transport.close()

    @web.middleware
    async def _mark_started(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self._waiting.discard(id(request.protocol))
        return await handler(request)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self._waiting.discard(id(request.protocol))
        name = self.names.name(request)
        if name is None:
            # RFC 9110 §15.5.20: not a name this server is configured for (and a DNS-rebinding page
            # cannot reach the login or the APIs through a name it controls).
            raise web.HTTPMisdirectedRequest(text="this server does not serve that host name\n")
        request[HOST_NAME] = name
        request[DOMAIN] = self.names.domain(name)
        return await handler(request)

    async def _headers(self, _request: web.Request, response: web.StreamResponse) -> None:
        security_headers(response, self.host.config.web.hsts_max_age)

    async def _acme(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        answer = challenges_for(self.host).get(token)
        if answer is None and getattr(self.host, "cluster", None) is not None and len(token) <= 255:
            from peerage.cluster.acme import stored_challenge

            # Another node's order: the CA's validation may reach any node behind the name.
            answer = await stored_challenge(self.host.store.engine, token)
        if answer is None:
            raise web.HTTPNotFound(text="no such challenge\n")
        return web.Response(text=answer, content_type="application/octet-stream")

    async def _redirect(self, request: web.Request) -> web.Response:
        name = self.names.name(request)
        if name is None:
            raise web.HTTPMisdirectedRequest(text="this server does not serve that host name\n")
        shown = f"[{name}]" if ":" in name else name
        port = "" if self.https_port == 443 else f":{self.https_port}"
        raise web.HTTPPermanentRedirect(f"https://{shown}{port}{request.path_qs}")

    async def stop(self) -> None:
        started = asyncio.get_running_loop().time()
        for server in self.servers:
            server.close()
        for runner in self.runners:
            await runner.cleanup()
        self.servers.clear()
        self.runners.clear()
        # The operator sees whether requests in progress held the stop (up to SHUTDOWN_TIMEOUT).
        log.info("web: stopped in %.2f s", asyncio.get_running_loop().time() - started)
