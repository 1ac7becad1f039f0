"""JMAP mail methods (RFC 8621, with RFC 8620's standard /get, /changes, /set, /query, /queryChanges).

This module is in charge of answering Mailbox, Thread, Email, SearchSnippet, Identity,
EmailSubmission and VacationResponse methods for one account over the shared mailbox store: reads come
from the account's ``AccountIndex`` (headers summarised in memory) and from message bodies; every
change goes through ``MailboxStore`` (append, store_flags, move, expunge, create/rename/delete), so it
bumps the same MODSEQ IMAP reports and wakes the same IDLE and EventSource listeners.

An Email is every copy of one message (the rows sharing the store's email id), so it can be in several
mailboxes and keeps its id when it moves; ``/changes`` follows the id through the expunge log, so a
move is an update, and a deleted mailbox's log is kept by the store for a while; Identity and
EmailSubmission keep a change log in ``jmap_settings``. Limits of this implementation, each answered
the way RFC 8620 allows: ``/changes`` that would exceed ``maxChanges`` or that spans a mailbox deleted
longer ago than the store keeps its log answers ``cannotCalculateChanges``;
Email/copy between accounts has no second account to copy from.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import operator
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select, update

from peerage.mail.jmap import mime
from peerage.mail.jmap.core import (
    CORE,
    MAIL,
    MAX_OBJECTS_IN_GET,
    MAX_OBJECTS_IN_SET,
    SUBMISSION,
    VACATION,
    Call,
    MethodError,
)
from peerage.mail.jmap.index import (
    AccountIndex,
    BoxIndex,
    BoxState,
    Summary,
    decode_state,
    flags_of,
    keywords_of,
    mailbox_id,
    utc_date,
)
from peerage.mail.jmap.tables import jmap_blobs, jmap_settings, jmap_submissions
from peerage.mail.mailbox import INBOX, MailboxError, MailboxExists, MailboxStore
from peerage.mail.mailbox import flags as flaglib

# Largest number of results one Email/query returns; a larger `limit` is lowered and reported.
MAX_QUERY_LIMIT = 1000
MAX_MAILBOX_NAME = 490  # bytes, RFC 8621 §2 maxSizeMailboxName example; Dovecot allows 255 per level
DEFAULT_MAX_CHANGES = 5000

ROLE_ORDER = {"inbox": 1, "drafts": 2, "sent": 3, "archive": 4, "junk": 5, "trash": 6}
DEFAULT_EMAIL_PROPERTIES = [
    "id", "blobId", "threadId", "mailboxIds", "keywords", "size", "receivedAt", "messageId", "inReplyTo",
    "references", "sender", "from", "to", "cc", "bcc", "replyTo", "subject", "sentAt", "hasAttachment",
    "preview", "bodyValues", "textBody", "htmlBody", "attachments",
]
SUMMARY_PROPERTIES = frozenset({
    "id", "blobId", "threadId", "mailboxIds", "keywords", "size", "receivedAt", "messageId", "inReplyTo",
    "references", "sender", "from", "to", "cc", "bcc", "replyTo", "subject", "sentAt",
})
BODY_PROPERTIES = frozenset({"hasAttachment", "preview", "bodyStructure", "bodyValues", "textBody", "htmlBody",
                             "attachments", "headers"})
PARSE_DEFAULT_PROPERTIES = [
    "messageId", "inReplyTo", "references", "sender", "from", "to", "cc", "bcc", "replyTo", "subject", "sentAt",
    "hasAttachment", "preview", "bodyValues", "textBody", "htmlBody", "attachments",
]
MAILBOX_PROPERTIES = ["id", "name", "parentId", "role", "sortOrder", "totalEmails", "unreadEmails",
                      "totalThreads", "unreadThreads", "myRights", "isSubscribed"]
RIGHTS = {r: True for r in ("mayReadItems", "mayAddItems", "mayRemoveItems", "maySetSeen", "maySetKeywords",
                            "mayCreateChild", "mayRename", "mayDelete", "maySubmit")}
SORT_PROPERTIES = ("receivedAt", "sentAt", "size", "from", "to", "subject", "hasKeyword",
                   "someInThreadHaveKeyword", "allInThreadHaveKeyword")
FILTER_CONDITIONS = frozenset({
    "inMailbox", "inMailboxOtherThan", "before", "after", "minSize", "maxSize", "allInThreadHaveKeyword",
    "someInThreadHaveKeyword", "noneInThreadHaveKeyword", "hasKeyword", "notKeyword", "hasAttachment", "text",
    "from", "to", "cc", "bcc", "subject", "body", "header",
})
_KEYWORD = re.compile(r"^[\x21-\x7e]{1,255}$")
_SUBJECT_PREFIX = re.compile(r"^\s*((re|fwd?|aw|wg|sv|vs)\s*(\[\d+\])?\s*:\s*)+", re.I)
IDENTITY_DEFAULT = "default"
VACATION_ID = "singleton"


@dataclass
class EmailChanges:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    destroyed: list[str] = field(default_factory=list)
    # Thread ids of the destroyed Emails (None for one expunged before thread ids were kept).
    gone_threads: set[str | None] = field(default_factory=set)


def blob_of(email: str) -> str:
    """The blob id of an Email's whole message: ``b`` and the id after its ``e`` (a message never
    changes under its id, so neither does the blob); a part's is that, ``-`` and its part id."""
    return "b" + email[1:]


def account_id_of(owner: str) -> str:
    return "a" + hashlib.sha256(owner.encode()).hexdigest()[:20]


def parse_date(value: Any, prop: str) -> float:
    if not isinstance(value, str):
        raise MethodError("invalidArguments", f"{prop} must be a UTCDate string")
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise MethodError("invalidArguments", f"{prop} is not a valid date: {value}") from None


