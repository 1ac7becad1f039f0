"""XEP-0160 Best Practices for Handling Offline Messages: the disco feature.

Storage happens in the core (``XmppCore._store_offline``): a message is written and committed before
the sender's stanza counts as handled, and delivered when the user next sends initial presence with
a non-negative priority.
"""

from __future__ import annotations

from peerage.xmpp.features import Feature

OFFLINE_FEATURE = "msgoffline"


class Offline(Feature):
    server_features = (OFFLINE_FEATURE,)
