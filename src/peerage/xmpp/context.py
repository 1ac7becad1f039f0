"""What every XMPP feature module is given: the event table, the router and the shared state.

This module is in charge of one small object, ``XmppContext``, built once by the service and handed
to each feature module and to the stanza router. It holds references only; it decides nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from peerage.xmpp.events import Events
from peerage.xmpp.router import Router
from peerage.xmpp.storage import XmppStorage
from peerage.xmpp.users import Users


@dataclass(eq=False)
class XmppContext:
    events: Events
    router: Router
    storage: XmppStorage
    users: Users
    #: The identity layer's account service (``exists``, ``scram``, ``verify_password``).
    accounts: Any
    archive_enabled: bool = True
    max_offline_messages: int = 5000
    #: Runs a coroutine in the background, tracked so that shutdown can wait for it.
    spawn: Callable[[Coroutine[Any, Any, Any]], Any] | None = None
    #: Feature modules loaded, in load order (disco and caps list what they declare).
    features: list[Any] = field(default_factory=list)
    #: ids of stanzas being re-delivered (XEP-0198 unacknowledged): already archived once.
    redelivering: set[int] = field(default_factory=set)
    #: The Host (its config, TLS, ...), for features that need a setting beyond [xmpp]; None in unit tests.
    host: Any = None

    def feature(self, cls: type) -> Any:
        for feature in self.features:
            if isinstance(feature, cls):
                return feature
        return None
