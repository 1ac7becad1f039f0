"""MX worker processes (`[smtp] mx_workers`): sessions run in workers, messages are stored by the main
process before the 250, a dead worker is replaced, and workers never outlive a killed main process."""

from __future__ import annotations

import os
import signal
import smtplib
from pathlib import Path

from tests.harness import LocalDNS, PeerageServer, wait_for
from tests.mail.helpers import mailbox_messages

ADDRESS = "127.0.4.6"
ALICE = "alice@example.org"


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_mx_workers_deliver_respawn_and_die_with_main(tmp_path: Path, local_dns: LocalDNS) -> None:
    server = PeerageServer(tmp_path, "example.org", ADDRESS, dns=local_dns, services=("smtp",),
                           config={"smtp": {"mx_workers": 2}})
    server.add_user(ALICE, "a password")
    try:
        server.start()
        assert server.process is not None
        main_pid = server.process.pid
        workers: list[int] = wait_for(lambda: _children(main_pid) if len(_children(main_pid)) >= 2 else [], 20,
                                      "two worker processes")
        for index in range(12):
            with smtplib.SMTP(ADDRESS, 25) as client:
                client.ehlo("client.example.net")
                message = f"From: carol@example.net\r\nSubject: via worker {index}\r\n\r\nhi\r\n"
                assert client.sendmail("carol@example.net", [ALICE], message.encode()) == {}
        # Every 250 came after the main process stored the message.
        stored = mailbox_messages(server.data_dir, ALICE)
        assert sum(1 for m in stored if b"Subject: via worker " in m) == 12
        assert all(b"Authentication-Results: example.org;" in m for m in stored)
        # A worker that dies is replaced.
        os.kill(workers[0], signal.SIGKILL)
        wait_for(lambda: workers[0] not in _children(main_pid) and len(_children(main_pid)) >= 2, 20,
                 "a replacement worker")
        replacement = _children(main_pid)
        with smtplib.SMTP(ADDRESS, 25) as client:
            assert client.sendmail("carol@example.net", [ALICE], b"Subject: after respawn\r\n\r\nhi\r\n") == {}
        # Killing the main process takes the workers down with it (their channel closes).
        server.kill()
        wait_for(lambda: not any(_alive(pid) for pid in replacement), 20, "workers to exit")
    finally:
        server.kill()
