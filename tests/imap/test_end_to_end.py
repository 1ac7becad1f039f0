# imaplib's stubs type every response as a union of bytes, tuples and None; the tests index them.
# mypy: disable-error-code="assignment,operator,attr-defined,index,union-attr,return-value,arg-type"
"""A message arriving over SMTP (the MX on port 25, SPF checked against a local DNS server) is read
over IMAP with its Authentication-Results header intact, and wakes an IDLE session at once."""

from __future__ import annotations

import asyncio
import imaplib
import smtplib
import threading
from pathlib import Path

from tests.harness import LocalDNS, async_wait_for
from tests.imap.conftest import PASSWORD, USER, next_address, start_host, stop_host


async def test_mail_from_smtp_is_read_over_imap_with_authentication_results(tmp_path: Path) -> None:
    address = next_address()
    client_address = next_address()
    dns = LocalDNS(address, 53)
    dns.add_txt("example.net", f"v=spf1 ip4:{client_address} -all")
    dns.add_a("mx.example.org", address)
    dns.start()
    imap = await start_host(
        tmp_path,
        {
            "dns": {"nameservers": [address], "port": 53, "timeout": 2.0},
            "smtp": {"enabled": True, "mx_listen": [f"{address}:25"], "submission_listen": [],
                     "submissions_listen": []},
        },
        address=address,
    )
    idle_ready = threading.Event()
    woke: list[object] = []

    def idler() -> None:
        client = imaplib.IMAP4_SSL(address, 993, ssl_context=imap.client_context(), timeout=20)
        client.login(USER, PASSWORD)
        client.select("INBOX")
        tag = client._new_tag()
        client.send(tag + b" IDLE\r\n")
        assert client.readline().startswith(b"+")
        idle_ready.set()
        woke.append(client.readline())
        client.send(b"DONE\r\n")
        client.readline()
        client.logout()

    thread = threading.Thread(target=idler)
    thread.start()
    try:
        await async_wait_for(idle_ready.is_set, timeout=10)

        def send() -> None:
            with smtplib.SMTP(address, 25, source_address=(client_address, 0), timeout=20) as smtp:
                smtp.ehlo("client.example.net")
                smtp.sendmail(
                    "bob@example.net", [USER],
                    b"From: bob@example.net\r\nTo: alice@example.org\r\nSubject: across\r\n"
                    b"Message-ID: <across@example.net>\r\n\r\nHello over SMTP.\r\n",
                )

        await asyncio.to_thread(send)
        await async_wait_for(lambda: bool(woke), timeout=10)
        assert woke[0] == b"* 1 EXISTS\r\n"

        def read() -> bytes:
            client = imaplib.IMAP4_SSL(address, 993, ssl_context=imap.client_context(), timeout=20)
            client.login(USER, PASSWORD)
            client.select("INBOX")
            typ, data = client.fetch("1", "(BODY.PEEK[HEADER])")
            client.logout()
            assert typ == "OK"
            return data[0][1]

        header = await asyncio.to_thread(read)
    finally:
        thread.join(timeout=20)
        await stop_host(imap)
        dns.stop()
    assert b"Authentication-Results:" in header
    results = header.split(b"Authentication-Results:", 1)[1].split(b"\r\n\r\n")[0]
    assert b"spf=pass" in results, header
    assert b"Subject: across" in header
