"""XEP-0198 Stream Management, sans-I/O: counters, the unacknowledged queue, resumption tokens.

This module is in charge of the bookkeeping of one managed stream: how many stanzas we handled
(``handled``, reported in <a h=/> only once each stanza is fully processed and anything it stored is
committed), how many we sent and which of those the client has not acknowledged (kept as bytes, resent
on resumption), and the wrap-around arithmetic of section 4 (h is modulo 2^32).
"""

from __future__ import annotations

import secrets
from collections import deque
from typing import Any

from peerage.xmpp.features import Feature
from peerage.xmpp.stream import Element

SM_NS = "urn:xmpp:sm:3"
#: Default seconds a detached session waits for resumption (``[xmpp] sm_resumption_timeout``).
#: Prosody's smacks_hibernation_time is 600; Conversations resumes within a few minutes; 300 keeps
#: the memory of dead clients short.
RESUMPTION_TIMEOUT = 300
#: Unacknowledged stanzas kept per session. Prosody's smacks_max_unacked_stanzas is 0 (ask after
#: each) and smacks_max_queue_size 500; past this, the session is closed with resource-constraint.
MAX_UNACKED = 1000
#: Ask the client for an acknowledgement after this many unacknowledged stanzas (Prosody asks
#: after each burst; 5 is what ejabberd's ack_timeout logic approximates).
REQUEST_ACK_EVERY = 5
H_MODULO = 2 ** 32


class StreamManagementState:
    """Counters and queue of one managed session."""

    __slots__ = ("acked", "handled", "resumable", "resume_id", "sent_count", "unacked")

    def __init__(self, resumable: bool) -> None:
        self.resume_id = secrets.token_urlsafe(18) if resumable else None
        self.resumable = resumable
        self.handled = 0  # stanzas from the client fully processed (mod 2^32)
        self.sent_count = 0  # stanzas sent to the client
        self.acked = 0  # stanzas the client acknowledged
        #: (bytes sent, the message if it was one, the sessions' bare clock when sent: see
        #: ``peerage.xmpp.session.Sessions.bare_clock``)
        self.unacked: deque[tuple[bytes, Element | None, int]] = deque()

    def count_handled(self) -> None:
        self.handled = (self.handled + 1) % H_MODULO

    def sent(self, data: bytes, stanza: Element | None, stamp: int = 0) -> None:
        self.sent_count += 1
        self.unacked.append((data, stanza, stamp))

    def ack(self, h: int) -> bool:
        """Apply the client's <a h=/>; False if h acknowledges more than was sent."""
        h %= H_MODULO
        delta = (h - self.acked) % H_MODULO
        if delta > len(self.unacked):
            return False
        for _ in range(delta):
            self.unacked.popleft()
        self.acked = h
        return True

    @property
    def overflowing(self) -> bool:
        return len(self.unacked) > MAX_UNACKED

    def should_request(self) -> bool:
        return len(self.unacked) > 0 and len(self.unacked) % REQUEST_ACK_EVERY == 0


class StreamManagement(Feature):
    def stream_features(self, session: Any) -> list[Element]:
        return [Element("sm", SM_NS)]
