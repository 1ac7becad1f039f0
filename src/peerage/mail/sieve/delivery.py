"""Sieve at local delivery: run the recipient's active script and carry out what it asks.

This module is in charge of the step between "this message is for a local account" and "it is in a
mailbox": the account's active script (``ScriptStore``) is evaluated on the message and envelope;
``keep`` and ``fileinto`` store copies (with the imap4flags flags, RFC 5232), ``redirect`` and
``vacation`` hand new messages to the outbound queue, ``reject``/``ereject`` answer the sender. An
account without an active script costs one set lookup. Any failure of the script (a runtime error,
RFC 5228 §2.10.6, or a stored script that no longer compiles) keeps the message in INBOX: mail is
never lost to a filter.

Decisions, each with its reason:

- ``fileinto`` a mailbox that does not exist creates it (RFC 5228 §4.1 leaves the choice; clients
  that write rules for folders the user has not made yet expect the mail to show up).
- ``redirect`` must not turn the server into an open relay for whoever can get a script stored; the
  script's owner is authenticated, and besides the per-run cap (``MAX_REDIRECTS``) each account may
  redirect at most ``[sieve] redirects_per_hour`` messages (a token bucket; over it the message is
  kept, not lost). The redirected copy keeps its header but travels with the *owner's* address as
  envelope sender, as Pigeonhole does with ``sieve_redirect_envelope_from = recipient``: bounces come
  back to the person who set up the rule, and SPF is checked against our domain, which really sends
  it. We do not use SRS: it would need a bounce-rewriting address space and keys for no gain in the
  one-hop case. A ``Delivered-To`` line naming the account is added; a message that already carries
  one for this account is looping (RFC 5228 §4.2 asks for loop control) and is kept instead.
- ``reject`` and ``ereject`` (RFC 5429): the message has already been accepted for every recipient
  when Sieve runs (one SMTP transaction can carry several), so both refuse by a message to the
  envelope sender (an MDN, RFC 5429 §2.1 and RFC 8098) rather than in the SMTP dialogue; with a null
  sender the message is silently discarded (RFC 5429 §2.1.1).
- ``vacation`` (RFC 5230): the checks of §4.5-§4.6 (the recipient named in the header, no automatic,
  list or bulk mail, no reply to MAILER-DAEMON/owner-/-request/the null sender), one reply per sender
  per ``:days`` remembered in the database (``VacationMemory``), sent from the null reverse-path
  (§5.1) with ``Auto-Submitted: auto-replied``.
- The webmail's vacation response (the JMAP VacationResponse, RFC 8621 §8) is carried out here as
  one more vacation action, with its texts and dates and its own handle, for accounts whose script
  has no vacation of its own; so it answers the envelope sender with the same checks and the same
  persisted memory. (A change to it applies within ``ACTIVE_SET_SECONDS``.)
- A message quarantined by DMARC (filed in Junk by the MX) is not filtered: quarantine wins.
"""

from __future__ import annotations

import email.policy
import json
import logging
import quopri
import secrets
import time
from datetime import datetime
from email.message import EmailMessage
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.parser import BytesHeaderParser, BytesParser
from email.utils import format_datetime, getaddresses, localtime
from typing import Any

from sqlalchemy import select

from peerage.mail.jmap.tables import jmap_settings
from peerage.mail.sieve.interpret import (
    INBOX,
    VACATION_DEFAULT_DAYS,
    Envelope,
    Result,
    SieveRuntimeError,
    Vacation,
    evaluate,
)
from peerage.mail.sieve.store import ACTIVE_SET_SECONDS, JMAP_VACATION_HANDLE
from peerage.mail.smtp.headers import remove_headers
from peerage.net.limits import RateLimiter

log = logging.getLogger(__name__)
_headers = BytesHeaderParser(policy=email.policy.compat32)
SECONDS_PER_HOUR = 3600.0
# RFC 5230 §4.5: the header fields where the recipient must appear for a reply to go.
_RECIPIENT_FIELDS = ("To", "Cc", "Bcc", "Resent-To", "Resent-Cc", "Resent-Bcc")


