"""The social web pages behind the one login: timeline, compose, follow by address, notifications.

This module is in charge of ``/social/`` (the home timeline with the compose form and follow box),
``/social/notifications`` (follow requests to approve or refuse, new followers, mentions and direct
messages, likes and boosts of the account's posts) and the form posts behind them
(``/social/compose``, ``/social/follow``, ``/social/act``). The pages are rendered on the server as
plain HTML forms: no script at all, so the web service's default CSP (``script-src 'self'``, no
inline anything) holds as it is; the stylesheet is ``/social/social.css``. Every form carries the
session's CSRF token (``csrf`` field), which ``Authenticator.principal`` checks with the origin on
each POST; a page without a session redirects to ``/login?next=…``. A form post answers 303 back to
its page, with a one-line notice.

Remote content is never shown as HTML: a Note's HTML is flattened to text and escaped
(``xmpp_bridge.html_to_text``), so a hostile post cannot inject markup into the page.
"""

from __future__ import annotations

import html
import json
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import BodyPartReader, web

from peerage.social import state
from peerage.social.core import PUBLIC, id_of, ids
from peerage.social.fetch import FetchError
from peerage.social.media import MAX_ATTACHMENTS, safe_remote_attachments
from peerage.social.xmpp_bridge import html_to_text
from peerage.web import WebContext
from peerage.web.auth import CSRF_FIELD, Authenticator

# Items on one page (Mastodon's web UI loads 20 at a time).
PAGE_ITEMS = 40
# Largest form post (a post of MAX_POST_LENGTH characters, URL-encoded, fits several times over).
FORM_LIMIT = 65536

CSS = """
body{font-family:system-ui,sans-serif;margin:0;background:#f3f4f6;color:#111827}
header{background:#1f2937;color:#fff;padding:.6rem 1rem;display:flex;gap:1rem;align-items:center}
header a{color:#fff}header form{margin-left:auto}main{max-width:44rem;margin:1rem auto;padding:0 1rem}
section,article{background:#fff;border-radius:10px;padding:1rem;margin-bottom:1rem;box-shadow:0 1px 4px rgba(0,0,0,.06)}
textarea{width:100%;box-sizing:border-box;min-height:5rem;font:inherit}input[type=text]{width:100%;box-sizing:border-box}
article .who{font-weight:600}article .when{color:#6b7280;font-size:.8rem}article form{display:inline}
.notice{background:#ecfdf5;border:1px solid #a7f3d0;padding:.5rem 1rem;border-radius:8px}
.warning{color:#92400e;font-weight:600}button{cursor:pointer}.attachments img{max-width:100%;border-radius:6px}
"""


def _cursor(request: web.Request) -> int | None:
    """The `before` query parameter: the row id a page of older items starts under."""
    value = request.query.get("before", "")
    return int(value) if value.isdigit() and len(value) < 19 else None


def _older_link(page: str, rows: Any, size: int) -> str:
    """An "Older" link when more than `size` rows were found (one more than a page is read)."""
    if len(rows) <= size:
        return ""
    return f'<p><a id=older rel=next href="{page}?before={rows[size - 1].id}">Older</a></p>'


def _text(content: str) -> str:
    return html.escape(html_to_text(content)).replace("\n", "<br>")


