"""XEP-0160 Best Practices for Handling Offline Messages: store while away, deliver on return.

This module is in charge of ``message/offline/handle`` (a message to a bare JID found no resource
that takes it: commit it, stamped with XEP-0203 delay, before the sender's stanza counts as handled)
and ``message/offline/broadcast`` (a resource became available with a non-negative priority: send
it the queue, then delete what was sent). Once a message is committed it fires
``message/offline/stored`` with an :class:`OfflineStored` (push notifications hook it, so they count
what is really in the queue and never announce a message that was delivered or bounced instead). Storing and emptying the queue of one account never
overlap, so a message committed during a login is neither lost nor delivered twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from peerage.xmpp.features import Feature
from peerage.xmpp.features.im import bare_targets
from peerage.xmpp.stanzas import StanzaEvent
from peerage.xmpp.stream import Element, parse_stored, serialize

OFFLINE_FEATURE = "msgoffline"
DELAY_NS = "urn:xmpp:delay"
HINTS_NS = "urn:xmpp:hints"
CHATSTATES_NS = "http://jabber.org/protocol/chatstates"


class OfflineStored:
    """What ``message/offline/stored`` handlers receive: the account, the stored stanza, and how many
    messages its offline queue holds now (this one included)."""

    __slots__ = ("bare", "count", "stanza")

    def __init__(self, bare: str, stanza: Element, count: int) -> None:
        self.bare = bare
        self.stanza = stanza
        self.count = count


class _KeyedLock:
    """A lock and the number of tasks holding or waiting for it."""

    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


def offline_eligible(stanza: Element) -> bool:
    if stanza.find("no-store", HINTS_NS) is not None:
        return False
    if stanza.find("store", HINTS_NS) is not None:
        return True
    # Chat states alone are not worth storing (XEP-0085 section 5.4, XEP-0160 section 3).
    return any(child.xmlns not in (CHATSTATES_NS, HINTS_NS) for child in stanza.elements())


def _xep82(stamp: float) -> str:
    """XEP-0082 DateTime in UTC."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))


class Offline(Feature):
    server_features = (OFFLINE_FEATURE,)

    def setup(self) -> None:
        self._locks: dict[str, _KeyedLock] = {}
        self.ctx.events.hook("message/offline/handle", self._store)
        self.ctx.events.hook("message/offline/broadcast", self.deliver)

    @contextlib.asynccontextmanager
    async def _queue(self, bare: str) -> AsyncIterator[None]:
        """Hold ``bare``'s offline queue: storing a message and emptying the queue never overlap.

        Without it, a message that found no available resource could be committed just after a
        logging-in session read the queue, and wait there until the next login. The lock lives
        apart from ``UserState`` (which may be evicted and rebuilt meanwhile) and is dropped when
        nobody holds or waits for it.
        """
        entry = self._locks.get(bare)
        if entry is None:
            entry = self._locks[bare] = _KeyedLock()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if not entry.users:
                del self._locks[bare]

    def _store(self, event: StanzaEvent) -> Any:
        if not offline_eligible(event.stanza):
            return True  # handled: dropped, as nothing in it is worth keeping
        return self._store_now(event.stanza, event.bare)

    async def _store_now(self, stanza: Element, bare: str) -> None:
        storage = self.ctx.storage
        async with self._queue(bare):
            # Decided before the wait: a resource may have become available since. It empties the
            # queue after setting itself available, so either it is seen here or it reads the row.
            targets = bare_targets(self.ctx.router.resources(bare))
            if targets:
                for session in targets:
                    session.send(stanza)
                return
            queued = await storage.offline_count(bare)
            if queued >= self.ctx.max_offline_messages:
                await self.ctx.router.bounce(stanza, "service-unavailable", "the recipient's offline storage is full")
                return
            stored = Element(stanza.name, stanza.xmlns, dict(stanza.attrs), list(stanza.children))
            stored.add("delay", DELAY_NS, {"from": bare.partition("@")[2], "stamp": _xep82(time.time())},
                       "Offline Storage")
            await storage.store_offline(bare, serialize(stored))
            # Counted under the queue lock: nothing else adds to or empties this queue meanwhile.
            self.ctx.events.fire("message/offline/stored", OfflineStored(bare, stanza, queued + 1))

    async def deliver(self, session: Any) -> None:
        """Send stored messages to a session that became available with priority >= 0."""
        target: Any = session
        bare = target.bare_jid
        router = self.ctx.router
        async with self._queue(bare):
            bound = router.session(bare, session.resource)
            if not session.available or bound is not session:
                return  # gone or unavailable meanwhile: the messages wait for the next one
            rows = await self.ctx.storage.take_offline(bare)
            if not rows:
                return
            for _, xml in rows:
                try:
                    stanza = parse_stored(xml)
                except ValueError:
                    continue
                stanza.attrs["to"] = target.full_jid
                target.send(stanza)
            # The session has the messages in its send queue (and, with XEP-0198, in its unacked
            # queue, which goes back to offline storage if the session dies unacknowledged).
            await self.ctx.storage.delete_offline(bare, rows[-1][0])
