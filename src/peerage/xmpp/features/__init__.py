"""XMPP features, one module per XEP, and the small interface they share with the core.

This package is in charge of the protocol extensions. Each module defines a ``Feature`` subclass that
declares the disco features it adds and the IQ payloads it answers; ``peerage.xmpp.core`` collects
them. An IQ handler receives an ``IqContext`` and returns the reply element (or ``None`` when it has
sent the reply itself).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from peerage.xmpp.stream import Element

if TYPE_CHECKING:
    from peerage.xmpp.core import XmppCore


@dataclass(slots=True)
class IqContext:
    """One IQ to be answered by the server.

    ``owner`` is the bare JID the IQ is processed for (the account addressed, or the sender's own
    account when the IQ has no ``to``); ``None`` when it is addressed to the domain itself.
    ``session`` is the sender's local client session, if the sender is a local client.
    ``is_owner`` says whether the sender is the account itself (RFC 6120 section 10.3.3).
    """

    iq: Element
    payload: Element
    owner: str | None
    domain: str
    sender: str
    session: Any
    is_owner: bool


IqHandler = Callable[[IqContext], Awaitable[Element | None]]


class Feature:
    """Base class of feature modules."""

    #: features shown in disco#info of the hosted domain
    server_features: tuple[str, ...] = ()
    #: features shown in disco#info of an account's bare JID
    account_features: tuple[str, ...] = ()

    def __init__(self, core: XmppCore) -> None:
        self.core = core

    def server_iq(self) -> dict[tuple[str, str], IqHandler]:
        """IQ handlers for stanzas addressed to the domain: (payload name, namespace) -> handler."""
        return {}

    def account_iq(self) -> dict[tuple[str, str], IqHandler]:
        """IQ handlers for stanzas addressed to an account's bare JID (or with no 'to')."""
        return {}

    def stream_features(self, session: Any) -> list[Element]:
        """Elements to add to <stream:features/> after authentication."""
        return []


def result(ctx: IqContext, payload: Element | None = None) -> Element:
    from peerage.xmpp.stream import iq_result

    return iq_result(ctx.iq, payload)
