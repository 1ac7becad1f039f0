"""In-process notification of mailbox changes, one channel per mailbox.

Whoever commits a change (delivery, APPEND, STORE, EXPUNGE, MOVE) publishes the mailbox id; every
IMAP session that has the mailbox selected holds a ``Watch`` whose event is then set, so an IDLE
session reports new mail at once. The event only says "look again"; the session reads what changed
from the database by MODSEQ, so a missed or merged wake-up never loses an update.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Watch:
    """A subscription to one mailbox; ``event`` is set whenever the mailbox changes."""

    def __init__(self, notifier: MailboxNotifier, mailbox_id: int) -> None:
        self.notifier = notifier
        self.mailbox_id = mailbox_id
        self.event = asyncio.Event()

    def close(self) -> None:
        self.notifier._remove(self)

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MailboxNotifier:
    """Fans out "mailbox changed" to the sessions watching it."""

    def __init__(self) -> None:
        self._watches: dict[int, set[Watch]] = {}
        self._listeners: list[Callable[[int], None]] = []

    def watch(self, mailbox_id: int) -> Watch:
        watch = Watch(self, mailbox_id)
        self._watches.setdefault(mailbox_id, set()).add(watch)
        return watch

    def add_listener(self, listener: Callable[[int], None]) -> None:
        """Call ``listener(mailbox_id)`` on every change (for other in-process consumers)."""
        self._listeners.append(listener)

    def publish(self, mailbox_id: int) -> None:
        for watch in self._watches.get(mailbox_id, ()):
            watch.event.set()
        for listener in list(self._listeners):
            listener(mailbox_id)

    def _remove(self, watch: Watch) -> None:
        watches = self._watches.get(watch.mailbox_id)
        if watches is not None:
            watches.discard(watch)
            if not watches:
                del self._watches[watch.mailbox_id]
