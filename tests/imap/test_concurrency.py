"""Many sessions changing one mailbox at once: every change gets its own MODSEQ, no update is lost,
and after NOOP every session's view of the flags equals the stored state."""

from __future__ import annotations

import asyncio
import re

from peerage.mail.mailbox import mailbox_owner, store_for
from tests.imap.conftest import USER, ImapHost
from tests.imap.test_extensions import Raw, append, login

SESSIONS = 8
ROUNDS = 15
MESSAGES = 10
_FETCH = re.compile(rb"\* (\d+) FETCH \((?:UID (\d+) )?FLAGS \(([^)]*)\) MODSEQ \((\d+)\)\)")


async def test_parallel_stores_converge(imap: ImapHost) -> None:
    first = await login(imap)
    for number in range(MESSAGES):
        await append(first, f"Subject: m{number}\r\n\r\nx\r\n".encode())
    sessions: list[Raw] = [first] + [await login(imap) for _ in range(SESSIONS - 1)]
    for session in sessions:
        _, done = await session.command("SELECT INBOX (CONDSTORE)")
        assert b"OK" in done
    views: list[dict[int, set[bytes]]] = [{} for _ in sessions]
    states: dict[tuple[int, int], set[frozenset[bytes]]] = {}

    def absorb(index: int, lines: list[bytes]) -> None:
        for line in lines:
            match = _FETCH.match(line)
            if match:
                # \Recent is per session (RFC 3501 §2.3.2), not part of the stored state compared here.
                seq, flags = int(match.group(1)), frozenset(match.group(3).split()) - {b"\\Recent"}
                views[index][seq] = set(flags)
                states.setdefault((seq, int(match.group(4))), set()).add(flags)

    async def worker(index: int) -> None:
        session = sessions[index]
        keyword = f"$k{index}"
        for round_number in range(ROUNDS):
            seq = (index + round_number) % MESSAGES + 1
            operation = "+FLAGS" if round_number % 3 else "-FLAGS"
            untagged, done = await session.command(f"STORE {seq} {operation} ({keyword})")
            assert b"OK" in done, done
            absorb(index, untagged)

    await asyncio.wait_for(asyncio.gather(*(worker(i) for i in range(SESSIONS))), 120)
    for index, session in enumerate(sessions):
        untagged, _ = await session.command("FETCH 1:* (FLAGS)")
        absorb(index, untagged)
        untagged, _ = await session.command("NOOP")
        absorb(index, untagged)
    store = store_for(imap.host)
    inbox = await store.get_mailbox(mailbox_owner(USER), "INBOX")
    assert inbox is not None
    rows = await store.messages(inbox.id, None)
    truth = {seq: {flag.encode() for flag in row.flags} for seq, row in enumerate(rows, start=1)}
    for view in views:
        assert view == truth
    # Each keyword's final state is what its one writer last did to each message.
    for index in range(SESSIONS):
        keyword = f"$k{index}".encode()
        expected: dict[int, bool] = {}
        for round_number in range(ROUNDS):
            expected[(index + round_number) % MESSAGES + 1] = bool(round_number % 3)
        for seq, present in expected.items():
            assert (keyword in truth[seq]) == present
    # A message's mod-sequence names one state: no two sessions saw different flags under it.
    assert states and all(len(seen) == 1 for seen in states.values())
    for session in sessions:
        session.writer.close()
