"""The XMPP side of the social identity: the microblog node and the ActivityPub gateway JIDs.

This module is in charge of joining the account's ActivityPub life with its XMPP one, inside the
one server (``[social] xmpp_bridge``, when [xmpp] runs too):

- **Microblog (XEP-0472, with XEP-0277 compatibility).** The account's public posts are items of its
  PEP node ``urn:xmpp:microblog:0``, as Atom entries (RFC 4287): a post made on the web or through
  the ActivityPub outbox is published there (the node made ``open``, ``max_items=max``, so XMPP
  clients read it and contacts get it by +notify); an entry an XMPP client publishes there becomes a
  Note to the account's ActivityPub followers (public when the node is ``open``, followers-only when
  the node is restricted to contacts), a republished item id an Update, a retracted one a Delete.
  Item ids and Note ids map one to one: item ``ID`` is ``…/users/NAME/statuses/ID`` (an id that is
  not URL-safe is hashed, as the AP side needs a path segment).
- **Remote actors as JIDs.** ``fred@mastodon.social`` is ``fred=mastodon.social@ap.DOMAIN`` on the
  gateway service ``ap.DOMAIN`` (``[social] xmpp_gateway``). ``=`` stands for the ``@``: our
  addresses are the same for XMPP, SIP and mail and forbid ``@``, ``%`` and ``\\`` (so XEP-0106
  escaping, which Libervia's gateway uses, is not available); ``=`` is what SRS uses for the same job.
  A post of a followed remote actor reaches the account's XMPP clients as a pubsub event from that
  JID on node ``urn:xmpp:microblog:0`` (to resources whose caps say ``urn:xmpp:microblog:0+notify``,
  XEP-0163 §4.3), and the JID answers items requests on that node with what the account received.
- **Direct messages across worlds.** A Note addressed to an account alone (neither public nor to
  its author's followers) arrives as a ``chat`` message from the author's gateway JID (stored
  offline if no client is on); a message the account sends to a gateway JID goes out as a direct
  Note that mentions the remote actor, in reply to the last direct Note from it.

Only local accounts that are discoverable may use the gateway (anything else gets ``forbidden`` /
``not-allowed``: it is no relay for other servers' users). Notes arriving as XMPP are shown as text
(the HTML is flattened); the Note as received stays in the ActivityPub inbox.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from collections import OrderedDict
from html.parser import HTMLParser
from typing import Any
from urllib.parse import quote

from sqlalchemy import update

from peerage.social import state
from peerage.social.core import PUBLIC, host_of, id_of, ids
from peerage.social.fetch import FetchError
from peerage.social.media import safe_remote_attachments
from peerage.xmpp.events import HANDLED
from peerage.xmpp.features.disco import DiscoItem, disco_of
from peerage.xmpp.features.pep import (
    DEFAULT_MAX_ITEMS,
    MAX_ITEMS_PER_NODE,
    PUBSUB_EVENT_NS,
    PUBSUB_NS,
    Pep,
    PubsubError,
)
from peerage.xmpp.hosted import add_service, hook_service_iq
from peerage.xmpp.jid import JidError, split_jid
from peerage.xmpp.stanzas import IqContext, StanzaEvent
from peerage.xmpp.stream import Element, error_reply, iq_result
from peerage.xmpp.tables import xmpp_pep_nodes

log = logging.getLogger(__name__)

NODE = "urn:xmpp:microblog:0"
# XEP-0277 §3 comments: each post names a node of its replies, here on the gateway service itself,
# "urn:xmpp:microblog:0:comments/" + the post's ActivityPub id (Libervia names them after the item
# the same way); its items are the replies, and an entry published there is a reply to the post.
COMMENTS_PREFIX = NODE + ":comments/"
ATOM_NS = "http://www.w3.org/2005/Atom"
THREAD_NS = "http://purl.org/syndication/thread/1.0"  # RFC 4685 in-reply-to
DISCO_INFO_NS = "http://jabber.org/protocol/disco#info"
SOCIAL_FEED_FEATURE = "urn:xmpp:pubsub-social-feed:1"  # XEP-0472 §2
SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Node options the bridge creates the microblog node with: anyone may read public posts (they are
# public on the web too), and a feed keeps more than PEP's default single item.
NODE_OPTIONS = {"pubsub#access_model": "open", "pubsub#max_items": "max"}
# Remote actors remembered (actor URL -> gateway JID and followers collection), LRU: the gateway
# needs them for every post it shows; an hour, as actor documents change (a name, a key) rarely.
ACTOR_CACHE_SIZE = 4096
ACTOR_CACHE_SECONDS = 3600.0
# Posts an items request on a gateway JID returns (XEP-0060 lets the service bound it; Prosody's
# pep_max_items is 256, a timeline page is smaller).
MAX_REMOTE_ITEMS = 50


def item_sid(item_id: str) -> str:
    """The status path segment of a microblog item id (the same id when URL-safe)."""
    return item_id if SAFE_ID.match(item_id) else "x" + hashlib.sha256(item_id.encode()).hexdigest()[:32]


class _Text(HTMLParser):
    """The text a reader sees: paragraphs and line breaks kept, script and style content dropped."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "br":
            self.parts.append("\n")
        elif tag in ("script", "style"):
            self.hidden += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("p", "div", "li", "blockquote"):
            self.parts.append("\n\n")
        elif tag in ("script", "style"):
            self.hidden = max(0, self.hidden - 1)

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.parts.append(data)