def _stamp(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _header_block(raw: bytes) -> bytes:
    end = raw.find(b"\r\n\r\n")
    return raw if end < 0 else raw[: end + 4]


def _text(text: str, subtype: str) -> MIMEText:
    # 7bit when it can be (readable in any client), else UTF-8 in quoted-printable.
    if text.isascii():
        return MIMEText(text, subtype, "us-ascii")
    part = MIMEText("", subtype, "utf-8")
    part.replace_header("Content-Transfer-Encoding", "quoted-printable")
    part.set_payload(quopri.encodestring(text.encode("utf-8")).decode("ascii"))
    return part


class SieveDelivery:
    def __init__(self, host: Any, service: Any) -> None:
        from peerage.mail.sieve import scripts_for, vacation_memory_for

        self.host = host
        self.service = service
        self.scripts = scripts_for(host)
        self.memory = vacation_memory_for(host)
        per_hour = max(float(host.config.sieve.redirects_per_hour), 1.0)
        self.redirect_rate = RateLimiter(per_hour / SECONDS_PER_HOUR, per_hour)
        # Accounts whose JMAP VacationResponse is on, re-read every ACTIVE_SET_SECONDS.
        self._away: set[str] | None = None
        self._away_loaded = 0.0

    async def deliver(self, account: str, address: str, data: bytes, mail_from: str) -> None:
        """Deliver ``data`` for ``address`` (the mailbox of ``account``) as its script says."""
        try:
            script = await self.scripts.active_script(account)
        except Exception:
            log.exception("loading the Sieve script of %s failed; keeping the message", account)
            script = None
        away = await self._jmap_vacation(account)
        if script is None and away is None:
            await self.service.local.deliver(address, data, INBOX)
            return
        try:
            result = evaluate(script, data, Envelope(mail_from or "", address)) if script else Result(
                keeps=[(INBOX, ())])
        except SieveRuntimeError as exc:
            log.warning("Sieve script of %s failed (%s); keeping the message", account, exc)
            result = Result(keeps=[(INBOX, ())])
        except Exception:
            log.exception("Sieve script of %s failed; keeping the message", account)
            result = Result(keeps=[(INBOX, ())])
        if away is not None and result.vacation is None and result.reject is None:
            # The webmail's VacationResponse (RFC 8621 §8) is a vacation action of its own.
            result.vacation = away
        await self._perform(account, address, data, mail_from or "", result)

    async def _jmap_vacation(self, account: str) -> Vacation | None:
        """The account's JMAP VacationResponse as a vacation action, when it is on and in its dates."""
        now = time.monotonic()
        if self._away is None or now - self._away_loaded > ACTIVE_SET_SECONDS:
            async with self.host.store.begin() as conn:
                rows = await conn.execute(select(jmap_settings.c.account, jmap_settings.c.value)
                                          .where(jmap_settings.c.kind == "vacation"))
                self._away = {a for a, v in rows if json.loads(v).get("isEnabled")}
            self._away_loaded = now
        if account not in self._away:
            return None
        async with self.host.store.begin() as conn:
            raw = (await conn.execute(select(jmap_settings.c.value).where(
                jmap_settings.c.account == account, jmap_settings.c.kind == "vacation"))).scalar()
        settings = json.loads(raw) if raw else {}
        if not settings.get("isEnabled"):
            return None
        stamp = time.time()
        start, end = _stamp(settings.get("fromDate")), _stamp(settings.get("toDate"))
        if (start and stamp < start) or (end and stamp >= end):
            return None
        subject = settings.get("subject")
        return Vacation(reason=str(settings.get("textBody") or "I am away and will read your message later."),
                        days=VACATION_DEFAULT_DAYS, subject=str(subject) if subject else None, from_address=None,
                        addresses=[], mime=False, handle=JMAP_VACATION_HANDLE,
                        html=str(settings["htmlBody"]) if settings.get("htmlBody") else None)

    async def _perform(self, account: str, address: str, data: bytes, mail_from: str, result: Result) -> None:
        keeps = list(result.keeps)
        for target in result.redirects:
            # A redirect refused (loop, rate) keeps the message instead: never lose it.
            if not await self._redirect(account, address, data, target) and not any(f == INBOX for f, _ in keeps):
                keeps.append((INBOX, ()))
        if result.reject is not None:
            await self._reject(account, address, data, mail_from, result.reject)
        if result.vacation is not None:
            try:
                await self._vacation(account, address, data, mail_from, result.vacation)
            except Exception:
                log.exception("Sieve vacation of %s failed", account)
        # Storing comes last and must succeed: a failure raises to the caller, which queues a retry.
        for folder, flags in keeps:
            await self.service.local.deliver(address, data, folder, flags)

    # --- redirect -----------------------------------------------------------------------------

    async def _redirect(self, account: str, address: str, data: bytes, target: str) -> bool:
        header = _headers.parsebytes(_header_block(data))
        delivered = {str(v).strip().lower() for v in header.get_all("Delivered-To") or []}
        if account.lower() in delivered or address.lower() in delivered:
            log.warning("Sieve redirect of %s to %s refused: the message is looping", account, target)
            return False
        if not self.redirect_rate.allow(account):
            log.warning("Sieve redirect of %s to %s refused: over [sieve] redirects_per_hour", account, target)
            return False
        queue = self.service.queue
        if queue is None:
            return False
        # Not a final delivery: the Return-Path this delivery put in front stays here (RFC 5321 §4.4).
        copy = f"Delivered-To: {address}\r\n".encode() + remove_headers(data, {b"return-path"})
        await queue.enqueue(account, [target], copy, smtputf8=not (account + target).isascii())
        log.info("Sieve of %s redirected a message to %s", account, target)
        return True

    # --- reject -------------------------------------------------------------------------------

    async def _reject(self, account: str, address: str, data: bytes, mail_from: str, reason: str) -> None:
        if not mail_from:
            return  # RFC 5429 §2.1.1: with a null sender, reject is a discard
        header = _header_block(data)
        parsed = _headers.parsebytes(header)
        domain = address.rpartition("@")[2]
        # RFC 8098 §3 / RFC 5429 §2.1: a multipart/report of type disposition-notification: the
        # reason, the machine-readable disposition, the original header.
        message = MIMEMultipart("report", report_type="disposition-notification")
        message["From"] = f"Mail Delivery Subsystem <MAILER-DAEMON@{self.service.hostname}>"
        message["To"] = mail_from
        subject = str(parsed.get("Subject") or "").replace("\r", " ").replace("\n", " ")
        message["Subject"] = f"Rejected: {subject}" if subject else "Message rejected"
        message["Date"] = format_datetime(localtime())
        message["Message-ID"] = f"<{secrets.token_hex(12)}@{domain}>"
        message["Auto-Submitted"] = "auto-replied"
        message.attach(_text(f"Your message to {address} was rejected by the recipient:\n\n{reason}\n", "plain"))
        original_id = str(parsed.get("Message-ID") or "").strip()
        fields = [f"Reporting-UA: {self.service.hostname}; peerage", f"Final-Recipient: rfc822; {address}"]
        if original_id:
            fields.append(f"Original-Message-ID: {original_id}")
        fields.append("Disposition: automatic-action/MDN-sent-automatically; deleted")
        disposition = MIMEBase("message", "disposition-notification")
        disposition.set_payload("\r\n".join(fields) + "\r\n")
        message.attach(disposition)
        message.attach(_text(header.decode("utf-8", "replace"), "rfc822-headers"))
        raw = message.as_bytes(policy=email.policy.SMTP)
        queue = self.service.queue
        if queue is not None:
            raw = await self.service.sign(domain, raw)
            await queue.enqueue("", [mail_from], raw, smtputf8=not mail_from.isascii())
        log.info("Sieve of %s rejected a message from %s", account, mail_from)

    # --- vacation -----------------------------------------------------------------------------

    async def _vacation(self, account: str, address: str, data: bytes, mail_from: str, vacation: Vacation) -> None:
        header = _headers.parsebytes(_header_block(data))
        sender = mail_from.lower()
        if not sender:
            return  # RFC 5230 §4.6: never to the null reverse-path
        local = sender.partition("@")[0]
        if local in ("mailer-daemon", "listserv", "majordomo") or local.startswith("owner-") or local.endswith("-request"):
            return
        if str(header.get("Auto-Submitted", "no")).strip().lower() != "no":
            return
        if str(header.get("Precedence", "")).strip().lower() in ("bulk", "list", "junk"):
            return
        if any(header.get(h) for h in ("List-Id", "List-Help", "List-Subscribe", "List-Unsubscribe", "List-Post")):
            return
        mine = {address.lower(), account.lower()} | {a.lower() for _, a in getaddresses(vacation.addresses) if a}
        named = {a.lower() for _, a in getaddresses([str(v) for h in _RECIPIENT_FIELDS for v in header.get_all(h) or []])}
        if not mine & named:
            return
        if sender in mine:
            return
        if not await self.memory.claim(account, vacation.handle, sender, vacation.days * 86400.0):
            return
        domain = address.rpartition("@")[2]
        if vacation.mime:
            message = BytesParser(policy=email.policy.SMTP).parsebytes(vacation.reason.encode("utf-8"))
            reply = EmailMessage(policy=email.policy.SMTP)
            for key, value in message.items():
                if key.lower().startswith("content-") or key.lower() == "mime-version":
                    reply[key] = value
            reply.set_payload(message.get_payload())
        else:
            reply = EmailMessage(policy=email.policy.SMTP)
            reply.set_content(vacation.reason)
            if vacation.html:
                reply.add_alternative(vacation.html, subtype="html")
        reply["From"] = vacation.from_address or address
        reply["To"] = mail_from
        original_subject = str(header.get("Subject") or "").replace("\r", " ").replace("\n", " ")
        subject = vacation.subject if vacation.subject is not None else f"Auto: {original_subject or 'your message'}"
        reply["Subject"] = subject.replace("\r", " ").replace("\n", " ")
        reply["Date"] = format_datetime(localtime())
        reply["Message-ID"] = f"<{secrets.token_hex(12)}@{domain}>"
        reply["Auto-Submitted"] = "auto-replied"
        original_id = str(header.get("Message-ID") or "").strip()
        if original_id:
            reply["In-Reply-To"] = original_id
            references = str(header.get("References") or "").split()
            reply["References"] = " ".join([*references, original_id])
        raw = reply.as_bytes(policy=email.policy.SMTP)
        queue = self.service.queue
        if queue is None:
            return
        raw = await self.service.sign(domain, raw)
        # RFC 5230 §5.1: the reply goes from the null reverse-path, so it cannot start a loop.
        await queue.enqueue("", [mail_from], raw, smtputf8=not mail_from.isascii())
        log.info("Sieve vacation of %s answered %s", account, mail_from)
