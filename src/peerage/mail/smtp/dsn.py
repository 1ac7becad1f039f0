"""Sans-I/O delivery status notifications (RFC 3464, in a multipart/report of RFC 6522).

This module is in charge of composing the delay notice and the final bounce that the queue sends back
to a sender. It builds bytes from plain values; the queue decides when to send them.
"""

from __future__ import annotations

import email.utils
import uuid
from dataclasses import dataclass
from datetime import datetime

# How much of the original message is returned with a bounce. RFC 3464 §6.3 lets the MTA return
# headers only; Postfix returns the full message up to bounce_size_limit = 50000 bytes.
RETURNED_CONTENT_LIMIT = 50000


@dataclass(frozen=True, slots=True)
class RecipientStatus:
    recipient: str
    action: str  # "failed" or "delayed" (RFC 3464 §2.3.3)
    status: str  # enhanced code, e.g. "5.1.1"
    diagnostic: str  # the remote reply or our own explanation
    remote_mta: str = ""


def compose_dsn(
    *,
    reporting_mta: str,
    postmaster: str,
    sender: str,
    original: bytes,
    recipients: list[RecipientStatus],
    arrival: datetime,
    now: datetime,
    retry_until: datetime | None = None,
) -> bytes:
    """The DSN message (CRLF line endings) telling `sender` what became of `recipients`."""
    delayed = all(r.action == "delayed" for r in recipients)
    # RFC 6533 §3, §6: about a message with a UTF-8 envelope or header, the report is a
    # message/global-delivery-status with "utf-8" address types, and the message comes back as
    # message/global (or message/global-headers).
    international = not (sender.isascii() and all(r.recipient.isascii() for r in recipients) and original.isascii())
    subject = "Delayed Mail (still being retried)" if delayed else "Undelivered Mail Returned to Sender"
    boundary = f"=_peerage_{uuid.uuid4().hex}"
    message_id = f"<{uuid.uuid4().hex}@{reporting_mta}>"
    lines = [
        f"From: Mail Delivery System <{postmaster}>",
        f"To: <{sender}>",
        f"Subject: {subject}",
        f"Date: {email.utils.format_datetime(now)}",
        f"Message-ID: {message_id}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=utf-8",
        "",
    ]
    if delayed:
        lines.append(f"This is the mail system at {reporting_mta}.")
        lines.append("Your message could not be delivered yet. It will be retried")
        if retry_until is not None:
            lines.append(f"until {email.utils.format_datetime(retry_until)}.")
        else:
            lines.append("for a while.")
    else:
        lines.append(f"This is the mail system at {reporting_mta}.")
        lines.append("Your message could not be delivered to one or more recipients.")
    lines.append("")
    for r in recipients:
        lines.append(f"<{r.recipient}>: {r.diagnostic}")
    lines += [
        "",
        f"--{boundary}",
        f"Content-Type: message/{'global-' if international else ''}delivery-status",
        "",
        f"Reporting-MTA: dns; {reporting_mta}",
        f"Arrival-Date: {email.utils.format_datetime(arrival)}",
    ]
    for r in recipients:
        lines += [
            "",
            f"Final-Recipient: {'rfc822' if r.recipient.isascii() else 'utf-8'}; {r.recipient}",
            f"Action: {r.action}",
            f"Status: {r.status}",
        ]
        if r.remote_mta:
            lines.append(f"Remote-MTA: dns; {r.remote_mta}")
        lines.append(f"Diagnostic-Code: smtp; {_one_line(r.diagnostic)}")
        if r.action == "delayed" and retry_until is not None:
            lines.append(f"Will-Retry-Until: {email.utils.format_datetime(retry_until)}")
    header_end = original.find(b"\r\n\r\n")
    headers_only = original[: header_end + 2] if header_end >= 0 else original[:RETURNED_CONTENT_LIMIT]
    returned = original if len(original) <= RETURNED_CONTENT_LIMIT and not delayed else headers_only
    if international:
        kind = "message/global" if returned is original else "message/global-headers"
    else:
        kind = "message/rfc822" if returned is original else "text/rfc822-headers"
    lines += ["", f"--{boundary}", f"Content-Type: {kind}", ""]
    head = "\r\n".join(lines).encode("utf-8") + b"\r\n"
    tail = f"\r\n--{boundary}--\r\n".encode()
    return head + returned.rstrip(b"\r\n") + b"\r\n" + tail


def _one_line(text: str) -> str:
    return " ".join(text.split())
