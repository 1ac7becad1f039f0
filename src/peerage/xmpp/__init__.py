"""XMPP: the client service (c2s), routing, IM and XEP features; federation (s2s) plugs into the router."""
