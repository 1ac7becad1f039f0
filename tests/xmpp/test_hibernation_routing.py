"""Routing to an account while one of its sessions waits for XEP-0198 resumption (hibernates).

A hibernating session is still bound and available (RFC 6121 section 4.2: nothing told contacts it
left), so messages to the bare JID reach it, queued for resumption; they must reach the account's
other, connected resources too.
"""

from __future__ import annotations

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