def html_to_text(content: str) -> str:
    parser = _Text()
    parser.feed(content)
    parser.close()
    return re.sub(r"\n{3,}", "\n\n", "".join(parser.parts)).strip()


def _element_text(element: Element) -> str:
    """Text of an Atom text construct (RFC 4287 §3.1): text, html or xhtml."""
    kind = element.attrs.get("type", "text")
    if kind == "html":
        return html_to_text(element.text)
    if kind == "xhtml":
        out: list[str] = []

        def walk(node: Element) -> None:
            for child in node.children:
                if isinstance(child, str):
                    out.append(child)
                else:
                    if child.name == "br":
                        out.append("\n")
                    walk(child)
                    if child.name in ("p", "div", "li"):
                        out.append("\n\n")
        walk(element)
        return re.sub(r"\n{3,}", "\n\n", "".join(out)).strip()
    return element.text.strip()


def entry_post(entry: Element) -> dict[str, Any]:
    """An Atom entry published by an XMPP client, as the Note fields the outbox takes."""
    title = entry.find("title", ATOM_NS)
    content = entry.find("content", ATOM_NS)
    title_text = _element_text(title) if title is not None else ""
    body = _element_text(content) if content is not None else ""
    # XEP-0277 puts a short post in <title>; XEP-0472 has a title and a body. A title that is not the
    # body's beginning is kept as the first paragraph.
    if body and title_text and not body.startswith(title_text):
        text = f"{title_text}\n\n{body}"
    else:
        text = body or title_text
    post: dict[str, Any] = {"content": text}
    summary = entry.find("summary", ATOM_NS)
    if summary is not None and _element_text(summary):
        post["summary"] = _element_text(summary)
    reply = entry.find("in-reply-to", THREAD_NS)
    if reply is not None and (reply.attrs.get("ref") or reply.attrs.get("href", "")).startswith("https://"):
        post["inReplyTo"] = reply.attrs.get("ref") or reply.attrs["href"]
    # Files (XEP-0277 "Attaching files", XEP-0472): link rel=enclosure, e.g. to the account's own
    # XEP-0363 upload; the outbox takes only those (peerage.social.media).
    enclosures = [{"url": link.attrs["href"], "name": link.attrs.get("title", "")}
                  for link in entry.find_all("link", ATOM_NS)
                  if link.attrs.get("rel") == "enclosure" and link.attrs.get("href")]
    if enclosures:
        post["attachment"] = enclosures
    return post


