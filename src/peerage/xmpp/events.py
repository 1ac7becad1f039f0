"""Named events with prioritised handlers, in the shape of Prosody's ``util/events.lua``.

This module is in charge of the one extension point of the XMPP service. A feature module calls
``events.hook(name, handler, priority)``; the stanza router (``peerage.xmpp.stanzas``) and the
features themselves call ``events.fire(name, event)``. Handlers run from the highest priority down
(equal priorities in the order they were hooked); the first handler that returns something other
than ``None`` ends the chain, and ``fire`` returns that value.

A handler may return an awaitable: that ends the chain like any other result, and the caller awaits
it. This keeps the rule that delivery to an online session is synchronous (the handler sends and
returns ``HANDLED``) while anything that touches storage is awaited before the stanza counts as
handled (XEP-0198 ``<a/>``, offline storage).

There is no I/O and no asyncio here; ``fire`` is on the hot path, so the handler list of each name
is kept as a ready-sorted tuple.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Handler = Callable[[Any], Any]

#: What a handler returns when it took care of the event synchronously.
HANDLED = True


class Events:
    """A table of event names to prioritised handlers."""

    __slots__ = ("_entries", "handlers")

    def __init__(self) -> None:
        # name -> [(priority, order, handler)], and the derived tuple of handlers fire() walks.
        self._entries: dict[str, list[tuple[int, int, Handler]]] = {}
        #: name -> its handlers in calling order. Read-only for others; the dict itself is never
        #: replaced, so a hot path may keep a reference to it and walk it as ``fire`` does.
        self.handlers: dict[str, tuple[Handler, ...]] = {}

    def hook(self, name: str, handler: Handler, priority: int = 0) -> None:
        """Call ``handler(event)`` for ``fire(name, event)``; higher priorities run first."""
        entries = self._entries.setdefault(name, [])
        # Negated order keeps equal priorities in hook order once sorted descending.
        entries.append((priority, -len(entries), handler))
        entries.sort(key=lambda entry: (entry[0], entry[1]), reverse=True)
        self.handlers[name] = tuple(entry[2] for entry in entries)

    def unhook(self, name: str, handler: Handler) -> None:
        entries = [entry for entry in self._entries.get(name, []) if entry[2] is not handler]
        if entries:
            self._entries[name] = entries
            self.handlers[name] = tuple(entry[2] for entry in entries)
        else:
            self._entries.pop(name, None)
            self.handlers.pop(name, None)

    def has(self, name: str) -> bool:
        return name in self.handlers

    def fire(self, name: str, event: Any) -> Any:
        """Run the handlers of ``name`` until one returns a result; return it (``None`` if none did)."""
        for handler in self.handlers.get(name, ()):
            result = handler(event)
            if result is not None:
                return result
        return None

    def names(self) -> list[str]:
        return sorted(self.handlers)
