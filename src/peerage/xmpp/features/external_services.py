"""XEP-0215 External Service Discovery (urn:xmpp:extdisco:2): the STUN/TURN servers of [turn], for calls.

This module is in charge of answering a local client's ``<services/>`` and ``<credentials/>`` requests
to its domain with the services ``peerage.turn`` knows and time-limited TURN credentials (coturn's
``use-auth-secret`` scheme; ``expires`` says when they stop working, XEP-0215 §4), and of refreshing
them: a session that received credentials gets a push (XEP-0215 §3.3, ``<iq type='set'>`` with
``action='modify'``) carrying new ones before the old expire, for as long as it stays bound. Dino and
Conversations otherwise ask again only on reconnect, and a call set up after the expiry fails its TURN
allocation (dino/dino#1510 describes exactly that against Prosody's one-day credentials).

Only the domain's own authenticated users get services: a credential lets its holder relay media
through the provider's TURN server, so a remote JID asking over s2s gets ``forbidden``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from datetime import UTC, datetime
from typing import Any

from peerage.turn import Credential, Service, Turn, turn_for
from peerage.xmpp.features import Feature, IqContext, hook_iq, result
from peerage.xmpp.stream import Element, error_reply

log = logging.getLogger(__name__)

EXTDISCO_NS = "urn:xmpp:extdisco:2"
# Push new credentials when this share of their lifetime has gone (a day's credential is renewed with
# 4.8 hours to spare; Dino re-asks at half-life, so both leave ample margin for a call being set up).
REFRESH_AT = 0.8
# XEP-0215 §4: "type" values registered with the XMPP Registrar that this module serves.
KNOWN_TYPES = frozenset({"stun", "stuns", "turn", "turns"})


def _stamp(unix: float) -> str:
    """XEP-0082 DateTime, UTC, whole seconds."""
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def service_element(service: Service, credential: Credential | None, action: str | None = None) -> Element:
    attrs = {"type": service.type, "host": service.host, "port": str(service.port),
             "transport": service.transport}
    if service.needs_credentials:
        attrs["restricted"] = "1"
        if credential is not None:
            attrs.update(username=credential.username, password=credential.password,
                         expires=_stamp(credential.expires))
    if action is not None:
        attrs["action"] = action
    return Element("service", EXTDISCO_NS, attrs)


class ExternalServices(Feature):
    def setup(self) -> None:
        #: session -> the timer that pushes its next credentials (one per session that asked)
        self.refreshers: dict[Any, asyncio.TimerHandle] = {}
        self.push_ids = itertools.count(1)
        hook_iq(self.ctx, "services", EXTDISCO_NS, self._services, to=("host",))
        hook_iq(self.ctx, "credentials", EXTDISCO_NS, self._credentials, to=("host",))
        self.ctx.events.hook("resource-unbind", self._unbound, 10)

    @property
    def server_features(self) -> tuple[str, ...]:  # type: ignore[override]  # only while [turn] names a server
        return (EXTDISCO_NS,) if self._turn() is not None else ()

    def _turn(self) -> Turn | None:
        host = self.ctx.host
        return turn_for(host) if host is not None and hasattr(host.config, "turn") else None

    def _check(self, ctx: IqContext) -> tuple[Turn | None, Element | None]:
        if ctx.iq.attrs.get("type") != "get":
            return None, error_reply(ctx.iq, "bad-request", "only the server pushes external services")
        if ctx.session is None or ctx.sender.partition("/")[0].rpartition("@")[2] != ctx.domain:
            return None, error_reply(ctx.iq, "forbidden", "external services are for this domain's users")
        turn = self._turn()
        if turn is None:
            return None, error_reply(ctx.iq, "service-unavailable")
        return turn, None

    def _services(self, ctx: IqContext) -> Element | None:
        turn, error = self._check(ctx)
        if error is not None or turn is None:
            return error
        wanted = ctx.payload.attrs.get("type")
        if wanted is not None and wanted not in KNOWN_TYPES:
            return error_reply(ctx.iq, "bad-request", f"unknown service type '{wanted[:32]}'")
        services = [s for s in turn.services if wanted is None or s.type == wanted]
        return result(ctx, self._answer("services", turn, services, ctx.session))

    def _credentials(self, ctx: IqContext) -> Element | None:
        turn, error = self._check(ctx)
        if error is not None or turn is None:
            return error
        asked = ctx.payload.find("service", EXTDISCO_NS)
        if asked is None or not asked.attrs.get("host") or not asked.attrs.get("type"):
            return error_reply(ctx.iq, "bad-request", "name a service by host and type (XEP-0215 §3.2)")
        host, kind, port = asked.attrs["host"].lower(), asked.attrs["type"], asked.attrs.get("port")
        services = [s for s in turn.services if s.host == host and s.type == kind
                    and (port is None or str(s.port) == port)]
        if not services:
            return error_reply(ctx.iq, "item-not-found", "no such service here")
        return result(ctx, self._answer("credentials", turn, services, ctx.session))

    def _answer(self, name: str, turn: Turn, services: list[Service], session: Any,
                action: str | None = None) -> Element:
        payload = Element(name, EXTDISCO_NS)
        credential = None
        if any(s.needs_credentials for s in services):
            credential = turn.credential(session.bare_jid)
            self._schedule(session, turn)
        for service in services:
            payload.children.append(service_element(service, credential, action))
        return payload

    # --- refresh before expiry (XEP-0215 §3.3 pushes) ----------------------------------------------

    def _schedule(self, session: Any, turn: Turn) -> None:
        old = self.refreshers.pop(session, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        self.refreshers[session] = loop.call_later(turn.lifetime * REFRESH_AT, self._push, session)

    def _push(self, session: Any) -> None:
        self.refreshers.pop(session, None)
        turn = self._turn()
        if session.ended or turn is None:
            return
        services = [s for s in turn.services if s.needs_credentials]
        if not services:
            return
        domain = session.bare_jid.rpartition("@")[2]
        iq = Element("iq", "", {"type": "set", "from": domain, "to": session.full_jid,
                                  "id": f"extdisco-{next(self.push_ids)}"})
        iq.children.append(self._answer("services", turn, services, session, action="modify"))
        log.debug("pushing fresh TURN credentials to %s", session.full_jid)
        session.send(iq)

    def _unbound(self, session: Any) -> None:
        timer = self.refreshers.pop(session, None)
        if timer is not None:
            timer.cancel()
        return None  # the other features' resource-unbind handlers must run too
