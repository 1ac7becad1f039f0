"""ActivityPub (W3C, 2018): actors, collections, the inboxes and the client-to-server outbox.

This module is in charge of the HTTP side of ActivityPub for every discoverable account:

- the actor (``/users/NAME``, a Person with ``publicKey``, ``preferredUsername``, name and icon from
  the account's public vCard4 and XEP-0084 avatar, and its ``xmpp:`` and ``sip:`` addresses both as
  ``attachment`` PropertyValues, which Mastodon shows as profile fields, and in ``alsoKnownAs``), the
  instance actor (``/actor``), and the outbox, followers, following and featured collections;
- the inboxes (``/users/NAME/inbox`` and the shared ``/inbox``, §7.1.3): each POST is size-limited
  before it is read, its signature checked (``peerage.social.signatures``, key fetched and cached, a
  stale Date or a replayed signature refused), its JSON depth-limited, its signer matched with its
  actor, blocked domains refused, duplicates acknowledged without acting twice; a refused activity
  leaves nothing stored;
- the client-to-server outbox (§6): the account's owner (web session or HTTP Basic) POSTs a Note or an
  activity (Create, Update, Delete, Follow, Undo, Like, Announce, Block, Move); it is stored, and
  queued for delivery (``peerage.social.delivery``) in the same transaction.

Status codes on the inbox follow Mastodon's: 202 accepted (also for a duplicate), 400 bad JSON or
shape, 401 bad/missing/stale signature, 403 blocked domain, 413 too large.
"""

from __future__ import annotations

import html
import json
import logging
import secrets
import time
from typing import Any

from aiohttp import web

from peerage.social import signatures, state
from peerage.social.core import (
    AP_MEDIA_TYPE,
    CONTEXT,
    LD_MEDIA_TYPE,
    MAX_POST_LENGTH,
    PUBLIC,
    DocumentError,
    Mention,
    audience,
    find_mentions,
    host_of,
    id_of,
    ids,
    is_public,
    parse_document,
    render_note,
)
from peerage.social.delivery import enqueue
from peerage.social.fetch import FetchError
from peerage.web import DOMAIN, WebContext

log = logging.getLogger(__name__)

JSON_TYPES = (AP_MEDIA_TYPE, "application/ld+json")
# Items per collection page (Mastodon serves 20 per outbox page, 12 per followers page).
PAGE_SIZE = 50
# Longest id accepted inbound: the width of the URL columns (peerage.social.tables.URL).
URL_LENGTH = 2048
ACTIVITY_TYPES = frozenset({"Create", "Update", "Delete", "Follow", "Accept", "Reject", "Undo", "Like",
                            "Announce", "Block", "Move"})
# Objects a boost may carry (what Mastodon shows as a status: ActivityPub::Activity::Create's list).
BOOSTABLE_TYPES = frozenset({"Note", "Article", "Question", "Page", "Image", "Video", "Audio", "Event"})
# Pinned posts per account: Mastodon's limit (StatusPinValidator, 5).
MAX_PINNED = 5


def ap_response(document: dict[str, Any], status: int = 200) -> web.Response:
    response = web.Response(text=json.dumps(document, separators=(",", ":")), status=status,
                            content_type=AP_MEDIA_TYPE)
    response.headers["Access-Control-Allow-Origin"] = "*"
    response.headers["Vary"] = "Accept"
    return response


