"""The stanza router: names the event for a stanza and fires it (Prosody's ``core/stanza_router``).

This module is in charge of two paths and of nothing they lead to:

- a stanza from a local client (``from_client``) fires ``pre-<kind>/<to>`` with the client session
  as ``origin``; if no handler takes it, it is routed (to a local account, or to federation);
- a stanza to an account or domain hosted here (``deliver``, the router's local handler, used for
  local and federated senders alike) fires ``<kind>/<to>``.

``<kind>`` is ``message``, ``presence`` or ``iq``; ``<to>`` is ``bare``, ``full`` or ``host``. An IQ
get or set that no ``iq/<to>`` handler took is dispatched by its payload as
``iq-<type>/<to>/<namespace>:<name>`` (``iq-get/bare/jabber:iq:roster:query``), with an
``IqContext`` as the event; its handler returns the reply (or an awaitable of it). What nobody
handles gets the RFC 6120 section 8.3 / RFC 6121 section 8.5 answer: ``service-unavailable`` for
messages and IQ requests, silence for presence and for errors.

The destination's ``UserState`` is in the event (``event.user``; None when no such account exists),
loaded before firing when it is not cached, so handlers never wait to read a roster or blocklist.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from peerage.xmpp.context import XmppContext
from peerage.xmpp.events import HANDLED
from peerage.xmpp.jid import JidError, split_jid, split_jid_bare
from peerage.xmpp.router import schedule
from peerage.xmpp.stream import Element, error_reply
from peerage.xmpp.users import UserState

log = logging.getLogger(__name__)

_EMPTY: dict[str, Any] = {}
# Event names built once: (kind, to-type) -> name; the hot path only indexes.
_NAMES = {(kind, to): f"{kind}/{to}" for kind in ("message", "presence", "iq") for to in ("bare", "full", "host")}
_PRE_NAMES = {key: f"pre-{name}" for key, name in _NAMES.items()}
# kind -> name, for the delivery to a full JID, a bare JID and the domain.
_FULL_NAMES = {kind: _NAMES[kind, "full"] for kind in ("message", "presence", "iq")}
_BARE_NAMES = {kind: _NAMES[kind, "bare"] for kind in ("message", "presence", "iq")}
_HOST_NAMES = {kind: _NAMES[kind, "host"] for kind in ("message", "presence", "iq")}
#: ``object.__new__``: the hot paths build their StanzaEvent with it and set the slots inline. On
#: CPython 3.11 calling a class with an ``__init__`` costs about 0.25 us, setting eight slots on a
#: bare instance a third of that; this is on every stanza's path, twice before it was shared.
_new_event = object.__new__


class StanzaEvent:
    """One stanza on its way: what the handlers of ``<kind>/<to>`` and ``pre-<kind>/<to>`` receive.

    ``bare``/``domain``/``resource`` are the destination (``bare`` is '' for the domain itself).
    ``user`` is the destination account's state for ``<kind>/<to>`` events and the sender's for
    ``pre-`` events. ``resources`` are the destination's bound sessions (resource -> session).
    A handler that lets the chain go on but needs the sender to wait (storage back-pressure)
    calls ``wait_for(awaitable)``.

    An event lives for the synchronous run of its handlers: a stanza from a local client to a local
    account has one event object, re-aimed from ``pre-<kind>/<to>`` (origin = the sender's
    session, ``user`` = the sender's state) to ``<kind>/<to>`` (origin None, ``user`` and
    ``resources`` = the destination's). A handler that needs a field later (in a task or an
    awaitable it returns or waits for) reads it during its call.
    """

    __slots__ = ("bare", "domain", "origin", "pending", "resource", "resources", "stanza", "user")

    def __init__(self, stanza: Element, origin: Any, bare: str, domain: str, resource: str,
                 user: UserState | None, resources: dict[str, Any]) -> None:
        self.stanza = stanza
        self.origin = origin
        self.bare = bare
        self.domain = domain
        self.resource = resource
        self.user = user
        self.resources = resources
        self.pending: list[Awaitable[Any]] | None = None

    def wait_for(self, awaitable: Awaitable[Any]) -> None:
        if self.pending is None:
            self.pending = []
        self.pending.append(awaitable)


@dataclass(slots=True)
class IqContext:
    """One IQ get or set to be answered here: the event of ``iq-<type>/<to>/<ns>:<name>``.

    ``owner`` is the bare JID the IQ is processed for (the account addressed, or the sender's own
    account when the IQ has no ``to``); ``None`` when it is addressed to the domain itself.
    ``session`` is the sender's local client session, if the sender is a local client.
    ``is_owner`` says whether the sender is the account itself (RFC 6120 section 10.3.3).
    """

    iq: Element
    payload: Element
    owner: str | None
    domain: str
    sender: str
    session: Any
    is_owner: bool
    user: UserState | None = None


def iq_event_name(itype: str, to_type: str, payload: Element) -> str:
    return f"iq-{itype}/{to_type}/{payload.xmlns}:{payload.name}"


class StanzaRouter:
    def __init__(self, ctx: XmppContext) -> None:
        self.ctx = ctx
        self.events = ctx.events
        self.router = ctx.router
        self.users = ctx.users
        # Bound once for the hot path: the handler table, the session table, the user cache.
        self._handlers = ctx.events.handlers
        self._sessions = ctx.router.sessions
        self._cached = ctx.users.cached
        #: The bound method installed as the router's local handler: ``is`` tells whether it still is.
        self._deliver_bound = self.deliver
        ctx.router.set_local_handler(self._deliver_bound)
        #: Stanzas that entered the router, by kind: from local clients (``from_client``) and to
        #: hosted addresses from elsewhere (``deliver``: federation, the server's own stanzas).
        #: Read by the metrics (``peerage_xmpp_stanzas_total``); a counter here, not an event
        #: handler, because a handler call on every stanza costs more than the count itself.
        self.routed: dict[str, int] = {"message": 0, "presence": 0, "iq": 0}

    # ============================================================================================
    # To an account or domain hosted here
    # ============================================================================================
    def deliver(self, stanza: Element, origin: Any = None) -> Awaitable[None] | None:
        self.routed[stanza.name] += 1
        try:
            _, domain, resource, bare = split_jid_bare(stanza.attrs["to"])
        except JidError:
            return self.router.bounce(stanza, "jid-malformed")
        return self._deliver(stanza, origin, bare, domain, resource)

    def _deliver(self, stanza: Element, origin: Any, bare: str, domain: str,
                 resource: str) -> Awaitable[None] | None:
        """``deliver`` once ``to`` is split (``from_client`` has split it already); ``bare`` is ''
        for the domain itself."""
        if not bare:
            return self._fire(_HOST_NAMES[stanza.name],
                              StanzaEvent(stanza, origin, "", domain, resource, None, _EMPTY))
        resources: dict[str, Any] | None = self._sessions.get(bare)
        user = self._cached(bare) if resources else None
        if user is None or resources is None:
            return self._deliver_loading(stanza, origin, bare, domain, resource)
        # self._fire, inlined: this is every delivery to an online account.
        event = _new_event(StanzaEvent)  # StanzaEvent(...), inlined (see _new_event)
        event.stanza = stanza
        event.origin = origin
        event.bare = bare
        event.domain = domain
        event.resource = resource
        event.user = user
        event.resources = resources
        event.pending = None
        result = None
        for handler in self._handlers.get((_FULL_NAMES if resource else _BARE_NAMES)[stanza.name], ()):
            result = handler(event)
            if result is not None:
                break
        if result is None:
            result = self._unhandled(event)
        elif result is HANDLED:
            result = None
        if event.pending is not None:
            return _after(event.pending, result)
        return result

    async def _deliver_loading(self, stanza: Element, origin: Any, bare: str, domain: str, resource: str) -> None:
        """Delivery to an account whose state is not cached: load it (None if there is no account)."""
        user = await self.users.lookup(bare)
        resources = self.router.sessions.get(bare) or _EMPTY
        result = self._fire(_NAMES[stanza.name, "full" if resource else "bare"],
                            StanzaEvent(stanza, origin, bare, domain, resource, user, resources))
        if result is not None:
            await result

    def _fire(self, name: str, event: StanzaEvent) -> Awaitable[None] | None:
        # Events.fire, inlined: the handlers in priority order until one returns a result.
        result = None
        for handler in self._handlers.get(name, ()):
            result = handler(event)
            if result is not None:
                break
        if result is None:
            result = self._unhandled(event)
        elif result is HANDLED:
            result = None
        if event.pending is not None:
            return _after(event.pending, result)
        return result

    def _unhandled(self, event: StanzaEvent) -> Awaitable[None] | None:
        stanza = event.stanza
        if stanza.name == "iq":
            return self._dispatch_iq(event)
        if stanza.name == "message":
            mtype = stanza.attrs.get("type", "normal")
            # RFC 6121 section 8.5.1 / 8.5.4 and RFC 6120 section 10.5.4: nobody takes it.
            if mtype in ("chat", "normal") or (event.bare and mtype == "groupchat"):
                return self.router.bounce(stanza, "service-unavailable")
        return None  # presence, errors, headlines: dropped (RFC 6120 section 8.3.1)

    # --- IQ dispatch by payload -----------------------------------------------------------------
    def _dispatch_iq(self, event: StanzaEvent) -> Awaitable[None] | None:
        iq = event.stanza
        itype = iq.attrs.get("type")
        if itype not in ("get", "set"):
            return None  # results and errors to a bare JID or the domain go nowhere
        if event.resource:
            return self.router.bounce(iq, "service-unavailable")  # to an absent full JID
        if event.bare and event.user is None:
            return self.router.bounce(iq, "service-unavailable")  # no such account
        sender = iq.attrs.get("from", "")
        is_owner = False
        if event.bare:
            try:
                local, domain, _ = split_jid(sender)
                is_owner = f"{local}@{domain}" == event.bare
            except JidError:
                pass
        return self._answer_iq(iq, event.bare or None, event.domain, event.origin, is_owner, event.user)

    def account_iq(self, iq: Element, session: Any) -> Awaitable[None] | None:
        """An IQ from a client to its own account (no ``to``, RFC 6120 section 10.3.3)."""
        return self._answer_iq(iq, session.bare_jid, session.bare_jid.partition("@")[2], session, True,
                               self.users.cached(session.bare_jid))

    def _answer_iq(self, iq: Element, owner: str | None, domain: str, session: Any, is_owner: bool,
                   user: UserState | None) -> Awaitable[None] | None:
        payloads = list(iq.elements())
        if len(payloads) != 1:
            self._reply(error_reply(iq, "bad-request", "an IQ get or set carries exactly one payload"), session)
            return None
        payload = payloads[0]
        ctx = IqContext(iq, payload, owner, domain, iq.attrs.get("from", ""), session, is_owner, user)
        name = iq_event_name(iq.attrs["type"], "bare" if owner else "host", payload)
        try:
            result = self.events.fire(name, ctx)
        except Exception:
            log.exception("IQ handler for %s failed", payload.xmlns)
            result = error_reply(iq, "internal-server-error")
        if result is None:
            result = error_reply(iq, "service-unavailable")
        if isinstance(result, Element):
            self._reply(result, session)
            return None
        return self._await_reply(result, ctx)

    async def _await_reply(self, pending: Awaitable[Element | None], ctx: IqContext) -> None:
        try:
            reply = await pending
        except Exception:
            log.exception("IQ handler for %s failed", ctx.payload.xmlns)
            reply = error_reply(ctx.iq, "internal-server-error")
        if reply is not None:
            self._reply(reply, ctx.session)

    def _reply(self, reply: Element, session: Any) -> None:
        if session is not None and reply.attrs.get("to") in (None, session.full_jid):
            session.send(reply)
        elif reply.attrs.get("to"):
            schedule(self.router.route(reply))

    # ============================================================================================
    # From a local client, stamped with its full JID (``peerage.xmpp.c2s``)
    # ============================================================================================
    def from_client(self, session: Any, stanza: Element) -> Awaitable[None] | None:
        name = stanza.name
        self.routed[name] += 1
        attrs = stanza.attrs
        to = attrs.get("to")
        if not to:
            if name == "message":
                attrs["to"] = to = session.bare_jid  # RFC 6121 section 8.1.1.1
            elif name == "iq":
                return self.account_iq(stanza, session)
        if to:
            try:
                _, domain, resource, bare = split_jid_bare(to)
            except JidError:
                session.send(error_reply(stanza, "jid-malformed"))
                return None
            to_type = ("full" if resource else "bare") if bare else "host"
        else:
            # Presence without 'to' is the client's broadcast, about its own bare JID.
            to_type, bare, resource = "bare", session.bare_jid, ""
            domain = bare.partition("@")[2]
        event = _new_event(StanzaEvent)  # StanzaEvent(...), inlined (see _new_event)
        event.stanza = stanza
        event.origin = session
        event.bare = bare
        event.domain = domain
        event.resource = resource
        event.user = self._cached(session.bare_jid)
        event.resources = _EMPTY
        event.pending = None
        result = None
        for handler in self._handlers.get(_PRE_NAMES[name, to_type], ()):
            result = handler(event)
            if result is not None:
                break
        if result is None:
            if not to:
                result = self.router.route(stanza)  # presence without 'to' that no handler took
            elif name != "iq" and bare and domain in self.router.hosted_domains and self.router.local_handler is self._deliver_bound:
                # To an account hosted here: what Router.route and deliver() would do, inlined with
                # ``to`` split already and the same event object re-aimed at the destination (the
                # common case: every chat message between local accounts).
                result = self._deliver_event(event, stanza, bare, resource)
            else:
                result = self._post(stanza, session, to_type, bare, domain, resource)
        elif result is HANDLED:
            result = None
        if event.pending is not None:
            return _after(event.pending, result)
        return result

    def _deliver_event(self, event: StanzaEvent, stanza: Element, bare: str,
                       resource: str) -> Awaitable[None] | None:
        """``_deliver`` for an account, re-using ``event`` (the sender's ``pre-`` event, over)."""
        resources: dict[str, Any] | None = self._sessions.get(bare)
        user = self._cached(bare) if resources else None
        if user is None or resources is None:
            return self._deliver_loading(stanza, None, bare, event.domain, resource)
        event.origin = None
        event.user = user
        event.resources = resources
        result = None
        for handler in self._handlers.get((_FULL_NAMES if resource else _BARE_NAMES)[stanza.name], ()):
            result = handler(event)
            if result is not None:
                break
        if result is None:
            return self._unhandled(event)
        if result is HANDLED:
            return None
        return result

    def _post(self, stanza: Element, session: Any, to_type: str, bare: str, domain: str,
              resource: str) -> Awaitable[None] | None:
        """What no ``pre-`` handler took goes on its way (Prosody's ``core_post_stanza``).

        ``bare``/``domain``/``resource`` are ``to``, split by ``from_client``."""
        if stanza.name == "iq" and ((bare == session.bare_jid and to_type == "bare")
                                    or (to_type == "host" and domain in self.router.hosted_domains)):
            return self.deliver(stanza, session)  # answered here, replies straight to the session
        if domain in self.router.hosted_domains and self.router.local_handler is self._deliver_bound:
            # What Router.route does for a hosted domain (the local handler), with ``to`` split already.
            return self._deliver(stanza, None, bare, domain, resource)
        return self.router.route(stanza)


async def _after(pending: list[Awaitable[Any]], result: Awaitable[None] | None) -> None:
    if result is not None:
        await result
    for awaitable in pending:
        await awaitable
