"""XEP-0363 HTTP File Upload: the upload.DOMAIN service, its slots, and the HTTPS side that stores files.

This module is in charge of:

- one hosted service JID ``upload.DOMAIN`` per hosted domain (``peerage.xmpp.hosted``), listed in the
  domain's disco#items, whose disco#info shows the ``store/file`` identity, ``urn:xmpp:http:upload:0``
  and the ``max-file-size`` form (XEP-0363 section 3);
- slot requests (section 4) from accounts of this server, with the section 4.1 errors: a file over
  ``[xmpp.upload] max_file_size`` gets ``<not-acceptable/>`` with ``<file-too-large><max-file-size/>``,
  an account over its quota or its slot rate, or any account once the server-wide ``total_quota`` is
  reached, gets ``<resource-constraint/>`` (type wait) with ``<retry stamp=.../>`` when it may try
  again, and a JID of another server ``<not-allowed/>``;
- the HTTPS routes under ``/upload/<slot>/<filename>`` on the web service: PUT with the slot's bearer
  token (section 5: the slot names the ``Authorization`` header), GET and HEAD for anyone holding the
  URL, OPTIONS for CORS preflights (section 5.1 expects browsers' clients to upload cross-origin);
- storage as the mail bodies are stored (``peerage.mail.mailbox.blobs.BlobStore``: durable files under
  the data directory, fan-out directories; in cluster mode rows of ``cluster_blobs``, kind ``upload``,
  so that a file PUT on one node is served by every node), one ``upload_files`` row per slot, expiry
  after ``[xmpp.upload] expire_days``.

Uploaded bytes are served from the domain's own origin, so they are sandboxed: ``Content-Security-Policy:
sandbox`` makes a served document an opaque origin that cannot read the site's cookies or APIs,
``nosniff`` keeps the declared type, and only images, audio, video and plain text are shown inline
(everything else is an attachment), as Prosody's mod_http_file_share does.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import logging
import re
import secrets
import time
import urllib.parse
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from sqlalchemy import and_, delete, func, insert, select, update

from peerage.mail.mailbox.blobs import Blobs, BlobStore
from peerage.xmpp.extables import upload_files
from peerage.xmpp.features import Feature, IqContext, result
from peerage.xmpp.features.disco import DISCO_INFO_NS, DISCO_ITEMS_NS, DiscoItem, data_form, disco_of
from peerage.xmpp.hosted import HostedService, add_service, hook_service_iq
from peerage.xmpp.jid import JidError, split_jid
from peerage.xmpp.stream import Element, error_reply

log = logging.getLogger(__name__)

UPLOAD_NS = "urn:xmpp:http:upload:0"
#: Seconds a slot accepts its PUT: Prosody's mod_http_file_share upload tokens are valid for 300 s.
SLOT_LIFETIME = 300.0
#: Rows read to find when the server-wide quota frees enough space (the retry stamp); beyond, none is given.
MAX_RETRY_ROWS = 10_000
#: Slots an account may hold open (requested, not yet PUT). A client uploads a few files at once;
#: more open slots than this is a script reserving quota (ejabberd and Prosody bound it by quota only).
MAX_OPEN_SLOTS = 20
#: Longest file name kept, in bytes of UTF-8: most file systems' NAME_MAX (255).
MAX_FILENAME_BYTES = 255
#: PUTs read at once. Each holds at most max_file_size bytes in memory before the durable write;
#: 16 of 10 MiB is 160 MiB at worst. One more is answered 503 with Retry-After.
MAX_CONCURRENT_PUTS = 16
#: Seconds between expiry sweeps (a sweep runs on the next request after this).
SWEEP_INTERVAL = 60.0
#: Content types shown inline when fetched (the rest are downloads), as Prosody's
#: mod_http_file_share and the WHATWG "safe" media types for a sandboxed origin.
INLINE_TYPES = re.compile(r"^(image/(png|jpeg|gif|webp|avif|heic|heif)|audio/[\w.+-]+|video/[\w.+-]+|text/plain)$")
#: RFC 9110 section 8.3.1 media type: type "/" subtype, both tokens; parameters are dropped.
MEDIA_TYPE = re.compile(r"^[\w!#$&^.+-]{1,127}/[\w!#$&^.+-]{1,127}$")
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, HEAD, PUT, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type",
    # Seconds a browser may cache the preflight (Chromium caps it at 7200).
    "Access-Control-Max-Age": "7200",
}
SERVED_CSP = "default-src 'none'; img-src 'self'; media-src 'self'; style-src 'unsafe-inline'; sandbox"


class SlotRefused(Exception):
    """A slot request refused with a XEP-0363 section 4.1 error."""

    def __init__(self, condition: str, text: str, *, max_file_size: int | None = None,
                 retry: float | None = None) -> None:
        super().__init__(text)
        self.condition = condition
        self.text = text
        self.max_file_size = max_file_size
        self.retry = retry

    def reply(self, iq: Element) -> Element:
        reply = error_reply(iq, self.condition, self.text)
        error = reply.find("error")
        assert error is not None
        if self.max_file_size is not None:
            error.add("file-too-large", UPLOAD_NS).add("max-file-size", text=str(self.max_file_size))
        if self.retry is not None:
            error.add("retry", UPLOAD_NS, {"stamp": stamp(self.retry)})
        return reply


def stamp(when: float) -> str:
    """XEP-0082 date-time, UTC, whole seconds (rounded up: retrying at the stamp must succeed)."""
    return datetime.fromtimestamp(int(when) + 1, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def clean_filename(name: str) -> str:
    """The request's file name as kept in the URL: no path separators or control characters."""
    name = "".join("_" if ch in "/\\" or ord(ch) < 32 or ord(ch) == 127 else ch for ch in name).strip()
    if name in ("", ".", ".."):
        raise SlotRefused("bad-request", "the filename attribute is required")
    while len(name.encode()) > MAX_FILENAME_BYTES:
        name = name[:-1]
    return name


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def upload_blobs(host: Any) -> Blobs:
    """Where uploaded files are: files under the data directory, or the cluster's shared rows."""
    cluster = getattr(host, "cluster", None)
    if cluster is not None:
        return cluster.blobs("upload")
    return BlobStore(Path(host.config.data_dir) / "upload" / "blobs")


