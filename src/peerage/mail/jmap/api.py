"""JMAP over HTTP: the session resource, the API endpoint, upload, download and EventSource push.

This module is in charge of the routes the mail package registers with the web service:

- ``GET /.well-known/jmap`` (and ``/jmap/session``): the Session object (RFC 8620 §2);
- ``POST /jmap/api``: one Request, answered with one Response (§3.3, §3.4); request-level errors are
  RFC 7807 problem documents with status 400 (§3.6.1);
- ``POST /jmap/upload/{accountId}/`` and ``GET /jmap/download/{accountId}/{blobId}/{name}`` (§6);
- ``GET /jmap/eventsource`` (§7.3): a ``state`` event whenever the account's Email, Mailbox or Thread
  state moves, woken by the same in-process notification that wakes IMAP IDLE.

Who may call: a logged-in browser (web session cookie; POSTs need the X-CSRF-Token header) or any
client sending HTTP Basic with the account's password.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from aiohttp import web
from sqlalchemy import delete, insert

from peerage.mail.jmap import core
from peerage.mail.jmap.core import MethodError, RequestError
from peerage.mail.jmap.index import IndexCache
from peerage.mail.jmap.methods import MAX_QUERY_LIMIT, MailAccount, account_id_of, received_header
from peerage.mail.jmap.tables import jmap_blobs
from peerage.mail.jmap.vacation import VacationResponder
from peerage.mail.mailbox import store_for
from peerage.web import WebContext
from peerage.web.security import JsonError, parse_json, read_body

log = logging.getLogger(__name__)

# Uploaded blobs are kept this long (RFC 8620 §6.1: at least one hour while unreferenced).
BLOB_LIFETIME = 24 * 3600.0
# EventSource: the shortest ping interval a client may ask for, and the one used when it asks none
# (RFC 8620 §7.3 leaves it to the server; proxies commonly cut idle streams after 60 s).
MIN_PING = 10
DEFAULT_PING = 0
# Changes that arrive together (a MOVE touches two mailboxes) are reported as one event.
PUSH_COALESCE_SECONDS = 0.05
# Uploads at once per account (maxConcurrentUpload).
SEND_TIMEOUT = 30.0


def problem(error: RequestError) -> web.Response:
    return web.json_response(error.problem(), status=error.status, content_type="application/problem+json")


class JmapRoutes:
    def __init__(self, host: Any, mail: Any) -> None:
        self.host = host
        self.mail = mail
        self.store = store_for(host)
        self.cache = IndexCache(self.store)
        self.listeners: dict[str, set[asyncio.Event]] = {}
        self._active: dict[str, int] = {}
        self.store.notifier.add_listener(self._mailbox_changed)
        self.vacation = VacationResponder(host.store, self.store, self.submit)
        if getattr(mail, "sieve", None) is None:
            # Without Sieve at delivery, the response is sent when new mail shows up in INBOX;
            # with it, delivery sends it (peerage.mail.sieve.delivery), from the envelope sender.
            self.store.notifier.add_listener(self.vacation.mailbox_changed)
        self.box_owner: dict[int, str] = {}
        self._warming: dict[str, asyncio.Task[None]] = {}
        self.ctx: WebContext | None = None
        self.closing = False

    def setup(self, ctx: WebContext) -> None:
        self.ctx = ctx
        router = ctx.app.router
        router.add_get("/.well-known/jmap", self.session)
        router.add_get("/jmap/session", self.session)
        router.add_post("/jmap/api", self.api)
        router.add_post("/jmap/api/", self.api)
        router.add_post("/jmap/upload/{account}/", self.upload)
        router.add_get("/jmap/download/{account}/{blob}/{name}", self.download)
        router.add_get("/jmap/eventsource", self.eventsource)
        ctx.app.on_shutdown.append(self._close_streams)
        ctx.auth.login_listeners.append(self.warm)

    def warm(self, account: str) -> None:
        """Start loading an account's index in the background (at login: the webmail's first API call,
        a page load later, then finds it built or waits for the build already under way)."""
        owner = account  # the key API requests use (_owner)
        if owner in self._warming:
            return

        async def build() -> None:
            started = time.monotonic()
            try:
                index = await self.cache.get(owner)
                log.info("JMAP index of %s loaded: %d emails in %.0f ms", owner, len(index.by_id),
                         (time.monotonic() - started) * 1000)
            except Exception:
                log.exception("JMAP index of %s could not be loaded", owner)
            finally:
                self._warming.pop(owner, None)

        self._warming[owner] = asyncio.get_running_loop().create_task(build())

    async def _close_streams(self, _app: web.Application) -> None:
        """End every EventSource stream, so stopping the server does not wait for them."""
        self.closing = True
        for events in self.listeners.values():
            for event in events:
                event.set()

    # --- who is asking -----------------------------------------------------------------------------

    async def _owner(self, request: web.Request) -> str:
        assert self.ctx is not None
        account = await self.ctx.auth.account(request, basic=True)
        if account is None:
            raise web.HTTPUnauthorized(
                headers={"WWW-Authenticate": 'Basic realm="peerage", charset="UTF-8"'},
                text=json.dumps({"type": "about:blank", "status": 401, "detail": "log in or send HTTP Basic"}),
                content_type="application/problem+json",
            )
        return account

    def _base(self, request: web.Request) -> str:
        return f"https://{request.host}"

    # --- session -----------------------------------------------------------------------------------

    def capabilities(self) -> dict[str, Any]:
        config = self.host.config.web
        return {
            core.CORE: {
                "maxSizeUpload": config.max_upload_size,
                "maxConcurrentUpload": core.MAX_CONCURRENT_UPLOAD,
                "maxSizeRequest": config.max_request_size,
                "maxConcurrentRequests": core.MAX_CONCURRENT_REQUESTS,
                "maxCallsInRequest": core.MAX_CALLS_IN_REQUEST,
                "maxObjectsInGet": core.MAX_OBJECTS_IN_GET,
                "maxObjectsInSet": core.MAX_OBJECTS_IN_SET,
                "collationAlgorithms": ["i;ascii-casemap", "i;unicode-casemap"],
            },
            core.MAIL: {},
            core.SUBMISSION: {},
            core.VACATION: {},
        }

    def account_capabilities(self) -> dict[str, Any]:
        return {
            core.MAIL: {
                # No limit of its own: an Email can be in each of the account's mailboxes once.
                "maxMailboxesPerEmail": None,
                "maxMailboxDepth": None,
                "maxSizeMailboxName": 490,
                "maxSizeAttachmentsPerEmail": self.host.config.smtp.max_message_size,
                "emailQuerySortOptions": ["receivedAt", "sentAt", "size", "from", "to", "subject", "hasKeyword",
                                          "someInThreadHaveKeyword", "allInThreadHaveKeyword"],
                "mayCreateTopLevelMailbox": True,
            },
            core.SUBMISSION: {"maxDelayedSend": 0, "submissionExtensions": {}},
            core.VACATION: {},
        }

    async def session(self, request: web.Request) -> web.Response:
        owner = await self._owner(request)
        account_id = account_id_of(owner)
        base = self._base(request)
        body = {
            "capabilities": self.capabilities(),
            "accounts": {account_id: {"name": owner, "isPersonal": True, "isReadOnly": False,
                                      "accountCapabilities": self.account_capabilities()}},
            "primaryAccounts": {core.MAIL: account_id, core.SUBMISSION: account_id, core.VACATION: account_id},
            "username": owner,
            "apiUrl": f"{base}/jmap/api",
            "downloadUrl": f"{base}/jmap/download/{{accountId}}/{{blobId}}/{{name}}?type={{type}}",
            "uploadUrl": f"{base}/jmap/upload/{{accountId}}/",
            "eventSourceUrl": f"{base}/jmap/eventsource?types={{types}}&closeafter={{closeafter}}&ping={{ping}}",
            "state": self._session_state(owner),
        }
        response = web.json_response(body)
        response.headers["Cache-Control"] = "no-cache, no-store"
        return response

    def _session_state(self, owner: str) -> str:
        return hashlib.sha256(f"{owner}\0{MAX_QUERY_LIMIT}".encode()).hexdigest()[:12]

    # --- API ---------------------------------------------------------------------------------------

    def _account(self, owner: str, index: Any) -> MailAccount:
        account = MailAccount(owner=owner, index=index, store=self.store, db=self.host.store,
                              submit=lambda f, r, d: self.submit(owner, f, r, d), changed=lambda: self._wake(owner))
        account.vacation_changed = self.vacation.set_enabled
        return account

    async def api(self, request: web.Request) -> web.StreamResponse:
        owner = await self._owner(request)
        config = self.host.config.web
        try:
            try:
                body = await read_body(request, config.max_request_size, config.body_timeout)
            except web.HTTPRequestEntityTooLarge:
                raise RequestError("limit", f"the request is larger than {config.max_request_size} bytes",
                                   limit="maxSizeRequest") from None
            try:
                parsed = parse_json(body)
            except JsonError as exc:
                raise RequestError("notJSON", str(exc)) from None
            using, calls, created_ids = core.check_request(parsed)
            if self._active.get(owner, 0) >= core.MAX_CONCURRENT_REQUESTS:
                raise RequestError("limit", "too many requests at once", limit="maxConcurrentRequests")
        except RequestError as exc:
            if exc.limit == "maxSizeRequest":
                # The rest of the body was not read; the connection cannot be reused.
                response = problem(exc)
                response.force_close()
                return response
            return problem(exc)
        self._active[owner] = self._active.get(owner, 0) + 1
        try:
            index = await self.cache.get(owner)
            for box_id in index.boxes:
                self.box_owner[box_id] = owner
            account = self._account(owner, index)
            responses = await core.run(calls, using, account.methods(), created_ids)
        finally:
            self._active[owner] -= 1
        answer: dict[str, Any] = {"methodResponses": responses, "sessionState": self._session_state(owner)}
        if "createdIds" in parsed:
            answer["createdIds"] = created_ids
        return web.json_response(answer)

    # --- submission --------------------------------------------------------------------------------

    async def submit(self, owner: str, mail_from: str, rcpts: list[str], data: bytes) -> None:
        """The submission path SMTP AUTH uses: DKIM signing, then the durable accept (local
        mailboxes at once, remote recipients through the queue)."""
        mail = self.mail
        if mail is None or getattr(mail, "queue", None) is None:
            raise MethodError("forbidden", "mail submission is not enabled on this server ([smtp] enabled)")
        local: list[str] = []
        remote: list[str] = []
        unknown: list[str] = []
        for rcpt in rcpts:
            domain = rcpt.rpartition("@")[2]
            if mail.is_hosted(domain):
                (local if await mail.recipient_exists(rcpt) else unknown).append(rcpt)
            else:
                remote.append(rcpt)
        if unknown:
            raise MethodError("invalidRecipients", "no such local recipients", invalidRecipients=unknown)
        if remote:
            data = await mail.sign(mail_from.rpartition("@")[2], data)
        await mail.accept(mail_from=mail_from, local=local, remote=remote, data=data,
                          prefix=lambda rcpt: received_header(rcpt or owner, mail.hostname),
                          folder="INBOX", smtputf8=not data.isascii())

    # --- upload / download -------------------------------------------------------------------------

    async def upload(self, request: web.Request) -> web.Response:
        owner = await self._owner(request)
        if request.match_info["account"] != account_id_of(owner):
            return web.json_response({"type": "urn:ietf:params:jmap:error:accountNotFound", "status": 404},
                                     status=404, content_type="application/problem+json")
        config = self.host.config.web
        try:
            data = await read_body(request, config.max_upload_size, config.body_timeout)
        except web.HTTPRequestEntityTooLarge:
            response = problem(RequestError("limit", f"uploads are limited to {config.max_upload_size} bytes",
                                            status=413, limit="maxSizeUpload"))
            response.force_close()
            return response
        blob_id = "u" + secrets.token_hex(16)
        content_type = (request.headers.get("Content-Type") or "application/octet-stream")[:255]
        now = time.time()
        async with self.host.store.begin() as conn:
            await conn.execute(delete(jmap_blobs).where(jmap_blobs.c.created < now - BLOB_LIFETIME))
            await conn.execute(insert(jmap_blobs).values(id=blob_id, account=owner, type=content_type,
                                                         size=len(data), data=data, created=now))
        return web.json_response({"accountId": account_id_of(owner), "blobId": blob_id, "type": content_type,
                                  "size": len(data)}, status=201)

    async def download(self, request: web.Request) -> web.Response:
        owner = await self._owner(request)
        if request.match_info["account"] != account_id_of(owner):
            raise web.HTTPNotFound()
        index = await self.cache.get(owner)
        found = await self._account(owner, index).blob(request.match_info["blob"])
        if found is None:
            raise web.HTTPNotFound(text="no such blob\n")
        data, stored_type = found
        content_type = request.query.get("type") or stored_type or "application/octet-stream"
        if any(c in content_type for c in "\r\n;,") and ";" not in stored_type:
            content_type = "application/octet-stream"
        name = request.match_info["name"]
        response = web.Response(body=data)
        response.headers["Content-Type"] = content_type.split(";")[0].strip() or "application/octet-stream"
        # Never rendered as a page of this origin: a download of text/html cannot script the webmail.
        response.headers["Content-Disposition"] = f"attachment; filename*=UTF-8''{quote(name)}"
        response.headers["Content-Security-Policy"] = "sandbox; default-src 'none'"
        response.headers["Cache-Control"] = "private, immutable, max-age=604800"
        return response

    # --- push --------------------------------------------------------------------------------------

    def _mailbox_changed(self, mailbox_id: int) -> None:
        owner = self.box_owner.get(mailbox_id)
        if owner is None:
            for owner_events in self.listeners.values():  # a mailbox created since the index was read
                for event in owner_events:
                    event.set()
            return
        self._wake(owner)

    def _wake(self, owner: str) -> None:
        for event in self.listeners.get(owner, ()):
            event.set()

    async def _states(self, owner: str) -> dict[str, str]:
        index = await self.cache.get(owner)
        for box_id in index.boxes:
            self.box_owner[box_id] = owner
        account = self._account(owner, index)
        _, identity_state = await account._identities()
        return {"Email": index.email_state(), "Mailbox": index.mailbox_state(), "Thread": index.email_state(),
                "Identity": identity_state}

    async def eventsource(self, request: web.Request) -> web.StreamResponse:
        owner = await self._owner(request)
        types_arg = request.query.get("types", "*")
        types = None if types_arg in ("*", "") else set(types_arg.split(","))
        close_after_state = request.query.get("closeafter", "no") == "state"
        try:
            ping = int(request.query.get("ping", DEFAULT_PING))
        except ValueError:
            raise web.HTTPBadRequest(text="ping must be a number of seconds\n") from None
        if ping:
            ping = max(ping, MIN_PING)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        event = asyncio.Event()
        self.listeners.setdefault(owner, set()).add(event)
        account_id = account_id_of(owner)
        try:
            last = await self._states(owner)
            await self._send(response, "state", {"@type": "StateChange", "changed": {account_id: _pick(last, types)}})
            while True:
                try:
                    # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow the
                    # cancellation shutdown sends as the event is set (CPython gh-86296), and this
                    # loop would then run on.
                    async with asyncio.timeout(ping or None):
                        await event.wait()
                except TimeoutError:
                    await self._send(response, "ping", {"@type": "Ping", "interval": ping})
                    continue
                if self.closing:
                    break
                event.clear()
                await asyncio.sleep(PUSH_COALESCE_SECONDS)
                event.clear()
                states = await self._states(owner)
                changed = {k: v for k, v in states.items() if last.get(k) != v}
                last = states
                changed = _pick(changed, types)
                if not changed:
                    continue
                await self._send(response, "state", {"@type": "StateChange", "changed": {account_id: changed}})
                if close_after_state:
                    break
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            listeners = self.listeners.get(owner)
            if listeners is not None:
                listeners.discard(event)
                if not listeners:
                    self.listeners.pop(owner, None)
        return response

    @staticmethod
    async def _send(response: web.StreamResponse, name: str, data: dict[str, Any]) -> None:
        payload = f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
        # asyncio.timeout, not wait_for (CPython gh-86296, as in the event wait above).
        async with asyncio.timeout(SEND_TIMEOUT):
            await response.write(payload)


def _pick(states: dict[str, str], types: set[str] | None) -> dict[str, str]:
    return {k: v for k, v in states.items() if types is None or k in types}


Setup = Callable[[WebContext], None]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
