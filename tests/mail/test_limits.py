"""Per-IP limits on the MX: messages per minute and concurrent connections."""

from __future__ import annotations

import smtplib
import socket
from pathlib import Path

from tests.harness import LocalDNS, PeerageServer
from tests.mail.helpers import RawSMTP

ADDRESS = "127.0.4.8"


def test_per_ip_message_rate_and_connection_cap(tmp_path: Path, local_dns: LocalDNS) -> None:
    server = PeerageServer(
        tmp_path, "example.org", ADDRESS, dns=local_dns, services=("smtp",),
        config={"smtp": {"mx_messages_per_minute": 3}, "limits": {"connections_per_ip": 2}},
    )
    server.add_user("alice@example.org", "a password")
    with server:
        codes = []
        with smtplib.SMTP(ADDRESS, 25, source_address=("127.0.4.120", 0)) as client:
            client.ehlo("client.example.net")
            for _ in range(4):
                code, _ = client.docmd("MAIL", "FROM:<carol@example.net>")
                codes.append(code)
                client.rset()
        assert codes == [250, 250, 250, 450]
        # Another address is not affected.
        with smtplib.SMTP(ADDRESS, 25, source_address=("127.0.4.121", 0)) as client:
            client.ehlo("client.example.net")
            assert client.docmd("MAIL", "FROM:<carol@example.net>")[0] == 250
        first = RawSMTP(ADDRESS, 25, source="127.0.4.122")
        second = RawSMTP(ADDRESS, 25, source="127.0.4.122")
        try:
            third = socket.create_connection((ADDRESS, 25), timeout=10, source_address=("127.0.4.122", 0))
            greeting = third.recv(1024)
            third.close()
            assert greeting.startswith(b"421 4.7.0"), greeting
            assert first.greeting[0] == 220 and second.greeting[0] == 220
        finally:
            first.close()
            second.close()