class MailAccount:
    """The methods of one account, for one request."""

    def __init__(self, *, owner: str, index: AccountIndex, store: MailboxStore, db: Any, submit: Any,
                 changed: Callable[[], None]) -> None:
        self.owner = owner
        self.account_id = account_id_of(owner)
        self.index = index
        self.store = store
        self.db = db  # peerage.store.Store, for JMAP's own tables
        self.submit = submit  # async (mail_from, rcpts, data) -> None, the submission path
        self.changed = changed
        self.domain = owner.rpartition("@")[2]
        # Told when the vacation response is switched on or off (the responder keeps a set of owners).
        self.vacation_changed: Callable[[str, bool], None] | None = None
        # Submission id -> email id, for onSuccessUpdateEmail/onSuccessDestroyEmail in the same call.
        self._submitted_email: dict[str, str] = {}

    def methods(self) -> dict[str, tuple[str, Any]]:
        return {
            "Core/echo": (CORE, self.echo),
            "Mailbox/get": (MAIL, self.mailbox_get),
            "Mailbox/changes": (MAIL, self.mailbox_changes),
            "Mailbox/query": (MAIL, self.mailbox_query),
            "Mailbox/queryChanges": (MAIL, self.mailbox_query_changes),
            "Mailbox/set": (MAIL, self.mailbox_set),
            "Thread/get": (MAIL, self.thread_get),
            "Thread/changes": (MAIL, self.thread_changes),
            "Email/get": (MAIL, self.email_get),
            "Email/changes": (MAIL, self.email_changes),
            "Email/query": (MAIL, self.email_query),
            "Email/queryChanges": (MAIL, self.email_query_changes),
            "Email/set": (MAIL, self.email_set),
            "Email/copy": (MAIL, self.email_copy),
            "Email/import": (MAIL, self.email_import),
            "Email/parse": (MAIL, self.email_parse),
            "SearchSnippet/get": (MAIL, self.search_snippet_get),
            "Identity/get": (SUBMISSION, self.identity_get),
            "Identity/changes": (SUBMISSION, self.identity_changes),
            "Identity/set": (SUBMISSION, self.identity_set),
            "EmailSubmission/get": (SUBMISSION, self.submission_get),
            "EmailSubmission/changes": (SUBMISSION, self.submission_changes),
            "EmailSubmission/query": (SUBMISSION, self.submission_query),
            "EmailSubmission/set": (SUBMISSION, self.submission_set),
            "VacationResponse/get": (VACATION, self.vacation_get),
            "VacationResponse/set": (VACATION, self.vacation_set),
        }

    async def echo(self, args: dict[str, Any], call: Call) -> dict[str, Any]:
        return args

    # --- shared ------------------------------------------------------------------------------------

    def _account(self, args: dict[str, Any], key: str = "accountId") -> None:
        if args.get(key) != self.account_id:
            raise MethodError("accountNotFound" if key == "accountId" else "fromAccountNotFound",
                              f"no account {args.get(key)!r} for this user")

    async def _refresh(self) -> None:
        await self.index.refresh()

    def _ids_arg(self, args: dict[str, Any], call: Call, everything: Callable[[], list[str]]) -> list[str]:
        ids = args.get("ids")
        if ids is None:
            found = everything()
            if len(found) > MAX_OBJECTS_IN_GET:
                raise MethodError("requestTooLarge", f"more than {MAX_OBJECTS_IN_GET} objects; ask by ids")
            return found
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise MethodError("invalidArguments", "ids must be a list of strings or null")
        if len(ids) > MAX_OBJECTS_IN_GET:
            raise MethodError("requestTooLarge", f"at most {MAX_OBJECTS_IN_GET} ids per get")
        return [call.id(i) for i in ids]

    @staticmethod
    def _properties(args: dict[str, Any], default: list[str], allowed: Iterable[str] | None = None,
                    key: str = "properties", header_ok: bool = False) -> list[str]:
        props = args.get(key)
        if props is None:
            return list(default)
        if not isinstance(props, list) or not all(isinstance(p, str) for p in props):
            raise MethodError("invalidArguments", f"{key} must be a list of strings")
        known = set(allowed if allowed is not None else default)
        bad = [p for p in props if p not in known and not (header_ok and p.startswith("header:"))]
        if bad:
            raise MethodError("invalidArguments", f"unknown {key}: {', '.join(bad)}")
        return list(props)

    def _set_checks(self, args: dict[str, Any], state: str) -> None:
        self._account(args)
        if_in_state = args.get("ifInState")
        if if_in_state is not None and if_in_state != state:
            raise MethodError("stateMismatch", "ifInState does not match the current state")
        count = sum(len(args.get(k) or ()) for k in ("create", "update", "destroy"))
        if count > MAX_OBJECTS_IN_SET:
            raise MethodError("requestTooLarge", f"at most {MAX_OBJECTS_IN_SET} objects per set")
        for key, kind in (("create", dict), ("update", dict), ("destroy", list)):
            if args.get(key) is not None and not isinstance(args[key], kind):
                raise MethodError("invalidArguments", f"{key} must be {'an object' if kind is dict else 'a list'}")

    # --- Mailbox -----------------------------------------------------------------------------------

    def _mailbox(self, box: BoxIndex, by_name: dict[str, BoxIndex], properties: list[str]) -> dict[str, Any]:
        info = box.info
        parts = info.name.split("/")
        parent = by_name.get("/".join(parts[:-1])) if len(parts) > 1 else None
        role = "inbox" if info.name == INBOX else (info.special_use or "").lstrip("\\").lower() or None
        emails = box.emails.values()
        out: dict[str, Any] = {}
        for prop in properties:
            if prop == "id":
                out[prop] = mailbox_id(info.uidvalidity)
            elif prop == "name":
                out[prop] = parts[-1]
            elif prop == "parentId":
                out[prop] = mailbox_id(parent.info.uidvalidity) if parent else None
            elif prop == "role":
                out[prop] = role
            elif prop == "sortOrder":
                out[prop] = ROLE_ORDER.get(role or "", 10)
            elif prop == "totalEmails":
                out[prop] = len(box.emails)
            elif prop == "unreadEmails":
                out[prop] = sum(1 for s in emails if flaglib.SEEN not in s.flags)
            elif prop == "totalThreads":
                out[prop] = len({s.thread for s in emails})
            elif prop == "unreadThreads":
                out[prop] = len({s.thread for s in emails if flaglib.SEEN not in s.flags})
            elif prop == "myRights":
                out[prop] = dict(RIGHTS)
            elif prop == "isSubscribed":
                out[prop] = info.subscribed
        return out

    def _by_name(self) -> dict[str, BoxIndex]:
        return {box.info.name: box for box in self.index.boxes.values()}

    async def mailbox_get(self, args: dict[str, Any], call: Call) -> dict[str, Any]:
        self._account(args)
        properties = self._properties(args, MAILBOX_PROPERTIES)
        if "id" not in properties:
            properties.insert(0, "id")
        ids = self._ids_arg(args, call, lambda: [mailbox_id(b.info.uidvalidity) for b in self.index.boxes.values()])
        by_name = self._by_name()
        found, missing = [], []
        for value in ids:
            box = self.index.mailbox_by_jmap_id(value)
            if box is None:
                missing.append(value)
            else:
                found.append(self._mailbox(box, by_name, properties))
        return {"accountId": self.account_id, "state": self.index.mailbox_state(), "list": found,
                "notFound": missing}

    def _mailbox_changes(self, since: Any, key: str = "sinceState") -> tuple[list[str], list[str], list[str]]:
        """Mailboxes created, updated and destroyed since a Mailbox state: the state lists every
        mailbox (its UIDVALIDITY, which is never reused) with its counters and a checksum of its name and
        subscription, so the difference is exact."""
        old = decode_state(since, with_checksum=True)
        if old is None:
            raise MethodError("cannotCalculateChanges", f"unknown {key}")
        now = {b.uidvalidity: b for b in self.index.states()}
        before = {b.uidvalidity: b for b in old}
        created = [mailbox_id(uv) for uv in now if uv not in before]
        destroyed = [mailbox_id(uv) for uv in before if uv not in now]
        updated = [mailbox_id(uv) for uv, b in now.items() if uv in before and before[uv] != b]
        return created, updated, destroyed

    async def mailbox_changes(self, args: dict[str, Any], call: Call) -> dict[str, Any]:
        self._account(args)
        created, updated, destroyed = self._mailbox_changes(args.get("sinceState"))
        return self._changes_answer(args, self.index.mailbox_state(), created, updated, destroyed,
                                    extra={"updatedProperties": None})

    async def mailbox_query_changes(self, args: dict[str, Any], call: Call) -> dict[str, Any]:
        """RFC 8620 §5.6 over the Mailbox state: every changed mailbox is removed and, if it matches
        now, added at its place (the spec allows reporting an unmoved one so); destroyed ones removed."""
        self._account(args)
        created, updated, destroyed = self._mailbox_changes(args.get("sinceQueryState"), "sinceQueryState")
        changed = set(created) | set(updated)
        max_changes = args.get("maxChanges")
        if max_changes is not None and (not isinstance(max_changes, int) or max_changes <= 0):
            raise MethodError("invalidArguments", "maxChanges must be a positive integer")
        if max_changes is not None and len(changed) + len(destroyed) > max_changes:
            raise MethodError("tooManyChanges", "more changes than maxChanges")
        ids = self._mailbox_query_ids(args)
        up_to = args.get("upToId")
        last = ids.index(up_to) if up_to is not None and up_to in ids else len(ids)
        added = [{"id": i, "index": n} for n, i in enumerate(ids) if i in changed and n <= last]
        out: dict[str, Any] = {"accountId": self.account_id, "oldQueryState": args.get("sinceQueryState"),
                               "newQueryState": self.index.mailbox_state(),
                               "removed": sorted(changed | set(destroyed)), "added": added}
        if args.get("calculateTotal"):
            out["total"] = len(ids)
        return out

    def _changes_answer(self, args: dict[str, Any], new_state: str, created: list[str], updated: list[str],
                        destroyed: list[str], extra: dict[str, Any] | None = None) -> dict[str, Any]:
        max_changes = args.get("maxChanges")
        if max_changes is not None and (not isinstance(max_changes, int) or max_changes <= 0):
            raise MethodError("invalidArguments", "maxChanges must be a positive integer")
        if max_changes is not None and len(created) + len(updated) + len(destroyed) > max_changes:
            raise MethodError("cannotCalculateChanges", "more changes than maxChanges; fetch afresh")
        return {"accountId": self.account_id, "oldState": args.get("sinceState"), "newState": new_state,
                "hasMoreChanges": False, "created": created, "updated": updated, "destroyed": destroyed,
                **(extra or {})}

    async def mailbox_query(self, args: dict[str, Any], call: Call) -> dict[str, Any]:
        self._account(args)
        ids = self._mailbox_query_ids(args)
        position = args.get("position", 0)
        limit = args.get("limit")
        if not isinstance(position, int) or (limit is not None and (not isinstance(limit, int) or limit < 0)):
            raise MethodError("invalidArguments", "position must be an integer and limit a non-negative one")
        if position < 0:
            position = max(0, len(ids) + position)
        window = ids[position:] if limit is None else ids[position:position + limit]
        return {"accountId": self.account_id, "queryState": self.index.mailbox_state(),
                "canCalculateChanges": True, "position": position, "ids": window, "total": len(ids)}

    def _mailbox_query_ids(self, args: dict[str, Any]) -> list[str]:
        by_name = self._by_name()
        boxes = [self._mailbox(b, by_name, MAILBOX_PROPERTIES) for b in self.index.boxes.values()]
        condition = args.get("filter") or {}
        if not isinstance(condition, dict):
            raise MethodError("invalidArguments", "filter must be an object")
        for key, value in condition.items():
            if key == "parentId":
                boxes = [b for b in boxes if b["parentId"] == value]
            elif key == "name":
                boxes = [b for b in boxes if str(value).lower() in b["name"].lower()]
            elif key == "role":
                boxes = [b for b in boxes if b["role"] == value]
            elif key == "hasAnyRole":
                boxes = [b for b in boxes if (b["role"] is not None) == bool(value)]
            elif key == "isSubscribed":
                boxes = [b for b in boxes if b["isSubscribed"] == bool(value)]
            else:
                raise MethodError("unsupportedFilter", f"unknown Mailbox filter {key}")
        for comparator in reversed(args.get("sort") or [{"property": "sortOrder"}, {"property": "name"}]):
            prop = comparator.get("property") if isinstance(comparator, dict) else None
            if prop not in ("name", "sortOrder"):
                raise MethodError("unsupportedSort", f"cannot sort Mailboxes by {prop}")
            boxes.sort(key=operator.itemgetter(prop), reverse=comparator.get("isAscending", True) is False)
        return [b["id"] for b in boxes]

    async def mailbox_set(self, args: dict[str, Any], call: Call) -> dict[str, Any]:
        old_state = self.index.mailbox_state()
        self._set_checks(args, old_state)
        created: dict[str, Any] = {}
        not_created: dict[str, Any] = {}
        updated: dict[str, Any] = {}
        not_updated: dict[str, Any] = {}
        destroyed: list[str] = []
        not_destroyed: dict[str, Any] = {}
        for creation_id, data in (args.get("create") or {}).items():
            try:
                name = self._mailbox_name(data, call, None)
                role = data.get("role")
                special = None
                if role is not None:
                    if role not in ("archive", "drafts", "junk", "sent", "trash", "all", "flagged", "important"):
                        raise MethodError("invalidProperties", "unknown role", properties=["role"])
                    special = "\\" + role.capitalize()
                info = await self.store.create_mailbox(self.owner, name, special)
                if data.get("isSubscribed") is False:
                    await self.store.set_subscribed(self.owner, name, False)
                new_id = mailbox_id(info.uidvalidity)
                call.created_ids[creation_id] = new_id
                created[creation_id] = {"id": new_id, **{k: v for k, v in {
                    "totalEmails": 0, "unreadEmails": 0, "totalThreads": 0, "unreadThreads": 0,
                    "myRights": dict(RIGHTS), "sortOrder": 10}.items()}}
                await self._refresh()
            except MethodError as exc:
                not_created[creation_id] = exc.response()
            except MailboxExists:
                not_created[creation_id] = {"type": "invalidProperties", "properties": ["name"],
                                            "description": "a mailbox of that name exists"}
            except MailboxError as exc:
                not_created[creation_id] = {"type": "invalidProperties", "description": str(exc)}
        for raw_id, patch in (args.get("update") or {}).items():
            target = call.id(raw_id)
            box = self.index.mailbox_by_jmap_id(target)
            try:
                if box is None:
                    raise MethodError("notFound")
                if not isinstance(patch, dict):
                    raise MethodError("invalidPatch")
                if "name" in patch or "parentId" in patch:
                    name = self._mailbox_name(patch, call, box)
                    if name != box.info.name:
                        if box.info.name == INBOX:
                            raise MethodError("forbidden", "INBOX cannot be renamed")
                        await self.store.rename_mailbox(self.owner, box.info.name, name)
                if "isSubscribed" in patch:
                    await self.store.set_subscribed(self.owner, self._by_uv(box).info.name, bool(patch["isSubscribed"]))
                for key in patch:
                    if key not in ("name", "parentId", "isSubscribed", "sortOrder", "role"):
                        raise MethodError("invalidProperties", f"{key} cannot be changed", properties=[key])
                updated[target] = None
                await self._refresh()
            except MethodError as exc:
                not_updated[target] = exc.response()
            except MailboxError as exc:
                not_updated[target] = {"type": "invalidProperties", "description": str(exc)}
        for raw_id in args.get("destroy") or []:
            target = call.id(raw_id)
            box = self.index.mailbox_by_jmap_id(target)
            try:
                if box is None:
                    raise MethodError("notFound")
                if box.info.name == INBOX:
                    raise MethodError("forbidden", "INBOX cannot be destroyed")
                if any(b.info.name.startswith(box.info.name + "/") for b in self.index.boxes.values()):
                    raise MethodError("mailboxHasChild")
                if box.emails and not args.get("onDestroyRemoveEmails"):
                    raise MethodError("mailboxHasEmail")
                await self.store.delete_mailbox(self.owner, box.info.name)
                destroyed.append(target)
                await self._refresh()
            except MethodError as exc:
                not_destroyed[target] = exc.response()
        await self._refresh()
        return {"accountId": self.account_id, "oldState": old_state, "newState": self.index.mailbox_state(),
                "created": created or None, "updated": updated or None, "destroyed": destroyed or None,
                "notCreated": not_created or None, "notUpdated": not_updated or None,
                "notDestroyed": not_destroyed or None}

    def _by_uv(self, box: BoxIndex) -> BoxIndex:
        found = self.index.mailbox_by_jmap_id(mailbox_id(box.info.uidvalidity))
        return found or box

    def _mailbox_name(self, data: dict[str, Any], call: Call, box: BoxIndex | None) -> str:
        if not isinstance(data, dict):
            raise MethodError("invalidProperties", "a Mailbox must be an object")
        current = box.info.name.split("/") if box else None
        name = data.get("name", current[-1] if current else None)
        if not isinstance(name, str) or not name or "/" in name or len(name.encode()) > MAX_MAILBOX_NAME:
            raise MethodError("invalidProperties", "name must be a non-empty string without '/'",
                              properties=["name"])
        if "parentId" in data:
            parent_id = call.id(data["parentId"])
            if parent_id is None:
                return name
            parent = self.index.mailbox_by_jmap_id(parent_id)
            if parent is None:
                raise MethodError("invalidProperties", "no such parentId", properties=["parentId"])
            return f"{parent.info.name}/{name}"
        if current and len(current) > 1:
            return "/".join([*current[:-1], name])
        return name

    # --- Thread ------------------------------------------------------------------------------------

    async def thread_get(self, args: dict[str, Any], call: Call) -> dict[str, Any]:
        self._account(args)
        threads = self.index.threads
        ids = self._ids_arg(args, call, lambda: list(threads))
        found, missing = [], []
        for value in ids:
            members = threads.get(value)
            if members is None:
                missing.append(value)
            else:
                found.append({"id": value, "emailIds": [s.id for s in members]})
        return {"accountId": self.account_id, "state": self.index.email_state(), "list": found, "notFound": missing}

    async def thread_changes(self, args: dict[str, Any], call: Call) -> dict[str, Any]:
        changes = await self._email_changes(args)
        threads = self.index.threads
        created_emails = set(changes.created)
        created: set[str] = set()
        updated: set[str] = set()
        destroyed: set[str] = set()
        for eid in changes.created + changes.updated:
            summary = self.index.by_id.get(eid)
            if summary is not None:
                updated.add(summary.thread)
        for thread in changes.gone_threads:
            if thread is None:
                raise MethodError("cannotCalculateChanges", "emails removed before thread ids were kept")
            (updated if thread in threads else destroyed).add(thread)
        # A thread all of whose Emails are new (and none of whose Emails went) is new itself.
        for thread in list(updated):
            if thread not in changes.gone_threads and all(m.id in created_emails for m in threads.get(thread, [])):
                updated.discard(thread)
                created.add(thread)
        return self._changes_answer(args, self.index.email_state(), sorted(created), sorted(updated),
                                    sorted(destroyed))

    # --- Email: reading ----------------------------------------------------------------------------

    async def _email_changes(self, args: dict[str, Any], key: str = "sinceState") -> EmailChanges:
        """What happened to Emails since a state (RFC 8620 §5.2), followed by email id.

        The state names, per mailbox, the HIGHESTMODSEQ and UIDNEXT of that moment. An Email existed
        then if one of its copies did: a row still there with a UID below that mailbox's UIDNEXT then,
        or an expunge record after that moment of a UID below it. It exists now if it has a row. Every
        id on a row changed since, or in an expunge record since, is then created, updated, destroyed
        or (created and gone again in between) not reported.
        """
        self._account(args)
        old = decode_state(args.get(key), with_checksum=False)
        if old is None:
            raise MethodError("cannotCalculateChanges", f"unknown {key}")
        now = {b.info.uidvalidity: b for b in self.index.boxes.values()}
        before: dict[int, BoxState] = {b.uidvalidity: b for b in old}
        existed: set[str] = set()
        touched: set[str] = set()
        gone_threads: dict[str, str | None] = {}

        def expunged(uv: int, previous: BoxState, records: list[Any]) -> None:
            for record in records:
                eid = record.email_id or f"e{uv}-{record.uid}"
                touched.add(eid)
                if record.uid < previous.uidnext:
                    existed.add(eid)
                gone_threads.setdefault(eid, record.thread_id)

        for state in old:
            if state.uidvalidity not in now:
                # A mailbox deleted since: the store kept what it held (for DELETED_MAILBOX_LOG_DAYS).
                log = await self.store.deleted_mailbox_log(self.owner, state.uidvalidity)
                if log is None:
                    raise MethodError("cannotCalculateChanges", "a mailbox was deleted since that state")
                expunged(state.uidvalidity, state, [r for r in log if r.modseq > state.modseq])
            elif state.modseq > now[state.uidvalidity].info.highestmodseq:
                raise MethodError("cannotCalculateChanges", f"{key} is from the future")
        for uv, box in now.items():
            previous = before.get(uv)
            if previous is None:
                touched.update(s.id for s in box.emails.values())
                continue
            if previous.modseq == box.info.highestmodseq:
                continue
            for s in box.emails.values():
                if s.modseq > previous.modseq:
                    touched.add(s.id)
            expunged(uv, previous, await self.store.expunged_since(box.info.id, previous.modseq,
                                                                   box.info.highestmodseq))
        for eid in touched - existed:
            for copy in self.index.copies.get(eid, ()):
                at_state = before.get(self.index.boxes[copy.box].info.uidvalidity)
                if at_state is not None and copy.uid < at_state.uidnext:
                    existed.add(eid)
                    break
        result = EmailChanges()
        for eid in sorted(touched):
            alive = eid in self.index.by_id
            if eid in existed:
                (result.updated if alive else result.destroyed).append(eid)
            elif alive:
                result.created.append(eid)
        result.gone_threads = {gone_threads[e] for e in result.destroyed if e in gone_threads}
        # Threads an Email left by moving between threads cannot happen (the thread id is the message's).
        return result

    async def email_changes(self, args: dict[str, Any], call: Call) -> dict[str, Any]:
        changes = await self._email_changes(args)
        return self._changes_answer(args, self.index.email_state(), changes.created, changes.updated,
                                    changes.destroyed)

    async def _parsed(self, summaries: list[Summary]) -> dict[str, Any]:
        """Parsed messages by email id (bodies read in one batch per mailbox)."""
        by_box: dict[int, list[Summary]] = {}
        for s in summaries:
            by_box.setdefault(s.box, []).append(s)
        out: dict[str, Any] = {}
        for box_summaries in by_box.values():
            rows = [s.row() for s in box_summaries]
            bodies = await self.store.read_bodies(rows)
            for s in box_summaries:
                out[s.id] = bodies.get(s.uid, b"")
        return out

    async def _fill_body_facts(self, summaries: list[Summary]) -> None:
        missing = [s for s in summaries if s.has_attachment is None or s.preview is None]
        if not missing:
            return
        raws = await self._parsed(missing)
        for s in missing:
            root = mime.tree(mime.parse(raws[s.id]))
            s.has_attachment = mime.has_attachment(root)
            s.preview = mime.preview(root)

    def _summary_value(self, s: Summary, prop: str) -> Any:
        if prop == "id":
            return s.id
        if prop == "blobId":
            return blob_of(s.id)
        if prop == "threadId":
            return s.thread
        if prop == "mailboxIds":
            return {self.index.box_jmap_id(box): True for box in sorted(s.boxes)}
        if prop == "keywords":
            return s.keywords
        if prop == "size":
            return s.size
        if prop == "receivedAt":
            return utc_date(s.received)
        if prop == "messageId":
            return s.message_id
        if prop == "inReplyTo":
            return s.in_reply_to
        if prop == "references":
            return s.references
        if prop == "from":
            return s.from_
        if prop == "replyTo":
            return s.reply_to
        if prop == "sentAt":
            return s.sent_at
        return getattr(s, prop)

    def _email_body(self, raw: bytes, blob_prefix: str, props: list[str], body_props: list[str],
                    args: dict[str, Any], out: dict[str, Any]) -> None:
        message = mime.parse(raw)
        root = mime.tree(message)
        text_body, html_body, attachments = mime.body_lists(root)
        max_bytes = args.get("maxBodyValueBytes") or 0
        if not isinstance(max_bytes, int) or max_bytes < 0:
            raise MethodError("invalidArguments", "maxBodyValueBytes must be a positive integer")
        for prop in props:
            if prop == "hasAttachment":
                out[prop] = mime.has_attachment(root)
            elif prop == "preview":
                out[prop] = mime.preview(root)
            elif prop == "bodyStructure":
                out[prop] = mime.body_part(root, blob_prefix, [*body_props, "subParts"]
                                           if "subParts" not in body_props else body_props)
            elif prop == "textBody":
                out[prop] = [mime.body_part(p, blob_prefix, body_props) for p in text_body]
            elif prop == "htmlBody":
                out[prop] = [mime.body_part(p, blob_prefix, body_props) for p in html_body]
            elif prop == "attachments":
                out[prop] = [mime.body_part(p, blob_prefix, body_props) for p in attachments]
            elif prop == "headers":
                out[prop] = mime.raw_headers(message)
            elif prop.startswith("header:"):
                try:
                    out[prop] = mime.header_form(message, prop)
                except mime.HeaderFormError:
                    raise MethodError("invalidArguments", f"bad header property {prop}") from None
            elif prop == "bodyValues":
                wanted: dict[str, mime.Part] = {}
                if args.get("fetchAllBodyValues"):
                    for p in mime.leaves(root):
                        if p.type.startswith("text/") and p.part_id:
                            wanted[p.part_id] = p
                if args.get("fetchTextBodyValues"):
                    wanted.update({p.part_id: p for p in text_body if p.part_id and p.type.startswith("text/")})
                if args.get("fetchHTMLBodyValues"):
                    wanted.update({p.part_id: p for p in html_body if p.part_id and p.type.startswith("text/")})
                out[prop] = {pid: mime.body_value(p, max_bytes) for pid, p in wanted.items()}
        if "messageId" in props and out.get("messageId") is None:
            out["messageId"] = mime.message_ids(message.get("Message-ID"))

    def _email_props(self, args: dict[str, Any]) -> tuple[list[str], list[str]]:
        props = self._properties(args, DEFAULT_EMAIL_PROPERTIES, [*DEFAULT_EMAIL_PROPERTIES, "bodyStructure",
                                                                   "headers"], header_ok=True)
        body_props = self._properties(args, mime.DEFAULT_BODY_PROPERTIES,
                                      [*mime.DEFAULT_BODY_PROPERTIES, "headers", "subParts"],
                                      key="bodyProperties", header_ok=True)
        return props, body_props

    async def email_get(self, args: dict[str, Any], call: Call) -> dict[str, Any]:
        self._account(args)
        props, body_props = self._email_props(args)
        if "id" not in props:
            props.insert(0, "id")
        ids = self._ids_arg(args, call, lambda: list(self.index.by_id))
        found: list[Summary] = []
        missing: list[str] = []
        for value in ids:
            summary = self.index.by_id.get(value)
            if summary is None:
                missing.append(value)
            else:
                found.append(summary)
        needs_body = any(p in BODY_PROPERTIES - {"hasAttachment", "preview"} or p.startswith("header:")
                         for p in props)
        raws: dict[str, Any] = await self._parsed(found) if needs_body else {}
        if not needs_body and ("hasAttachment" in props or "preview" in props):
            await self._fill_body_facts(found)
        result = []
        for s in found:
            out: dict[str, Any] = {}
            for prop in props:
                if prop in SUMMARY_PROPERTIES:
                    out[prop] = self._summary_value(s, prop)
                elif not needs_body and prop in ("hasAttachment", "preview"):
                    out[prop] = getattr(s, "has_attachment" if prop == "hasAttachment" else "preview")
            if needs_body:
                self._email_body(raws[s.id], blob_of(s.id), [p for p in props if p not in SUMMARY_PROPERTIES],
                                 body_props, args, out)
                # Keep the cheap facts for list views that ask again without bodies.
                if "preview" in out:
                    s.preview = out["preview"]
                if "hasAttachment" in out:
                    s.has_attachment = out["hasAttachment"]
            result.append(out)
        return {"accountId": self.account_id, "state": self.index.email_state(), "list": result,
                "notFound": missing}

    # --- Email/query -------------------------------------------------------------------------------

    def _condition_values(self, condition: Any, keys: tuple[str, ...]) -> list[str]:
        """The values the conditions ``keys`` are given anywhere in a filter."""
        if not isinstance(condition, dict):
            return []
        if "operator" in condition:
            return [v for c in condition.get("conditions") or [] for v in self._condition_values(c, keys)]
        return [str(condition[k]) for k in keys if k in condition]

    async def _search_words(self, condition: Any) -> dict[str, set[str]] | None:
        """For each ``text``/``body`` value of a filter, the Emails whose body has its words, from the
        persistent full-text index; None when the store has no index (bodies are then scanned)."""
        values = set(self._condition_values(condition, ("text", "body")))
        if not values or not await self.store.search.ready():
            return None
        await self._catch_up_search()
        return {value: await self.store.search.match(self.owner, value) or set() for value in values}

    async def _catch_up_search(self) -> None:
        """Index the account's messages that have no entry yet (stored before the index existed, or by
        a path without the extractor) before the first search relies on it."""
        known = self.index.searchable
        unknown = [email for email in self.index.by_id if email not in known]
        if not unknown:
            return
        known.update(await self.store.search.indexed_among(unknown))
        missing = [self.index.by_id[email] for email in unknown if email not in known]
        for start in range(0, len(missing), 200):
            batch = missing[start:start + 200]
            raws = await self._parsed(batch)
            entries = []
            for s in batch:
                try:
                    entries.append((s.id, self.owner, mime.searchable_text(raws[s.id])))
                except Exception:  # a body that defeats the parser is indexed as empty
                    entries.append((s.id, self.owner, ""))
            await self.store.search.insert(entries)
            known.update(s.id for s in batch)

    def _check_filter(self, condition: Any, depth: int = 0) -> None:
        if condition is None:
            return
        if not isinstance(condition, dict) or depth > 16:
            raise MethodError("invalidArguments", "filter must be an object (nested at most 16 deep)")
        if "operator" in condition:
            if condition["operator"] not in ("AND", "OR", "NOT") or not isinstance(condition.get("conditions"), list):
                raise MethodError("unsupportedFilter", "a FilterOperator needs AND, OR or NOT and conditions")
            for c in condition["conditions"]:
                self._check_filter(c, depth + 1)
            return
        bad = [k for k in condition if k not in FILTER_CONDITIONS]
        if bad:
            raise MethodError("unsupportedFilter", f"unknown filter conditions: {', '.join(bad)}")
        for key in ("before", "after"):
            if key in condition:
                condition[f"_{key}"] = parse_date(condition[key], key)
        for key in ("inMailbox",):
            if key in condition and self.index.mailbox_by_jmap_id(condition[key]) is None:
                condition["_nobox"] = True

    def _matches(self, s: Summary, c: dict[str, Any], texts: dict[str, tuple[str, bool]],
                 words: dict[str, set[str]] | None = None) -> bool:
        if "operator" in c:
            results = (self._matches(s, sub, texts, words) for sub in c["conditions"])
            if c["operator"] == "AND":
                return all(results)
            if c["operator"] == "OR":
                return any(results)
            return not any(results)
        for key, value in c.items():
            if key.startswith("_"):
                continue
            if key == "inMailbox":
                box = self.index.mailbox_by_jmap_id(value)
                if box is None or box.info.id not in s.boxes:
                    return False
            elif key == "inMailboxOtherThan":
                excluded = {b.info.id for v in value or [] if (b := self.index.mailbox_by_jmap_id(v))}
                if not s.boxes - excluded:
                    return False
            elif key == "before":
                if not s.received < c["_before"]:
                    return False
            elif key == "after":
                if not s.received >= c["_after"]:
                    return False
            elif key == "minSize":
                if s.size < int(value):
                    return False
            elif key == "maxSize":
                if s.size >= int(value):
                    return False
            elif key == "hasKeyword":
                if not s.keywords.get(str(value).lower()):
                    return False
            elif key == "notKeyword":
                if s.keywords.get(str(value).lower()):
                    return False
            elif key in ("allInThreadHaveKeyword", "someInThreadHaveKeyword", "noneInThreadHaveKeyword"):
                members = self.index.threads.get(s.thread, [s])
                have = [bool(m.keywords.get(str(value).lower())) for m in members]
                if key == "allInThreadHaveKeyword" and not all(have):
                    return False
                if key == "someInThreadHaveKeyword" and not any(have):
                    return False
                if key == "noneInThreadHaveKeyword" and any(have):
                    return False
            elif key == "hasAttachment":
                if bool(texts.get(s.id, ("", False))[1]) != bool(value):
                    return False
            elif key in ("from", "to", "cc", "bcc"):
                if not _address_match(getattr(s, "from_" if key == "from" else key), str(value)):
                    return False
            elif key == "subject":
                if str(value).lower() not in s.subject.lower():
                    return False
            elif key == "body":
                if not self._body_has(s, str(value), texts, words):
                    return False
            elif key == "text":
                needle = str(value).lower()
                if not (needle in s.subject.lower()
                        or any(_address_match(getattr(s, f), needle) for f in ("from_", "to", "cc", "bcc"))
                        or self._body_has(s, str(value), texts, words)):
                    return False
            elif key == "header":
                if not isinstance(value, list) or not value or len(value) > 2:
                    return False
                header_text = s.header.decode("utf-8", "replace")
                name = str(value[0]).lower()
                lines = [line.partition(":")[2] for line in header_text.replace("\r\n ", " ").split("\r\n")
                         if line.lower().startswith(name + ":")]
                if not lines or (len(value) == 2 and not any(str(value[1]).lower() in ln.lower() for ln in lines)):
                    return False
        return True

    @staticmethod
    def _body_has(s: Summary, value: str, texts: dict[str, tuple[str, bool]],
                  words: dict[str, set[str]] | None) -> bool:
        if words is not None:
            return s.id in words.get(value, ())
        return value.lower() in texts.get(s.id, ("", False))[0]

    async def _body_texts(self, summaries: list[Summary]) -> dict[str, tuple[str, bool]]:
        """Lower-cased body text and hasAttachment per email, for body and text filters. A message
        never changes under its id, so each is computed once and kept in the account's text cache;
        a plain message (no encoded part, valid UTF-8: the store's own flag, as IMAP SEARCH uses it)
        is searched as it is, without a MIME parse."""
        cache = self.index.texts
        out: dict[str, tuple[str, bool]] = {}
        missing = []
        for s in summaries:
            found = cache.get(s.id)
            if found is None:
                missing.append(s)
            else:
                out[s.id] = found
        for start in range(0, len(missing), 500):
            batch = missing[start:start + 500]
            raws = await self._parsed(batch)
            for s in batch:
                raw = raws[s.id]
                if s.plain and b"content-type: multipart" not in s.header.lower():
                    entry = (raw[len(s.header):].decode("utf-8", "replace").lower(), False)
                else:
                    root = mime.tree(mime.parse(raw))
                    texts = []
                    for part in mime.leaves(root):
                        if part.type == "text/plain":
                            texts.append(part.text()[0])
                        elif part.type == "text/html":
                            texts.append(mime.html_to_text(part.text()[0]))
                    entry = ("\n".join(texts).lower(), mime.has_attachment(root))
                s.has_attachment = entry[1]
                out[s.id] = entry
                self.index.remember_text(s.id, entry)
        return out

    def _sort(self, summaries: list[Summary], sort: Any) -> list[Summary]:
        if sort is None:
            sort = [{"property": "receivedAt", "isAscending": False}]
        if not isinstance(sort, list):
            raise MethodError("invalidArguments", "sort must be a list")
        ordered = sorted(summaries, key=lambda s: s.id)
        for comparator in reversed(sort):
            if not isinstance(comparator, dict) or comparator.get("property") not in SORT_PROPERTIES:
                prop = comparator.get("property") if isinstance(comparator, dict) else comparator
                raise MethodError("unsupportedSort", f"cannot sort by {prop}")
            prop = comparator["property"]
            descending = comparator.get("isAscending", True) is False
            keyword = str(comparator.get("keyword", "")).lower()
            ordered.sort(key=self._sort_key(prop, keyword), reverse=descending)
        return ordered

    def _sort_key(self, prop: str, keyword: str) -> Callable[[Summary], Any]:
        threads = self.index.threads

        def key(s: Summary) -> Any:
            if prop == "receivedAt":
                return s.received
            if prop == "sentAt":
                return s.sent_stamp
            if prop == "size":
                return s.size
            if prop == "from":
                return _first_address(s.from_)
            if prop == "to":
                return _first_address(s.to)
            if prop == "subject":
                return _SUBJECT_PREFIX.sub("", s.subject).lower()
            if prop == "hasKeyword":
                return bool(s.keywords.get(keyword))
            members = threads.get(s.thread, [s])
            if prop == "someInThreadHaveKeyword":
                return any(m.keywords.get(keyword) for m in members)
            return all(m.keywords.get(keyword) for m in members)

        return key

    async def _query_ids(self, args: dict[str, Any]) -> list[str]:
        condition = args.get("filter")
        self._check_filter(condition)
        candidates = self.index.all()
        if isinstance(condition, dict) and "inMailbox" in condition and "operator" not in condition:
            box = self.index.mailbox_by_jmap_id(condition["inMailbox"])
            candidates = self.index.in_box(box) if box else []
        texts: dict[str, tuple[str, bool]] = {}
        words = await self._search_words(condition) if condition is not None else None
        if condition is not None and (self._condition_values(condition, ("hasAttachment",)) or (
                words is None and self._condition_values(condition, ("text", "body")))):
            texts = await self._body_texts(candidates)
        matched = [s for s in candidates if condition is None or self._matches(s, condition, texts, words)]
        ordered = self._sort(matched, args.get("sort"))
        if args.get("collapseThreads"):
            seen: set[str] = set()
            collapsed = []
            for s in ordered:
                if s.thread not in seen:
                    seen.add(s.thread)
                    collapsed.append(s)
            ordered = collapsed
        return [s.id for s in ordered]

    async def email_query(self, args: dict[str, Any], call: Call) -> dict[str, Any]:
        self._account(args)
        ids = await self._query_ids(args)
        total = len(ids)
        position = args.get("position", 0)
        limit = args.get("limit")
        if not isinstance(position, int) or (limit is not None and (not isinstance(limit, int) or limit < 0)):
            raise MethodError("invalidArguments", "position must be an integer and limit a non-negative one")
        anchor = args.get("anchor")
        if anchor is not None:
            if anchor not in ids:
                raise MethodError("anchorNotFound")
            offset = args.get("anchorOffset", 0)
            if not isinstance(offset, int):
                raise MethodError("invalidArguments", "anchorOffset must be an integer")
            position = max(0, ids.index(anchor) + offset)
        elif position < 0:
            position = max(0, total + position)
        capped = limit is None or limit > MAX_QUERY_LIMIT
        effective: int = MAX_QUERY_LIMIT if limit is None or limit > MAX_QUERY_LIMIT else limit
        window = ids[position:position + effective]
        out: dict[str, Any] = {"accountId": self.account_id, "queryState": self.index.email_state(),
                               "canCalculateChanges": True, "position": position, "ids": window}
        if args.get("calculateTotal"):
            out["total"] = total
        if capped and total - position > MAX_QUERY_LIMIT:
            out["limit"] = MAX_QUERY_LIMIT
        return out

    async def email_query_changes(self, args: dict[str, Any], call: Call) -> dict[str, Any]:
        self._account(args)
        changes = await self._email_changes(args, key="sinceQueryState")
        changed = set(changes.created) | set(changes.updated)
        destroyed = changes.destroyed
        if args.get("collapseThreads"):
            threads = {self.index.by_id[i].thread for i in changed if i in self.index.by_id}
            changed |= {s.id for t in threads for s in self.index.threads.get(t, [])}
        max_changes = args.get("maxChanges")
        if isinstance(max_changes, int) and len(changed) + len(destroyed) > max_changes:
            raise MethodError("tooManyChanges", "more changes than maxChanges")
        ids = await self._query_ids(args)
        added: list[dict[str, Any]] = [{"id": i, "index": n} for n, i in enumerate(ids) if i in changed]
        up_to = args.get("upToId")
        if up_to is not None and up_to in ids:
            limit_index = ids.index(up_to)
            added = [a for a in added if a["index"] <= limit_index]
        out: dict[str, Any] = {"accountId": self.account_id, "oldQueryState": args.get("sinceQueryState"),
                               "newQueryState": self.index.email_state(),
                               "removed": sorted(changed | set(destroyed)), "added": added}
        if args.get("calculateTotal"):
            out["total"] = len(ids)
        return out

    # --- Email: writing ----------------------------------------------------------------------------

    def _mailboxes(self, value: Any, call: Call) -> list[BoxIndex]:
        """The mailboxes a ``mailboxIds`` value names (at least one, RFC 8621 §4.1.1)."""
        if not isinstance(value, dict) or not value:
            raise MethodError("invalidProperties", "mailboxIds must name a mailbox", properties=["mailboxIds"])
        chosen = [call.id(k) for k, v in value.items() if v]
        if not chosen:
            raise MethodError("invalidProperties", "an Email must be in at least one mailbox",
                              properties=["mailboxIds"])
        boxes = []
        for value_id in chosen:
            box = self.index.mailbox_by_jmap_id(value_id)
            if box is None:
                raise MethodError("invalidProperties", f"no mailbox {value_id}", properties=["mailboxIds"])
            if box not in boxes:
                boxes.append(box)
        return boxes

    @staticmethod
    def _keywords(value: Any) -> dict[str, bool]:
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(isinstance(k, str) and _KEYWORD.match(k) and v is True
                                                  for k, v in value.items()):
            raise MethodError("invalidProperties", "keywords must map keywords to true", properties=["keywords"])
        return {k.lower(): True for k in value}

    async def _append(self, boxes: list[BoxIndex], raw: bytes, keywords: dict[str, bool], received: Any) -> Summary:
        """Store a new message in the first mailbox and copy it to the others (one Email, one id)."""
        stamp = parse_date(received, "receivedAt") if received is not None else None
        first = boxes[0].info.id
        uid, _ = await self.store.append(first, raw, flags_of(keywords), internal_date=stamp)
        for other in boxes[1:]:
            await self.store.copy(first, [uid], other.info.id)
        await self._refresh()
        row = self.index.boxes[first].emails.get(uid) if first in self.index.boxes else None
        summary = self.index.by_id.get(row.id) if row is not None else None
        if summary is None:
            raise MethodError("serverFail", "the new message vanished")
        return summary

    def _created(self, s: Summary) -> dict[str, Any]:
        return {"id": s.id, "blobId": blob_of(s.id), "threadId": s.thread, "size": s.size}

    async def email_set(self, args: dict[str, Any], call: Call) -> dict[str, Any]:
        old_state = self.index.email_state()
        self._set_checks(args, old_state)
        created: dict[str, Any] = {}
        not_created: dict[str, Any] = {}
        for creation_id, data in (args.get("create") or {}).items():
            try:
                if not isinstance(data, dict):
                    raise MethodError("invalidProperties", "an Email must be an object")
                boxes = self._mailboxes(data.get("mailboxIds"), call)
                keywords = self._keywords(data.get("keywords"))
                blobs = await self._blob_lookup([a.get("blobId") for a in data.get("attachments") or []
                                                 if isinstance(a, dict)])
                try:
                    raw = mime.compose(data, blobs.get, self.domain)
                except mime.CreateError as exc:
                    raise MethodError("invalidProperties", str(exc),
                                      properties=[exc.prop] if exc.prop else []) from None
                summary = await self._append(boxes, raw, keywords, data.get("receivedAt"))
                call.created_ids[creation_id] = summary.id
                created[creation_id] = self._created(summary)
            except MethodError as exc:
                not_created[creation_id] = exc.response()
        updated, not_updated = await self._email_updates(args.get("update") or {}, call)
        destroyed, not_destroyed = await self._email_destroy(args.get("destroy") or [], call)
        await self._refresh()
        return {"accountId": self.account_id, "oldState": old_state, "newState": self.index.email_state(),
                "created": created or None, "updated": updated or None, "destroyed": destroyed or None,
                "notCreated": not_created or None, "notUpdated": not_updated or None,
                "notDestroyed": not_destroyed or None}

    async def _email_updates(self, updates: dict[str, Any], call: Call) -> tuple[dict[str, Any], dict[str, Any]]:
        updated: dict[str, Any] = {}
        not_updated: dict[str, Any] = {}
        flag_groups: dict[tuple[int, tuple[str, ...]], list[int]] = {}
        moves: dict[tuple[int, int], list[int]] = {}
        copies: dict[tuple[int, int], list[int]] = {}
        removals: dict[int, list[int]] = {}
        for raw_id, patch in updates.items():
            target = call.id(raw_id)
            summary = self.index.by_id.get(target)
            try:
                if summary is None:
                    raise MethodError("notFound")
                if not isinstance(patch, dict):
                    raise MethodError("invalidPatch", "a patch must be an object")
                keywords = dict(summary.keywords)
                mailboxes = {self.index.box_jmap_id(box): True for box in summary.boxes}
                for path, value in patch.items():
                    if path == "keywords":
                        keywords = self._keywords(value)
                    elif path.startswith("keywords/"):
                        keyword = path[len("keywords/"):].replace("~1", "/").replace("~0", "~").lower()
                        if not _KEYWORD.match(keyword) or value not in (True, None):
                            raise MethodError("invalidPatch", f"bad keyword patch {path}")
                        if value:
                            keywords[keyword] = True
                        else:
                            keywords.pop(keyword, None)
                    elif path == "mailboxIds":
                        if not isinstance(value, dict):
                            raise MethodError("invalidProperties", properties=["mailboxIds"])
                        mailboxes = {call.id(k): bool(v) for k, v in value.items()}
                    elif path.startswith("mailboxIds/"):
                        target_box = call.id(path[len("mailboxIds/"):])
                        if value:
                            mailboxes[target_box] = True
                        else:
                            mailboxes.pop(target_box, None)
                    else:
                        raise MethodError("invalidProperties", f"{path} cannot be changed after creation",
                                          properties=[path.split("/")[0]])
                wanted = {box.info.id for box in self._mailboxes({k: v for k, v in mailboxes.items() if v}, call)}
                new_flags = flags_of(keywords)
                present = {c.box: c for c in self.index.copies.get(summary.id, [summary])}
                for copy in present.values():
                    if {f.lower() for f in new_flags} != {f.lower() for f in copy.flags}:
                        flag_groups.setdefault((copy.box, tuple(sorted(new_flags))), []).append(copy.uid)
                # A mailbox swapped for another is a MOVE (atomic, RFC 6851); one more is a COPY of the
                # same message (it keeps the Email id); one fewer expunges that copy.
                leaving = sorted(set(present) - wanted)
                arriving = sorted(wanted - set(present))
                for source, target_box in zip(leaving, arriving, strict=False):
                    moves.setdefault((source, target_box), []).append(present[source].uid)
                for target_box in arriving[len(leaving):]:
                    copies.setdefault((summary.box, target_box), []).append(summary.uid)
                for source in leaving[len(arriving):]:
                    removals.setdefault(source, []).append(present[source].uid)
                updated[target] = None
            except MethodError as exc:
                not_updated[target] = exc.response()
        # One store transaction per mailbox and resulting flag set, and per source/target pair: 1,000
        # keyword changes are one MODSEQ step, as an IMAP STORE 1:1000 is.
        for (box_id, flags), uids in flag_groups.items():
            await self.store.store_flags(box_id, uids, "set", flags)
        for (source, target_box), uids in copies.items():
            await self.store.copy(source, uids, target_box)
        for (source, target_box), uids in moves.items():
            await self.store.move(source, uids, target_box)
        for source, uids in removals.items():
            await self.store.store_flags(source, uids, "add", [flaglib.DELETED])
            await self.store.expunge(source, uids)
        if updated:
            await self._refresh()
        return updated, not_updated

    async def _email_destroy(self, ids: list[Any], call: Call) -> tuple[list[str], dict[str, Any]]:
        destroyed: list[str] = []
        not_destroyed: dict[str, Any] = {}
        by_box: dict[int, list[Summary]] = {}
        wanted: list[str] = []
        for raw_id in ids:
            target = call.id(raw_id)
            summary = self.index.by_id.get(target)
            if summary is None:
                not_destroyed[str(target)] = {"type": "notFound"}
                continue
            wanted.append(summary.id)
            # Destroying an Email removes it from every mailbox it is in.
            for copy in self.index.copies.get(summary.id, [summary]):
                by_box.setdefault(copy.box, []).append(copy)
        gone: set[str] = set()
        for box_id, summaries in by_box.items():
            uids = [s.uid for s in summaries]
            await self.store.store_flags(box_id, uids, "add", [flaglib.DELETED])
            expunged = set(await self.store.expunge(box_id, uids))
            gone.update(s.id for s in summaries if s.uid in expunged)
        for eid in wanted:
            if eid in gone:
                destroyed.append(eid)
            else:
                not_destroyed[eid] = {"type": "notFound"}
        if destroyed:
            await self._refresh()
        return destroyed, not_destroyed

    async def email_copy(self, args: dict[str, Any], call: Call) -> dict[str, Any]:
        self._account(args, "fromAccountId")
        self._account(args)
        raise MethodError("invalidArguments", "fromAccountId and accountId must differ (RFC 8620 §5.4); "
                                              "this user has one account: use Email/set to change mailboxIds")

    async def _blob_lookup(self, blob_ids: Iterable[Any]) -> dict[str, tuple[bytes, str]]:
        out: dict[str, tuple[bytes, str]] = {}
        for blob_id in blob_ids:
            if isinstance(blob_id, str):
                found = await self.blob(blob_id)
                if found is not None:
                    out[blob_id] = found
        return out

    async def blob(self, blob_id: str) -> tuple[bytes, str] | None:
        """An uploaded blob, a whole message ("b..."), or one part of a message ("b...-N")."""
        if blob_id.startswith("u"):
            async with self.db.begin() as conn:
                row = (await conn.execute(select(jmap_blobs.c.data, jmap_blobs.c.type).where(
                    jmap_blobs.c.id == blob_id, jmap_blobs.c.account == self.owner))).first()
            return None if row is None else (bytes(row[0]), str(row[1]))
        if not blob_id.startswith("b"):
            return None
        summary = self.index.by_id.get("e" + blob_id[1:])
        part_id = None
        if summary is None:
            email, _, part_id = blob_id[1:].rpartition("-")
            summary = self.index.by_id.get("e" + email)
        if summary is None:
            return None
        raw = (await self._parsed([summary]))[summary.id]
        if part_id is None:
            return raw, "message/rfc822"
        part = mime.find_part(mime.tree(mime.parse(raw)), part_id)
        if part is None:
            return None
        return part.content(), part.type

    async def email_import(self, args: dict[str, Any], call: Call) -> dict[str, Any]:
        old_state = self.index.email_state()
        self._account(args)
        if args.get("ifInState") is not None and args["ifInState"] != old_state:
            raise MethodError("stateMismatch")
        emails = args.get("emails")
        if not isinstance(emails, dict):
            raise MethodError("invalidArguments", "emails must be an object")
        created: dict[str, Any] = {}
        not_created: dict[str, Any] = {}
        for creation_id, data in emails.items():
            try:
                if not isinstance(data, dict) or not isinstance(data.get("blobId"), str):
                    raise MethodError("invalidProperties", "an EmailImport needs a blobId", properties=["blobId"])
                found = await self.blob(call.id(data["blobId"]))
                if found is None:
                    raise MethodError("blobNotFound", f"no blob {data['blobId']}", notFound=[data["blobId"]])
                boxes = self._mailboxes(data.get("mailboxIds"), call)
                summary = await self._append(boxes, found[0], self._keywords(data.get("keywords")),
                                             data.get("receivedAt"))
                call.created_ids[creation_id] = summary.id
                created[creation_id] = self._created(summary)
            except MethodError as exc:
                not_created[creation_id] = exc.response()
        return {"accountId": self.account_id, "oldState": old_state, "newState": self.index.email_state(),
                "created": created or None, "notCreated": not_created or None}

    async def email_parse(self, args: dict[str, Any], call: Call) -> dict[str, Any]:
        self._account(args)
        blob_ids = args.get("blobIds")
        if not isinstance(blob_ids, list) or not all(isinstance(b, str) for b in blob_ids):
            raise MethodError("invalidArguments", "blobIds must be a list of strings")
        props = self._properties(args, PARSE_DEFAULT_PROPERTIES, [*DEFAULT_EMAIL_PROPERTIES, "bodyStructure",
                                                                   "headers"], header_ok=True)
        _, body_props = self._email_props({"bodyProperties": args.get("bodyProperties")})
        parsed: dict[str, Any] = {}
        not_parsable: list[str] = []
        not_found: list[str] = []
        for blob_id in blob_ids:
            found = await self.blob(blob_id)
            if found is None:
                not_found.append(blob_id)
                continue
            raw = found[0]
            if not raw.strip():
                not_parsable.append(blob_id)
                continue
            out: dict[str, Any] = {}
            message = mime.parse(raw)
            from peerage.mail.jmap.index import addresses, decode_text

            for prop in props:
                if prop in ("id", "threadId", "mailboxIds", "keywords", "receivedAt"):
                    out[prop] = None
                elif prop == "blobId":
                    out[prop] = blob_id
                elif prop == "size":
                    out[prop] = len(raw)
                elif prop == "subject":
                    out[prop] = decode_text(message.get("Subject")) or None
                elif prop in ("from", "to", "cc", "bcc", "sender", "replyTo"):
                    name = {"replyTo": "Reply-To"}.get(prop, prop.capitalize())
                    out[prop] = addresses([str(v) for v in message.get_all(name) or []])
                elif prop in ("messageId", "inReplyTo", "references"):
                    name = {"messageId": "Message-ID", "inReplyTo": "In-Reply-To"}.get(prop, "References")
                    out[prop] = mime.message_ids(message.get(name))
                elif prop == "sentAt":
                    out[prop] = mime.header_form(message, "header:Date:asDate")
            self._email_body(raw, blob_id, [p for p in props if p in BODY_PROPERTIES or p.startswith("header:")],
                             body_props, args, out)
            parsed[blob_id] = out
        return {"accountId": self.account_id, "parsed": parsed or None, "notParsable": not_parsable or None,
                "notFound": not_found or None}

    async def search_snippet_get(self, args: dict[str, Any], call: Call) -> dict[str, Any]:
        self._account(args)
        ids = args.get("emailIds")
        if not isinstance(ids, list):
            raise MethodError("invalidArguments", "emailIds must be a list")
        if len(ids) > MAX_OBJECTS_IN_GET:
            raise MethodError("requestTooLarge")
        terms = _filter_terms(args.get("filter"))
        found = [self.index.by_id[i] for i in ids if i in self.index.by_id]
        await self._fill_body_facts(found)
        snippets = []
        for s in found:
            snippets.append({"emailId": s.id, "subject": _mark(s.subject, terms),
                             "preview": _mark(s.preview or "", terms)})
        return {"accountId": self.account_id, "list": snippets,
                "notFound": [i for i in ids if i not in self.index.by_id] or None}

    # --- settings: Identity, VacationResponse -----------------------------------------------------

    async def _settings(self, prefix: str) -> dict[str, tuple[dict[str, Any], int]]:
        async with self.db.begin() as conn:
            rows = await conn.execute(select(jmap_settings).where(jmap_settings.c.account == self.owner,
                                                                  jmap_settings.c.kind.startswith(prefix)))
            return {row.kind[len(prefix):]: (json.loads(row.value), row.modseq) for row in rows}

    # A change log per kind of object kept in jmap_settings, for the /changes of objects that have no
    # MODSEQ of their own (Identity, EmailSubmission): a counter row "meta:<kind>" whose modseq is the
    # kind's state, and per object a row "log:<kind>:<id>" with the counter value of its last change
    # and of its creation, kept after it is destroyed (RFC 8620 §5.2 needs destroyed ids).

    async def _logged(self, conn: Any, kind: str, object_id: str, destroyed: bool = False) -> None:
        """Record a change of ``object_id`` in the caller's transaction."""
        counter = f"meta:{kind}"
        seq = (await conn.execute(update(jmap_settings).where(
            jmap_settings.c.account == self.owner, jmap_settings.c.kind == counter)
            .values(modseq=jmap_settings.c.modseq + 1).returning(jmap_settings.c.modseq))).scalar()
        if seq is None:
            seq = 1
            await conn.execute(insert(jmap_settings).values(account=self.owner, kind=counter, value="{}", modseq=seq))
        entry = f"log:{kind}:{object_id}"
        found = (await conn.execute(select(jmap_settings.c.value).where(
            jmap_settings.c.account == self.owner, jmap_settings.c.kind == entry))).scalar()
        value = json.dumps({"created": json.loads(found)["created"] if found else seq, "destroyed": destroyed})
        if found is None:
            await conn.execute(insert(jmap_settings).values(account=self.owner, kind=entry, value=value, modseq=seq))
        else:
            await conn.execute(update(jmap_settings).where(
                jmap_settings.c.account == self.owner, jmap_settings.c.kind == entry).values(value=value, modseq=seq))

    async def _log_state(self, kind: str) -> int:
        async with self.db.begin() as conn:
            return int((await conn.execute(select(jmap_settings.c.modseq).where(
                jmap_settings.c.account == self.owner, jmap_settings.c.kind == f"meta:{kind}"))).scalar() or 0)

    async def _log_changes(self, kind: str, prefix: str, args: dict[str, Any],
                           always_there: Iterable[str] = ()) -> dict[str, Any]:
        """RFC 8620 §5.2 /changes from the change log of ``kind`` (states are ``prefix`` + counter)."""
        self._account(args)
        since = args.get("sinceState")
        now = await self._log_state(kind)
        if not isinstance(since, str) or not since.startswith(prefix) or not since[len(prefix):].isdigit():
            raise MethodError("cannotCalculateChanges", "unknown sinceState")
        old = int(since[len(prefix):])
        if old > now:
            raise MethodError("cannotCalculateChanges", "sinceState is from the future")
        created: list[str] = []
        updated: list[str] = []
        destroyed: list[str] = []
        head = f"log:{kind}:"
        async with self.db.begin() as conn:
            rows = await conn.execute(select(jmap_settings.c.kind, jmap_settings.c.value).where(
                jmap_settings.c.account == self.owner, jmap_settings.c.kind.startswith(head),
                jmap_settings.c.modseq > old).order_by(jmap_settings.c.modseq))
            for row in rows:
                object_id, entry = row.kind[len(head):], json.loads(row.value)
                new = entry["created"] > old and object_id not in always_there
                if entry["destroyed"]:
                    if not new:
                        destroyed.append(object_id)
                else:
                    (created if new else updated).append(object_id)
        return self._changes_answer(args, f"{prefix}{now}", created, updated, destroyed)

    async def _save_setting(self, kind: str, value: dict[str, Any] | None) -> None:
        async with self.db.begin() as conn:
            existing = (await conn.execute(select(jmap_settings.c.modseq).where(
                jmap_settings.c.account == self.owner, jmap_settings.c.kind == kind))).scalar()
            if value is None:
                await conn.execute(delete(jmap_settings).where(jmap_settings.c.account == self.owner,
                                                               jmap_settings.c.kind == kind))
            elif existing is None:
                await conn.execute(insert(jmap_settings).values(account=self.owner, kind=kind,
                                                                value=json.dumps(value), modseq=1))
            else:
                await conn.execute(update(jmap_settings).where(jmap_settings.c.account == self.owner,
                                                               jmap_settings.c.kind == kind)
                                   .values(value=json.dumps(value), modseq=existing + 1))
            if kind.startswith("identity:"):
                await self._logged(conn, "identity", kind[len("identity:"):], destroyed=value is None)
        self.changed()

    async def _identities(self) -> tuple[dict[str, dict[str, Any]], str]:
        stored = await self._settings("identity:")
        identities = {IDENTITY_DEFAULT: {"id": IDENTITY_DEFAULT, "name": "", "email": self.owner, "replyTo": None,
                                         "bcc": None, "textSignature": "", "htmlSignature": "", "mayDelete": False}}
        for key, (value, _) in stored.items():
            base = identities.get(key, {"id": key, "mayDelete": True})
            identities[key] = {**base, **value, "id": key}
        return identities, f"I{await self._log_state('identity')}"

    async def identity_get(self, args: dict[str, Any], call: Call) -> dict[str, Any]:
        self._account(args)
        identities, state = await self._identities()
        ids = self._ids_arg(args, call, lambda: list(identities))
        return {"accountId": self.account_id, "state": state,
                "list": [identities[i] for i in ids if i in identities],
                "notFound": [i for i in ids if i not in identities]}

    async def identity_changes(self, args: dict[str, Any], call: Call) -> dict[str, Any]:
        # The account's own identity exists from the start: a change to it is an update.
        return await self._log_changes("identity", "I", args, always_there=(IDENTITY_DEFAULT,))

    def _is_own(self, address: str) -> bool:
        address = address.strip().lower()
        local, _, domain = address.rpartition("@")
        return address == self.owner or f"{local.split('+', 1)[0]}@{domain}" == self.owner

    async def identity_set(self, args: dict[str, Any], call: Call) -> dict[str, Any]:
        identities, old_state = await self._identities()
        self._set_checks(args, old_state)
        editable = ("name", "replyTo", "bcc", "textSignature", "htmlSignature")
        created: dict[str, Any] = {}
        not_created: dict[str, Any] = {}
        updated: dict[str, Any] = {}
        not_updated: dict[str, Any] = {}
        destroyed: list[str] = []
        not_destroyed: dict[str, Any] = {}
        for creation_id, data in (args.get("create") or {}).items():
            if not isinstance(data, dict) or not isinstance(data.get("email"), str) or not self._is_own(data["email"]):
                not_created[creation_id] = {"type": "forbiddenFrom",
                                            "description": "an identity's email must be this account's address"}
                continue
            new_id = secrets.token_hex(8)
            value = {"email": data["email"], **{k: data.get(k) for k in editable if k in data}}
            await self._save_setting(f"identity:{new_id}", value)
            call.created_ids[creation_id] = new_id
            created[creation_id] = {"id": new_id, "mayDelete": True}
        for raw_id, patch in (args.get("update") or {}).items():
            target = call.id(raw_id)
            if target not in identities or not isinstance(patch, dict):
                not_updated[target] = {"type": "notFound"}
                continue
            bad = [k for k in patch if k not in editable]
            if bad:
                not_updated[target] = {"type": "invalidProperties", "properties": bad}
                continue
            current = {k: v for k, v in identities[target].items() if k in (*editable, "email")}
            current.update(patch)
            await self._save_setting(f"identity:{target}", current)
            updated[target] = None
        for raw_id in args.get("destroy") or []:
            target = call.id(raw_id)
            if target not in identities:
                not_destroyed[target] = {"type": "notFound"}
            elif not identities[target].get("mayDelete"):
                not_destroyed[target] = {"type": "forbidden", "description": "the account's own identity stays"}
            else:
                await self._save_setting(f"identity:{target}", None)
                destroyed.append(target)
        _, new_state = await self._identities()
        return {"accountId": self.account_id, "oldState": old_state, "newState": new_state,
                "created": created or None, "updated": updated or None, "destroyed": destroyed or None,
                "notCreated": not_created or None, "notUpdated": not_updated or None,
                "notDestroyed": not_destroyed or None}

    async def _vacation(self) -> tuple[dict[str, Any], str]:
        stored = await self._settings("vacation")
        value, modseq = stored.get("", ({}, 0))
        vacation = {"id": VACATION_ID, "isEnabled": False, "fromDate": None, "toDate": None, "subject": None,
                    "textBody": None, "htmlBody": None, **{k: v for k, v in value.items() if not k.startswith("_")}}
        return vacation, f"v{modseq}"

    async def vacation_get(self, args: dict[str, Any], call: Call) -> dict[str, Any]:
        self._account(args)
        vacation, state = await self._vacation()
        ids = args.get("ids")
        if ids is not None and not isinstance(ids, list):
            raise MethodError("invalidArguments", "ids must be a list or null")
        wanted = ids if ids is not None else [VACATION_ID]
        return {"accountId": self.account_id, "state": state,
                "list": [vacation] if VACATION_ID in wanted else [],
                "notFound": [i for i in wanted if i != VACATION_ID]}

    async def vacation_set(self, args: dict[str, Any], call: Call) -> dict[str, Any]:
        vacation, old_state = await self._vacation()
        self._set_checks(args, old_state)
        updated: dict[str, Any] = {}
        not_updated: dict[str, Any] = {}
        not_created = {cid: {"type": "singleton"} for cid in (args.get("create") or {})}
        not_destroyed = {i: {"type": "singleton"} for i in (args.get("destroy") or [])}
        for target, patch in (args.get("update") or {}).items():
            if target != VACATION_ID or not isinstance(patch, dict):
                not_updated[target] = {"type": "notFound"}
                continue
            allowed = ("isEnabled", "fromDate", "toDate", "subject", "textBody", "htmlBody")
            bad = [k for k in patch if k not in allowed]
            if bad:
                not_updated[target] = {"type": "invalidProperties", "properties": bad}
                continue
            try:
                for key in ("fromDate", "toDate"):
                    if patch.get(key) is not None:
                        parse_date(patch[key], key)
            except MethodError as exc:
                not_updated[target] = {"type": "invalidProperties", "description": exc.description}
                continue
            stored = (await self._settings("vacation")).get("", ({}, 0))[0]
            value = {**{k: v for k, v in vacation.items() if k != "id"}, **stored}
            value.update(patch)
            if value.get("isEnabled") and not vacation.get("isEnabled"):
                # Mail from now on is answered, not what is already in the INBOX.
                inbox = next((b for b in self.index.boxes.values() if b.info.name == INBOX), None)
                value["_sinceUid"] = inbox.info.uidnext if inbox else 1
            await self._save_setting("vacation", value)
            if self.vacation_changed is not None:
                self.vacation_changed(self.owner, bool(value.get("isEnabled")))
            updated[target] = None
        _, new_state = await self._vacation()
        return {"accountId": self.account_id, "oldState": old_state, "newState": new_state,
                "created": None, "updated": updated or None, "destroyed": None,
                "notCreated": not_created or None, "notUpdated": not_updated or None,
                "notDestroyed": not_destroyed or None}

    # --- EmailSubmission ---------------------------------------------------------------------------

    async def _submissions(self) -> dict[str, dict[str, Any]]:
        async with self.db.begin() as conn:
            rows = await conn.execute(select(jmap_submissions).where(jmap_submissions.c.account == self.owner)
                                      .order_by(jmap_submissions.c.created))
            return {row.id: json.loads(row.value) for row in rows}

    async def _submission_state(self) -> str:
        return f"S{await self._log_state('submission')}"

    async def submission_get(self, args: dict[str, Any], call: Call) -> dict[str, Any]:
        self._account(args)
        subs = await self._submissions()
        ids = self._ids_arg(args, call, lambda: list(subs))
        return {"accountId": self.account_id, "state": await self._submission_state(),
                "list": [subs[i] for i in ids if i in subs], "notFound": [i for i in ids if i not in subs]}

    async def submission_changes(self, args: dict[str, Any], call: Call) -> dict[str, Any]:
        return await self._log_changes("submission", "S", args)

    async def submission_query(self, args: dict[str, Any], call: Call) -> dict[str, Any]:
        self._account(args)
        subs = list((await self._submissions()).values())
        condition = args.get("filter") or {}
        if not isinstance(condition, dict):
            raise MethodError("invalidArguments", "filter must be an object")
        for key, value in condition.items():
            if key == "emailIds":
                subs = [s for s in subs if s["emailId"] in (value or [])]
            elif key == "identityIds":
                subs = [s for s in subs if s["identityId"] in (value or [])]
            elif key == "threadIds":
                subs = [s for s in subs if s["threadId"] in (value or [])]
            elif key == "undoStatus":
                subs = [s for s in subs if s["undoStatus"] == value]
            elif key == "before":
                subs = [s for s in subs if s["sendAt"] < value]
            elif key == "after":
                subs = [s for s in subs if s["sendAt"] >= value]
            else:
                raise MethodError("unsupportedFilter", f"unknown filter {key}")
        ids = [s["id"] for s in subs]
        return {"accountId": self.account_id, "queryState": await self._submission_state(),
                "canCalculateChanges": False, "position": 0, "ids": ids, "total": len(ids)}

    async def submission_set(self, args: dict[str, Any], call: Call) -> dict[str, Any]:
        old_state = await self._submission_state()
        self._set_checks(args, old_state)
        identities, _ = await self._identities()
        created: dict[str, Any] = {}
        not_created: dict[str, Any] = {}
        for creation_id, data in (args.get("create") or {}).items():
            try:
                record = await self._submit_one(data, identities, call)
            except MethodError as exc:
                not_created[creation_id] = exc.response()
                continue
            call.created_ids[creation_id] = record["id"]
            created[creation_id] = {"id": record["id"], "undoStatus": "final", "sendAt": record["sendAt"]}
        not_updated = {i: {"type": "cannotUnsend", "description": "messages are sent at once"}
                       for i in (args.get("update") or {})}
        destroyed: list[str] = []
        not_destroyed: dict[str, Any] = {}
        for target in args.get("destroy") or []:
            target = call.id(target)
            async with self.db.begin() as conn:
                result = await conn.execute(delete(jmap_submissions).where(
                    jmap_submissions.c.account == self.owner, jmap_submissions.c.id == target))
                if result.rowcount:
                    await self._logged(conn, "submission", target, destroyed=True)
            if result.rowcount:
                destroyed.append(target)
            else:
                not_destroyed[target] = {"type": "notFound"}
        out: dict[str, Any] = {"accountId": self.account_id, "oldState": old_state,
                               "newState": await self._submission_state(), "created": created or None,
                               "updated": None, "destroyed": destroyed or None,
                               "notCreated": not_created or None, "notUpdated": not_updated or None,
                               "notDestroyed": not_destroyed or None}
        # RFC 8621 §7.5: onSuccessUpdateEmail / onSuccessDestroyEmail, applied as an implicit Email/set.
        email_update: dict[str, Any] = {}
        email_destroy: list[str] = []
        for key, patch in (args.get("onSuccessUpdateEmail") or {}).items():
            sub_id = call.id(key) if key.startswith("#") else key
            if any(c["id"] == sub_id for c in created.values()):
                email_update[self._submitted_email[sub_id]] = patch
        for key in args.get("onSuccessDestroyEmail") or []:
            sub_id = call.id(key) if key.startswith("#") else key
            if sub_id in self._submitted_email:
                email_destroy.append(self._submitted_email[sub_id])
        if email_update or email_destroy:
            email_result = await self.email_set({"accountId": self.account_id, "update": email_update,
                                                 "destroy": email_destroy}, call)
            out["_implicit"] = ["Email/set", email_result]
        return out

    async def _submit_one(self, data: Any, identities: dict[str, dict[str, Any]], call: Call) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise MethodError("invalidProperties", "an EmailSubmission must be an object")
        identity = identities.get(str(call.id(data.get("identityId"))))
        if identity is None:
            raise MethodError("invalidProperties", "no such identityId", properties=["identityId"])
        summary = self.index.by_id.get(call.id(data.get("emailId")))
        if summary is None:
            raise MethodError("invalidProperties", "no such emailId", properties=["emailId"])
        raw = (await self._parsed([summary]))[summary.id]
        message = mime.parse(raw)
        authors = mime.own_addresses([str(v) for v in message.get_all("From") or []])
        if len(message.get_all("From") or []) != 1 or not authors or not all(self._is_own(a) for a in authors):
            raise MethodError("forbiddenFrom", "the From header must be this account's address")
        envelope = data.get("envelope")
        if envelope is not None:
            if (not isinstance(envelope, dict) or not isinstance(envelope.get("mailFrom"), dict)
                    or not isinstance(envelope.get("rcptTo"), list)):
                raise MethodError("invalidProperties", "envelope needs mailFrom and rcptTo", properties=["envelope"])
            mail_from = str(envelope["mailFrom"].get("email", ""))
            rcpts = [str(r.get("email", "")) for r in envelope["rcptTo"] if isinstance(r, dict)]
        else:
            mail_from = identity["email"]
            rcpts = mime.own_addresses([str(v) for h in ("To", "Cc", "Bcc") for v in message.get_all(h) or []])
            envelope = {"mailFrom": {"email": mail_from, "parameters": None},
                        "rcptTo": [{"email": r, "parameters": None} for r in rcpts]}
        if not self._is_own(mail_from):
            raise MethodError("forbiddenMailFrom", "the envelope sender must be this account's address")
        rcpts = list(dict.fromkeys(r.strip() for r in rcpts if "@" in r))
        if not rcpts:
            raise MethodError("noRecipients", "the message has no recipients")
        if len(rcpts) > 100:
            raise MethodError("tooManyRecipients", maxRecipients=100)
        # Bcc recipients are in the envelope, never in the transmitted header (RFC 5322 §3.6.3).
        data_out = _without_header(raw, "Bcc")
        try:
            await self.submit(mail_from, rcpts, data_out)
        except MethodError:
            raise
        except Exception as exc:
            raise MethodError("serverFail", f"the message could not be queued: {exc}") from None
        sub_id = "s" + secrets.token_hex(10)
        send_at = utc_date(time.time())
        record = {"id": sub_id, "identityId": identity["id"], "emailId": summary.id, "threadId": summary.thread,
                  "envelope": envelope, "sendAt": send_at, "undoStatus": "final", "deliveryStatus": None,
                  "dsnBlobIds": [], "mdnBlobIds": []}
        async with self.db.begin() as conn:
            await conn.execute(insert(jmap_submissions).values(id=sub_id, account=self.owner,
                                                               value=json.dumps(record), created=time.time()))
            await self._logged(conn, "submission", sub_id)
        self._submitted_email[sub_id] = summary.id
        return record


