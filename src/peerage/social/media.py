"""Attachments of local posts: the images an account posts, kept and served for the social service.

This module is in charge of:

- taking an image an account attaches to a post, from the web compose form or from a file of its own
  in the XEP-0363 upload store (an outbox Note's ``attachment`` naming its ``/upload/…`` URL, or the
  same URL in an XMPP microblog entry's ``link rel=enclosure``); the bytes are copied, as upload files
  expire after ``[xmpp.upload] expire_days`` while a post's picture must last as long as the post;
- checking it: an image type recognised by its first bytes (PNG, JPEG, GIF, WebP: what Mastodon
  takes as images), the declared type ignored; at most ``[social] max_attachment_size`` bytes; at most
  MAX_ATTACHMENTS per post; a description (alt text) of at most MAX_DESCRIPTION characters;
- storing it durably (``BlobStore`` under ``data_dir/social/media``, or in cluster mode rows of
  ``cluster_blobs`` of kind ``media`` that every node serves; one ``social_media`` row), and
  serving it at ``/media/TOKEN/NAME`` as the upload store serves files: ``nosniff``, a sandboxing CSP,
  CORS and Cross-Origin-Resource-Policy so remote servers and web clients show it inline;
- the ActivityPub form of it (``Document`` with ``mediaType``, ``url``, ``name``; no blurhash).

Remote attachments are never fetched or proxied here: the pages link to them (https only).
"""

from __future__ import annotations

import asyncio
import secrets
import time
import urllib.parse
from pathlib import Path
from typing import Any

from aiohttp import web
from sqlalchemy import insert, select

from peerage.mail.mailbox.blobs import Blobs, BlobStore
from peerage.social.tables import social_media

# Images per post: Mastodon's MAX_MEDIA_ATTACHMENTS (4).
MAX_ATTACHMENTS = 4
# Alt text length: Mastodon's MediaAttachment::MAX_DESCRIPTION_LENGTH (1,500).
MAX_DESCRIPTION = 1500
# Image types by their magic bytes (the declared Content-Type is the sender's word, not the file's).
SIGNATURES: tuple[tuple[str, bytes, int], ...] = (
    ("image/png", b"\x89PNG\r\n\x1a\n", 0),
    ("image/jpeg", b"\xff\xd8\xff", 0),
    ("image/gif", b"GIF87a", 0),
    ("image/gif", b"GIF89a", 0),
    ("image/webp", b"WEBP", 8),  # RIFF....WEBP
)
EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/gif": "gif", "image/webp": "webp"}
SERVED_CSP = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; sandbox"


class MediaError(ValueError):
    """An attachment refused (its text says why, for the poster)."""


def sniff(data: bytes) -> str | None:
    """The image type of `data` by its first bytes, or None."""
    for media_type, magic, offset in SIGNATURES:
        if data[offset:offset + len(magic)] == magic and (media_type != "image/webp" or data[:4] == b"RIFF"):
            return media_type
    return None


