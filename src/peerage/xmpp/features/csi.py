"""XEP-0352 Client State Indication, sans-I/O: what to hold back while the client is inactive.

This module is in charge of the queue of stanzas that can wait while a client says it is inactive:
presence updates (only the latest per sender is kept) and chat-state-only messages. Anything else
flushes the queue and goes out at once, so ordering is kept for important traffic.
"""

from __future__ import annotations

from typing import Any

from peerage.xmpp.features import Feature
from peerage.xmpp.stream import Element

CSI_NS = "urn:xmpp:csi:0"
CHATSTATES_NS = "http://jabber.org/protocol/chatstates"
#: Stanzas held at most while inactive; past this the queue is flushed. Prosody's mod_csi_simple
#: flushes at csi_queue_size = 256.
MAX_HELD_STANZAS = 256


def is_urgent(stanza: Element) -> bool:
    """Whether ``stanza`` must be delivered now (XEP-0352 section 5 leaves the policy to servers)."""
    if stanza.name == "presence":
        return stanza.attrs.get("type") in ("subscribe", "subscribed", "unsubscribe", "unsubscribed", "error")
    if stanza.name == "message":
        return any(child.xmlns != CHATSTATES_NS for child in stanza.elements())
    return True


class CsiQueue:
    """Held stanzas of one inactive session."""

    __slots__ = ("held",)

    def __init__(self) -> None:
        self.held: list[Element] = []

    def hold(self, stanza: Element) -> bool:
        """Keep ``stanza`` if it may wait; return False if it (and the queue) must go out now."""
        if is_urgent(stanza) or len(self.held) >= MAX_HELD_STANZAS:
            return False
        if stanza.name == "presence":
            sender = stanza.attrs.get("from")
            self.held = [s for s in self.held if not (s.name == "presence" and s.attrs.get("from") == sender)]
        self.held.append(stanza)
        return True

    def release(self) -> list[Element]:
        held, self.held = self.held, []
        return held


class ClientStateIndication(Feature):
    def stream_features(self, session: Any) -> list[Element]:
        return [Element("csi", CSI_NS)]