class SocialPages:
    def __init__(self, social: Any) -> None:
        self.social = social
        self.store = social.host.store
        self.auth: Any = None

    def setup(self, ctx: WebContext) -> None:
        self.auth = ctx.auth
        r = ctx.app.router
        r.add_get("/social", self.redirect)
        r.add_get("/social/", self.timeline)
        r.add_get("/social/notifications", self.notifications)
        r.add_get("/social/social.css", self.css)
        r.add_post("/social/compose", self.compose)
        r.add_post("/social/follow", self.follow)
        r.add_post("/social/act", self.act)

    async def redirect(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/social/")

    async def css(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text=CSS, content_type="text/css", headers={"Cache-Control": "public, max-age=3600"})

    # --- the session ------------------------------------------------------------------------------

    async def _session(self, request: web.Request) -> tuple[str, str]:
        found = await self.auth.session(request)
        if found is None:
            raise web.HTTPFound("/login?" + urlencode({"next": request.path}))
        return found[1].account, found[1].csrf

    async def _form(self, request: web.Request) -> tuple[str, dict[str, str]]:
        if request.content_length is not None and request.content_length > FORM_LIMIT:
            raise web.HTTPRequestEntityTooLarge(max_size=FORM_LIMIT, actual_size=request.content_length)
        account = await self.auth.account(request)  # checks the origin and the csrf field
        if account is None:
            raise web.HTTPFound("/login?next=/social/")
        form = await request.post()
        return account, {k: str(v) for k, v in form.items() if isinstance(v, str)}

    @staticmethod
    def _back(page: str, notice: str) -> web.HTTPSeeOther:
        return web.HTTPSeeOther(f"{page}?{urlencode({'notice': notice[:300]})}")

    # --- rendering ----------------------------------------------------------------------------

    def _page(self, title: str, account: str, csrf: str, body: str, request: web.Request) -> web.Response:
        notice = request.query.get("notice", "")
        notice_html = f'<p class=notice role=status id=notice>{html.escape(notice)}</p>' if notice else ""
        local = account.partition("@")[0]
        text = (
            "<!doctype html><html lang=en><head><meta charset=utf-8>"
            '<meta name=viewport content="width=device-width,initial-scale=1">'
            f"<title>{html.escape(title)}</title><link rel=stylesheet href=/social/social.css></head><body>"
            f'<header><strong>{html.escape(account)}</strong><a href="/social/">Timeline</a>'
            f'<a href="/social/notifications">Notifications</a><a href="/@{quote(local)}">Profile</a>'
            f'<form method=post action=/logout><input type=hidden name=csrf value="{html.escape(csrf)}">'
            "<button>Log out</button></form></header>"
            f"<main>{notice_html}{body}</main></body></html>"
        )
        response = web.Response(text=text, content_type="text/html")
        response.headers["Cache-Control"] = "no-store"
        return response

    @staticmethod
    def _button(csrf: str, action: str, target: str, label: str, page: str = "/social/") -> str:
        return (f'<form method=post action=/social/act><input type=hidden name=csrf value="{html.escape(csrf)}">'
                f'<input type=hidden name=action value="{action}"><input type=hidden name=page value="{page}">'
                f'<input type=hidden name=object value="{html.escape(target)}">'
                f'<button data-action="{action}">{html.escape(label)}</button></form>')

    def _article(self, row: Any, account: str, csrf: str) -> str:
        document = json.loads(row.document)
        mine = row.local
        note = document.get("object")
        boosted = ""
        if row.type == "Announce":
            boosted = f"<p class=when>boosted by {html.escape('you' if mine else id_of(document.get('actor')))}</p>"
            if not isinstance(note, dict):  # our own boost, or one whose post was not fetched
                note = {"id": id_of(note), "content": f"<p>{id_of(note)}</p>", "attributedTo": ""}
        if not isinstance(note, dict):
            return ""
        author = "you" if mine and row.type == "Create" else \
            id_of(note.get("attributedTo")) or id_of(document.get("actor"))
        warning = f'<p class=warning>{html.escape(str(note["summary"]))}</p>' if note.get("summary") else ""
        audience = ids(document.get("to")) + ids(document.get("cc"))
        visibility = "public" if PUBLIC in audience else "followers" if any(
            a.endswith("/followers") for a in audience) else "direct"
        buttons = ""
        object_id = id_of(note)
        if mine and row.type == "Create":
            pin = ("unpin", "Unpin") if row.pinned_at is not None else ("pin", "Pin")
            buttons = self._button(csrf, "delete", object_id, "Delete")
            if visibility == "public":
                buttons += self._button(csrf, pin[0], object_id, pin[1])
        elif row.type == "Create" or (row.type == "Announce" and note.get("attributedTo")):
            buttons = self._button(csrf, "like", object_id, "Like") + self._button(csrf, "boost", object_id, "Boost")
        return (f'<article data-id="{html.escape(object_id)}" data-visibility="{visibility}">{boosted}'
                f'<p class=who>{html.escape(author)}</p>{warning}<div class=content>{_text(str(note.get("content", "")))}</div>'
                f"{self._attachments(note, account)}"
                f'<p class=when>{html.escape(str(note.get("published", "")))} · {visibility}</p>{buttons}</article>')

    def _attachments(self, note: dict[str, Any], account: str) -> str:
        """A post's images: ours shown (same origin, so the page's CSP img-src 'self' allows them),
        remote ones linked, never loaded by the page (no tracking pixel, no mixed origin); https only."""
        base = self.social.base(account.partition("@")[2])
        out = []
        for url, media_type, description in safe_remote_attachments(note):
            label = html.escape(description or "attachment")
            if url.startswith(f"{base}/media/"):
                out.append(f'<img src="{html.escape(url.removeprefix(base))}" alt="{label}" loading=lazy>')
            else:
                out.append(f'<a class=attachment href="{html.escape(url)}" rel="noopener noreferrer nofollow ugc" '
                           f'target=_blank>{label}</a> <small>{html.escape(media_type)}</small>')
        return f"<div class=attachments>{' '.join(out)}</div>" if out else ""

    # --- pages --------------------------------------------------------------------------------

    async def timeline(self, request: web.Request) -> web.StreamResponse:
        account, csrf = await self._session(request)
        token = html.escape(csrf)
        if not await self.social.discoverable(account):
            body = ("<section><h1>Your social profile is private</h1><p>Publishing it makes "
                    f"{html.escape(account)} findable and followable on the fediverse (Mastodon and others).</p>"
                    + self._button(csrf, "publish", account, "Publish my profile") + "</section>")
            return self._page("Social", account, csrf, body, request)
        before = _cursor(request)
        rows = await state.timeline(self.store, account, PAGE_ITEMS + 1, before)
        older = _older_link("/social/", rows, PAGE_ITEMS)
        rows = rows[:PAGE_ITEMS]
        following = await state.following(self.store, account, accepted_only=False)
        follows = "".join(
            f"<li>{html.escape(r.actor)} ({html.escape(r.state)}) "
            + self._button(csrf, "unfollow", r.actor, "Unfollow") + "</li>" for r in following)
        body = (
            "<section><h1>Post</h1><form method=post action=/social/compose id=compose enctype=multipart/form-data>"
            f'<input type=hidden name=csrf value="{token}">'
            '<label for=summary>Content warning (optional)</label><input type=text id=summary name=summary maxlength=500>'
            '<label for=content>What is on your mind?</label><textarea id=content name=content required maxlength=5000></textarea>'
            '<label for=visibility>Who sees it</label><select id=visibility name=visibility>'
            '<option value=public>Everyone</option><option value=followers>Followers only</option>'
            '<option value=direct>Only the people mentioned</option></select>'
            '<label for=image>Images (PNG, JPEG, GIF, WebP; up to 4)</label>'
            '<input type=file id=image name=image multiple accept="image/png,image/jpeg,image/gif,image/webp">'
            '<label for=alt>Image description</label><input type=text id=alt name=alt maxlength=1500>'
            ' <button type=submit>Post</button></form></section>'
            "<section><h2>Follow</h2><form method=post action=/social/follow id=follow>"
            f'<input type=hidden name=csrf value="{token}">'
            '<input type=text id=handle name=handle placeholder="user@example.social" required>'
            f' <button type=submit>Follow</button></form><ul id=following>{follows}</ul></section>'
            f'<div id=timeline>{"".join(self._article(r, account, csrf) for r in rows) or "<p>Nothing yet.</p>"}</div>'
            f"{older}"
        )
        return self._page("Social", account, csrf, body, request)

    async def notifications(self, request: web.Request) -> web.StreamResponse:
        account, csrf = await self._session(request)
        me = self.social.actor_url(account)
        page = "/social/notifications"
        requests = "".join(
            f'<li data-actor="{html.escape(r.actor)}">{html.escape(r.actor)} asks to follow you '
            + self._button(csrf, "approve", r.actor, "Approve", page)
            + self._button(csrf, "refuse", r.actor, "Refuse", page) + "</li>"
            for r in await state.follow_requests(self.store, account))
        followers = "".join(f"<li>{html.escape(r.actor)}</li>" for r in list(await state.followers(self.store, account))[-PAGE_ITEMS:])
        items = []
        # Rows are read a scan's worth at a time (not every received post is a notification); the
        # "Older" link goes on from the last row read.
        scanned = list(await state.activities(self.store, account, local=False, types=("Create", "Like", "Announce"),
                                              limit=PAGE_ITEMS * 3 + 1, before=_cursor(request)))
        older = _older_link(page, scanned, PAGE_ITEMS * 3)
        for row in scanned[:PAGE_ITEMS * 3]:
            document = json.loads(row.document)
            actor = html.escape(row.actor)
            if row.type in ("Like", "Announce"):
                verb = "liked" if row.type == "Like" else "boosted"
                items.append(f'<li data-kind="{row.type}">{actor} {verb} <a href="{html.escape(row.object_id)}">your post</a></li>')
                continue
            note = document.get("object")
            if not isinstance(note, dict):
                continue
            mentioned = {id_of(t.get("href")) for t in note.get("tag", []) if isinstance(t, dict)} \
                if isinstance(note.get("tag"), list) else set()
            if me in mentioned or me in ids(document.get("to")) + ids(note.get("to")):
                direct = PUBLIC not in ids(document.get("to")) + ids(document.get("cc"))
                kind = "direct" if direct else "mention"
                items.append(f'<li data-kind="{kind}">{actor} {"wrote to you" if direct else "mentioned you"}: '
                             f"{_text(str(note.get('content', '')))}</li>")
        body = (f'<section><h1>Follow requests</h1><ul id=requests>{requests or "<li>None.</li>"}</ul></section>'
                f'<section><h2>Notifications</h2><ul id=notifications>{"".join(items) or "<li>None yet.</li>"}</ul>{older}</section>'
                f'<section><h2>Followers</h2><ul id=followers>{followers or "<li>None yet.</li>"}</ul></section>')
        return self._page("Notifications", account, csrf, body, request)

    # --- form posts ---------------------------------------------------------------------------

    async def _multipart(self, request: web.Request) -> tuple[str, dict[str, str], list[bytes]]:
        """A multipart compose form: its fields and images. The csrf field must come before any file
        (browsers send fields in the form's order, and the token is the form's first field), so no
        image of a forged request is even read; each part is bounded as it is read."""
        found = await self.auth.session(request)
        if found is None:
            raise web.HTTPFound("/login?next=/social/")
        session = found[1]
        limit = self.social.host.config.social.max_attachment_size
        fields: dict[str, str] = {}
        files: list[bytes] = []
        checked = False
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader) or not part.name:
                raise web.HTTPBadRequest(text="unexpected form part\n")
            if part.filename is None:
                value = await part.read(decode=False)
                if len(value) > FORM_LIMIT or len(fields) > 16:
                    raise web.HTTPRequestEntityTooLarge(max_size=FORM_LIMIT, actual_size=len(value))
                fields[part.name] = value.decode("utf-8", "replace")
                if part.name == CSRF_FIELD:
                    Authenticator.check_csrf(request, session, fields[part.name])
                    checked = True
                continue
            if not checked:
                raise web.HTTPForbidden(text="the form's csrf field must come first\n")
            data = bytearray()
            while chunk := await part.read_chunk(65536):
                data += chunk
                if len(data) > limit:
                    raise self._back("/social/", f"not posted: images are limited to {limit} bytes")
            if data:
                if len(files) >= MAX_ATTACHMENTS:
                    raise self._back("/social/", f"not posted: at most {MAX_ATTACHMENTS} images per post")
                files.append(bytes(data))
        if not checked:
            Authenticator.check_csrf(request, session, None)  # raises: no token
        return session.account, fields, files

    async def compose(self, request: web.Request) -> web.StreamResponse:
        files: list[bytes] = []
        if request.content_type == "multipart/form-data":
            account, form, files = await self._multipart(request)
        else:
            account, form = await self._form(request)
        note: dict[str, Any] = {"content": form.get("content", ""), "visibility": form.get("visibility", "public")}
        if note["visibility"] not in ("public", "followers", "direct"):
            raise self._back("/social/", "unknown visibility")
        if form.get("summary", "").strip():
            note["summary"] = form["summary"].strip()
        if not await self.social.discoverable(account):
            raise self._back("/social/", "publish your profile first")
        try:
            media = self.social.media
            note["attachment"] = [await media.add(account, data, form.get("alt", "")) for data in files]
            await self.social.activitypub.post_note(account, note)
        except (FetchError, ValueError) as exc:
            raise self._back("/social/", f"not posted: {exc}") from None
        raise self._back("/social/", "posted")

    async def follow(self, request: web.Request) -> web.StreamResponse:
        account, form = await self._form(request)
        handle = form.get("handle", "").strip()
        try:
            await self.social.activitypub.follow(account, handle)
        except (FetchError, ValueError) as exc:
            raise self._back("/social/", f"could not follow {handle}: {exc}") from None
        raise self._back("/social/", f"asked to follow {handle}")

    async def act(self, request: web.Request) -> web.StreamResponse:
        account, form = await self._form(request)
        action, target = form.get("action", ""), form.get("object", "")
        page = form.get("page") if form.get("page") in ("/social/", "/social/notifications") else "/social/"
        assert page is not None
        ap = self.social.activitypub
        try:
            if action == "publish":
                await state.set_account(self.store, account, self.social.host.config.social.discoverable_default,
                                        discoverable=True)
                await self.social.signing_key(account)
                raise self._back(page, "your profile is public")
            if not await self.social.discoverable(account):
                raise self._back(page, "publish your profile first")
            if action == "like":
                await ap.react(account, "Like", target)
            elif action == "boost":
                await ap.react(account, "Announce", target)
            elif action == "delete":
                await ap.delete(account, target)
            elif action in ("pin", "unpin"):
                await ap.pin(account, "Add" if action == "pin" else "Remove", target)
            elif action in ("approve", "refuse"):
                await ap.answer_request(account, "Accept" if action == "approve" else "Reject", target)
            elif action == "unfollow":
                rows = await state.following(self.store, account, accepted_only=False)
                row = next((r for r in rows if r.actor == target), None)
                if row is None:
                    raise ValueError("you do not follow that account")
                await ap.undo(account, row.follow_id)
            else:
                raise ValueError(f"unknown action {action!r}")
        except (FetchError, ValueError) as exc:
            raise self._back(page, f"{action} failed: {exc}") from None
        raise self._back(page, {"like": "liked", "boost": "boosted", "delete": "deleted", "pin": "pinned",
                                "unpin": "unpinned", "approve": "approved", "refuse": "refused",
                                "unfollow": "unfollowed"}[action])