def _without_header(raw: bytes, name: str) -> bytes:
    end = raw.find(b"\r\n\r\n")
    head, body = (raw[:end + 2], raw[end + 2:]) if end >= 0 else (raw, b"")
    lines = head.split(b"\r\n")
    out: list[bytes] = []
    skipping = False
    prefix = name.lower().encode() + b":"
    for line in lines:
        if line[:1] in (b" ", b"\t") and skipping:
            continue
        skipping = line.lower().startswith(prefix)
        if not skipping:
            out.append(line)
    return b"\r\n".join(out) + body


def _address_match(values: list[dict[str, Any]] | None, needle: str) -> bool:
    needle = needle.lower()
    return any(needle in f"{v.get('name') or ''} <{v.get('email') or ''}>".lower() for v in values or [])


def _first_address(values: list[dict[str, Any]] | None) -> str:
    if not values:
        return ""
    return str(values[0].get("name") or values[0].get("email") or "").lower()


def _filter_terms(condition: Any) -> list[str]:
    if not isinstance(condition, dict):
        return []
    if "operator" in condition:
        if condition["operator"] == "NOT":
            return []
        return [t for c in condition.get("conditions") or [] for t in _filter_terms(c)]
    return [str(condition[k]) for k in ("text", "subject", "body") if isinstance(condition.get(k), str)]


def _mark(text: str, terms: list[str]) -> str | None:
    import html

    if not text:
        return None
    escaped = html.escape(text)
    for term in terms:
        if term:
            escaped = re.sub(re.escape(html.escape(term)), lambda m: f"<mark>{m.group(0)}</mark>", escaped,
                             flags=re.I)
    return escaped


def received_header(account: str, hostname: str) -> bytes:
    stamp = email.utils.format_datetime(email.utils.localtime())
    return f"Received: from JMAP client by {hostname} (peerage) for <{account}>; {stamp}\r\n".encode()


def keywords_to_flags(keywords: dict[str, bool]) -> tuple[str, ...]:
    return flags_of(keywords)


__all__ = ["MailAccount", "account_id_of", "keywords_of", "keywords_to_flags", "received_header"]
