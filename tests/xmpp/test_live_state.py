"""What a running server holds about an account while it is online, kept right.

- Routing while one session waits for XEP-0198 resumption (hibernates): it is still bound and
  available (RFC 6121 section 4.2: nothing told contacts it left), so messages to the bare JID reach
  it, queued for resumption; they must reach the account's other, connected resources too.
- The cached roster follows a change made by another process (``peerage user import``): the CLI
  has the server reload, which pushes the imported items to the clients that asked for the roster.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.harness import PeerageServer
from tests.xmpp.conftest import PASSWORD
from tests.xmpp.rawclient import RawClient

SERVER_ADDRESS = "127.0.1.10"
SERVER_USERS = ["ivan@a.test", "judy@a.test"]
SM = "urn:xmpp:sm:3"


async def _hibernate(resource: str, *, inactive: bool) -> None:
    """ivan/<resource> enables resumable SM, goes available (and inactive), then drops the TCP connection."""
    tab = RawClient(SERVER_ADDRESS, "a.test")
    await tab.login("ivan", PASSWORD, resource=resource)
    await tab.send(f"<enable xmlns='{SM}' resume='true'/><presence/>")
    await tab.read_until(r"<enabled[^>]*/>")
    if inactive:
        await tab.send("<inactive xmlns='urn:xmpp:csi:0'/>")
    await tab.send(f"<r xmlns='{SM}'/>")  # answered once everything before it is processed
    await tab.read_until(r"<a xmlns='urn:xmpp:sm:3'[^>]*/>")
    await tab.close()  # no </stream:stream>: the session hibernates


@pytest.mark.parametrize("inactive", [False, True], ids=["active", "inactive"])
async def test_bare_jid_message_reaches_the_connected_resource_while_another_hibernates(
        xmpp_server: PeerageServer, inactive: bool) -> None:
    resource = "tab-inactive" if inactive else "tab-active"
    await _hibernate(resource, inactive=inactive)
    tcp = RawClient(SERVER_ADDRESS, "a.test")
    judy = RawClient(SERVER_ADDRESS, "a.test")
    try:
        await tcp.login("ivan", PASSWORD, resource="tcp")
        await tcp.send("<presence/>")
        # ivan/tcp's own presence comes back once the server has made it available.
        await tcp.read_until(r"<presence[^>]*from='ivan@a.test/tcp'")
        await judy.login("judy", PASSWORD, resource="desk")
        for n in range(5):
            await judy.send(f"<message to='ivan@a.test' type='chat' id='m{n}'><body>to the bare jid {n}</body>"
                            "</message>")
            got = await tcp.read_until(rf"<message[^>]*>.*?to the bare jid {n}</body>.*?</message>", timeout=10)
            assert "from='judy@a.test/desk'" in got
        for n in range(3):
            await judy.send(f"<message to='ivan@a.test' id='n{n}'><body>normal {n}</body></message>")
            got = await tcp.read_until(rf"<message[^>]*>.*?normal {n}</body>.*?</message>", timeout=10)
            assert "from='judy@a.test/desk'" in got
    finally:
        await tcp.close()
        await judy.close()


async def test_user_import_reaches_the_cached_roster_of_an_online_account(
        xmpp_server: PeerageServer, tmp_path: Path) -> None:
    export = tmp_path / "export"
    (export / "mail").mkdir(parents=True)
    (export / "export.json").write_text(json.dumps({"mail_format": "maildir"}))
    (export / "archive.json").write_text("[]")
    (export / "roster.json").write_text(json.dumps([
        {"contact": "zed@b.test", "name": "Zed", "subscription": "both", "ask": False, "approved": False,
         "groups": "Imported", "hidden": False, "pending_in": False, "pending_stanza": None}]))
    judy = RawClient(SERVER_ADDRESS, "a.test")
    try:
        await judy.login("judy", PASSWORD, resource="roster")
        await judy.send("<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>")
        first = await judy.read_until(r"<iq[^>]*id='r1'.*?(</iq>|/>)")
        assert "zed@b.test" not in first
        imported = await asyncio.to_thread(xmpp_server.cli, "user", "import", "judy@a.test", str(export))
        assert "1 roster items" in imported.stdout, imported.stdout + imported.stderr
        assert "online clients were sent the imported roster items" in imported.stdout, imported.stdout
        # RFC 6121 section 2.1.6: the change is pushed to the resource that asked for the roster.
        push = await judy.read_until(r"<iq[^>]*type='set'.*?zed@b.test.*?</iq>", timeout=15)
        assert "name='Zed'" in push and "<group>Imported</group>" in push
        await judy.send("<iq type='get' id='r2'><query xmlns='jabber:iq:roster'/></iq>")
        second = await judy.read_until(r"<iq[^>]*id='r2'.*?</iq>")
        assert "zed@b.test" in second
    finally:
        await judy.close()
