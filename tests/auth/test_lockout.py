"""The lockout scenario across protocols: wrong SMTP AUTH passwords from one address (and then from
many) never stop the right password over IMAP and XMPP from a clean address; the attacking address is
refused, and every failure writes the one fixed-format log line."""

from __future__ import annotations

import asyncio
import re
import time

from tests.auth.clients import imap_login, smtp_auth, xmpp_login
from tests.auth.conftest import ADDRESS, ALICE, ATTACKER, CLEAN, DOMAIN, PASSWORD
from tests.harness import PeerageServer

FAILURE_LINE = re.compile(
    r"peerage\.auth: authentication failed: address=(\S+) protocol=(\S+) mechanism=(\S+) account=(\S+)$", re.M)


async def test_attacker_address_is_refused_clean_address_logs_in(server: PeerageServer) -> None:
    offset = server.log_path.stat().st_size
    # auth_failures_per_account = 2 here, so the (alice, attacker) pair is refused after 4.
    codes = [await asyncio.to_thread(smtp_auth, ADDRESS, ATTACKER, ALICE, "wrong guess") for _ in range(6)]
    assert codes[0] == 535
    assert 454 in codes, codes  # refused: "Too many failed authentications"
    # Even the right password is refused from the attacking address now...
    assert await asyncio.to_thread(smtp_auth, ADDRESS, ATTACKER, ALICE, PASSWORD) == 454
    # ...while the account works from a clean address, at once, over IMAP and XMPP (and SMTP).
    started = time.monotonic()
    assert b"OK" in await imap_login(ADDRESS, CLEAN, ALICE, PASSWORD)
    assert "<success" in await xmpp_login(ADDRESS, DOMAIN, "127.0.7.21", "alice", PASSWORD)
    assert await asyncio.to_thread(smtp_auth, ADDRESS, "127.0.7.22", "alice", PASSWORD) == 235
    assert time.monotonic() - started < 5.0  # no delay for a clean address
    lines = FAILURE_LINE.findall(server.log_text(offset))
    smtp_lines = [line for line in lines if line[1] == "smtp"]
    assert len(smtp_lines) == codes.count(535), lines
    assert all(line[0] == ATTACKER and line[3] == ALICE and line[2] == "PLAIN" for line in smtp_lines)


async def test_distributed_attack_delays_but_never_locks_out(server: PeerageServer) -> None:
    # One wrong password for alice from each of many addresses (below every pair's threshold): enough
    # to trip the account-wide rule, which only ever delays.
    for n in range(30, 38):
        await asyncio.to_thread(smtp_auth, ADDRESS, f"127.0.7.{n}", ALICE, "still wrong")
    started = time.monotonic()
    reply = await imap_login(ADDRESS, "127.0.7.23", ALICE, PASSWORD)
    took = time.monotonic() - started
    assert b"OK" in reply, reply
    assert 1.5 < took < 20, took  # delayed (2 s), not refused
    assert "<success" in await xmpp_login(ADDRESS, DOMAIN, "127.0.7.24", "alice@example.org", PASSWORD)