def wants_json(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return any(t in accept for t in JSON_TYPES)


class Refused(web.HTTPException):
    """An inbox refusal with its status and a one-line reason."""

    def __init__(self, status: int, reason: str) -> None:
        self.status_code = status
        super().__init__(text=reason + "\n")


class ActivityPubRoutes:
    def __init__(self, social: Any) -> None:
        self.social = social
        self.host = social.host
        self.store = social.host.store
        self.auth: Any = None

    def setup(self, ctx: WebContext) -> None:
        self.auth = ctx.auth
        r = ctx.app.router
        r.add_get("/users/{local}", self.actor)
        r.add_get("/@{local}", self.profile_page)
        r.add_get("/users/{local}/avatar", self.avatar)
        r.add_get("/actor", self.instance_actor)
        r.add_post("/actor/inbox", self.inbox)
        r.add_post("/inbox", self.inbox)
        r.add_post("/users/{local}/inbox", self.inbox)
        r.add_get("/users/{local}/inbox", self.inbox_read)
        r.add_get("/users/{local}/outbox", self.outbox)
        r.add_post("/users/{local}/outbox", self.outbox_post)
        r.add_get("/users/{local}/followers", self.followers)
        r.add_get("/users/{local}/following", self.following)
        r.add_get("/users/{local}/featured", self.featured)
        r.add_get("/users/{local}/statuses/{sid}", self.status)
        r.add_get("/users/{local}/statuses/{sid}/activity", self.status)
        r.add_get("/users/{local}/activities/{sid}", self.status)
        r.add_post("/social/api/settings", self.settings)
        r.add_get("/social/api/requests", self.requests_list)

    # --- reading ---------------------------------------------------------------------------------

    async def _account(self, request: web.Request) -> str:
        address = f"{request.match_info['local'].lower()}@{request[DOMAIN]}"
        if not await self.social.discoverable(address):
            raise web.HTTPNotFound(text="no such actor\n")
        return address

    async def _authorized_fetch(self, request: web.Request) -> None:
        """Secure mode: collections and objects need a signed GET from a server not blocked."""
        if not self.host.config.social.authorized_fetch:
            return
        await self._verify(request, b"")

    async def actor_document(self, address: str) -> dict[str, Any]:
        from peerage.social import profile

        key = await self.social.signing_key(address)
        url = self.social.actor_url(address)
        local, _, domain = address.partition("@")
        row = await state.ensure_account(self.store, address, self.host.config.social.discoverable_default)
        info = await profile.load(self.store, address)
        document: dict[str, Any] = {
            "@context": CONTEXT,
            "id": url,
            "type": "Person",
            "preferredUsername": local,
            "name": info.name or local,
            "summary": html.escape(row.summary) if row.summary else "",
            "url": f"{self.social.base(domain)}/@{local}",
            "inbox": f"{url}/inbox",
            "outbox": f"{url}/outbox",
            "followers": f"{url}/followers",
            "following": f"{url}/following",
            "featured": f"{url}/featured",
            "endpoints": {"sharedInbox": f"{self.social.base(domain)}/inbox"},
            "manuallyApprovesFollowers": bool(row.locked),
            "discoverable": True,
            "publicKey": {"id": self.social.key_id(address, key.name), "owner": url,
                          "publicKeyPem": key.public_pem},
            "attachment": [
                {"type": "PropertyValue", "name": name,
                 "value": f'<a href="{uri}" rel="me">{html.escape(uri)}</a>'}
                for name, uri in (("XMPP", f"xmpp:{address}"), ("SIP", f"sip:{address}"),
                                  ("Mail", f"mailto:{address}"))
            ],
            # Mastodon reads alsoKnownAs for account moves; the xmpp:/sip: URIs name the same account.
            "alsoKnownAs": [*state.aliases(row), f"xmpp:{address}", f"sip:{address}"],
        }
        if info.avatar_type:
            document["icon"] = {"type": "Image", "mediaType": info.avatar_type, "url": f"{url}/avatar"}
        if row.moved_to:
            document["movedTo"] = row.moved_to
        return document

    async def actor(self, request: web.Request) -> web.StreamResponse:
        address = await self._account(request)
        if not wants_json(request):
            return await self.profile_page(request)
        return ap_response(await self.actor_document(address))

    async def instance_actor(self, request: web.Request) -> web.StreamResponse:
        domain = request[DOMAIN]
        address = f"_instance@{domain}"
        key = await self.social.signing_key(address)
        url = self.social.actor_url(address)
        return ap_response({
            "@context": CONTEXT, "id": url, "type": "Application", "preferredUsername": domain,
            "inbox": f"{url}/inbox", "outbox": f"{url}/outbox",
            "publicKey": {"id": self.social.key_id(address, key.name), "owner": url, "publicKeyPem": key.public_pem},
            "manuallyApprovesFollowers": True,
        })

    async def avatar(self, request: web.Request) -> web.StreamResponse:
        from peerage.social import profile

        address = await self._account(request)
        info = await profile.load(self.store, address)
        data = await profile.avatar_bytes(self.store, address) if info.avatar_type else None
        if data is None:
            raise web.HTTPNotFound(text="no public avatar\n")
        return web.Response(body=data, content_type=info.avatar_type,
                            headers={"Cache-Control": "public, max-age=3600"})

    async def profile_page(self, request: web.Request) -> web.StreamResponse:
        address = await self._account(request)
        document = await self.actor_document(address)
        posts = await state.activities(self.store, address, local=True, types=("Create",), public_only=True, limit=20)
        items = []
        for row in posts:
            note = json.loads(row.document).get("object", {})
            if isinstance(note, dict):
                warning = f"<p><strong>{html.escape(str(note.get('summary')))}</strong></p>" if note.get("summary") else ""
                items.append(f"<article>{warning}{_safe_html(str(note.get('content', '')))}"
                             f"<footer><time>{html.escape(str(note.get('published', '')))}</time></footer></article>")
        avatar = f'<img src="{html.escape(document["icon"]["url"])}" alt="" width="96" height="96">' \
            if "icon" in document else ""
        text = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(document['name'])} ({html.escape(address)})</title>
