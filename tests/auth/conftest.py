"""Fixtures of the authentication tests: one peerage server for example.org (and example.net, to
prove SNI-chosen channel binding) on 127.0.7.1 with XMPP, SIP, SMTP and IMAP, and user alice.

Clients connect from other addresses of 127.0.7.0/24 so that the throttle sees distinct sources:
127.0.7.10-19 play attackers, 127.0.7.20-29 clean clients.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import PeerageServer

ADDRESS = "127.0.7.1"
DOMAIN = "example.org"
OTHER_DOMAIN = "example.net"
ALICE = "alice@example.org"
PASSWORD = "correct horse battery staple"
ATTACKER = "127.0.7.10"
CLEAN = "127.0.7.20"


def make_server(workdir: Path, config: dict[str, Any] | None = None, *, address: str = ADDRESS,
                services: tuple[str, ...] = ("xmpp", "sip", "smtp", "imap")) -> PeerageServer:
    base: dict[str, Any] = {"smtp": {"source_address": address}}
    for key, value in (config or {}).items():
        base.setdefault(key, {}).update(value)
    return PeerageServer(workdir, [DOMAIN, OTHER_DOMAIN], address, services=services, config=base)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PeerageServer]:
    # Small thresholds keep the throttle tests short: a pair is delayed after 2 failures and refused
    # after 4; the account alone is delayed after 8 (from several addresses), never refused.
    srv = make_server(tmp_path_factory.mktemp("auth"),
                      {"limits": {"auth_failures_per_account": 2, "auth_failures_per_ip": 50}})
    srv.add_user(ALICE, PASSWORD)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
