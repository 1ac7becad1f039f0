"""XEP-0163 Personal Eventing Protocol over the XEP-0060 subset it needs, with XEP-0223 persistence.

This module is in charge of each account's PEP service (its bare JID): nodes created on first
publish (``publish-options`` checked against an existing node's configuration, XEP-0060 section
7.1.5), item ids, ``max_items`` (a number or ``max``), access models ``presence`` (the default),
``open`` and ``whitelist`` (the owner alone), retrieving, retracting and deleting, node
configuration, and notifications (XEP-0163 section 4):

- to the owner's own resources and to contacts with a presence subscription to the owner, whose
  XEP-0115 caps list ``<node>+notify`` (filtered notifications, XEP-0163 section 4.3);
- the features behind a caps hash are learnt with one disco#info query to the first resource that
  shows it, from the owner's bare JID, and cached for every account (``MAX_CAPS_CACHE``);
- the last item of each node a resource is interested in goes to it when its available presence
  reaches the owner (XEP-0163 section 4.3.2, "last published item on presence").

Items are stored as serialized XML in ``xmpp_pep_items``; node configurations in ``xmpp_pep_nodes``.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable
from typing import Any

from sqlalchemy import and_, delete, func, insert, select, update

from peerage.xmpp.features import Feature, IqContext, hook_iq, result
from peerage.xmpp.jid import JidError, split_jid
from peerage.xmpp.stanzas import StanzaEvent
from peerage.xmpp.stream import Element, error_reply, parse_stored, serialize
from peerage.xmpp.tables import xmpp_pep_items, xmpp_pep_nodes

log = logging.getLogger(__name__)

PUBSUB_NS = "http://jabber.org/protocol/pubsub"
PUBSUB_OWNER_NS = "http://jabber.org/protocol/pubsub#owner"
PUBSUB_EVENT_NS = "http://jabber.org/protocol/pubsub#event"
PUBSUB_ERRORS_NS = "http://jabber.org/protocol/pubsub#errors"
DATA_NS = "jabber:x:data"
CAPS_NS = "http://jabber.org/protocol/caps"
DISCO_INFO_NS = "http://jabber.org/protocol/disco#info"
DISCO_ITEMS_NS = "http://jabber.org/protocol/disco#items"
PUBLISH_OPTIONS = PUBSUB_NS + "#publish-options"
NODE_CONFIG = PUBSUB_NS + "#node_config"

#: Largest item payload, in bytes of XML. ejabberd's mod_pubsub ``max_payload_size`` is 250000;
#: Prosody bounds items by the stanza size only (ours is 256 KiB), so this stays just under it.
MAX_ITEM_BYTES = 250_000
#: Items kept per node, and what ``max_items=max`` means: Prosody's mod_pep ``pep_max_items`` (256).
MAX_ITEMS_PER_NODE = 256
#: Nodes per account. Prosody and ejabberd leave PEP nodes unbounded; a client uses a dozen or so
#: (OMEMO 2 needs two, legacy OMEMO one per device plus one), so 256, as for items, is plenty.
MAX_NODES_PER_ACCOUNT = 256
#: Caps hashes whose features are remembered (LRU), shared by all accounts (Prosody's mod_pep
#: keeps a similar hash -> features cache).
MAX_CAPS_CACHE = 4096
#: Resources whose caps an account's PEP service tracks (contacts' and its own).
MAX_TRACKED_RESOURCES = 4096
ACCESS_MODELS = ("presence", "open", "roster", "whitelist")
#: Bare JIDs on one node's whitelist, and roster groups a roster-model node allows: XEP-0060 sets no
#: bound; a person's own contacts are the audience, so the roster's own bound (ejabberd's
#: max_roster_size suggestion of a few thousand) is ample.
MAX_WHITELIST = 1000
MAX_ROSTER_GROUPS = 100
DEFAULT_MAX_ITEMS = 1  # Prosody's mod_pep default


class PubsubError(Exception):
    def __init__(self, condition: str, pubsub_condition: str | None = None, text: str = "") -> None:
        super().__init__(condition)
        self.condition = condition
        self.pubsub_condition = pubsub_condition
        self.text = text

    def reply(self, iq: Element) -> Element:
        reply = error_reply(iq, self.condition, self.text)
        if self.pubsub_condition:
            error = reply.find("error")
            assert error is not None
            error.add(self.pubsub_condition, PUBSUB_ERRORS_NS)
        return reply


class NodeConfig:
    __slots__ = ("access_model", "max_items", "roster_groups", "whitelist")

    def __init__(self, access_model: str = "presence", max_items: int = DEFAULT_MAX_ITEMS,
                 roster_groups: tuple[str, ...] = (), whitelist: tuple[str, ...] = ()) -> None:
        self.access_model = access_model
        self.max_items = max_items
        #: pubsub#roster_groups_allowed of the roster access model (XEP-0060 section 4.5)
        self.roster_groups = roster_groups
        #: bare JIDs with the member affiliation, who may read a whitelist node (section 8.9)
        self.whitelist = whitelist

    @classmethod
    def from_row(cls, row: Any) -> NodeConfig:
        return cls(row.access_model, row.max_items, _lines(row.roster_groups), _lines(row.whitelist))

    def row(self) -> dict[str, Any]:
        return {"access_model": self.access_model, "max_items": self.max_items,
                "roster_groups": "\n".join(self.roster_groups) or None, "whitelist": "\n".join(self.whitelist) or None}


def _lines(text: str | None) -> tuple[str, ...]:
    return tuple(line for line in (text or "").split("\n") if line)


def _form_values(form: Element | None) -> dict[str, str]:
    values: dict[str, str] = {}
    if form is None:
        return values
    for field in form.find_all("field", DATA_NS):
        var = field.attrs.get("var")
        if var and var != "FORM_TYPE":
            # Several values (list-multi, e.g. roster_groups_allowed) are kept one a line.
            values[var] = "\n".join(value.text for value in field.find_all("value", DATA_NS))
    return values


def _max_items(value: str) -> int:
    if value == "max":
        return MAX_ITEMS_PER_NODE
    try:
        number = int(value)
    except ValueError:
        raise PubsubError("not-acceptable", "invalid-options", "pubsub#max_items must be a number or max") from None
    if number < 1 or number > MAX_ITEMS_PER_NODE:
        raise PubsubError("not-acceptable", "invalid-options", f"pubsub#max_items is at most {MAX_ITEMS_PER_NODE}")
    return number


def _true(value: str) -> bool:
    return value in ("1", "true")


def _apply_options(config: NodeConfig, values: dict[str, str], *, error: PubsubError) -> None:
    """Set ``config`` from form ``values``; ``error`` for a value this service cannot have."""
    for var, value in values.items():
        if var == "pubsub#access_model":
            if value not in ACCESS_MODELS:
                raise error
            config.access_model = value
        elif var == "pubsub#max_items":
            config.max_items = _max_items(value)
        elif var == "pubsub#roster_groups_allowed":
            groups = _lines(value)
            if len(groups) > MAX_ROSTER_GROUPS:
                raise PubsubError("not-acceptable", "invalid-options",
                                  f"at most {MAX_ROSTER_GROUPS} roster groups may be allowed")
            config.roster_groups = groups
        elif var == "pubsub#persist_items":
            if not _true(value):
                raise error  # items are always persistent (XEP-0223)
        elif var == "pubsub#send_last_published_item":
            # XEP-0402 asks for "never" on bookmarks (a whitelist node: only the owner reads it);
            # accepted, but the last item still goes to the owner's resources on presence.
            if value not in ("on_sub_and_presence", "on_sub", "never"):
                raise error
        elif var in ("pubsub#deliver_notifications", "pubsub#deliver_payloads", "pubsub#notify_retract",
                     "pubsub#notify_delete", "pubsub#presence_based_delivery"):
            if not _true(value):
                raise error
        elif var in ("pubsub#title", "pubsub#type"):
            continue  # pubsub#type: XEP-0472 clients name the payload kind of a social feed node
        else:
            raise error


def _matches(config: NodeConfig, values: dict[str, str]) -> bool:
    wanted = NodeConfig(config.access_model, config.max_items, config.roster_groups, config.whitelist)
    try:
        _apply_options(wanted, values, error=PubsubError("conflict", "precondition-not-met"))
    except PubsubError:
        return False
    return (wanted.access_model == config.access_model and wanted.max_items == config.max_items
            and set(wanted.roster_groups) == set(config.roster_groups))


def _config_form(node: str, config: NodeConfig) -> Element:
    form = Element("x", DATA_NS, {"type": "form"})
    form_type = form.add("field", attrs={"var": "FORM_TYPE", "type": "hidden"})
    form_type.add("value", text=NODE_CONFIG)
    access = form.add("field", attrs={"var": "pubsub#access_model", "type": "list-single"})
    access.add("value", text=config.access_model)
    for model in ACCESS_MODELS:
        access.add("option").add("value", text=model)
    groups = form.add("field", attrs={"var": "pubsub#roster_groups_allowed", "type": "list-multi"})
    for group in config.roster_groups:
        groups.add("value", text=group)
    max_items = form.add("field", attrs={"var": "pubsub#max_items", "type": "text-single"})
    max_items.add("value", text=str(config.max_items))
    persist = form.add("field", attrs={"var": "pubsub#persist_items", "type": "boolean"})
    persist.add("value", text="true")
    send_last = form.add("field", attrs={"var": "pubsub#send_last_published_item", "type": "list-single"})
    send_last.add("value", text="on_sub_and_presence")
    return form


def caps_of(presence: Element) -> str | None:
    """The XEP-0115 ``node#ver`` a presence shows, if any."""
    caps = presence.find("c", CAPS_NS)
    if caps is None or not caps.attrs.get("ver"):
        return None
    return f"{caps.attrs.get('node', '')}#{caps.attrs['ver']}"


