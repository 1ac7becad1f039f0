"""XEP-0280 Message Carbons: enabling per session, and the copies.

This module is in charge of the enable/disable IQs and of the copies (section 6 rules): a message
sent by one of the account's clients is copied, wrapped in ``<sent/>``, to its other
carbons-enabled resources (``pre-message/*``); a message delivered to one full JID of the account is
copied, wrapped in ``<received/>``, to the others (``message/full``). Copies go before delivery
(a higher priority than ``features.im``) and never change the stanza they wrap.
"""

from __future__ import annotations

from typing import Any

from peerage.xmpp.features import Feature, IqContext, hook_iq, result
from peerage.xmpp.stanzas import StanzaEvent
from peerage.xmpp.stream import Element, error_reply

CARBONS_NS = "urn:xmpp:carbons:2"
FORWARD_NS = "urn:xmpp:forward:0"
HINTS_NS = "urn:xmpp:hints"
#: After archiving (features.mam: the copy carries the stanza-id), before delivery.
PRIORITY = 10


def carbon_eligible(stanza: Element) -> bool:
    mtype = stanza.attrs.get("type", "normal")
    if mtype != "chat" and not (mtype == "normal" and stanza.find("body") is not None):
        return False
    for child in stanza.children:
        if child.__class__ is Element and child.name in ("private", "no-copy") and \
                child.xmlns in (CARBONS_NS, HINTS_NS):
            return False
    return True


class Carbons(Feature):
    server_features = (CARBONS_NS, "urn:xmpp:carbons:rules:0")

    def setup(self) -> None:
        self._sessions = self.ctx.router.sessions
        hook_iq(self.ctx, "enable", CARBONS_NS, self._toggle)
        hook_iq(self.ctx, "disable", CARBONS_NS, self._toggle)
        self.ctx.events.hook("message/full", self._received, PRIORITY)
        for to in ("bare", "full", "host"):
            self.ctx.events.hook(f"pre-message/{to}", self._sent, PRIORITY)

    def _toggle(self, ctx: IqContext) -> Element | None:
        if not ctx.is_owner or ctx.session is None or ctx.iq.attrs.get("type") != "set":
            return error_reply(ctx.iq, "bad-request")
        ctx.session.carbons = ctx.payload.name == "enable"
        return result(ctx)

    def _received(self, event: StanzaEvent) -> None:
        resources = event.resources
        if len(resources) > 1:
            target = resources.get(event.resource)
            if target is not None and carbon_eligible(event.stanza):
                self._copy(event.stanza, event.bare, "received", resources, target)

    def _sent(self, event: StanzaEvent) -> None:
        session = event.origin
        resources = self._sessions.get(session.bare_jid)
        if resources is not None and len(resources) > 1 and carbon_eligible(event.stanza):
            self._copy(event.stanza, session.bare_jid, "sent", resources, session)

    @staticmethod
    def _copy(stanza: Element, bare: str, kind: str, resources: dict[str, Any], exclude: Any) -> None:
        for session in list(resources.values()):
            if session is exclude or not session.carbons:
                continue
            wrapper = Element("message", "", {"from": bare, "to": session.full_jid,
                                              "type": stanza.attrs.get("type", "normal")})
            wrapper.add(kind, CARBONS_NS).add("forwarded", FORWARD_NS).children.append(stanza)
            session.send(wrapper)
