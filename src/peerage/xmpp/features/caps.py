"""XEP-0115 Entity Capabilities: the server's own caps hash in stream features.

This module is in charge of the server's verification string (XEP-0115 section 5) advertised in
``<stream:features/>``. Clients' ``<c/>`` elements in presence pass through untouched: presence
broadcast copies the stanza's children as they are.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from peerage.xmpp.features import Feature
from peerage.xmpp.stream import Element

CAPS_NS = "http://jabber.org/protocol/caps"
CAPS_NODE = "https://peerage.invalid/caps"


class Caps(Feature):
    server_features = (CAPS_NS,)

    def verification_string(self) -> str:
        features = sorted({f for feat in self.ctx.features for f in feat.server_features})
        text = "server/im//peerage<" + "".join(f + "<" for f in features)
        return base64.b64encode(hashlib.sha1(text.encode()).digest()).decode()

    def stream_features(self, session: Any) -> list[Element]:
        return [Element("c", CAPS_NS, {"hash": "sha-1", "node": CAPS_NODE, "ver": self.verification_string()})]