class MediaStore:
    def __init__(self, social: Any) -> None:
        self.social = social
        self.host = social.host
        self.store = social.host.store
        cluster = getattr(self.host, "cluster", None)
        self.blobs: Blobs = (cluster.blobs("media") if cluster is not None
                             else BlobStore(Path(self.host.config.data_dir) / "social" / "media"))

    @property
    def max_size(self) -> int:
        return int(self.host.config.social.max_attachment_size)

    async def add(self, account: str, data: bytes, description: str = "") -> dict[str, Any]:
        """Store an image of `account`; its ActivityPub attachment (Document)."""
        if not data:
            raise MediaError("the attachment is empty")
        if len(data) > self.max_size:
            raise MediaError(f"attachments are limited to {self.max_size} bytes")
        media_type = sniff(data)
        if media_type is None:
            raise MediaError("only PNG, JPEG, GIF and WebP images can be attached")
        description = description.strip()[:MAX_DESCRIPTION]
        token = secrets.token_urlsafe(18)
        filename = f"{token[:8]}.{EXTENSIONS[media_type]}"
        blob = await asyncio.to_thread(self.blobs.write, data)
        async with self.store.begin() as conn:
            await conn.execute(insert(social_media).values(
                token=token, account=account, media_type=media_type, size=len(data), description=description,
                filename=filename, blob=blob, created_at=time.time()))
        return self.document(account, token, filename, media_type, description)

    def document(self, account: str, token: str, filename: str, media_type: str, description: str) -> dict[str, Any]:
        base = self.social.base(account.partition("@")[2])
        attachment: dict[str, Any] = {"type": "Document", "mediaType": media_type,
                                      "url": f"{base}/media/{token}/{filename}"}
        if description:
            attachment["name"] = description
        return attachment

    async def own(self, account: str, url: str) -> dict[str, Any] | None:
        """The attachment for `url` if it is `account`'s own stored media, else None."""
        token, filename = _media_path(url, self.social.base(account.partition("@")[2]))
        if not token:
            return None
        async with self.store.begin() as conn:
            row = (await conn.execute(select(social_media).where(social_media.c.token == token))).first()
        if row is None or row.account != account or row.filename != filename:
            return None
        return self.document(account, row.token, row.filename, row.media_type, row.description)

    async def from_upload(self, account: str, url: str, description: str = "") -> dict[str, Any]:
        """Copy `account`'s own XEP-0363 upload at `url` into the media store."""
        from peerage.xmpp.extables import upload_files

        base = self.social.base(account.partition("@")[2])
        parts = urllib.parse.urlsplit(url)
        segments = parts.path.split("/")
        if f"{parts.scheme}://{parts.netloc}" != base or len(segments) != 4 or segments[1] != "upload":
            raise MediaError("an attachment must be an image of this server's upload service or the form")
        slot, filename = segments[2], urllib.parse.unquote(segments[3])
        async with self.store.begin() as conn:
            row = (await conn.execute(select(upload_files).where(upload_files.c.slot == slot))).first()
        if row is None or row.filename != filename or row.blob is None or row.expires <= time.time():
            raise MediaError("no such uploaded file (it may have expired)")
        if row.owner.partition("/")[0].lower() != account:
            raise MediaError("only your own uploads can be attached")
        if row.size > self.max_size:
            raise MediaError(f"attachments are limited to {self.max_size} bytes")
        from peerage.xmpp.features.upload import upload_blobs

        data = await asyncio.to_thread(upload_blobs(self.host).read, row.blob)
        return await self.add(account, data, description)

    async def attachments(self, account: str, submitted: Any) -> list[dict[str, Any]]:
        """The attachments a submitted Note names (``attachment``: objects with ``url``, or URLs):
        each must be the account's own media or upload; anything else is refused."""
        items = submitted if isinstance(submitted, list) else [submitted] if submitted else []
        if len(items) > MAX_ATTACHMENTS:
            raise MediaError(f"at most {MAX_ATTACHMENTS} attachments per post")
        found = []
        for item in items:
            url = item if isinstance(item, str) else item.get("url") if isinstance(item, dict) else None
            if isinstance(url, dict):
                url = url.get("href")
            if not isinstance(url, str):
                raise MediaError("an attachment needs a url")
            description = str(item.get("name") or "") if isinstance(item, dict) else ""
            known = await self.own(account, url)
            found.append(known if known is not None else await self.from_upload(account, url, description))
        return found

    # --- serving ----------------------------------------------------------------------------

    def setup(self, ctx: Any) -> None:
        ctx.app.router.add_get("/media/{token}/{filename}", self.serve)  # and HEAD

    async def serve(self, request: web.Request) -> web.StreamResponse:
        token = request.match_info["token"]
        if len(token) > 32:
            raise web.HTTPNotFound(text="no such file\n")
        async with self.store.begin() as conn:
            row = (await conn.execute(select(social_media).where(social_media.c.token == token))).first()
        if row is None or row.filename != request.match_info["filename"]:
            raise web.HTTPNotFound(text="no such file\n")
        from peerage.xmpp.features.upload import serve_blob

        return await serve_blob(self.blobs, row.blob, {
            "Content-Type": row.media_type,
            "Content-Security-Policy": SERVED_CSP,
            "X-Content-Type-Options": "nosniff",
            "Access-Control-Allow-Origin": "*",
            "Cross-Origin-Resource-Policy": "cross-origin",
            "Cache-Control": "public, max-age=604800, immutable",
        })


def _media_path(url: str, base: str) -> tuple[str, str]:
    parts = urllib.parse.urlsplit(url)
    segments = parts.path.split("/")
    if f"{parts.scheme}://{parts.netloc}" != base or len(segments) != 4 or segments[1] != "media":
        return "", ""
    return segments[2], segments[3]


def safe_remote_attachments(note: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(url, media type, description) of a remote Note's attachments that may be linked: https
    URLs only (no javascript:, data: or http: links on our pages)."""
    items = note.get("attachment")
    found = []
    for item in items if isinstance(items, list) else [items] if isinstance(items, dict) else []:
        if not isinstance(item, dict):
            continue
        url = item.get("url")
        if isinstance(url, list):
            url = url[0] if url else None
        if isinstance(url, dict):
            url = url.get("href")
        if isinstance(url, str) and url.startswith("https://") and len(url) <= 2048:
            found.append((url, str(item.get("mediaType") or ""), str(item.get("name") or "")[:MAX_DESCRIPTION]))
    return found[:MAX_ATTACHMENTS * 4]


__all__ = ["MAX_ATTACHMENTS", "MediaError", "MediaStore", "safe_remote_attachments", "sniff"]