def note_entry(note: dict[str, Any], author_jid: str, author_name: str, comments_service: str = "") -> Element:
    """A Note as the Atom entry of a microblog item (XEP-0472 §4, XEP-0277 §2); with
    `comments_service`, a ``link rel=replies`` to its comments node there (XEP-0277 §3)."""
    source = note.get("source")
    text = str(source.get("content")) if isinstance(source, dict) and source.get("content") else \
        html_to_text(str(note.get("content", "")))
    entry = Element("entry", ATOM_NS)
    entry.add("title", attrs={"type": "text"}, text=text)
    entry.add("content", attrs={"type": "html"}, text=str(note.get("content", "")))
    entry.add("id", text=id_of(note))
    published = str(note.get("published") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    entry.add("published", text=published)
    entry.add("updated", text=str(note.get("updated") or published))
    author = entry.add("author")
    author.add("name", text=author_name)
    author.add("uri", text=f"xmpp:{author_jid}")
    entry.add("link", attrs={"rel": "alternate", "type": "text/html", "href": id_of(note.get("url")) or id_of(note)})
    if note.get("summary"):
        entry.add("summary", attrs={"type": "text"}, text=str(note["summary"]))
    reply_to = id_of(note.get("inReplyTo"))
    if reply_to:
        entry.add("in-reply-to", THREAD_NS, attrs={"ref": reply_to, "href": reply_to})
    for tag in note.get("tag", []) if isinstance(note.get("tag"), list) else []:
        if isinstance(tag, dict) and tag.get("type") == "Hashtag" and isinstance(tag.get("name"), str):
            entry.add("category", attrs={"term": tag["name"].lstrip("#")})
    if comments_service:
        node = quote(COMMENTS_PREFIX + id_of(note), safe="")
        entry.add("link", attrs={"rel": "replies", "title": "comments",
                                 "href": f"xmpp:{comments_service}?;node={node}"})
    for url, media_type, description in safe_remote_attachments(note):
        attrs = {"rel": "enclosure", "href": url}
        if media_type:
            attrs["type"] = media_type
        if description:
            attrs["title"] = description
        entry.add("link", attrs=attrs)
    return entry


class RemoteIdentity:
    __slots__ = ("fetched", "followers", "jid", "name")

    def __init__(self, jid: str, followers: str, name: str) -> None:
        self.jid, self.followers, self.name, self.fetched = jid, followers, name, time.monotonic()


class XmppBridge:
    def __init__(self, social: Any, xmpp: Any) -> None:
        self.social = social
        self.host = social.host
        self.store = social.host.store
        self.ctx = xmpp.ctx
        self.pep: Pep = self.ctx.feature(Pep)
        self.prefix = self.host.config.social.xmpp_gateway
        self.gateways: set[str] = set()
        #: (owner, item id) the bridge is publishing or retracting itself: not to be mirrored back
        self._echo: set[tuple[str, str]] = set()
        self._actors: OrderedDict[str, RemoteIdentity] = OrderedDict()
        self._jids: dict[str, str] = {}  # gateway JID -> actor URL (filled with the cache)
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        events = self.ctx.events
        events.hook("pep-item-published", self._item_published)
        events.hook("pep-item-retracted", self._item_retracted)
        for domain in self.host.config.domains:
            service = add_service(self.ctx, self.prefix, domain)
            self.gateways.add(service.jid)
            service.events.hook("message/bare", self._message)
            service.events.hook("message/full", self._message)
            hook_service_iq(service, "query", DISCO_INFO_NS, self._info, types=("get",), to=("host", "bare"))
            hook_service_iq(service, "pubsub", PUBSUB_NS, self._items, types=("get",), to=("bare",))
            hook_service_iq(service, "pubsub", PUBSUB_NS, self._comments, types=("get",), to=("host",))
            hook_service_iq(service, "pubsub", PUBSUB_NS, self._comment, types=("set",), to=("host",))
        # The gateway is listed in the domain's disco#items (XEP-0030 §4), as upload.DOMAIN is, so a
        # client finds it without knowing [social] xmpp_gateway.
        disco_of(self.ctx).add_items_provider("social-gateway", self._disco_items)
        log.info("social: XMPP bridge on %s", ", ".join(sorted(self.gateways)))

    def _service_of(self, account: str) -> str:
        return f"{self.prefix}.{account.partition('@')[2]}"

    def _disco_items(self, domain: str) -> list[DiscoItem]:
        jid = f"{self.prefix}.{domain}"
        return [DiscoItem(jid, "ActivityPub (fediverse)")] if jid in self.gateways else []

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    def _spawn(self, coroutine: Any, what: str) -> None:
        async def run() -> None:
            try:
                await coroutine
            except asyncio.CancelledError:
                raise
            except (FetchError, ValueError, PubsubError) as exc:
                log.info("social bridge: %s: %s", what, exc)
            except Exception:
                log.exception("social bridge: %s failed", what)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- local posts -> the PEP microblog node ---------------------------------------------------

    async def local_note(self, address: str, note: dict[str, Any]) -> None:
        """A public post of `address` (new or edited): its item on the microblog node."""
        sid = id_of(note).rsplit("/", 1)[-1]
        item_id = await self._item_for(address, sid) or sid
        name = address.partition("@")[0]
        entry = note_entry(note, address, name, self._service_of(address))
        await self._ensure_feed(address)
        self._echo.add((address, item_id))
        try:
            try:
                await self.pep.store_item(address, NODE, item_id, entry, NODE_OPTIONS)
            except PubsubError:  # the node exists with its owner's own settings: kept as they are
                await self.pep.store_item(address, NODE, item_id, entry)
        finally:
            self._echo.discard((address, item_id))

    async def local_delete(self, address: str, object_id: str) -> None:
        item_id = await self._item_for(address, object_id.rsplit("/", 1)[-1])
        if item_id is None:
            return
        self._echo.add((address, item_id))
        try:
            await self.pep.retract_items(address, NODE, [item_id])
        finally:
            self._echo.discard((address, item_id))

    async def _ensure_feed(self, owner: str) -> None:
        """A microblog node a client made with PEP's default of one item keeps a feed's worth
        instead (XEP-0472 is a feed; the owner's access model is left as it is)."""
        async with self.pep.engine.begin() as conn:
            await conn.execute(update(xmpp_pep_nodes).where(
                xmpp_pep_nodes.c.owner == owner, xmpp_pep_nodes.c.node == NODE,
                xmpp_pep_nodes.c.max_items == DEFAULT_MAX_ITEMS).values(max_items=MAX_ITEMS_PER_NODE))

    async def _item_for(self, address: str, sid: str) -> str | None:
        for item_id, _ in await self.pep.list_items(address, NODE):
            if item_sid(item_id) == sid:
                return item_id
        return None

    # --- the PEP microblog node -> ActivityPub ---------------------------------------------------

    def _item_published(self, published: tuple[str, str, str, Element]) -> None:
        owner, node, item_id, payload = published
        if node != NODE or (owner, item_id) in self._echo or payload.name != "entry" or payload.xmlns != ATOM_NS:
            return None
        self._spawn(self._from_xmpp(owner, item_id, payload), f"microblog item {item_id} of {owner}")
        return None  # others hooked on the event still see it

    def _item_retracted(self, retracted: tuple[str, str, list[str]]) -> None:
        owner, node, item_ids = retracted
        if node != NODE:
            return None
        for item_id in item_ids:
            if (owner, item_id) not in self._echo:
                self._spawn(self._retract_from_xmpp(owner, item_id), f"retraction {item_id} of {owner}")
        return None

    async def _from_xmpp(self, owner: str, item_id: str, entry: Element) -> None:
        if not await self.social.discoverable(owner):
            return  # not on ActivityPub: the item stays an XMPP-only post
        ap = self.social.activitypub
        await self._ensure_feed(owner)
        sid = item_sid(item_id)
        object_id = f"{self.social.actor_url(owner)}/statuses/{sid}"
        post = entry_post(entry)
        existing = await state.local_object(self.store, object_id)
        if existing is not None and not existing.deleted:
            await ap.update_note(owner, {"id": object_id, **post}, from_xmpp=True)
            return
        config = await self.pep._node(owner, NODE)  # the node's access model says who may read it
        post["visibility"] = "public" if config is not None and config.access_model == "open" else "followers"
        await ap.post_note(owner, post, sid=sid, from_xmpp=True)
        log.info("social: %s posted %s from XMPP", owner, object_id)

    async def _retract_from_xmpp(self, owner: str, item_id: str) -> None:
        object_id = f"{self.social.actor_url(owner)}/statuses/{item_sid(item_id)}"
        row = await state.local_object(self.store, object_id)
        if row is not None and not row.deleted and row.account == owner:
            await self.social.activitypub.delete(owner, object_id, from_xmpp=True)

    # --- remote actors as gateway JIDs ---------------------------------------------------------

    async def identity(self, actor_url: str, account: str) -> RemoteIdentity:
        cached = self._actors.get(actor_url)
        if cached is not None and time.monotonic() - cached.fetched < ACTOR_CACHE_SECONDS:
            self._actors.move_to_end(actor_url)
            return cached
        remote = await self.social.actor(actor_url, account)
        user = remote.username or actor_url.rstrip("/").rsplit("/", 1)[-1]
        local = f"{user}={host_of(remote.id)}"
        domain = account.partition("@")[2]
        jid = f"{local}@{self.prefix}.{domain}"
        try:
            split_jid(jid)
        except JidError as exc:
            raise FetchError(f"{actor_url} has no JID on the gateway: {exc}") from None
        identity = RemoteIdentity(jid, id_of(remote.document.get("followers")),
                                  str(remote.document.get("name") or user))
        self._actors[actor_url] = identity
        self._jids[jid] = actor_url
        while len(self._actors) > ACTOR_CACHE_SIZE:
            _, old = self._actors.popitem(last=False)
            self._jids.pop(old.jid, None)
        return identity

    async def _actor_of(self, jid: str, account: str) -> str:
        """The actor URL a gateway JID stands for (through WebFinger when not cached)."""
        known = self._jids.get(jid)
        if known:
            return known
        local = jid.partition("@")[0]
        user, _, host = local.rpartition("=")
        if not user or not host:
            raise FetchError(f"{jid} names no remote account (expected user=host@{self.prefix}.DOMAIN)")
        remote = await self.social.resolve_handle(f"{user}@{host}", account)
        await self.identity(remote.id, account)
        return remote.id

    # --- remote posts -> the account's XMPP clients ------------------------------------------------

    def remote_create(self, accounts: list[str], activity: dict[str, Any], actor: str) -> None:
        note = activity.get("object")
        if not accounts or not isinstance(note, dict) or note.get("type") not in ("Note", "Article", "Question"):
            return
        self._spawn(self._remote_create(accounts, activity, note, actor), f"Create {id_of(note)} from {actor}")

    async def _remote_create(self, accounts: list[str], activity: dict[str, Any], note: dict[str, Any],
                             actor: str) -> None:
        audience = set(ids(activity.get("to")) + ids(activity.get("cc")) + ids(note.get("to")) + ids(note.get("cc")))
        public = PUBLIC in audience or "as:Public" in audience
        for account in accounts:
            if not await self.social.discoverable(account):
                continue
            identity = await self.identity(actor, account)
            if not public and identity.followers not in audience and \
                    self.social.actor_url(account) in audience | _mentioned(note):
                await self._direct_message(account, identity, note)
            else:
                self._notify(account, identity, note)

    def remote_announce(self, accounts: list[str], activity: dict[str, Any], actor: str) -> None:
        """A followed actor boosted a post: a repeat (XEP-0277 "Repeating a Post", XEP-0472 rel=via) from the booster's gateway JID."""
        note = activity.get("object")
        if not accounts or not isinstance(note, dict):
            return
        self._spawn(self._remote_announce(accounts, activity, note, actor), f"Announce {id_of(activity)} from {actor}")

    async def _remote_announce(self, accounts: list[str], activity: dict[str, Any], note: dict[str, Any],
                               actor: str) -> None:
        author = id_of(note.get("attributedTo"))
        for account in accounts:
            if not await self.social.discoverable(account):
                continue
            booster = await self.identity(actor, account)
            local = self.social.local_address(author)
            if local:  # a boost of one of our own posts: its author's own JID and node
                origin_jid, origin_name = local, local.partition("@")[0]
            else:
                origin = await self.identity(author, account)
                origin_jid, origin_name = origin.jid, origin.name
            entry = note_entry(note, origin_jid, origin_name)
            # The repeat keeps the original author and points at the original item (link rel=via).
            entry.add("link", attrs={"rel": "via", "href": f"xmpp:{origin_jid}?;node={quote(NODE, safe='')};"
                                                            f"item={quote(id_of(note), safe='')}"})
            event = Element("event", PUBSUB_EVENT_NS)
            item = event.add("items", attrs={"node": NODE}).add(
                "item", attrs={"id": id_of(activity), "publisher": booster.jid})
            item.children.append(entry)
            self._send_event(account, booster, event, id_of(activity))

    def remote_delete(self, accounts: list[str], object_id: str, actor: str) -> None:
        """A remote post was deleted: its item is retracted from the gateway JID's node."""
        self._spawn(self._remote_delete(accounts, object_id, actor), f"Delete {object_id} from {actor}")

    async def _remote_delete(self, accounts: list[str], object_id: str, actor: str) -> None:
        for account in accounts:
            identity = await self.identity(actor, account)
            event = Element("event", PUBSUB_EVENT_NS)
            event.add("items", attrs={"node": NODE}).add("retract", attrs={"id": object_id})
            self._send_event(account, identity, event, object_id)

    def _notify(self, account: str, identity: RemoteIdentity, note: dict[str, Any]) -> None:
        """A followed actor's post as a pubsub event from its gateway JID (XEP-0163 §4.3 filtering)."""
        event = Element("event", PUBSUB_EVENT_NS)
        item = event.add("items", attrs={"node": NODE}).add("item", attrs={"id": id_of(note), "publisher": identity.jid})
        item.children.append(note_entry(note, identity.jid, identity.name, self._service_of(account)))
        self._send_event(account, identity, event, id_of(note))

    def _send_event(self, account: str, identity: RemoteIdentity, event: Element, object_id: str) -> None:
        # PEP tracks which resources are online with which caps; the gateway uses the same table.
        for full_jid, ver in list(self.pep.resources.get(account, {}).items()):
            if full_jid.partition("/")[0] == account and self.pep._interested(full_jid, ver, NODE):
                message = Element("message", "", {"from": identity.jid, "to": full_jid, "type": "headline",
                                                  "id": f"ap-{hashlib.sha256(object_id.encode()).hexdigest()[:16]}"})
                message.children.append(event)
                self._route(message)

    async def _direct_message(self, account: str, identity: RemoteIdentity, note: dict[str, Any]) -> None:
        text = html_to_text(str(note.get("content", "")))
        # A direct Note opens with the mention of its recipient (Mastodon's composer puts it there).
        local, _, domain = account.partition("@")
        text = re.sub(rf"^@{re.escape(local)}(@{re.escape(domain)})?\s*", "", text, flags=re.I) or text
        if note.get("summary"):
            text = f"[{note['summary']}]\n{text}"
        message = Element("message", "", {"from": identity.jid, "to": account, "type": "chat",
                                          "id": f"ap-{hashlib.sha256(id_of(note).encode()).hexdigest()[:16]}"})
        message.add("body", text=text)
        # XEP-0359: the Note's id, so a client (or a test) can tell which post it is.
        message.add("origin-id", "urn:xmpp:sid:0", attrs={"id": id_of(note)})
        pending = self.ctx.router.route(message)
        if pending is not None:
            await pending
        log.info("social: direct Note %s to %s as XMPP from %s", id_of(note), account, identity.jid)

    def _route(self, stanza: Element) -> None:
        pending = self.ctx.router.route(stanza)
        if pending is not None:
            self._spawn(pending, f"delivery to {stanza.attrs.get('to')}")

    # --- the gateway service ---------------------------------------------------------------------

    async def _sender_account(self, sender: str) -> str | None:
        try:
            local, domain, _ = split_jid(sender)
        except JidError:
            return None
        account = f"{local}@{domain}"
        if not local or domain not in self.host.config.domains:
            return None
        return account if await self.social.discoverable(account) else ""

    def _message(self, event: StanzaEvent) -> Any:
        stanza = event.stanza
        kind = stanza.attrs.get("type", "normal")
        if kind == "error":
            return HANDLED
        body = stanza.find_text("body")
        if kind not in ("chat", "normal") or not body or not body.strip():
            return HANDLED  # chat states, receipts, markers: nothing to post
        self._spawn(self._send_direct(stanza, event.bare, body.strip()), f"message to {event.bare}")
        return HANDLED

    async def _send_direct(self, stanza: Element, gateway_jid: str, body: str) -> None:
        sender = stanza.attrs.get("from", "")
        account = await self._sender_account(sender)
        if not account:
            condition = "forbidden" if account is None else "not-allowed"
            text = ("only this server's accounts may write to ActivityPub through it" if account is None
                    else "publish your social profile first (it is not discoverable)")
            self._route(error_reply(stanza, condition, text))
            return
        try:
            actor = await self._actor_of(gateway_jid, account)
            identity = await self.identity(actor, account)
        except FetchError as exc:
            self._route(error_reply(stanza, "item-not-found", f"no such ActivityPub account: {exc}"))
            return
        handle = identity.jid.partition("@")[0].replace("=", "@")
        previous = await state.last_direct_from(self.store, account, actor)
        post: dict[str, Any] = {"content": body if f"@{handle}".lower() in body.lower() else f"@{handle} {body}",
                                "visibility": "direct", "to": [actor]}
        if previous:
            post["inReplyTo"] = previous
        try:
            await self.social.activitypub.post_note(account, post)
        except ValueError as exc:
            self._route(error_reply(stanza, "not-acceptable", str(exc)))
            return
        log.info("social: %s wrote to %s from XMPP", account, actor)

    def _info(self, ctx: IqContext) -> Element:
        query = Element("query", DISCO_INFO_NS)
        if ctx.iq.attrs.get("to", "").partition("@")[1]:
            query.add("identity", attrs={"category": "pubsub", "type": "service", "name": "ActivityPub account"})
            query.add("feature", attrs={"var": PUBSUB_NS})
            query.add("feature", attrs={"var": SOCIAL_FEED_FEATURE})
        else:
            query.add("identity", attrs={"category": "gateway", "type": "activitypub",
                                         "name": "ActivityPub (fediverse)"})
        query.add("feature", attrs={"var": DISCO_INFO_NS})
        return iq_result(ctx.iq, query)

    # --- comments nodes (XEP-0277 §3) on the gateway service ---------------------------------------

    async def _comments(self, ctx: IqContext) -> Element:
        """Items of a post's comments node: its replies the requester may see (public ones, and
        those it received itself), oldest first as a thread reads."""
        request, target = _reply_target(ctx.payload, "items")
        if request is None or not target:
            return error_reply(ctx.iq, "item-not-found")
        account = await self._sender_account(ctx.sender)
        if not account:
            return error_reply(ctx.iq, "forbidden")
        pubsub = Element("pubsub", PUBSUB_NS)
        items = pubsub.add("items", attrs={"node": request.attrs["node"]})
        for row in await state.replies_to(self.store, target, account, MAX_REMOTE_ITEMS):
            note = json.loads(row.document).get("object")
            if not isinstance(note, dict):
                continue
            local = self.social.local_address(row.actor)
            try:
                jid, name = (local, local.partition("@")[0]) if local else \
                    ((identity := await self.identity(row.actor, account)).jid, identity.name)
            except FetchError:
                continue
            item = items.add("item", attrs={"id": id_of(note), "publisher": jid})
            item.children.append(note_entry(note, jid, name))
        return iq_result(ctx.iq, pubsub)

    async def _comment(self, ctx: IqContext) -> Element:
        """An entry published on a post's comments node: a public reply Note of the publisher."""
        request, target = _reply_target(ctx.payload, "publish")
        if request is None or not target:
            return error_reply(ctx.iq, "item-not-found")
        account = await self._sender_account(ctx.sender)
        if account is None:
            return error_reply(ctx.iq, "forbidden")  # not ours: the gateway writes for no one else
        if not account:
            return error_reply(ctx.iq, "not-allowed")  # ours, but not published
        item = request.find("item", PUBSUB_NS)
        entry = item.find("entry", ATOM_NS) if item is not None else None
        if entry is None:
            return error_reply(ctx.iq, "bad-request")
        post = {**entry_post(entry), "inReplyTo": target}
        try:
            activity = await self.social.activitypub.post_note(account, post)
        except (FetchError, ValueError) as exc:
            return error_reply(ctx.iq, "not-acceptable", text=str(exc))
        pubsub = Element("pubsub", PUBSUB_NS)
        pubsub.add("publish", attrs={"node": request.attrs["node"]}).add(
            "item", attrs={"id": id_of(activity.get("object"))})
        return iq_result(ctx.iq, pubsub)

    async def _items(self, ctx: IqContext) -> Element:
        """Items of a gateway JID's microblog node: that actor's posts the requester received."""
        request = ctx.payload.find("items", PUBSUB_NS)
        if request is None or request.attrs.get("node") != NODE:
            return error_reply(ctx.iq, "item-not-found")
        account = await self._sender_account(ctx.sender)
        if not account:
            return error_reply(ctx.iq, "forbidden")
        try:
            actor = await self._actor_of(str(ctx.owner), account)
            identity = await self.identity(actor, account)
        except FetchError:
            return error_reply(ctx.iq, "item-not-found")
        pubsub = Element("pubsub", PUBSUB_NS)
        items = pubsub.add("items", attrs={"node": NODE})
        for row in await state.received_from(self.store, account, actor, MAX_REMOTE_ITEMS):
            note = json.loads(row.document).get("object")
            if isinstance(note, dict):
                item = items.add("item", attrs={"id": id_of(note)})
                item.children.append(note_entry(note, identity.jid, identity.name, self._service_of(account)))
        return iq_result(ctx.iq, pubsub)


def _reply_target(payload: Element, verb: str) -> tuple[Element | None, str]:
    request = payload.find(verb, PUBSUB_NS)
    node = request.attrs.get("node", "") if request is not None else ""
    target = node.removeprefix(COMMENTS_PREFIX) if node.startswith(COMMENTS_PREFIX) else ""
    return request, target if target.startswith("https://") and len(target) <= 2048 else ""


def _mentioned(note: dict[str, Any]) -> set[str]:
    tags = note.get("tag")
    return {id_of(t.get("href")) for t in tags if isinstance(t, dict) and t.get("type") == "Mention"} \
        if isinstance(tags, list) else set()


__all__ = ["NODE", "XmppBridge", "entry_post", "item_sid", "note_entry"]
