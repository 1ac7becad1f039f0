"""Sending the VacationResponse (RFC 8621 §8) when new mail reaches an INBOX.

This module is in charge of the automatic reply itself, with the rules of RFC 3834 and Sieve vacation
(RFC 5230) that keep it from doing harm: only within fromDate/toDate; only to mail that names the user
in To or Cc; never to mail that is itself automatic (Auto-Submitted other than "no"), bulk or list
mail (Precedence bulk/list/junk, List-Id), or from MAILER-DAEMON, owner-/-request addresses or the user;
at most one reply per sender every ``REPLY_INTERVAL`` (RFC 5230 §4.1's default of 7 days), remembered in
the database through the same ``VacationMemory`` as Sieve vacation, so a restart forgets no one. Replies carry
``Auto-Submitted: auto-replied`` and go through the same submission path as EmailSubmission.

When Sieve runs at delivery (``[sieve] enabled``), the response is sent from there instead
(``peerage.mail.sieve.delivery``, as a vacation action with this response's texts), and this
responder is not started. Otherwise it is woken by the mailbox store's notifier, like IMAP IDLE; the store's UIDs say which messages are
new since the response was enabled (kept with the response as ``_sinceUid``).
"""

from __future__ import annotations

import asyncio
import email.policy
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.utils import format_datetime, getaddresses, localtime
from typing import Any

from sqlalchemy import select, update

from peerage.mail.jmap.index import decode_text, message_ids
from peerage.mail.jmap.tables import jmap_settings
from peerage.mail.mailbox import INBOX, MailboxStore
from peerage.mail.sieve.store import JMAP_VACATION_HANDLE, VacationMemory

log = logging.getLogger(__name__)

REPLY_INTERVAL = 7 * 86400.0
# The VacationMemory handle of the JMAP response (Sieve vacations have their own, RFC 5230 §4.2).
MEMORY_HANDLE = JMAP_VACATION_HANDLE
_headers = BytesHeaderParser(policy=email.policy.compat32)

Submit = Callable[[str, str, list[str], bytes], Awaitable[None]]


def _stamp(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class VacationResponder:
    def __init__(self, db: Any, store: MailboxStore, submit: Submit) -> None:
        self.db = db
        self.store = store
        self.submit = submit
        self.enabled: set[str] | None = None  # owners with an enabled response; loaded on first use
        self.memory = VacationMemory(db)
        self._tasks: set[asyncio.Task[None]] = set()

    def set_enabled(self, owner: str, enabled: bool) -> None:
        if self.enabled is None:
            return  # loaded from the database on the next change anyway
        (self.enabled.add if enabled else self.enabled.discard)(owner)

    def mailbox_changed(self, mailbox_id: int) -> None:
        if self.enabled is not None and not self.enabled:
            return
        task = asyncio.get_running_loop().create_task(self._check(mailbox_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _load(self) -> set[str]:
        if self.enabled is None:
            async with self.db.begin() as conn:
                rows = await conn.execute(select(jmap_settings.c.account, jmap_settings.c.value)
                                          .where(jmap_settings.c.kind == "vacation"))
                self.enabled = {account for account, value in rows if json.loads(value).get("isEnabled")}
        return self.enabled

    async def _check(self, mailbox_id: int) -> None:
        try:
            if not await self._load():
                return
            box = await self.store.mailbox_by_id(mailbox_id)
            if box is None or box.name != INBOX or box.owner not in (self.enabled or ()):
                return
            async with self.db.begin() as conn:
                raw = (await conn.execute(select(jmap_settings.c.value).where(
                    jmap_settings.c.account == box.owner, jmap_settings.c.kind == "vacation"))).scalar()
                if raw is None:
                    return
                settings = json.loads(raw)
                since = int(settings.get("_sinceUid") or box.uidnext)
                if box.uidnext <= since:
                    return
                settings["_sinceUid"] = box.uidnext
                await conn.execute(update(jmap_settings).where(jmap_settings.c.account == box.owner,
                                                               jmap_settings.c.kind == "vacation")
                                   .values(value=json.dumps(settings)))
            now = time.time()
            start, end = _stamp(settings.get("fromDate")), _stamp(settings.get("toDate"))
            if not settings.get("isEnabled") or (start and now < start) or (end and now >= end):
                return
            rows = await self.store.messages(box.id, list(range(since, box.uidnext)), with_header=True,
                                             with_summary=False)
            for row in rows:
                await self._reply(box.owner, row.header, settings, now)
        except Exception:
            log.exception("vacation response for mailbox %s failed", mailbox_id)

    async def _reply(self, owner: str, header: bytes, settings: dict[str, Any], now: float) -> None:
        headers = _headers.parsebytes(header)
        if str(headers.get("Auto-Submitted", "no")).strip().lower() != "no":
            return
        if str(headers.get("Precedence", "")).strip().lower() in ("bulk", "list", "junk") or headers.get("List-Id"):
            return
        recipients = {a.lower() for _, a in getaddresses([str(v) for h in ("To", "Cc") for v in headers.get_all(h) or []])}
        if owner not in recipients:
            return
        senders = [a for _, a in getaddresses([str(headers.get("Return-Path") or headers.get("From") or "")]) if a]
        if not senders:
            return
        sender = senders[0].lower()
        local = sender.partition("@")[0]
        if (sender == owner or local in ("mailer-daemon", "postmaster") or local.startswith("owner-")
                or local.endswith("-request")):
            return
        if not await self.memory.claim(owner, MEMORY_HANDLE, sender, REPLY_INTERVAL, now):
            return
        message = EmailMessage(policy=email.policy.SMTP)
        message["From"] = owner
        message["To"] = sender
        subject = settings.get("subject") or f"Auto: {decode_text(headers.get('Subject')) or 'your message'}"
        message["Subject"] = str(subject).replace("\r", " ").replace("\n", " ")
        message["Date"] = format_datetime(localtime())
        message["Message-ID"] = f"<{secrets.token_hex(12)}@{owner.rpartition('@')[2]}>"
        message["Auto-Submitted"] = "auto-replied"
        original = message_ids(headers.get("Message-ID"))
        if original:
            message["In-Reply-To"] = f"<{original[0]}>"
            references = (message_ids(headers.get("References")) or []) + original
            message["References"] = " ".join(f"<{r}>" for r in references)
        message.set_content(str(settings.get("textBody") or "I am away and will read your message later."))
        if settings.get("htmlBody"):
            message.add_alternative(str(settings["htmlBody"]), subtype="html")
        await self.submit(owner, owner, [sender], message.as_bytes(policy=email.policy.SMTP))
