"""Durability: kill -9 peerage while clients are sending, restart it, and count. Every message that got
a 250 is in the mailbox (local recipient) and in the queue (remote recipient); the only extra messages
are those whose 250 the client never saw."""

from __future__ import annotations

import smtplib
import threading
from pathlib import Path

import pytest

from tests.harness import LocalDNS, TestCA, wait_for
from tests.mail.conftest import PASSWORDS, make_peerage, publish_other_domain, publish_peerage_domain
from tests.mail.helpers import PEERAGE_ADDRESS, mailbox_messages, queue_rows, unverified_context

ALICE = "alice@example.org"
FAR = "far@example.net"
MESSAGES_PER_CLIENT = 40
CLIENTS = 4
KILL_AFTER_ACKS = 50
SEND_TIMEOUT = 60.0


def _subject(client: int, index: int) -> str:
    return f"durable-{client}-{index}"


def _sender(client: int, acked: list[str], attempted: list[str], stop: threading.Event) -> None:
    try:
        connection = smtplib.SMTP(PEERAGE_ADDRESS, 587, timeout=20, source_address=(f"127.0.4.{110 + client}", 0))
        connection.starttls(context=unverified_context())
        connection.login(ALICE, PASSWORDS[ALICE])
        for index in range(MESSAGES_PER_CLIENT):
            if stop.is_set():
                break
            subject = _subject(client, index)
            message = f"From: {ALICE}\r\nTo: {ALICE}, {FAR}\r\nSubject: {subject}\r\n\r\nbody {subject}\r\n"
            attempted.append(subject)
            connection.sendmail(ALICE, [ALICE, FAR], message.encode())
            acked.append(subject)
    except (smtplib.SMTPException, OSError):
        return  # the server was killed under us: whatever had no 250 is allowed to be lost


@pytest.mark.slow
def test_kill_during_acceptance_loses_nothing_acknowledged(tmp_path: Path, local_dns: LocalDNS, test_ca: TestCA) -> None:
    server = make_peerage(tmp_path / "peerage", local_dns, test_ca, {"smtp": {"first_retry_seconds": 3600.0}})
    server.add_user(ALICE, PASSWORDS[ALICE])
    publish_peerage_domain(local_dns)
    publish_other_domain(local_dns)
    server.start()
    acked: list[str] = []
    attempted: list[str] = []
    stop = threading.Event()
    threads = [threading.Thread(target=_sender, args=(n, acked, attempted, stop)) for n in range(CLIENTS)]
    try:
        for thread in threads:
            thread.start()
        wait_for(lambda: len(acked) >= KILL_AFTER_ACKS or not any(t.is_alive() for t in threads), SEND_TIMEOUT,
                 "enough acknowledged messages")
        server.kill()  # SIGKILL, mid-stream
        stop.set()
        for thread in threads:
            thread.join(SEND_TIMEOUT)
        assert not any(t.is_alive() for t in threads)
        acknowledged = set(acked)
        assert len(acknowledged) >= KILL_AFTER_ACKS
        assert len(attempted) < CLIENTS * MESSAGES_PER_CLIENT, "the kill came too late to test anything"
        server.start()

        def stored_subjects() -> list[str]:
            found = []
            for message in mailbox_messages(server.data_dir, ALICE):
                for line in message.split(b"\r\n"):
                    if line.startswith(b"Subject: durable-"):
                        found.append(line[len(b"Subject: "):].decode())
            return found

        in_mailbox = stored_subjects()
        missing_locally = acknowledged - set(in_mailbox)
        assert not missing_locally, f"acknowledged but lost from the mailbox: {sorted(missing_locally)}"
        # Nothing is stored twice (no client retried), and the extras are only unacknowledged ones.
        assert len(in_mailbox) == len(set(in_mailbox))
        extras = set(in_mailbox) - acknowledged
        assert extras <= set(attempted)
        assert len(extras) <= CLIENTS

        queued_recipients = [row for row in queue_rows(server.data_dir) if row[2] == FAR]
        spool = server.data_dir / "queue"
        queued_subjects = set()
        for path in spool.glob("*/*"):
            if path.parent.name == "tmp":
                continue
            for line in path.read_bytes().split(b"\r\n"):
                if line.startswith(b"Subject: durable-"):
                    queued_subjects.add(line[len(b"Subject: "):].decode())
        missing_remote = acknowledged - queued_subjects
        assert not missing_remote, f"acknowledged but lost from the queue: {sorted(missing_remote)}"
        assert len(queued_recipients) == len(queued_subjects)
        assert not list((spool / "tmp").iterdir()), "half-written spool files survived the restart"
    finally:
        stop.set()
        server.kill()
