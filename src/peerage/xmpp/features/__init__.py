"""XMPP features, one module per XEP, each hooking named events (``peerage.xmpp.events``).

This package is in charge of the protocol behaviour. A module defines a ``Feature`` subclass; the
service builds one instance of each with the shared ``XmppContext``, and the instance hooks the
events it serves in ``setup``: stanza events (``message/bare``, ``pre-presence/bare``, ...), IQ
payload events (``iq-get/bare/jabber:iq:roster:query``, through ``hook_iq``) and session events
(``resource-bind``, ``resource-unbind``). It also declares the disco features it adds and the
stream features it offers after authentication.

An IQ handler receives an ``IqContext`` and returns the reply element (or ``None`` when it has sent
the reply itself); it may be a coroutine function.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from peerage.xmpp.context import XmppContext
from peerage.xmpp.stanzas import IqContext
from peerage.xmpp.stream import Element, iq_result

__all__ = ["Feature", "IqContext", "hook_iq", "result"]


class Feature:
    """Base class of feature modules."""

    #: features shown in disco#info of the hosted domain
    server_features: tuple[str, ...] = ()
    #: features shown in disco#info of an account's bare JID
    account_features: tuple[str, ...] = ()
    #: (category, type) identities shown in disco#info of an account's bare JID
    account_identities: tuple[tuple[str, str], ...] = ()

    def __init__(self, ctx: XmppContext) -> None:
        self.ctx = ctx
        self.setup()

    def setup(self) -> None:
        """Hook the events this feature serves."""

    def stream_features(self, session: Any) -> list[Element]:
        """Elements to add to <stream:features/> after authentication."""
        return []

    def pre_auth_features(self, domain: str) -> list[Element]:
        """Elements to add to <stream:features/> before authentication (XEP-0077 <register/>)."""
        return []


def hook_iq(ctx: XmppContext, name: str, namespace: str, handler: Callable[[IqContext], Any], *,
            types: Iterable[str] = ("get", "set"), to: Iterable[str] = ("bare",), priority: int = 0) -> None:
    """Hook ``handler`` for IQs of ``types`` whose payload is ``<name xmlns=namespace>``.

    ``to`` says where the IQ is addressed: ``bare`` (an account, or the sender's own with no ``to``)
    and/or ``host`` (the domain itself).
    """
    for itype in types:
        for to_type in to:
            ctx.events.hook(f"iq-{itype}/{to_type}/{namespace}:{name}", handler, priority)


def result(ctx: IqContext, payload: Element | None = None) -> Element:
    return iq_result(ctx.iq, payload)
