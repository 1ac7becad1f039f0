"""Hosted service JIDs (``conference.example.org``, ``upload.example.org``): Prosody's component hosts.

This module is in charge of one thing: a service JID served by this process, whose stanzas fire
events on that service's own event table instead of the accounts' rules. A feature package
registers one per hosted domain::

    service = add_service(ctx, "conference", "example.org")   # conference.example.org
    service.events.hook("presence/full", on_join)             # room@conference.example.org/nick
    hook_service_iq(service, "query", DISCO_INFO_NS, info, to=("host", "bare"))

Event names are those of ``peerage.xmpp.stanzas``, on ``service.events``: ``<kind>/<to>`` with
``<to>`` = ``host`` (the service itself), ``bare`` (``room@service``) or ``full``
(``room@service/nick``), with a ``StanzaEvent`` whose ``user`` is None and ``resources`` empty.
What no ``iq/<to>`` handler takes is dispatched by payload as ``iq-<type>/<to>/<ns>:<name>`` with an
``IqContext`` (``owner`` = the bare address, or None for the service itself; ``domain`` = the
service JID); the handler returns the reply, or an awaitable of it. Unhandled stanzas get the RFC
6120 section 8.3 answers (``service-unavailable`` for messages and IQ requests; presence and errors
are dropped).

Where stanzas come from: the router hands every stanza whose ``to`` domain is a service JID to
``HostedService.deliver``, whether its sender is a local client (after the sender's ``pre-`` events
on the main table, so blocking and carbons still apply) or a remote server. A service JID is a
hosted name for federation (``Router.is_hosted``): remote servers may open s2s streams to it, dialback
keys are made for it, and stanzas from it leave on routes of their own (``room@conference.a`` to
``b`` goes over a ``conference.a`` → ``b`` stream, as RFC 6120 section 13.1 wants). TLS for it uses the
parent domain's certificate (the ``[acme] names`` default asks for ``conference.`` and ``upload.`` in
it; SNI falls back to the parent domain), and it federates at the parent's certificate kind.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from peerage.xmpp.context import XmppContext
from peerage.xmpp.events import HANDLED, Events
from peerage.xmpp.jid import JidError, split_jid
from peerage.xmpp.router import Router, schedule
from peerage.xmpp.stanzas import IqContext, StanzaEvent, iq_event_name
from peerage.xmpp.stream import Element, error_reply

log = logging.getLogger(__name__)

__all__ = ["HostedService", "add_service", "hook_service_iq"]

_EMPTY: dict[str, Any] = {}


class HostedService:
    """One service JID and its event table."""

    def __init__(self, router: Router, jid: str, parent: str) -> None:
        self.router = router
        self.jid = jid
        #: The hosted domain it belongs to (whose certificate and federation settings it uses).
        self.parent = parent
        self.events = Events()

    def deliver(self, stanza: Element, origin: Any = None) -> Awaitable[None] | None:
        """A stanza addressed to this service or one of its addresses (called by ``Router.route``)."""
        try:
            local, _, resource = split_jid(stanza.attrs["to"])
        except (JidError, KeyError):
            return self.router.bounce(stanza, "jid-malformed")
        to_type = ("full" if resource else "bare") if local else "host"
        bare = f"{local}@{self.jid}" if local else ""
        event = StanzaEvent(stanza, origin, bare, self.jid, resource, None, _EMPTY)
        try:
            result = self.events.fire(f"{stanza.name}/{to_type}", event)
        except Exception:
            log.exception("%s: handler for %s failed", self.jid, stanza.name)
            return self.router.bounce(stanza, "internal-server-error")
        if result is None:
            result = self._unhandled(event, to_type)
        elif result is HANDLED:
            result = None
        if event.pending is not None:
            return _after(event.pending, result)
        return result

    def _unhandled(self, event: StanzaEvent, to_type: str) -> Awaitable[None] | None:
        stanza = event.stanza
        if stanza.name == "iq":
            if stanza.attrs.get("type") in ("get", "set"):
                return self._dispatch_iq(event, to_type)
            return None
        if stanza.name == "message" and stanza.attrs.get("type") != "error":
            return self.router.bounce(stanza, "service-unavailable")
        return None

    def _dispatch_iq(self, event: StanzaEvent, to_type: str) -> Awaitable[None] | None:
        iq = event.stanza
        payloads = list(iq.elements())
        if len(payloads) != 1:
            return self.send(error_reply(iq, "bad-request", "an IQ get or set carries exactly one payload"))
        payload = payloads[0]
        ctx = IqContext(iq, payload, event.bare or None, self.jid, iq.attrs.get("from", ""), None, False, None)
        try:
            reply = self.events.fire(iq_event_name(iq.attrs["type"], to_type, payload), ctx)
        except Exception:
            log.exception("%s: IQ handler for %s failed", self.jid, payload.xmlns)
            reply = error_reply(iq, "internal-server-error")
        if reply is None:
            reply = error_reply(iq, "service-unavailable")
        if isinstance(reply, Element):
            return self.send(reply)
        return self._await_reply(reply, iq)

    async def _await_reply(self, pending: Awaitable[Element | None], iq: Element) -> None:
        try:
            reply = await pending
        except Exception:
            log.exception("%s: IQ handler failed", self.jid)
            reply = error_reply(iq, "internal-server-error")
        if reply is not None:
            result = self.send(reply)
            if result is not None:
                await result

    def send(self, stanza: Element) -> Awaitable[None] | None:
        """Route a stanza from this service (``from`` set by the caller) to anyone, local or remote."""
        return self.router.route(stanza)

    def send_later(self, stanza: Element) -> None:
        """Route a stanza without waiting for it (fan-out to many occupants)."""
        schedule(self.router.route(stanza))


def add_service(ctx: XmppContext, prefix: str, domain: str) -> HostedService:
    """Serve ``prefix.domain`` here (``domain`` is a hosted domain); return its service."""
    jid = f"{prefix}.{domain}".lower()
    service = HostedService(ctx.router, jid, domain.lower())
    ctx.router.add_service(service)
    return service


def hook_service_iq(service: HostedService, name: str, namespace: str, handler: Callable[[IqContext], Any], *,
                    types: Iterable[str] = ("get", "set"), to: Iterable[str] = ("host",),
                    priority: int = 0) -> None:
    """``features.hook_iq`` for a service's table: ``to`` is ``host``, ``bare`` and/or ``full``."""
    for itype in types:
        for to_type in to:
            service.events.hook(f"iq-{itype}/{to_type}/{namespace}:{name}", handler, priority)


async def _after(pending: list[Awaitable[Any]], result: Awaitable[None] | None) -> None:
    if result is not None:
        await result
    for awaitable in pending:
        await awaitable
