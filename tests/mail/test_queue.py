"""The queue's schedule against an unreachable domain: a delay notice first, then a final bounce once
the queue lifetime is over, both as RFC 3464 reports in the sender's mailbox."""

from __future__ import annotations

import email
import smtplib
from pathlib import Path

from tests.harness import LocalDNS, PeerageServer, wait_for
from tests.mail.helpers import mailbox_messages, queue_rows, unverified_context

ADDRESS = "127.0.4.7"
UNREACHABLE = "127.0.4.250"  # nothing listens here: every attempt is refused at once
ALICE = "alice@example.org"


def _reports(server: PeerageServer, action: str) -> list[bytes]:
    return [m for m in mailbox_messages(server.data_dir, ALICE)
            if b"multipart/report" in m and f"Action: {action}".encode() in m]


def test_delay_notice_then_bounce(tmp_path: Path, local_dns: LocalDNS) -> None:
    local_dns.add_mx("unreachable.example", 10, "mx.unreachable.example")
    local_dns.add_a("mx.unreachable.example", UNREACHABLE)
    server = PeerageServer(
        tmp_path, "example.org", ADDRESS, dns=local_dns, services=("smtp",),
        config={"smtp": {"first_retry_seconds": 0.5, "delay_warning_hours": 1 / 3600,
                         "queue_lifetime_hours": 6 / 3600}},
    )
    server.add_user(ALICE, "a password")
    with server:
        message = f"From: {ALICE}\r\nTo: x@unreachable.example\r\nSubject: slow road\r\n\r\nhi\r\n".encode()
        with smtplib.SMTP(ADDRESS, 587) as client:
            client.starttls(context=unverified_context())
            client.login(ALICE, "a password")
            assert client.sendmail(ALICE, ["x@unreachable.example"], message) == {}
        delayed = wait_for(lambda: _reports(server, "delayed"), 20, "a delay notice")
        report = email.message_from_bytes(delayed[0])
        assert report.get_param("report-type") == "delivery-status"
        assert b"Will-Retry-Until:" in delayed[0] and b"Subject: slow road" in delayed[0]
        assert [r for r in queue_rows(server.data_dir) if r[2] == "x@unreachable.example"]
        failed = wait_for(lambda: _reports(server, "failed"), 30, "the final bounce")
        assert b"Status: 4.4.7" in failed[0] or b"Status: 4.4.1" in failed[0]
        wait_for(lambda: not [r for r in queue_rows(server.data_dir) if r[2] == "x@unreachable.example"], 10,
                 "the entry leaving the queue")
        # One notice of each kind, not one per attempt.
        assert len(_reports(server, "delayed")) == 1 and len(_reports(server, "failed")) == 1