_HASHES = {"sha-1": "sha1", "sha-224": "sha224", "sha-256": "sha256", "sha-384": "sha384", "sha-512": "sha512"}


def caps_hash(query: Element, hash_name: str) -> str | None:
    """The XEP-0115 section 5.1 verification string of a disco#info result, hashed; None if unknown."""
    algorithm = _HASHES.get(hash_name)
    if algorithm is None:
        return None
    identities = sorted(
        "/".join((i.attrs.get("category", ""), i.attrs.get("type", ""), i.attrs.get("xml:lang", ""),
                  i.attrs.get("name", "")))
        for i in query.find_all("identity", DISCO_INFO_NS))
    features = sorted(f.attrs.get("var", "") for f in query.find_all("feature", DISCO_INFO_NS))
    text = "".join(i + "<" for i in identities) + "".join(f + "<" for f in features)
    forms = []
    for form in query.find_all("x", DATA_NS):
        fields = {}
        form_type = None
        for field in form.find_all("field", DATA_NS):
            values = sorted(v.text for v in field.find_all("value", DATA_NS))
            if field.attrs.get("var") == "FORM_TYPE":
                form_type = values[0] if values else ""
            else:
                fields[field.attrs.get("var", "")] = values
        if form_type is None:
            continue
        forms.append((form_type, "".join(var + "<" + "".join(v + "<" for v in values)
                                         for var, values in sorted(fields.items()))))
    for form_type, body in sorted(forms):
        text += form_type + "<" + body
    return base64.b64encode(hashlib.new(algorithm, text.encode()).digest()).decode()