<link rel="alternate" type="application/activity+json" href="{html.escape(document['id'])}"></head>
<body><header>{avatar}<h1>{html.escape(document['name'])}</h1><p>{html.escape(address)}</p>
<ul><li><a href="xmpp:{html.escape(address)}">xmpp:{html.escape(address)}</a></li>
<li><a href="sip:{html.escape(address)}">sip:{html.escape(address)}</a></li>
<li><a href="mailto:{html.escape(address)}">mailto:{html.escape(address)}</a></li></ul></header>
<main>{''.join(items) or '<p>No posts yet.</p>'}</main></body></html>
"""
        response = web.Response(text=text, content_type="text/html")
        response.headers["Vary"] = "Accept"
        return response

    def _collection(self, url: str, items: list[Any], total: int | None = None) -> dict[str, Any]:
        return {"@context": CONTEXT, "id": url, "type": "OrderedCollection",
                "totalItems": len(items) if total is None else total, "orderedItems": items}

    async def outbox(self, request: web.Request) -> web.StreamResponse:
        address = await self._account(request)
        await self._authorized_fetch(request)
        rows = await state.activities(self.store, address, local=True, types=("Create", "Announce"),
                                      public_only=True, limit=PAGE_SIZE)
        items = [json.loads(r.document) for r in rows]
        return ap_response(self._collection(f"{self.social.actor_url(address)}/outbox", items,
                                            await state.count_local(self.store, address)))

    async def followers(self, request: web.Request) -> web.StreamResponse:
        address = await self._account(request)
        await self._authorized_fetch(request)
        rows = await state.followers(self.store, address)
        return ap_response(self._collection(f"{self.social.actor_url(address)}/followers",
                                            [r.actor for r in rows][:PAGE_SIZE], len(rows)))

    async def following(self, request: web.Request) -> web.StreamResponse:
        address = await self._account(request)
        await self._authorized_fetch(request)
        rows = await state.following(self.store, address)
        return ap_response(self._collection(f"{self.social.actor_url(address)}/following",
                                            [r.actor for r in rows][:PAGE_SIZE], len(rows)))

    async def featured(self, request: web.Request) -> web.StreamResponse:
        """Pinned posts (Mastodon's toot:featured): the Notes themselves, the latest pin first."""
        address = await self._account(request)
        await self._authorized_fetch(request)
        items = []
        for row in await state.pinned(self.store, address):
            note = json.loads(row.document).get("object")
            if row.public and isinstance(note, dict):
                items.append(note)
        return ap_response(self._collection(f"{self.social.actor_url(address)}/featured", items))

    async def requests_list(self, request: web.Request) -> web.StreamResponse:
        """The owner's pending follow requests (a locked account), for the web pages."""
        account = await self.auth.account(request, basic=True)
        if account is None:
            raise web.HTTPUnauthorized(text="log in first\n")
        rows = await state.follow_requests(self.store, account)
        return web.json_response({"requests": [{"actor": r.actor, "follow": r.follow_id,
                                                "since": r.created_at} for r in rows]})

    async def status(self, request: web.Request) -> web.StreamResponse:
        address = await self._account(request)
        await self._authorized_fetch(request)
        url = self.social.actor_url(address) + request.path.removeprefix(f"/users/{request.match_info['local']}")
        row = await state.local_activity(self.store, url)
        want_activity = True
        if row is None:
            row = await state.local_object(self.store, url)
            want_activity = False
        if row is None or row.account != address:
            raise web.HTTPNotFound(text="no such object\n")
        if row.deleted:
            return ap_response({"@context": CONTEXT, "id": url, "type": "Tombstone"}, status=410)
        if not row.public:
            raise web.HTTPNotFound(text="no such object\n")
        document = json.loads(row.document)
        if not want_activity and isinstance(document.get("object"), dict):
            document = {"@context": CONTEXT, **document["object"]}
        return ap_response(document)

    async def inbox_read(self, request: web.Request) -> web.StreamResponse:
        """The owner reads what arrived (ActivityPub §5.2: the inbox GET is for its owner)."""
        address = await self._owner(request)
        rows = await state.activities(self.store, address, local=False, limit=PAGE_SIZE)
        return ap_response(self._collection(f"{self.social.actor_url(address)}/inbox",
                                            [json.loads(r.document) for r in rows]))

    async def _owner(self, request: web.Request) -> str:
        address = f"{request.match_info['local'].lower()}@{request[DOMAIN]}"
        account = await self.auth.account(request, basic=True)
        if account is None:
            raise web.HTTPUnauthorized(text="log in as the account's owner\n",
                                       headers={"WWW-Authenticate": 'Basic realm="peerage", charset="UTF-8"'})
        if account != address:
            raise web.HTTPForbidden(text="only the account's owner may do that\n")
        return address

    async def settings(self, request: web.Request) -> web.StreamResponse:
        account = await self.auth.account(request, basic=True)
        if account is None:
            raise web.HTTPUnauthorized(text="log in first\n")
        try:
            body = await request.json()
        except ValueError:
            raise web.HTTPBadRequest(text="expected a JSON object\n") from None
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text="expected a JSON object\n")
        values: dict[str, Any] = {}
        if "discoverable" in body:
            values["discoverable"] = bool(body["discoverable"])
        if "locked" in body:
            values["locked"] = bool(body["locked"])
        if isinstance(body.get("summary"), str):
            values["summary"] = body["summary"][:500]
        if isinstance(body.get("alsoKnownAs"), list):
            values["also_known_as"] = json.dumps([a for a in body["alsoKnownAs"] if isinstance(a, str)
                                                  and a.startswith("https://")][:10])
        await state.set_account(self.store, account, self.host.config.social.discoverable_default, **values)
        if self.social.actor_url(account) and await self.social.discoverable(account):
            await self.send_actor_update(account)
        return web.json_response({"ok": True, **{k: v for k, v in values.items() if k != "also_known_as"}})

    # --- the inbox --------------------------------------------------------------------------------

    async def _verify(self, request: web.Request, body: bytes) -> str:
        """Check the request's signature; the signer's actor id."""
        config = self.host.config.social
        try:
            signed = signatures.parse(request.headers)
        except signatures.SignatureError as exc:
            raise Refused(401, str(exc)) from None
        if self.social.is_blocked(signed.key_id):
            raise Refused(403, f"{host_of(signed.key_id)} is blocked here")
        date = request.headers.get("Date")
        if date:  # a stale request is refused before any key is fetched for it
            import email.utils

            try:
                when = email.utils.parsedate_to_datetime(date).timestamp()
            except (TypeError, ValueError):
                raise Refused(401, "Date is not an HTTP date") from None
            if abs(time.time() - when) > config.signature_max_skew:
                raise Refused(401, "the Date is outside the accepted window")
        url = f"https://{request.host}{request.path_qs}"
        for refresh in (False, True):
            try:
                owner, key = await self.social.public_key(signed.key_id, refresh=refresh)
            except FetchError as exc:
                raise Refused(401, f"the signer's key could not be fetched: {exc}") from None
            try:
                signatures.verify(request.method, url, request.headers, body or None, key, now=time.time(),
                                  max_skew=config.signature_max_skew)
                break
            except signatures.SignatureError as exc:
                if refresh or ("does not verify" not in str(exc) and "does not hold" not in str(exc)):
                    raise Refused(401, str(exc)) from None
                # The key may have been rotated: fetch it once more (Mastodon does the same).
        if await state.seen(self.store, signed.replay_key()):
            raise Refused(401, "this signature was already used (replay)")
        request["social.replay_key"] = signed.replay_key()
        return str(owner)

    async def inbox(self, request: web.Request) -> web.StreamResponse:
        config = self.host.config.social
        if request.content_length is not None and request.content_length > config.max_activity_size:
            raise Refused(413, f"activities are limited to {config.max_activity_size} bytes")
        if "local" in request.match_info:
            await self._account(request)
        body = await self._read(request, config.max_activity_size)
        signer = await self._verify(request, body)
        try:
            activity = parse_document(body, max_size=config.max_activity_size, max_depth=config.max_json_depth)
        except DocumentError as exc:
            raise Refused(exc.status, str(exc)) from None
        actor = id_of(activity.get("actor"))
        kind = activity.get("type")
        if not actor or not isinstance(kind, str):
            raise Refused(400, "an activity needs an actor and a type")
        if self.social.is_blocked(actor):
            raise Refused(403, f"{host_of(actor)} is blocked here")
        activity_id = id_of(activity) or f"{actor}#anonymous-{secrets.token_hex(8)}"
        if max(len(activity_id), len(actor), len(id_of(activity.get("object")))) > URL_LENGTH:
            raise Refused(400, f"ids are limited to {URL_LENGTH} characters")
        if host_of(activity_id) != host_of(actor):
            raise Refused(400, "the activity's id is not on its actor's host")
        if actor != signer:
            # Forwarded (ActivityPub §7.1.2) or relayed by a third server: its body is not believed;
            # what the actor's own server serves is (see _confirm_forwarded).
            if await state.seen(self.store, activity_id):
                return web.Response(status=202, text="already received\n")
            activity = await self._confirm_forwarded(activity, actor, signer, request.match_info.get("local"),
                                                     request[DOMAIN])
        async with self.store.begin() as conn:
            fresh = await state.mark_seen(conn, activity_id)
            await state.mark_seen(conn, request["social.replay_key"])
        if not fresh:
            return web.Response(status=202, text="already received\n")
        if kind not in ACTIVITY_TYPES:
            return web.Response(status=202, text="ignored\n")
        try:
            await self._receive(kind, activity, actor, request[DOMAIN])
        except FetchError as exc:
            log.info("social: %s from %s: %s", kind, actor, exc)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            # A shape we could not read (a list where an object belongs, a missing field): the sender
            # learns it was malformed rather than meeting a 500.
            log.info("social: malformed %s from %s: %s: %s", kind, actor, type(exc).__name__, exc)
            raise Refused(400, f"the {kind} could not be read") from None
        return web.Response(status=202, text="accepted\n")

    async def _confirm_forwarded(self, activity: dict[str, Any], actor: str, signer: str, local: str | None,
                                 domain: str) -> dict[str, Any]:
        """The version of a forwarded activity that its actor's own server confirms, or Refused(401).

        Mastodon forwards replies, Updates and Deletes with the original body under its own HTTP
        signature (and an LD signature, which peerage does not check). The relayer is never trusted
        for what it claims another actor said: a Create or Update is rebuilt from the object as its
        origin serves it (same id, attributed to the actor), a Delete is believed only when the origin
        answers 404/410 or a Tombstone, and anything else only when the origin serves that very
        activity. The request stays signed by a key the relayer owns (checked before), so this costs
        one GET on the actor's server, signed by the addressed account (or the instance actor).
        """
        kind = str(activity.get("type"))
        object_id = id_of(activity.get("object"))
        account = f"{local.lower()}@{domain}" if local else None
        what = f"the {kind} of {actor} forwarded by {signer}"
        if kind in ("Create", "Update", "Delete") and (not object_id or host_of(object_id) != host_of(actor)):
            raise Refused(401, f"{what} is about an object of another host")
        try:
            if kind in ("Create", "Update"):
                fetched = await self.social.signed_get(object_id, account)
                author = actor if object_id == actor else id_of(fetched.get("attributedTo"))
                if id_of(fetched) != object_id or author != actor:
                    raise Refused(401, f"{what}: its origin does not serve that object as the actor's")
                fetched.pop("@context", None)
                confirmed: dict[str, Any] = {"id": id_of(activity), "type": kind, "actor": actor,
                                             "object": fetched, "to": fetched.get("to", []),
                                             "cc": fetched.get("cc", [])}
            elif kind == "Delete":
                try:
                    fetched = await self.social.signed_get(object_id, account)
                except FetchError as exc:
                    if exc.status not in (404, 410):
                        raise
                    fetched = {"id": object_id, "type": "Tombstone"}
                if fetched.get("type") != "Tombstone":
                    raise Refused(401, f"{what}: its origin still serves the object")
                confirmed = {"id": id_of(activity), "type": kind, "actor": actor,
                             "object": {"id": object_id, "type": "Tombstone"}}
            else:
                fetched = await self.social.signed_get(id_of(activity), account)
                if id_of(fetched) != id_of(activity) or fetched.get("type") != kind or \
                        id_of(fetched.get("actor")) != actor:
                    raise Refused(401, f"{what}: its origin does not serve that activity")
                confirmed = fetched
        except FetchError as exc:
            raise Refused(401, f"{what} could not be confirmed at its origin: {exc}") from None
        log.info("social: %s confirmed at its origin", what)
        return {"@context": CONTEXT, **{k: v for k, v in confirmed.items() if k != "@context"}}

    async def _read(self, request: web.Request, limit: int) -> bytes:
        chunks, size = [], 0
        while True:
            chunk = await request.content.read(65536)
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise Refused(413, f"activities are limited to {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _recipients(self, activity: dict[str, Any], actor: str) -> list[str]:
        """Local accounts an activity is for: those addressed or mentioned, and followers of `actor`."""
        found: dict[str, None] = {}
        obj = activity.get("object")
        targets = audience(activity) | (audience(obj) if isinstance(obj, dict) else set())
        if isinstance(obj, dict):
            targets |= {id_of(t.get("href")) for t in obj.get("tag", []) if isinstance(t, dict)} \
                if isinstance(obj.get("tag"), list) else set()
        for target in targets:
            address = self.social.local_address(target)
            if address and not address.startswith("_instance@") and await self.social.discoverable(address):
                found.setdefault(address)
        for address in await state.local_followers_of(self.store, actor):
            found.setdefault(address)
        return list(found)

    async def _store_for(self, accounts: list[str], activity: dict[str, Any], kind: str, actor: str,
                         object_id: str) -> None:
        async with self.store.begin() as conn:
            for account in accounts:
                await state.store_activity(conn, activity_id=id_of(activity) or object_id, account=account,
                                           local=False, type_=kind, actor=actor, object_id=object_id,
                                           public=is_public(activity), document=activity)

    async def _receive(self, kind: str, activity: dict[str, Any], actor: str, domain: str) -> None:
        obj = activity.get("object")
        object_id = id_of(obj)
        if kind == "Follow":
            target = self.social.local_address(object_id)
            if not target or not await self.social.discoverable(target):
                return
            remote = await self.social.actor(actor, target)
            row = await state.account_row(self.store, target)
            known = await state.follower(self.store, target, actor)
            if row is not None and row.locked and (known is None or known.state != "accepted"):
                # A locked account: the request waits for its owner (Accept or Reject in the outbox,
                # or the web page); Mastodon answers nothing until then either.
                await state.add_follower(self.store, target, actor, remote.inbox, remote.shared_inbox,
                                         id_of(activity), state="pending")
                log.info("social: %s asks to follow %s", actor, target)
                return
            await state.add_follower(self.store, target, actor, remote.inbox, remote.shared_inbox, id_of(activity))
            await self._answer_follow(target, "Accept", actor, id_of(activity), remote.inbox)
            log.info("social: %s now follows %s", actor, target)
        elif kind in ("Accept", "Reject"):
            follow = obj if isinstance(obj, dict) else {}
            follow_id = id_of(obj)
            if isinstance(follow, dict) and follow.get("type") not in (None, "Follow"):
                return
            await state.set_following_state(self.store, actor, follow_id, "accepted" if kind == "Accept" else None)
        elif kind == "Undo":
            inner_type = obj.get("type") if isinstance(obj, dict) else None
            if inner_type == "Follow":
                target = self.social.local_address(id_of(obj.get("object"))) if isinstance(obj, dict) else None
                if target:
                    await state.remove_follower(self.store, target, actor)
            else:
                boosts = await state.holders_of(self.store, object_id, actor, "Announce")
                await state.remove_activity(self.store, object_id, actor)
                if boosts and self.social.bridge is not None:  # the repeat leaves the XMPP clients too
                    self.social.bridge.remote_delete(boosts, object_id, actor)
        elif kind == "Create":
            if not isinstance(obj, dict) or host_of(object_id) != host_of(actor) or \
                    id_of(obj.get("attributedTo")) not in ("", actor):
                return
            accounts = await self._recipients(activity, actor)
            reply_to = id_of(obj.get("inReplyTo"))
            parent = await state.local_object(self.store, reply_to) if reply_to else None
            if parent is not None and not parent.deleted and parent.account not in accounts:
                accounts.append(parent.account)  # a reply to a post of ours belongs to its thread
            await self._store_for(accounts, activity, kind, actor, object_id)
            if self.social.bridge is not None:
                self.social.bridge.remote_create(accounts, activity, actor)
        elif kind == "Update":
            if isinstance(obj, dict) and obj.get("type") in ("Person", "Service", "Application", "Group"):
                if object_id == actor:
                    await self.social.actor(actor)  # refresh the cached key and inboxes
            elif isinstance(obj, dict) and host_of(object_id) == host_of(actor):
                await state.replace_object(self.store, object_id, actor, obj)
        elif kind == "Delete":
            if object_id == actor:
                await state.forget_actor(self.store, actor)
            else:
                receivers = await state.receivers_of(self.store, object_id, actor)
                await state.mark_deleted(self.store, object_id, actor)
                if receivers and self.social.bridge is not None:
                    self.social.bridge.remote_delete(receivers, object_id, actor)
        elif kind in ("Like", "Announce"):
            row = await state.local_object(self.store, object_id)
            accounts = [row.account] if row is not None and not row.deleted else []
            if kind == "Announce":
                # Who sees a boost: its addressees and the booster's followers here. An object the
                # booster embeds decides nothing (it is the booster's word for someone else's post).
                others = [a for a in await self._recipients({**activity, "object": object_id}, actor)
                          if a not in accounts]
                if others:
                    boosted = await self._boosted_object(object_id, row, others[0])
                    activity = {**activity, "object": boosted}
                    accounts += others
                    if self.social.bridge is not None:
                        self.social.bridge.remote_announce(others, activity, actor)
                else:
                    activity = {**activity, "object": object_id}
            await self._store_for(accounts, activity, kind, actor, object_id)
        elif kind == "Block":
            target = self.social.local_address(object_id)
            if target:
                await state.remove_follower(self.store, target, actor)
                await state.remove_following(self.store, target, actor)
        elif kind == "Move":
            await self._receive_move(activity, actor)

    async def _boosted_object(self, object_id: str, row: Any, account: str) -> dict[str, Any]:
        """The post an Announce boosts, as its own server serves it (Mastodon's Announce handling
        fetches it from its origin the same way); only a public post of an actor on the object's own
        host can be boosted. A FetchError drops the boost."""
        if row is not None:  # a post of ours
            note = json.loads(row.document).get("object")
            if row.deleted or not row.public or not isinstance(note, dict):
                raise FetchError(f"{object_id}: not a public post")
            return dict(note)
        if self.social.is_blocked(object_id):
            raise FetchError(f"{host_of(object_id)} is blocked")
        fetched = await self.social.signed_get(object_id, account)
        author = id_of(fetched.get("attributedTo"))
        if id_of(fetched) != object_id or fetched.get("type") not in BOOSTABLE_TYPES:
            raise FetchError(f"{object_id}: its origin serves no such post")
        if not author or host_of(author) != host_of(object_id) or self.social.is_blocked(author):
            raise FetchError(f"{object_id}: not attributed to an actor of its own host")
        if not is_public(fetched):
            raise FetchError(f"{object_id}: not public, so not boostable")
        fetched.pop("@context", None)
        return fetched

    async def _answer_follow(self, account: str, kind: str, actor: str, follow_id: str,
                             inbox: str) -> dict[str, Any]:
        me = self.social.actor_url(account)
        follow = {"id": follow_id, "type": "Follow", "actor": actor, "object": me}
        answer = {"@context": CONTEXT, "id": f"{me}/activities/{secrets.token_urlsafe(12)}", "type": kind,
                  "actor": me, "object": follow, "to": [actor]}
        await self._publish_raw(account, answer, [inbox])
        return answer

    async def answer_request(self, address: str, kind: str, target: str) -> dict[str, Any]:
        """The owner of a locked account approves (Accept) or refuses (Reject) a follow request;
        `target` is the Follow's id or the requesting actor."""
        rows = await state.follow_requests(self.store, address)
        row = next((r for r in rows if target in (r.follow_id, r.actor)), None)
        if row is None:
            raise ValueError("no such follow request")
        if kind == "Accept":
            await state.approve_follower(self.store, address, row.actor)
        else:
            await state.remove_follower(self.store, address, row.actor)
        answer = await self._answer_follow(address, kind, row.actor, row.follow_id, row.inbox)
        log.info("social: %s %s the follow of %s", address, "accepted" if kind == "Accept" else "refused", row.actor)
        return answer

    async def pin(self, address: str, kind: str, object_id: str) -> dict[str, Any]:
        """Add (pin) or Remove (unpin) one of the account's public posts to its featured collection;
        followers get the activity, as Mastodon sends it."""
        actor = self.social.actor_url(address)
        row = await state.local_object(self.store, object_id)
        if row is None or row.account != address or row.deleted or not row.public:
            raise ValueError("only this account's own public posts can be pinned")
        if kind == "Add" and row.pinned_at is None and len(await state.pinned(self.store, address)) >= MAX_PINNED:
            raise ValueError(f"at most {MAX_PINNED} posts can be pinned")
        await state.set_pinned(self.store, address, object_id, kind == "Add")
        activity = {"@context": CONTEXT, "id": self._new_id(address), "type": kind, "actor": actor,
                    "object": object_id, "target": f"{actor}/featured", "to": [PUBLIC],
                    "cc": [f"{actor}/followers"]}
        await self._publish_raw(address, activity, await self._follower_inboxes(address), store=False)
        return activity

    async def _receive_move(self, activity: dict[str, Any], actor: str) -> None:
        """Move (Mastodon's account migration): followers of `actor` follow the target instead, if the
        target names `actor` in its alsoKnownAs (the proof the move is wanted by both ends)."""
        target_id = id_of(activity.get("target"))
        if not target_id or id_of(activity.get("object")) != actor:
            return
        target = await self.social.actor(target_id)
        if actor not in ids(target.document.get("alsoKnownAs")):
            log.info("social: Move of %s to %s ignored: the target does not name it", actor, target_id)
            return
        for account in await state.local_followers_of(self.store, actor):
            await state.remove_following(self.store, account, actor)
            await self.follow(account, target_id)

    # --- the outbox (client to server) -----------------------------------------------------------

    async def outbox_post(self, request: web.Request) -> web.StreamResponse:
        address = await self._owner(request)
        if not await self.social.discoverable(address):
            raise web.HTTPConflict(text="publish the account first (it is not discoverable)\n")
        body = await self._read(request, self.host.config.social.max_activity_size)
        try:
            submitted = parse_document(body, max_size=self.host.config.social.max_activity_size,
                                       max_depth=self.host.config.social.max_json_depth)
        except DocumentError as exc:
            raise web.HTTPBadRequest(text=f"{exc}\n") from None
        try:
            activity = await self.client_activity(address, submitted)
        except (FetchError, ValueError) as exc:
            raise web.HTTPBadRequest(text=f"{exc}\n") from None
        response = ap_response(activity, status=201)
        response.headers["Location"] = str(activity["id"])
        return response

    def _new_id(self, address: str, kind: str = "activities") -> str:
        return f"{self.social.actor_url(address)}/{kind}/{secrets.token_urlsafe(12)}"

    async def client_activity(self, address: str, submitted: dict[str, Any]) -> dict[str, Any]:
        kind = submitted.get("type")
        if kind in ("Note", "Article") or (kind == "Create" and isinstance(submitted.get("object"), dict)):
            note = submitted if kind != "Create" else submitted["object"]
            return await self.post_note(address, note)
        target = id_of(submitted.get("object"))
        if kind == "Follow":
            return await self.follow(address, target)
        if kind in ("Like", "Announce"):
            return await self.react(address, kind, target)
        if kind == "Undo":
            return await self.undo(address, target)
        if kind == "Delete":
            return await self.delete(address, target)
        if kind == "Update" and isinstance(submitted.get("object"), dict):
            return await self.update_note(address, submitted["object"])
        if kind == "Block":
            return await self.block(address, target)
        if kind == "Move":
            return await self.move(address, id_of(submitted.get("target")) or target)
        if kind in ("Accept", "Reject"):
            return await self.answer_request(address, kind, target)
        if kind in ("Add", "Remove"):
            if id_of(submitted.get("target")) not in ("", f"{self.social.actor_url(address)}/featured"):
                raise ValueError("Add and Remove work on the featured collection (pinned posts)")
            return await self.pin(address, kind, target)
        raise ValueError(f"unsupported activity type {kind!r}")

    async def _publish_raw(self, address: str, activity: dict[str, Any], inboxes: list[str],
                           *, store: bool = True, object_id: str = "") -> None:
        body = json.dumps(activity, separators=(",", ":"))
        async with self.store.begin() as conn:
            if store:
                await state.store_activity(conn, activity_id=activity["id"], account=address, local=True,
                                           type_=str(activity["type"]), actor=activity["actor"],
                                           object_id=object_id or id_of(activity.get("object")),
                                           public=is_public(activity), document=activity)
            await enqueue(conn, address, inboxes, body)
        self.social.queue.kick()

    async def _follower_inboxes(self, address: str) -> list[str]:
        return [r.shared_inbox or r.inbox for r in await state.followers(self.store, address)]

    async def post_note(self, address: str, note: dict[str, Any], *, sid: str | None = None,
                        from_xmpp: bool = False) -> dict[str, Any]:
        """Publish a Note of `address`; `sid` names its status (the XMPP microblog item id), and
        `from_xmpp` says it came from the microblog node (so it is not mirrored back there)."""
        text = note.get("source", {}).get("content") if isinstance(note.get("source"), dict) else None
        text = str(text if text is not None else note.get("content", ""))
        # Images: the account's own, from the form or its XEP-0363 uploads (peerage.social.media).
        attachments = await self.social.media.attachments(address, note["attachment"]) \
            if note.get("attachment") else []
        if not text.strip() and not attachments:
            raise ValueError("the Note has no content")
        if len(text) > MAX_POST_LENGTH:
            raise ValueError(f"posts are limited to {MAX_POST_LENGTH} characters")
        actor = self.social.actor_url(address)
        domain = address.partition("@")[2]
        mentions: list[Mention] = []
        for handle in find_mentions(text):
            local = self.social.local_address(f"{self.social.base(handle.partition('@')[2])}/users/{handle.partition('@')[0]}") \
                if handle.partition("@")[2] in self.host.config.domains else None
            if local:
                mentions.append(Mention(handle, self.social.actor_url(local), self.social.actor_url(local)))
                continue
            try:
                remote = await self.social.resolve_handle(handle, address)
            except FetchError as exc:
                log.info("social: mention %s not resolved: %s", handle, exc)
                continue
            mentions.append(Mention(handle, remote.id, id_of(remote.document.get("url")) or remote.id))
        content, tags = render_note(text, mentions, self.social.base(domain))
        visibility = str(note.get("visibility", "public"))
        followers = f"{actor}/followers"
        mentioned = [m.actor for m in mentions]
        if visibility == "direct" or (note.get("to") and PUBLIC not in ids(note.get("to")) + ids(note.get("cc"))):
            to = list(dict.fromkeys(mentioned + [i for i in ids(note.get("to")) if i != followers]))
            cc: list[str] = []
        elif visibility == "followers":
            to, cc = [followers], mentioned
        else:
            to, cc = [PUBLIC], [followers, *mentioned]
        object_id = f"{actor}/statuses/{sid}" if sid else self._new_id(address, "statuses")
        published = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        obj: dict[str, Any] = {
            "id": object_id, "type": "Note", "attributedTo": actor, "content": content,
            "source": {"content": text, "mediaType": "text/plain"},
            "published": published, "to": to, "cc": cc, "tag": tags,
            "url": object_id, "sensitive": bool(note.get("summary")),
        }
        if note.get("summary"):  # the content warning (Mastodon's spoiler text)
            obj["summary"] = str(note["summary"])[:500]
        if id_of(note.get("inReplyTo")):
            obj["inReplyTo"] = id_of(note.get("inReplyTo"))
        if attachments:
            obj["attachment"] = attachments
        activity = {"@context": CONTEXT, "id": f"{object_id}/activity", "type": "Create", "actor": actor,
                    "published": published, "to": to, "cc": cc, "object": obj}
        inboxes = [] if PUBLIC not in to and followers not in to + cc else await self._follower_inboxes(address)
        inboxes += await self._inboxes_of(address, [a for a in to + cc if a not in (PUBLIC, followers)])
        if obj.get("inReplyTo"):
            inboxes += await self._author_inbox(address, obj["inReplyTo"])
        await self._publish_raw(address, activity, inboxes, object_id=object_id)
        if PUBLIC in to and not from_xmpp:
            await self._mirror(address, obj)
        return activity

    async def _mirror(self, address: str, note: dict[str, Any] | None, deleted: str = "") -> None:
        """The post on the account's XMPP microblog node too (peerage.social.xmpp_bridge)."""
        bridge = self.social.bridge
        if bridge is None:
            return
        try:
            if note is not None:
                await bridge.local_note(address, note)
            else:
                await bridge.local_delete(address, deleted)
        except Exception:  # the post is out on ActivityPub; the XMPP copy must not undo that
            log.exception("social: mirroring %s on the microblog node failed", address)

    async def _inboxes_of(self, address: str, actors: list[str]) -> list[str]:
        inboxes = []
        for actor in actors:
            if self.social.local_address(actor):
                # A local account's inbox, through the queue like any other: one code path.
                inboxes.append(f"{actor}/inbox")
                continue
            try:
                remote = await self.social.actor(actor, address)
            except FetchError as exc:
                log.info("social: no inbox for %s: %s", actor, exc)
                continue
            inboxes.append(remote.inbox)
        return inboxes

    async def _author_inbox(self, address: str, object_id: str) -> list[str]:
        if self.social.local_address(object_id):
            return []
        try:
            obj = await self.social.signed_get(object_id, address)
        except FetchError as exc:
            log.info("social: %s not fetched: %s", object_id, exc)
            return []
        author = id_of(obj.get("attributedTo")) or id_of(obj.get("actor"))
        return await self._inboxes_of(address, [author]) if author else []

    async def follow(self, address: str, target: str) -> dict[str, Any]:
        remote = await self.social.resolve_handle(target, address)
        actor = self.social.actor_url(address)
        activity = {"@context": CONTEXT, "id": self._new_id(address), "type": "Follow", "actor": actor,
                    "object": remote.id, "to": [remote.id]}
        await state.add_following(self.store, address, remote.id, remote.inbox, activity["id"])
        await self._publish_raw(address, activity, [remote.inbox])
        return activity

    async def react(self, address: str, kind: str, target: str) -> dict[str, Any]:
        if not target:
            raise ValueError(f"{kind} needs an object")
        actor = self.social.actor_url(address)
        activity: dict[str, Any] = {"@context": CONTEXT, "id": self._new_id(address), "type": kind, "actor": actor,
                                    "object": target, "published": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        inboxes = await self._author_inbox(address, target)
        if kind == "Announce":
            activity["to"], activity["cc"] = [PUBLIC], [f"{actor}/followers"]
            inboxes += await self._follower_inboxes(address)
        await self._publish_raw(address, activity, inboxes)
        return activity

    async def undo(self, address: str, target: str) -> dict[str, Any]:
        row = await state.local_activity(self.store, target)
        if row is None or row.account != address or row.type not in ("Follow", "Like", "Announce", "Block"):
            raise ValueError("Undo names no Follow, Like, Announce or Block of this account")
        original = json.loads(row.document)
        original.pop("@context", None)
        actor = self.social.actor_url(address)
        activity = {"@context": CONTEXT, "id": self._new_id(address), "type": "Undo", "actor": actor,
                    "object": original}
        if row.type == "Follow":
            await state.remove_following(self.store, address, id_of(original.get("object")))
            inboxes = await self._inboxes_of(address, [id_of(original.get("object"))])
        elif row.type == "Block":
            inboxes = await self._inboxes_of(address, [id_of(original.get("object"))])
        else:
            inboxes = await self._author_inbox(address, id_of(original.get("object")))
            if row.type == "Announce":
                activity["to"], activity["cc"] = [PUBLIC], [f"{actor}/followers"]
                inboxes += await self._follower_inboxes(address)
        await state.remove_activity(self.store, target, actor)
        await self._publish_raw(address, activity, inboxes)
        return activity

    async def _note_row(self, address: str, object_id: str) -> Any:
        row = await state.local_object(self.store, object_id)
        if row is None or row.account != address or row.deleted:
            raise ValueError("no such post of this account")
        return row

    async def delete(self, address: str, object_id: str, *, from_xmpp: bool = False) -> dict[str, Any]:
        row = await self._note_row(address, object_id)
        created = json.loads(row.document)
        actor = self.social.actor_url(address)
        to, cc = created.get("to", []), created.get("cc", [])
        activity = {"@context": CONTEXT, "id": f"{object_id}#delete", "type": "Delete", "actor": actor,
                    "object": {"id": object_id, "type": "Tombstone"}, "to": to, "cc": cc}
        await state.mark_deleted(self.store, object_id, actor)
        inboxes = await self._follower_inboxes(address)
        inboxes += await self._inboxes_of(address, [a for a in ids(to) + ids(cc)
                                                    if a not in (PUBLIC, f"{actor}/followers")])
        await self._publish_raw(address, activity, inboxes, store=False)
        if not from_xmpp:
            await self._mirror(address, None, object_id)
        return activity

    async def update_note(self, address: str, submitted: dict[str, Any], *,
                          from_xmpp: bool = False) -> dict[str, Any]:
        object_id = id_of(submitted)
        row = await self._note_row(address, object_id)
        created = json.loads(row.document)
        note = dict(created["object"])
        text = str(submitted.get("content", ""))
        if not text.strip() or len(text) > MAX_POST_LENGTH:
            raise ValueError("an Update needs content within the length limit")
        mentions = [Mention(t["name"].lstrip("@"), t["href"], t["href"]) for t in note.get("tag", [])
                    if isinstance(t, dict) and t.get("type") == "Mention"]
        note["content"], note["tag"] = render_note(text, mentions, self.social.base(address.partition("@")[2]))
        note["source"] = {"content": text, "mediaType": "text/plain"}
        note["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if "summary" in submitted:
            note["summary"], note["sensitive"] = str(submitted["summary"] or ""), bool(submitted["summary"])
        actor = self.social.actor_url(address)
        await state.replace_object(self.store, object_id, actor, note)
        activity = {"@context": CONTEXT, "id": f"{object_id}#update-{int(time.time())}", "type": "Update",
                    "actor": actor, "object": note, "to": note.get("to", []), "cc": note.get("cc", [])}
        inboxes = await self._follower_inboxes(address)
        await self._publish_raw(address, activity, inboxes, store=False)
        if PUBLIC in ids(note.get("to")) and not from_xmpp:
            await self._mirror(address, note)
        return activity

    async def block(self, address: str, target: str) -> dict[str, Any]:
        remote = await self.social.resolve_handle(target, address)
        actor = self.social.actor_url(address)
        await state.remove_follower(self.store, address, remote.id)
        await state.remove_following(self.store, address, remote.id)
        activity = {"@context": CONTEXT, "id": self._new_id(address), "type": "Block", "actor": actor,
                    "object": remote.id, "to": [remote.id]}
        await self._publish_raw(address, activity, [remote.inbox])
        return activity

    async def move(self, address: str, target: str) -> dict[str, Any]:
        remote = await self.social.resolve_handle(target, address)
        actor = self.social.actor_url(address)
        if actor not in ids(remote.document.get("alsoKnownAs")):
            raise ValueError(f"{remote.id} must list {actor} in its alsoKnownAs before the move")
        await state.set_account(self.store, address, self.host.config.social.discoverable_default,
                                moved_to=remote.id)
        activity = {"@context": CONTEXT, "id": self._new_id(address), "type": "Move", "actor": actor,
                    "object": actor, "target": remote.id, "to": [f"{actor}/followers"]}
        await self._publish_raw(address, activity, await self._follower_inboxes(address))
        return activity

    async def send_actor_update(self, address: str) -> None:
        document = await self.actor_document(address)
        actor = document["id"]
        activity = {"@context": CONTEXT, "id": f"{actor}#update-{int(time.time())}", "type": "Update",
                    "actor": actor, "object": document, "to": [PUBLIC], "cc": [f"{actor}/followers"]}
        await self._publish_raw(address, activity, await self._follower_inboxes(address), store=False)


def _safe_html(content: str) -> str:
    """A stored Note's HTML for our own page: our own rendering only has p, br, a and span; anything
    else is shown as text."""
    import re

    allowed = re.compile(r"^</?(p|br|span|a)(\s+(href|class|rel)=\"[^\"<>]*\")*\s*/?>$")
    out = []
    for part in re.split(r"(<[^>]*>)", content):
        if part.startswith("<"):
            out.append(part if allowed.match(part) and "javascript:" not in part.lower() else html.escape(part))
        else:
            out.append(part)
    return "".join(out)


__all__ = ["LD_MEDIA_TYPE", "ActivityPubRoutes"]