async def serve_blob(blobs: Blobs, name: str, headers: dict[str, str]) -> web.StreamResponse:
    """The response carrying blob ``name``: the file itself (ranges, sendfile), or its row's bytes."""
    if isinstance(blobs, BlobStore):
        return web.FileResponse(blobs.path(name), headers=headers)
    try:
        data = await asyncio.to_thread(blobs.read, name)
    except FileNotFoundError:
        raise web.HTTPNotFound(text="no such file\n") from None
    return web.Response(body=data, headers=headers)


class Upload(Feature):
    def setup(self) -> None:
        self.services: dict[str, HostedService] = {}
        #: account -> monotonic times of its recent slot requests (the per-minute rate)
        self.requests: dict[str, collections.deque[float]] = {}
        self.puts = asyncio.Semaphore(MAX_CONCURRENT_PUTS)
        self._last_sweep = 0.0
        host = self.ctx.host
        if host is None or not self.config.enabled:
            return
        if not host.config.web.enabled or not host.config.web.https_listen:
            log.warning("[xmpp.upload] is on but the web service is off: no upload service is offered")
            return
        self.blobs = upload_blobs(host)
        https = host.config.web.https_listen[0]
        port = int(https.rpartition(":")[2])
        self.port_suffix = "" if port == 443 else f":{port}"
        for domain in sorted(self.ctx.router.hosted_domains):
            self._add(domain)
        self.ctx.events.hook("xmpp-hosted-domains", self._domains_changed)
        disco_of(self.ctx).add_items_provider("upload", self._disco_items)
        from peerage.web import routes_for

        routes_for(host).add("xmpp-upload", self._routes)

    @property
    def config(self) -> Any:
        host = self.ctx.host
        if host is None:
            from peerage.config import UploadConfig

            return UploadConfig()
        return host.config.xmpp.upload

    @property
    def engine(self) -> Any:
        return self.ctx.storage.engine

    # --- services per hosted domain -------------------------------------------------------------
    def _add(self, domain: str) -> None:
        service = add_service(self.ctx, "upload", domain)
        self.services[domain] = service
        hook_service_iq(service, "query", DISCO_INFO_NS, self._info, types=("get",))
        hook_service_iq(service, "query", DISCO_ITEMS_NS, self._items, types=("get",))
        hook_service_iq(service, "request", UPLOAD_NS, self._request, types=("get",))

    def _domains_changed(self, domains: set[str]) -> None:
        for domain in set(self.services) - domains:
            self.ctx.router.remove_service(self.services.pop(domain).jid)
        for domain in sorted(domains - set(self.services)):
            self._add(domain)
        return None

    def _disco_items(self, domain: str) -> list[DiscoItem]:
        service = self.services.get(domain)
        return [DiscoItem(service.jid, "HTTP File Upload")] if service is not None else []

    def _info(self, ctx: IqContext) -> Element:
        query = Element("query", DISCO_INFO_NS)
        if ctx.payload.attrs.get("node"):
            return error_reply(ctx.iq, "item-not-found")
        query.add("identity", attrs={"category": "store", "type": "file", "name": "HTTP File Upload"})
        query.add("feature", attrs={"var": DISCO_INFO_NS})
        query.add("feature", attrs={"var": UPLOAD_NS})
        query.children.append(data_form(UPLOAD_NS, [("max-file-size", [str(self.config.max_file_size)])]))
        return result(ctx, query)

    def _items(self, ctx: IqContext) -> Element:
        return result(ctx, Element("query", DISCO_ITEMS_NS))

    # --- slots ----------------------------------------------------------------------------------
    async def _request(self, ctx: IqContext) -> Element:
        try:
            return await self._slot(ctx)
        except SlotRefused as refused:
            return refused.reply(ctx.iq)

    async def _slot(self, ctx: IqContext) -> Element:
        config = self.config
        try:
            local, domain, _ = split_jid(ctx.sender)
        except JidError:
            raise SlotRefused("not-allowed", "only accounts of this server may upload") from None
        if not local or not self.ctx.router.is_hosted(domain) or domain not in self.services:
            raise SlotRefused("not-allowed", "only accounts of this server may upload")
        owner = f"{local}@{domain}"
        request = ctx.payload
        filename = clean_filename(request.attrs.get("filename", ""))
        try:
            size = int(request.attrs.get("size", ""))
        except ValueError:
            raise SlotRefused("bad-request", "the size attribute must be the file's size in bytes") from None
        if size < 1:
            raise SlotRefused("bad-request", "the size attribute must be the file's size in bytes")
        if size > config.max_file_size:
            raise SlotRefused("not-acceptable", f"File too large. The maximum file size is {config.max_file_size} bytes",
                              max_file_size=config.max_file_size)
        content_type = request.attrs.get("content-type", "").split(";")[0].strip().lower()
        if not MEDIA_TYPE.match(content_type):
            content_type = "application/octet-stream"
        now = time.time()
        self._rate(owner, config.slots_per_minute)
        await self._sweep(now)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(upload_files.c.size, upload_files.c.expires, upload_files.c.blob).where(
                and_(upload_files.c.owner == owner, upload_files.c.expires > now)))).all()
        open_slots = sorted(row.expires for row in rows if row.blob is None)
        if len(open_slots) >= MAX_OPEN_SLOTS:
            raise SlotRefused("resource-constraint",
                              f"Too many open slots: at most {MAX_OPEN_SLOTS} slots may wait for their upload",
                              retry=open_slots[len(open_slots) - MAX_OPEN_SLOTS])
        used = sum(row.size for row in rows)
        if used + size > config.quota:
            raise SlotRefused("resource-constraint",
                              f"Quota reached: {used} of {config.quota} bytes are in use",
                              retry=self._retry_for(rows, used + size - config.quota))
        if config.total_quota:
            await self._check_total(size, now, config.total_quota)
        slot = secrets.token_urlsafe(24)
        token = secrets.token_urlsafe(32)
        async with self.engine.begin() as conn:
            await conn.execute(insert(upload_files).values(
                slot=slot, owner=owner, filename=filename, size=size, content_type=content_type, created=now,
                expires=now + SLOT_LIFETIME, put_token_hash=token_hash(token), blob=None, uploaded=None))
        url = f"https://{domain}{self.port_suffix}/upload/{slot}/{urllib.parse.quote(filename, safe='')}"
        element = Element("slot", UPLOAD_NS)
        put = element.add("put", attrs={"url": url})
        put.add("header", attrs={"name": "Authorization"}, text=f"Bearer {token}")
        element.add("get", attrs={"url": url})
        return result(ctx, element)

    def _rate(self, owner: str, per_minute: int) -> None:
        now = time.monotonic()
        times = self.requests.get(owner)
        if times is None:
            times = self.requests[owner] = collections.deque()
            if len(self.requests) > 100_000:  # accounts seen in the window; stale ones go first
                for stale in [o for o, t in self.requests.items() if not t or t[-1] < now - 60]:
                    del self.requests[stale]
        while times and times[0] < now - 60:
            times.popleft()
        if len(times) >= per_minute:
            wait = times[0] + 60 - now
            raise SlotRefused("resource-constraint", f"Too many slot requests: at most {per_minute} a minute",
                              retry=time.time() + wait)
        times.append(now)

    async def _check_total(self, size: int, now: float, total_quota: int) -> None:
        """The server-wide bound, ``[xmpp.upload] total_quota``: every account's files and open slots."""
        async with self.engine.connect() as conn:
            used = (await conn.execute(select(func.coalesce(func.sum(upload_files.c.size), 0)).where(
                upload_files.c.expires > now))).scalar() or 0
            if used + size <= total_quota:
                return
            # When will enough expire? The soonest-expiring rows, as many as it takes (bounded).
            rows = (await conn.execute(select(upload_files.c.size, upload_files.c.expires).where(
                upload_files.c.expires > now).order_by(upload_files.c.expires).limit(MAX_RETRY_ROWS))).all()
        log.warning("upload: the server-wide quota is reached (%d of %d bytes)", used, total_quota)
        raise SlotRefused("resource-constraint", "The server's upload space is full; try again later",
                          retry=self._retry_for(rows, used + size - total_quota))

    @staticmethod
    def _retry_for(rows: list[Any], excess: int) -> float | None:
        """When enough of the account's files expire to free ``excess`` bytes (None: never)."""
        freed = 0
        for row in sorted(rows, key=lambda r: r.expires):
            freed += row.size
            if freed >= excess:
                return float(row.expires)
        return None

    async def _sweep(self, now: float) -> None:
        """Remove expired files and slots (at most once per SWEEP_INTERVAL)."""
        if now - self._last_sweep < SWEEP_INTERVAL:
            return
        self._last_sweep = now
        async with self.engine.begin() as conn:
            rows = (await conn.execute(select(upload_files.c.slot, upload_files.c.blob).where(
                upload_files.c.expires <= now))).all()
            if rows:
                await conn.execute(delete(upload_files).where(upload_files.c.slot.in_([r.slot for r in rows])))
        blobs = [row.blob for row in rows if row.blob]
        if blobs:
            await asyncio.to_thread(self._remove_blobs, blobs)
            log.info("upload: %d expired files removed", len(blobs))

    def _remove_blobs(self, names: list[str]) -> None:
        self.blobs.remove_many(names)

    # --- HTTPS ----------------------------------------------------------------------------------
    def _routes(self, web_ctx: Any) -> None:
        self.body_timeout = web_ctx.config.body_timeout
        router = web_ctx.app.router
        router.add_route("PUT", "/upload/{slot}/{filename}", self._put)
        router.add_get("/upload/{slot}/{filename}", self._get)  # and HEAD
        router.add_route("OPTIONS", "/upload/{slot}/{filename}", self._preflight)

    async def _row(self, request: web.Request) -> Any:
        slot = request.match_info["slot"]
        if len(slot) > 64:
            return None
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(upload_files).where(upload_files.c.slot == slot))).first()
        if row is None or row.filename != request.match_info["filename"]:
            return None
        return row

    @staticmethod
    def _error(status: int, text: str, **headers: str) -> web.Response:
        return web.Response(status=status, text=text + "\n", headers={**CORS_HEADERS, **headers})

    async def _preflight(self, request: web.Request) -> web.Response:
        return web.Response(status=204, headers=CORS_HEADERS)

    async def _put(self, request: web.Request) -> web.Response:
        row = await self._row(request)
        if row is None:
            return self._error(404, "no such upload slot")
        now = time.time()
        if row.blob is not None:
            return self._error(409, "this slot has been used already")
        if row.expires <= now:
            return self._error(403, "this slot has expired; request a new one")
        authorization = request.headers.get("Authorization", "")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token_hash(token.strip()), row.put_token_hash):
            return self._error(403, "the Authorization header of the slot is required")
        declared = request.content_length
        if declared is None:
            return self._error(411, "Content-Length is required")
        if declared > row.size:
            return self._error(413, f"the slot is for {row.size} bytes")
        if declared != row.size:
            return self._error(400, f"the slot is for {row.size} bytes, not {declared}")
        if self.puts.locked():
            return self._error(503, "too many uploads at once; try again shortly", **{"Retry-After": "5"})
        async with self.puts:
            chunks: list[bytes] = []
            received = 0
            try:
                async with asyncio.timeout(self.body_timeout):
                    while True:
                        chunk = await request.content.readany()
                        if not chunk:
                            break
                        received += len(chunk)
                        if received > row.size:
                            return self._error(413, f"the slot is for {row.size} bytes")
                        chunks.append(chunk)
            except TimeoutError:
                return self._error(408, "the file did not arrive in time")
            if received != row.size:
                return self._error(400, f"the slot is for {row.size} bytes, {received} arrived")
            blob = await asyncio.to_thread(self.blobs.write, b"".join(chunks))
        expires = time.time() + self.config.expire_days * 86400
        async with self.engine.begin() as conn:
            stored = (await conn.execute(update(upload_files).where(and_(
                upload_files.c.slot == row.slot, upload_files.c.blob.is_(None))).values(
                blob=blob, uploaded=time.time(), expires=expires))).rowcount
        if not stored:
            await asyncio.to_thread(self.blobs.remove, blob)
            return self._error(409, "this slot has been used already")
        return web.Response(status=201, text="created\n", headers=CORS_HEADERS)

    async def _get(self, request: web.Request) -> web.StreamResponse:
        now = time.time()
        await self._sweep(now)
        row = await self._row(request)
        if row is None or row.blob is None or row.expires <= now:
            return self._error(404, "no such file (it may have expired)")
        disposition = "inline" if INLINE_TYPES.match(row.content_type) else "attachment"
        quoted = urllib.parse.quote(row.filename, safe="")
        headers = {
            **CORS_HEADERS,
            "Content-Type": row.content_type,
            "Content-Disposition": f"{disposition}; filename*=UTF-8''{quoted}",
            "Content-Security-Policy": SERVED_CSP,
            "X-Content-Type-Options": "nosniff",
            # Web clients on other origins show pictures inline (<img>): the default same-origin would
            # block them (Fetch section 3.7).
            "Cross-Origin-Resource-Policy": "cross-origin",
            "Cache-Control": f"public, max-age={max(0, int(row.expires - now))}, immutable",
        }
        return await serve_blob(self.blobs, row.blob, headers)

    async def usage(self, owner: str) -> int:
        """Bytes ``owner`` has stored or reserved now (for tests and the CLI)."""
        async with self.engine.connect() as conn:
            return int((await conn.execute(select(func.coalesce(func.sum(upload_files.c.size), 0)).where(
                and_(upload_files.c.owner == owner, upload_files.c.expires > time.time())))).scalar() or 0)
