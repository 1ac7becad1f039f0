"""XEP-0030 Service Discovery: disco#info and disco#items of hosted domains and accounts.

This module is in charge of answering disco queries with the identities and features every other
feature module declares, and of two registries other modules add to:

- **items providers** (``Disco.add_items_provider``): what the domain's disco#items lists (the
  conference and upload services, XEP-0030 section 4). A provider is a callable ``(domain) ->
  iterable of DiscoItem``; providers are called in registration order and their items concatenated.
- **info form providers** (``Disco.add_info_form_provider``): XEP-0128 extended-information forms in
  the domain's disco#info, such as the XEP-0157 contact addresses this module adds itself.

Other modules find the registry with ``disco_of(ctx)`` (``ctx.feature(Disco)``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from peerage.xmpp.features import Feature, IqContext, hook_iq, result
from peerage.xmpp.stream import Element, error_reply

DISCO_INFO_NS = "http://jabber.org/protocol/disco#info"
DISCO_ITEMS_NS = "http://jabber.org/protocol/disco#items"
DATA_NS = "jabber:x:data"
SERVERINFO_NS = "http://jabber.org/network/serverinfo"
#: XEP-0157 section 5: the fields of the serverinfo form, in the order the XEP lists them.
CONTACT_FIELDS = ("abuse-addresses", "admin-addresses", "feedback-addresses", "sales-addresses",
                  "security-addresses", "status-addresses", "support-addresses")


class DiscoItem(NamedTuple):
    jid: str
    name: str | None = None
    node: str | None = None


ItemsProvider = Callable[[str], Iterable[DiscoItem]]
InfoFormProvider = Callable[[str], "Element | None"]


def data_form(form_type: str, fields: Iterable[tuple[str, Iterable[str]]]) -> Element:
    """A XEP-0004 result form with a hidden FORM_TYPE (XEP-0068) and ``fields`` of (var, values)."""
    form = Element("x", DATA_NS, {"type": "result"})
    hidden = form.add("field", attrs={"var": "FORM_TYPE", "type": "hidden"})
    hidden.add("value", text=form_type)
    for var, values in fields:
        field = form.add("field", attrs={"var": var})
        for value in values:
            field.add("value", text=value)
    return form


class Disco(Feature):
    server_features = (DISCO_INFO_NS, DISCO_ITEMS_NS)
    account_features = (DISCO_INFO_NS, DISCO_ITEMS_NS)

    def setup(self) -> None:
        self.items_providers: list[tuple[str, ItemsProvider]] = []
        self.info_form_providers: list[tuple[str, InfoFormProvider]] = []
        self.add_info_form_provider("contact-addresses", self._contact_form)
        hook_iq(self.ctx, "query", DISCO_INFO_NS, self._server_info, to=("host",))
        hook_iq(self.ctx, "query", DISCO_INFO_NS, self._account_info)
        hook_iq(self.ctx, "query", DISCO_ITEMS_NS, self._items, to=("bare", "host"))

    # --- registries -----------------------------------------------------------------------------
    def add_items_provider(self, name: str, provider: ItemsProvider) -> None:
        """List ``provider(domain)``'s items in the domain's disco#items; ``name`` again replaces it."""
        self.items_providers = [(n, p) for n, p in self.items_providers if n != name]
        self.items_providers.append((name, provider))

    def add_info_form_provider(self, name: str, provider: InfoFormProvider) -> None:
        """Add ``provider(domain)``'s form (or nothing, for None) to the domain's disco#info."""
        self.info_form_providers = [(n, p) for n, p in self.info_form_providers if n != name]
        self.info_form_providers.append((name, provider))

    def domain_items(self, domain: str) -> list[DiscoItem]:
        return [item for _, provider in self.items_providers for item in provider(domain)]

    # --- answers --------------------------------------------------------------------------------
    def contact_addresses(self, domain: str) -> dict[str, list[str]]:
        """XEP-0157 field -> addresses of ``domain``, from ``[xmpp.contact]`` as configured now."""
        host = self.ctx.host
        if host is None:
            return {}
        contact = host.config.xmpp.contact
        return {var: [address.replace("{domain}", domain) for address in getattr(contact, var.split("-")[0])]
                for var in CONTACT_FIELDS}

    def _contact_form(self, domain: str) -> Element | None:
        addresses = self.contact_addresses(domain)
        if not any(addresses.values()):
            return None
        return data_form(SERVERINFO_NS, ((var, addresses[var]) for var in CONTACT_FIELDS if addresses[var]))

    def server_info_element(self, node: str | None = None, domain: str | None = None) -> Element:
        query = Element("query", DISCO_INFO_NS)
        if node:
            query.attrs["node"] = node
        query.add("identity", attrs={"category": "server", "type": "im", "name": "peerage"})
        for feature in sorted({f for feat in self.ctx.features for f in feat.server_features}):
            query.add("feature", attrs={"var": feature})
        if domain is not None:
            for _, provider in self.info_form_providers:
                form = provider(domain)
                if form is not None:
                    query.children.append(form)
        return query

    def _server_info(self, ctx: IqContext) -> Element | None:
        if ctx.iq.attrs.get("type") != "get":
            return error_reply(ctx.iq, "bad-request")
        node = ctx.payload.attrs.get("node")
        # Extended forms describe the domain, not a caps node's feature set (XEP-0115 section 6.2).
        return result(ctx, self.server_info_element(node, None if node else ctx.domain))

    async def _account_info(self, ctx: IqContext) -> Element | None:
        if ctx.iq.attrs.get("type") != "get":
            return error_reply(ctx.iq, "bad-request")
        if not ctx.is_owner:
            # RFC 6121 / XEP-0030 section 3.1: only reveal the account to those with a subscription.
            state = ctx.user or await self.ctx.users.load(ctx.owner)  # type: ignore[arg-type]
            sender_bare = ctx.sender.partition("/")[0]
            item = state.roster.get(sender_bare)
            if item is None or item.subscription not in ("from", "both"):
                return error_reply(ctx.iq, "service-unavailable")
        query = Element("query", DISCO_INFO_NS)
        query.add("identity", attrs={"category": "account", "type": "registered"})
        for category, itype in sorted({i for feat in self.ctx.features for i in feat.account_identities}):
            query.add("identity", attrs={"category": category, "type": itype})
        for feature in sorted({f for feat in self.ctx.features for f in feat.account_features}):
            query.add("feature", attrs={"var": feature})
        return result(ctx, query)

    def _items(self, ctx: IqContext) -> Element | None:
        if ctx.iq.attrs.get("type") != "get":
            return error_reply(ctx.iq, "bad-request")
        query = Element("query", DISCO_ITEMS_NS)
        if ctx.owner is None and not ctx.payload.attrs.get("node"):
            for item in self.domain_items(ctx.domain):
                attrs = {"jid": item.jid}
                if item.name:
                    attrs["name"] = item.name
                if item.node:
                    attrs["node"] = item.node
                query.add("item", attrs=attrs)
        return result(ctx, query)


def disco_of(ctx: Any) -> Disco:
    """The Disco feature of an ``XmppContext``: where other modules register items and forms."""
    disco = ctx.feature(Disco)
    assert disco is not None, "Disco is loaded before the modules that register with it"
    return disco