def _bare(jid: str) -> str:
    return jid.partition("/")[0]


class Pep(Feature):
    account_features = (
        PUBSUB_NS, PUBSUB_NS + "#publish", PUBSUB_NS + "#publish-options", PUBSUB_NS + "#auto-create",
        PUBSUB_NS + "#retrieve-items", PUBSUB_NS + "#retract-items", PUBSUB_NS + "#delete-nodes",
        PUBSUB_NS + "#delete-items", PUBSUB_NS + "#persistent-items", PUBSUB_NS + "#item-ids",
        PUBSUB_NS + "#last-published", PUBSUB_NS + "#filtered-notifications", PUBSUB_NS + "#config-node",
        PUBSUB_NS + "#access-presence", PUBSUB_NS + "#access-open", PUBSUB_NS + "#access-whitelist",
        PUBSUB_NS + "#access-roster", PUBSUB_NS + "#modify-affiliations", PUBSUB_NS + "#retrieve-affiliations",
        PUBSUB_NS + "#presence-notifications", PUBSUB_NS + "#auto-subscribe",
    )
    account_identities = (("pubsub", "pep"),)

    def setup(self) -> None:
        hook_iq(self.ctx, "pubsub", PUBSUB_NS, self._pubsub)
        hook_iq(self.ctx, "pubsub", PUBSUB_OWNER_NS, self._pubsub_owner)
        # XEP-0060 section 5.2: an account's disco#items lists the nodes the requester may read.
        hook_iq(self.ctx, "query", DISCO_ITEMS_NS, self._disco_items, types=("get",), priority=10)
        events = self.ctx.events
        events.hook("pre-presence/bare", self._own_presence, 20)
        events.hook("presence/bare", self._contact_presence, 20)
        events.hook("iq/bare", self._iq_answer, 20)
        events.hook("resource-unbind", self._unbound, 20)
        #: caps node#ver -> features (LRU)
        self.caps: OrderedDict[str, frozenset[str]] = OrderedDict()
        #: owner -> {full JID -> caps node#ver} of available resources (own and contacts')
        self.resources: dict[str, dict[str, str]] = {}
        #: disco#info query id -> (node#ver, owner, full JID that was asked, hash name)
        self.pending: dict[str, tuple[str, str, str, str]] = {}
        self._ids = itertools.count(1)
        #: peerage.cluster: told of every notification sent from here, so the other nodes notify
        #: the resources whose presence they saw (interest is learnt where a presence is routed)
        self.on_notify: Any = None

    @property
    def engine(self) -> Any:
        return self.ctx.storage.engine

    # ============================================================================================
    # IQ: pubsub and pubsub#owner
    # ============================================================================================
    async def _pubsub(self, ctx: IqContext) -> Element | None:
        try:
            return await self._pubsub_request(ctx)
        except PubsubError as exc:
            return exc.reply(ctx.iq)

    async def _pubsub_owner(self, ctx: IqContext) -> Element | None:
        try:
            return await self._owner_request(ctx)
        except PubsubError as exc:
            return exc.reply(ctx.iq)

    async def _pubsub_request(self, ctx: IqContext) -> Element | None:
        owner = ctx.owner
        assert owner is not None
        itype = ctx.iq.attrs.get("type")
        actions = list(ctx.payload.elements())
        first = actions[0] if actions else None
        if first is None:
            raise PubsubError("bad-request")
        if itype == "set" and first.name == "publish":
            if not ctx.is_owner:
                raise PubsubError("forbidden")
            options = ctx.payload.find("publish-options", PUBSUB_NS)
            form = options.find("x", DATA_NS) if options is not None else None
            return await self._publish(ctx, owner, first, _form_values(form))
        if itype == "set" and first.name == "retract":
            if not ctx.is_owner:
                raise PubsubError("forbidden")
            return await self._retract(ctx, owner, first)
        if itype == "get" and first.name == "items":
            return await self._items(ctx, owner, first)
        if itype == "set" and first.name == "subscribe":
            # XEP-0163 section 4: interest is expressed through caps; an explicit subscription is
            # answered as subscribed, and notifications follow the +notify rule.
            node = first.attrs.get("node", "")
            await self._check_access(ctx, owner, node, must_exist=False)
            pubsub = Element("pubsub", PUBSUB_NS)
            pubsub.add("subscription", attrs={"node": node, "jid": first.attrs.get("jid", ctx.sender),
                                              "subscription": "subscribed"})
            return result(ctx, pubsub)
        if itype == "set" and first.name == "unsubscribe":
            return result(ctx)
        if itype == "set" and first.name == "create":
            if not ctx.is_owner:
                raise PubsubError("forbidden")
            new_node = first.attrs.get("node")
            if not new_node:
                raise PubsubError("not-acceptable", "nodeid-required")
            configure = ctx.payload.find("configure", PUBSUB_NS)
            config = NodeConfig()
            form = configure.find("x", DATA_NS) if configure is not None else None
            _apply_options(config, _form_values(form), error=PubsubError("not-acceptable", "invalid-options"))
            if await self._node(owner, new_node) is not None:
                raise PubsubError("conflict")
            await self._create(owner, new_node, config)
            return result(ctx)
        raise PubsubError("feature-not-implemented", "unsupported")

    async def _owner_request(self, ctx: IqContext) -> Element | None:
        owner = ctx.owner
        assert owner is not None
        if not ctx.is_owner:
            raise PubsubError("forbidden")
        itype = ctx.iq.attrs.get("type")
        first = next(ctx.payload.elements(), None)
        if first is None or not first.attrs.get("node"):
            raise PubsubError("bad-request", "nodeid-required")
        node = first.attrs["node"]
        config = await self._node(owner, node)
        if config is None:
            raise PubsubError("item-not-found")
        if first.name == "affiliations":
            return await self._affiliations(ctx, owner, node, config, first, itype)
        if first.name == "configure" and itype == "get":
            pubsub = Element("pubsub", PUBSUB_OWNER_NS)
            pubsub.add("configure", attrs={"node": node}).children.append(_config_form(node, config))
            return result(ctx, pubsub)
        if first.name == "configure" and itype == "set":
            form = first.find("x", DATA_NS)
            if form is not None and form.attrs.get("type") == "cancel":
                return result(ctx)
            _apply_options(config, _form_values(form), error=PubsubError("not-acceptable", "invalid-options"))
            async with self.engine.begin() as conn:
                await conn.execute(update(xmpp_pep_nodes).where(
                    and_(xmpp_pep_nodes.c.owner == owner, xmpp_pep_nodes.c.node == node)
                ).values(**config.row()))
                await self._trim(conn, owner, node, config.max_items)
            return result(ctx)
        if first.name == "delete" and itype == "set":
            async with self.engine.begin() as conn:
                await conn.execute(delete(xmpp_pep_items).where(
                    and_(xmpp_pep_items.c.owner == owner, xmpp_pep_items.c.node == node)))
                await conn.execute(delete(xmpp_pep_nodes).where(
                    and_(xmpp_pep_nodes.c.owner == owner, xmpp_pep_nodes.c.node == node)))
            event = Element("event", PUBSUB_EVENT_NS)
            event.add("delete", attrs={"node": node})
            self._notify(owner, node, config, event)
            return result(ctx)
        if first.name == "purge" and itype == "set":
            async with self.engine.begin() as conn:
                await conn.execute(delete(xmpp_pep_items).where(
                    and_(xmpp_pep_items.c.owner == owner, xmpp_pep_items.c.node == node)))
            event = Element("event", PUBSUB_EVENT_NS)
            event.add("purge", attrs={"node": node})
            self._notify(owner, node, config, event)
            return result(ctx)
        raise PubsubError("feature-not-implemented", "unsupported")

    async def _affiliations(self, ctx: IqContext, owner: str, node: str, config: NodeConfig, request: Element,
                            itype: str | None) -> Element:
        """XEP-0060 sections 8.9.1-8.9.2: the owner lists and changes who is a member (the whitelist)."""
        if itype == "get":
            pubsub = Element("pubsub", PUBSUB_OWNER_NS)
            listing = pubsub.add("affiliations", attrs={"node": node})
            listing.add("affiliation", attrs={"jid": owner, "affiliation": "owner"})
            for jid in config.whitelist:
                listing.add("affiliation", attrs={"jid": jid, "affiliation": "member"})
            return result(ctx, pubsub)
        whitelist = list(config.whitelist)
        for change in request.find_all("affiliation", PUBSUB_OWNER_NS):
            try:
                local, domain, _ = split_jid(change.attrs.get("jid", ""))
            except JidError:
                raise PubsubError("bad-request", None, "not a JID") from None
            jid = f"{local}@{domain}" if local else domain
            affiliation = change.attrs.get("affiliation")
            if jid == owner:
                raise PubsubError("not-acceptable", None, "the owner's affiliation cannot change")
            if affiliation in ("member", "publisher"):
                if jid not in whitelist:
                    whitelist.append(jid)
            elif affiliation in ("none", "outcast"):
                if jid in whitelist:
                    whitelist.remove(jid)
            else:
                raise PubsubError("bad-request", None, "affiliation must be member or none")
        if len(whitelist) > MAX_WHITELIST:
            raise PubsubError("not-acceptable", None, f"a node's whitelist has at most {MAX_WHITELIST} members")
        config.whitelist = tuple(whitelist)
        async with self.engine.begin() as conn:
            await conn.execute(update(xmpp_pep_nodes).where(
                and_(xmpp_pep_nodes.c.owner == owner, xmpp_pep_nodes.c.node == node)).values(**config.row()))
        return result(ctx)

    def _disco_items(self, ctx: IqContext) -> Awaitable[Element] | None:
        # Decided synchronously: an awaitable ends the event chain, so None must come before any.
        owner = ctx.owner
        if owner is None or ctx.payload.attrs.get("node"):
            return None
        return self._list_nodes(ctx, owner)

    async def _list_nodes(self, ctx: IqContext, owner: str) -> Element:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(xmpp_pep_nodes).where(
                xmpp_pep_nodes.c.owner == owner).order_by(xmpp_pep_nodes.c.node))).all()
        if not ctx.is_owner:
            await self.ctx.users.load(owner)
        query = Element("query", DISCO_ITEMS_NS)
        for row in rows:
            if ctx.is_owner or self._may_receive(owner, _bare(ctx.sender), NodeConfig.from_row(row)):
                query.add("item", attrs={"jid": owner, "node": row.node})
        return result(ctx, query)

    # --- publish, retract, items ----------------------------------------------------------------
    async def _publish(self, ctx: IqContext, owner: str, publish: Element, options: dict[str, str]) -> Element:
        node = publish.attrs.get("node")
        if not node:
            raise PubsubError("bad-request", "nodeid-required")
        items = publish.find_all("item", PUBSUB_NS)
        if len(items) > 1:
            raise PubsubError("bad-request", "invalid-payload", "one item per publish")
        item = items[0] if items else None
        payloads = list(item.elements()) if item is not None else []
        if len(payloads) != 1:
            raise PubsubError("bad-request", "invalid-payload" if payloads else "item-required")
        payload = payloads[0]
        assert item is not None
        item_id = await self.store_item(owner, node, item.attrs.get("id") or uuid.uuid4().hex, payload, options)
        pubsub = Element("pubsub", PUBSUB_NS)
        pubsub.add("publish", attrs={"node": node}).add("item", attrs={"id": item_id})
        return result(ctx, pubsub)

    async def store_item(self, owner: str, node: str, item_id: str, payload: Element,
                         options: dict[str, str] | None = None) -> str:
        """Publish ``payload`` as ``item_id`` on ``owner``'s ``node`` (created with ``options`` if new),
        notify, and fire ``pep-item-published`` (owner, node, item id, payload); raises PubsubError.
        A retraction (by the owner's IQ or ``retract_items``) fires ``pep-item-retracted`` (owner,
        node, item ids). A resource whose caps become known fires ``pep-last-items`` (owner, its
        full JID, the nodes it wants notifications of) before it gets the last items."""
        options = options or {}
        xml = serialize(payload)
        if len(xml.encode()) > MAX_ITEM_BYTES:
            raise PubsubError("not-acceptable", "payload-too-big", f"items are at most {MAX_ITEM_BYTES} bytes")
        if len(item_id) > 1024:
            raise PubsubError("not-acceptable", "invalid-payload", "the item id is too long")
        config = await self._node(owner, node)
        if config is None:
            config = NodeConfig()
            _apply_options(config, options, error=PubsubError("conflict", "precondition-not-met"))
            if await self._node_count(owner) >= MAX_NODES_PER_ACCOUNT:
                raise PubsubError("not-allowed", "max-nodes-exceeded",
                                  f"an account has at most {MAX_NODES_PER_ACCOUNT} nodes")
            await self._create(owner, node, config)
        elif options and not _matches(config, options):
            raise PubsubError("conflict", "precondition-not-met")
        async with self.engine.begin() as conn:
            await conn.execute(delete(xmpp_pep_items).where(and_(
                xmpp_pep_items.c.owner == owner, xmpp_pep_items.c.node == node, xmpp_pep_items.c.item_id == item_id)))
            await conn.execute(insert(xmpp_pep_items).values(
                owner=owner, node=node, item_id=item_id, stamp=time.time(), xml=xml))
            await self._trim(conn, owner, node, config.max_items)
        event = Element("event", PUBSUB_EVENT_NS)
        event_items = event.add("items", attrs={"node": node})
        event_item = event_items.add("item", attrs={"id": item_id, "publisher": owner})
        event_item.children.append(payload)
        self._notify(owner, node, config, event)
        self.ctx.events.fire("pep-item-published", (owner, node, item_id, payload))
        return item_id

    async def list_items(self, owner: str, node: str) -> list[tuple[str, Element]]:
        """(item id, payload) of every item of ``owner``'s ``node``, oldest first."""
        query = select(xmpp_pep_items.c.item_id, xmpp_pep_items.c.xml).where(
            and_(xmpp_pep_items.c.owner == owner, xmpp_pep_items.c.node == node)).order_by(xmpp_pep_items.c.id)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [(row.item_id, parse_stored(row.xml)) for row in rows]

    async def retract_items(self, owner: str, node: str, ids: list[str]) -> None:
        """Remove ``ids`` from ``owner``'s ``node`` and notify the retraction (XEP-0060 section 7.2)."""
        config = await self._node(owner, node)
        if config is None or not ids:
            return
        async with self.engine.begin() as conn:
            await conn.execute(delete(xmpp_pep_items).where(and_(
                xmpp_pep_items.c.owner == owner, xmpp_pep_items.c.node == node, xmpp_pep_items.c.item_id.in_(ids))))
        self.ctx.events.fire("pep-item-retracted", (owner, node, ids))
        event = Element("event", PUBSUB_EVENT_NS)
        event_items = event.add("items", attrs={"node": node})
        for item_id in ids:
            event_items.add("retract", attrs={"id": item_id})
        self._notify(owner, node, config, event)

    async def get_item(self, owner: str, node: str, item_id: str | None = None) -> tuple[str, Element] | None:
        """(item id, payload) of ``owner``'s newest item on ``node`` (or of ``item_id``), if any."""
        query = select(xmpp_pep_items.c.item_id, xmpp_pep_items.c.xml).where(
            and_(xmpp_pep_items.c.owner == owner, xmpp_pep_items.c.node == node))
        if item_id is not None:
            query = query.where(xmpp_pep_items.c.item_id == item_id)
        async with self.engine.connect() as conn:
            row = (await conn.execute(query.order_by(xmpp_pep_items.c.id.desc()).limit(1))).first()
        return None if row is None else (row.item_id, parse_stored(row.xml))

    async def _retract(self, ctx: IqContext, owner: str, retract: Element) -> Element:
        node = retract.attrs.get("node")
        if not node:
            raise PubsubError("bad-request", "nodeid-required")
        ids = [item.attrs.get("id", "") for item in retract.find_all("item", PUBSUB_NS)]
        if not ids or not all(ids):
            raise PubsubError("bad-request", "item-required")
        config = await self._node(owner, node)
        if config is None:
            raise PubsubError("item-not-found")
        async with self.engine.begin() as conn:
            removed = (await conn.execute(delete(xmpp_pep_items).where(and_(
                xmpp_pep_items.c.owner == owner, xmpp_pep_items.c.node == node,
                xmpp_pep_items.c.item_id.in_(ids))))).rowcount
        if not removed:
            raise PubsubError("item-not-found")
        self.ctx.events.fire("pep-item-retracted", (owner, node, ids))
        if _true(retract.attrs.get("notify", "false")):
            event = Element("event", PUBSUB_EVENT_NS)
            event_items = event.add("items", attrs={"node": node})
            for item_id in ids:
                event_items.add("retract", attrs={"id": item_id})
            self._notify(owner, node, config, event)
        return result(ctx)

    async def _items(self, ctx: IqContext, owner: str, request: Element) -> Element:
        node = request.attrs.get("node", "")
        if not node:
            raise PubsubError("bad-request", "nodeid-required")
        await self._check_access(ctx, owner, node)
        ids = [item.attrs["id"] for item in request.find_all("item", PUBSUB_NS) if item.attrs.get("id")]
        limit = MAX_ITEMS_PER_NODE
        if request.attrs.get("max_items"):
            try:
                limit = max(0, min(MAX_ITEMS_PER_NODE, int(request.attrs["max_items"])))
            except ValueError:
                raise PubsubError("bad-request") from None
        query = select(xmpp_pep_items.c.item_id, xmpp_pep_items.c.xml).where(
            and_(xmpp_pep_items.c.owner == owner, xmpp_pep_items.c.node == node))
        if ids:
            query = query.where(xmpp_pep_items.c.item_id.in_(ids))
        query = query.order_by(xmpp_pep_items.c.id.desc()).limit(limit)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        pubsub = Element("pubsub", PUBSUB_NS)
        items = pubsub.add("items", attrs={"node": node})
        for row in rows:  # newest first (XEP-0060 section 6.5.7)
            item = items.add("item", attrs={"id": row.item_id})
            item.children.append(parse_stored(row.xml))
        return result(ctx, pubsub)

    async def _check_access(self, ctx: IqContext, owner: str, node: str, *, must_exist: bool = True) -> None:
        config = await self._node(owner, node)
        if config is None:
            if must_exist or not ctx.is_owner:
                raise PubsubError("item-not-found")
            return
        if ctx.is_owner or config.access_model == "open":
            return
        await self.ctx.users.load(owner)  # the owner may be offline: its roster decides
        sender = _bare(ctx.sender)
        if self._may_receive(owner, sender, config):
            return
        # XEP-0060 section 6.5.9: the error names what the access model wanted.
        if config.access_model == "whitelist":
            raise PubsubError("not-allowed", "closed-node")
        if config.access_model == "roster":
            raise PubsubError("not-authorized", "not-in-roster-group")
        raise PubsubError("not-authorized", "presence-subscription-required")

    def _subscribed(self, owner: str, contact: str) -> bool:
        """Whether ``contact`` has a subscription to ``owner``'s presence (RFC 6121 'from'/'both')."""
        state = self.ctx.users.cached(owner)
        if state is None:
            return False
        item = state.roster.get(contact)
        return item is not None and item.subscription in ("from", "both")

    # --- storage --------------------------------------------------------------------------------
    async def _node(self, owner: str, node: str) -> NodeConfig | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(xmpp_pep_nodes).where(
                and_(xmpp_pep_nodes.c.owner == owner, xmpp_pep_nodes.c.node == node)))).first()
        return None if row is None else NodeConfig.from_row(row)

    async def _node_count(self, owner: str) -> int:
        async with self.engine.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(xmpp_pep_nodes).where(
                xmpp_pep_nodes.c.owner == owner))).scalar() or 0)

    async def _create(self, owner: str, node: str, config: NodeConfig) -> None:
        await self.ctx.users.load(owner)  # roster cached for access checks and notifications
        async with self.engine.begin() as conn:
            await conn.execute(insert(xmpp_pep_nodes).values(
                owner=owner, node=node, **config.row()))

    async def _trim(self, conn: Any, owner: str, node: str, max_items: int) -> None:
        keep = select(xmpp_pep_items.c.id).where(and_(
            xmpp_pep_items.c.owner == owner, xmpp_pep_items.c.node == node,
        )).order_by(xmpp_pep_items.c.id.desc()).limit(max_items)
        kept = [row.id for row in (await conn.execute(keep)).all()]
        if kept:
            await conn.execute(delete(xmpp_pep_items).where(and_(
                xmpp_pep_items.c.owner == owner, xmpp_pep_items.c.node == node, xmpp_pep_items.c.id < min(kept))))

    async def _last_items(self, owner: str) -> list[tuple[str, NodeConfig, str, str]]:
        """(node, config, item id, xml) of the newest item of each of ``owner``'s nodes."""
        newest = select(xmpp_pep_items.c.node, func.max(xmpp_pep_items.c.id).label("id")).where(
            xmpp_pep_items.c.owner == owner).group_by(xmpp_pep_items.c.node).subquery()
        query = select(xmpp_pep_items.c.node, xmpp_pep_items.c.item_id, xmpp_pep_items.c.xml,
                       xmpp_pep_nodes.c.access_model, xmpp_pep_nodes.c.max_items, xmpp_pep_nodes.c.roster_groups,
                       xmpp_pep_nodes.c.whitelist).join(
            newest, xmpp_pep_items.c.id == newest.c.id).join(
            xmpp_pep_nodes, and_(xmpp_pep_nodes.c.owner == owner, xmpp_pep_nodes.c.node == xmpp_pep_items.c.node))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [(row.node, NodeConfig.from_row(row), row.item_id, row.xml) for row in rows]

    # ============================================================================================
    # Notifications
    # ============================================================================================
    def _may_receive(self, owner: str, bare: str, config: NodeConfig) -> bool:
        """Whether ``bare`` may read (and be notified of) a node of ``owner`` (XEP-0060 section 4.5),
        from ``owner``'s cached roster."""
        if bare == owner or config.access_model == "open":
            return True
        if config.access_model == "whitelist":
            return bare in config.whitelist
        if config.access_model == "roster":
            state = self.ctx.users.cached(owner)
            item = state.roster.get(bare) if state is not None else None
            return (item is not None and item.subscription in ("from", "both")
                    and bool(set(item.groups) & set(config.roster_groups)))
        return self._subscribed(owner, bare)

    def _interested(self, full_jid: str, ver: str, node: str) -> bool:
        features = self.caps.get(ver)
        return features is not None and f"{node}+notify" in features

    def _notify(self, owner: str, node: str, config: NodeConfig, event: Element) -> None:
        self.notify_here(owner, node, config, event)
        if self.on_notify is not None:
            self.on_notify(owner, node, config, event)

    def notify_here(self, owner: str, node: str, config: NodeConfig, event: Element) -> None:
        """Notify the interested resources this node tracks (every one, on a single server)."""
        for full_jid, ver in list(self.resources.get(owner, {}).items()):
            if self._may_receive(owner, _bare(full_jid), config) and self._interested(full_jid, ver, node):
                self._send_event(owner, full_jid, event)

    def _send_event(self, owner: str, to: str, event: Element) -> None:
        message = Element("message", "", {"from": owner, "to": to, "type": "headline",
                                          "id": f"pep-{next(self._ids)}"})
        message.children.append(event)
        pending = self.ctx.router.route(message)
        if pending is not None:
            self._spawn(pending)

    def _spawn(self, awaitable: Any) -> None:
        async def run() -> None:
            try:
                await awaitable
            except Exception:
                log.exception("PEP delivery failed")

        spawn = self.ctx.spawn
        if spawn is not None:
            spawn(run())
        else:
            from peerage.xmpp.router import schedule

            schedule(run())

    async def _send_last_items(self, owner: str, full_jid: str, ver: str) -> None:
        features = self.caps.get(ver)
        if not features:
            return
        wanted = {feature[: -len("+notify")] for feature in features if feature.endswith("+notify")}
        if not wanted:
            return
        # For nodes that are views of another (the XEP-0048 bookmarks node of XEP-0411): their
        # module sends their last item itself.
        self.ctx.events.fire("pep-last-items", (owner, full_jid, frozenset(wanted)))
        for node, config, item_id, xml in await self._last_items(owner):
            if node not in wanted or not self._may_receive(owner, _bare(full_jid), config):
                continue
            event = Element("event", PUBSUB_EVENT_NS)
            item = event.add("items", attrs={"node": node}).add("item", attrs={"id": item_id, "publisher": owner})
            item.children.append(parse_stored(xml))
            self._send_event(owner, full_jid, event)

    # --- presence: who is online, with which caps -----------------------------------------------
    def _track(self, owner: str, full_jid: str, presence: Element) -> None:
        ptype = presence.attrs.get("type")
        tracked = self.resources.get(owner)
        if ptype == "unavailable":
            if tracked is not None:
                tracked.pop(full_jid, None)
                if not tracked:
                    del self.resources[owner]
            return
        if ptype is not None:
            return
        ver = caps_of(presence)
        if ver is None:
            return
        if tracked is None:
            tracked = self.resources[owner] = {}
        known = tracked.get(full_jid)
        if known is None and len(tracked) >= MAX_TRACKED_RESOURCES:
            return
        tracked[full_jid] = ver
        if known == ver:
            return
        if ver in self.caps:
            self.caps.move_to_end(ver)
            if known is None:
                self._spawn(self._send_last_items(owner, full_jid, ver))
            return
        if any(pending[0] == ver for pending in self.pending.values()):
            return  # asked already; the answer covers every resource with this hash
        query_id = f"pep-caps-{next(self._ids)}"
        caps = presence.find("c", CAPS_NS)
        self.pending[query_id] = (ver, owner, full_jid, caps.attrs.get("hash", "") if caps is not None else "")
        iq = Element("iq", "", {"type": "get", "from": owner, "to": full_jid, "id": query_id})
        iq.add("query", DISCO_INFO_NS, {"node": ver})
        pending = self.ctx.router.route(iq)
        if pending is not None:
            self._spawn(pending)

    def _own_presence(self, event: StanzaEvent) -> None:
        stanza = event.stanza
        if stanza.attrs.get("to"):
            return None
        session = event.origin
        self._track(session.bare_jid, session.full_jid, stanza)
        return None

    def _contact_presence(self, event: StanzaEvent) -> None:
        if event.user is None or event.resource:
            return None
        sender = event.stanza.attrs.get("from", "")
        if "/" not in sender:
            return None
        try:
            split_jid(sender)
        except JidError:
            return None
        if _bare(sender) == event.bare:
            return None  # own resources are tracked from their broadcast
        self._track(event.bare, sender, event.stanza)
        return None

    def _unbound(self, session: Any) -> None:
        tracked = self.resources.get(session.bare_jid)
        if tracked is not None:
            tracked.pop(session.full_jid, None)
            if not tracked:
                del self.resources[session.bare_jid]
        return None

    def _iq_answer(self, event: StanzaEvent) -> Any:
        stanza = event.stanza
        if stanza.attrs.get("type") not in ("result", "error"):
            return None
        pending = self.pending.pop(stanza.attrs.get("id", ""), None)
        if pending is None:
            return None
        ver, owner, full_jid, hash_name = pending
        if stanza.attrs.get("from") != full_jid or event.bare != owner:
            self.pending[stanza.attrs.get("id", "")] = pending
            return None
        query = stanza.find("query", DISCO_INFO_NS)
        # XEP-0115 section 5.4: the features are cached for everyone only when they hash to the
        # verification string (legacy caps without a hash are taken as they are).
        if query is not None and hash_name and caps_hash(query, hash_name) != ver.rpartition("#")[2]:
            query = None
        if stanza.attrs["type"] == "error" or query is None:
            # Unknown for now: forget who showed it, so that their next presence asks again.
            for tracked in self.resources.values():
                for jid in [jid for jid, jid_ver in tracked.items() if jid_ver == ver]:
                    del tracked[jid]
            return True
        features = frozenset(f.attrs.get("var", "") for f in query.find_all("feature", DISCO_INFO_NS))
        self.caps[ver] = features
        while len(self.caps) > MAX_CAPS_CACHE:
            self.caps.popitem(last=False)
        # Every resource that showed this hash gets its last items now.
        for tracked_owner, tracked in list(self.resources.items()):
            for jid, jid_ver in list(tracked.items()):
                if jid_ver == ver:
                    self._spawn(self._send_last_items(tracked_owner, jid, ver))
        return True
