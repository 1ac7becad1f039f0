"""RFC 6121 section 8.5: delivery of messages and IQs to a local account and its resources.

This module is in charge of choosing which sessions of a local account receive a message or IQ:

- to a full JID that is online: that session; to one that is not, chat and normal messages are
  treated as if sent to the bare JID, groupchat bounces, headline and error are dropped;
- to the bare JID: every available resource with a non-negative priority (headline too); with
  none, ``message/offline/handle`` is fired for the offline store (``features.offline``);
- to the domain itself (RFC 6120 section 10.5.4): the server understands no message payload, so
  chat and normal messages get ``<service-unavailable/>`` and the rest is dropped.

Delivery to an online session is synchronous (no awaits, no database): it is the hot path. Archive
stamps and carbon copies are made by ``features.mam`` and ``features.carbons`` on the same events,
at higher priorities.
"""

from __future__ import annotations

from typing import Any

from peerage.xmpp.events import HANDLED
from peerage.xmpp.features import Feature
from peerage.xmpp.stanzas import StanzaEvent

#: Below the features that stamp or copy a message on its way (mam, carbons).
PRIORITY = 0


def bare_targets(resources: dict[str, Any]) -> list[Any]:
    """Sessions that take messages to the bare JID (RFC 6121 section 8.5.2.1.1)."""
    return [s for s in resources.values() if s.available and s.priority >= 0]


class Im(Feature):
    def setup(self) -> None:
        events = self.ctx.events
        events.hook("message/full", self._message_full, PRIORITY)
        events.hook("message/bare", self._message_bare, PRIORITY)
        events.hook("iq/full", self._iq_full, PRIORITY)

    def _message_full(self, event: StanzaEvent) -> Any:
        session = event.resources.get(event.resource)
        if session is not None:
            session.send(event.stanza)
            return HANDLED
        mtype = event.stanza.attrs.get("type", "normal")
        # Section 8.5.3.2: the full JID is not online.
        if mtype == "groupchat":
            return self.ctx.router.bounce(event.stanza, "service-unavailable")
        if mtype in ("headline", "error"):
            return HANDLED
        return self._message_bare(event)

    def _message_bare(self, event: StanzaEvent) -> Any:
        stanza = event.stanza
        mtype = stanza.attrs.get("type", "normal")
        if mtype == "error":
            return HANDLED
        if event.user is None or mtype == "groupchat":
            return self.ctx.router.bounce(stanza, "service-unavailable")
        targets = bare_targets(event.resources)
        if targets:
            for session in targets:
                session.send(stanza)
            return HANDLED
        if mtype == "headline":
            return HANDLED
        return self.ctx.events.fire("message/offline/handle", event)

    def _iq_full(self, event: StanzaEvent) -> Any:
        session = event.resources.get(event.resource)
        if session is None:
            return None  # unhandled: requests bounce service-unavailable, answers are dropped
        session.send(event.stanza)
        return HANDLED
