"""Stanza routing between the sessions of every hosted domain, and the hand-off to federation.

This module is in charge of deciding where a stanza goes: to a local account (handed to the local
delivery handler, which applies RFC 6121 section 8 rules), or to a remote domain (handed to the remote
sender that the federation layer installs). It keeps the table of bound client sessions.

Interface for the federation layer (stable):

``router.set_remote_sender(sender)``
    ``sender`` is ``async def sender(stanza: Element, to_domain: str) -> None``. The router calls it
    for every stanza whose ``to`` domain is not hosted here. The stanza has normalised ``from`` and
    ``to`` attributes and ``xmlns == ""`` (the content namespace; serialize it with
    ``stream.serialize(stanza, content_ns="jabber:server")``). The coroutine should return once the
    stanza is queued for the domain, not when it is delivered. When delivery later fails, the
    federation layer bounces it with ``await router.bounce(stanza, "remote-server-not-found")``
    (or another RFC 6120 section 8.3.3 condition). If the sender raises, the router bounces with
    ``remote-server-not-found``. ``set_remote_sender(None)`` removes it; with no sender, stanzas to
    remote domains bounce with ``remote-server-not-found``.

``await router.deliver_from_remote(stanza)``
    For each stanza received on an authenticated inbound s2s stream, after the federation layer has
    checked that ``from`` belongs to the authenticated remote domain. The router checks that ``to``
    is hosted here (otherwise it returns ``False`` and does nothing: the caller answers with a
    ``host-unknown``/``improper-addressing`` stream error as it sees fit) and delivers it with the
    same local rules as a stanza from a local user. Returns ``True`` once delivered or stored.

``router.is_hosted(domain)``
    Whether ``domain`` is served by this process: a hosted domain or a hosted service JID.

``router.add_service(service)`` / ``router.remove_service(jid)``
    A service JID (``conference.example.org``, see ``peerage.xmpp.hosted``): every stanza whose
    ``to`` domain is ``service.jid`` goes to ``service.deliver(stanza)``, from local clients and
    from remote servers alike; ``service.parent`` is the hosted domain whose certificate it uses.

Hot path: ``route()`` returns ``None`` when the stanza was handled synchronously (the common case: a
message to an online session), or an awaitable when storage or a remote hand-off is involved. Callers
that acknowledge stanzas (XEP-0198) await it before counting the stanza as handled.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

from peerage.xmpp.jid import JidError, split_jid
from peerage.xmpp.stream import Element, error_reply

log = logging.getLogger(__name__)

RemoteSender = Callable[[Element, str], Awaitable[None]]
LocalHandler = Callable[[Element], "Awaitable[None] | None"]

class RoutedSession(Protocol):
    """What the router needs from a bound client session."""

    bare_jid: str
    full_jid: str
    resource: str
    #: Sent initial presence and not yet unavailable (RFC 6121 section 4.2).
    available: bool
    priority: int
    #: The last available presence broadcast (RFC 6121 section 4.2), None when unavailable.
    last_presence: Element | None

    def send(self, stanza: Element) -> None: ...


class HostedServiceLike(Protocol):
    """What the router needs from a hosted service (``peerage.xmpp.hosted.HostedService``)."""

    jid: str
    parent: str

    def deliver(self, stanza: Element, origin: object = None) -> Awaitable[None] | None: ...


class Router:
    """Routes stanzas to local sessions, to local delivery rules, or to the remote sender."""

    def __init__(self, hosted_domains: Iterable[str]) -> None:
        self.hosted_domains = {d.lower() for d in hosted_domains}
        #: bare JID -> resource -> session
        self.sessions: dict[str, dict[str, RoutedSession]] = {}
        self._remote_sender: RemoteSender | None = None
        #: The RFC 6121 local delivery rules (``peerage.xmpp.stanzas``); read on every stanza, so a
        #: plain attribute. Set it with ``set_local_handler``.
        self.local_handler: LocalHandler | None = None
        #: service JID -> hosted service (its stanzas fire on its own events, ``peerage.xmpp.hosted``)
        self.services: dict[str, HostedServiceLike] = {}

    # --- configuration ------------------------------------------------------------------------
    def is_hosted(self, domain: str) -> bool:
        return domain in self.hosted_domains or domain in self.services

    def add_service(self, service: HostedServiceLike) -> None:
        self.services[service.jid] = service

    def remove_service(self, jid: str) -> None:
        self.services.pop(jid, None)

    def certificate_domain(self, domain: str) -> str:
        """The hosted domain whose certificate serves ``domain`` (itself, or a service's parent)."""
        service = self.services.get(domain)
        return service.parent if service is not None else domain

    def set_remote_sender(self, sender: RemoteSender | None) -> None:
        self._remote_sender = sender

    def set_local_handler(self, handler: LocalHandler) -> None:
        """Install the RFC 6121 local delivery rules (``peerage.xmpp.stanzas``)."""
        self.local_handler = handler

    # --- session table ------------------------------------------------------------------------
    def resources(self, bare_jid: str) -> dict[str, RoutedSession]:
        return self.sessions.get(bare_jid) or {}

    def session(self, bare_jid: str, resource: str) -> RoutedSession | None:
        resources = self.sessions.get(bare_jid)
        return resources.get(resource) if resources else None

    def bind(self, session: RoutedSession) -> RoutedSession | None:
        """Register ``session``; return the session it replaces (same full JID), if any."""
        resources = self.sessions.setdefault(session.bare_jid, {})
        previous = resources.get(session.resource)
        resources[session.resource] = session
        return previous

    def unbind(self, session: RoutedSession) -> None:
        resources = self.sessions.get(session.bare_jid)
        if resources and resources.get(session.resource) is session:
            del resources[session.resource]
            if not resources:
                del self.sessions[session.bare_jid]

    def all_sessions(self) -> list[RoutedSession]:
        return [s for r in self.sessions.values() for s in r.values()]

    # --- routing ------------------------------------------------------------------------------
    def route(self, stanza: Element) -> Awaitable[None] | None:
        """Send ``stanza`` (with normalised ``from`` and a ``to``) towards its destination."""
        to = stanza.attrs.get("to")
        if not to:
            raise ValueError("route() needs a stanza with a 'to' address")
        try:
            _, domain, _ = split_jid(to)
        except JidError:
            return self.bounce(stanza, "jid-malformed")
        if domain in self.hosted_domains:
            handler = self.local_handler
            if handler is None:
                return self.bounce(stanza, "service-unavailable")
            return handler(stanza)
        service = self.services.get(domain)
        if service is not None:
            return service.deliver(stanza)
        return self._send_remote(stanza, domain)

    async def _send_remote(self, stanza: Element, domain: str) -> None:
        sender = self._remote_sender
        if sender is None:
            await self.bounce(stanza, "remote-server-not-found")
            return
        try:
            await sender(stanza, domain)
        except Exception:
            log.exception("remote sender failed for %s", domain)
            await self.bounce(stanza, "remote-server-not-found")

    async def deliver_from_remote(self, stanza: Element) -> bool:
        to = stanza.attrs.get("to", "")
        try:
            _, domain, _ = split_jid(to)
        except JidError:
            return False
        service = self.services.get(domain)
        if service is not None:
            result = service.deliver(stanza)
            if result is not None:
                await result
            return True
        if domain not in self.hosted_domains or self.local_handler is None:
            return False
        result = self.local_handler(stanza)
        if result is not None:
            await result
        return True

    async def bounce(self, stanza: Element, condition: str, text: str = "") -> None:
        """Return an error for ``stanza`` to its sender (never for errors, RFC 6120 section 8.3.1)."""
        if stanza.attrs.get("type") == "error" or not stanza.attrs.get("from"):
            return
        if stanza.name == "presence" and stanza.attrs.get("type") not in (None, "subscribe"):
            return  # presence errors other than for subscribe/available are not useful to clients
        sender_domain = split_jid(stanza.attrs["from"])[1]
        reply = error_reply(stanza, condition, text)
        if sender_domain in self.hosted_domains or sender_domain in self.services:
            result = self.route(reply)
        elif self._remote_sender is not None:
            result = self._remote_sender(reply, sender_domain)
        else:
            return
        if result is not None:
            try:
                await result
            except Exception:
                log.exception("could not bounce a stanza")


def schedule(awaitable: Awaitable[None] | None) -> None:
    """Run ``awaitable`` in the background (for callers that do not need to wait)."""
    if awaitable is not None:
        task = asyncio.ensure_future(awaitable)
        _background.add(task)
        task.add_done_callback(_background.discard)


_background: set[asyncio.Future[None]] = set()
