"""Durable before acknowledged: a stanza the server acked (XEP-0198 <a/>) survives a crash (SIGKILL)."""

from __future__ import annotations

import re

from tests.harness import PeerageServer
from tests.xmpp.conftest import PASSWORD
from tests.xmpp.rawclient import RawClient

SERVER_ADDRESS = "127.0.1.7"
SERVER_USERS = ["alice@a.test", "bob@b.test", "carol@a.test", "dave@a.test"]


async def test_offline_message_acked_then_crash_is_delivered_after_restart(xmpp_server: PeerageServer) -> None:
    alice = RawClient(SERVER_ADDRESS, "a.test")
    await alice.login("alice", PASSWORD, resource="sender")
    await alice.send("<enable xmlns='urn:xmpp:sm:3'/>")
    await alice.read_until(r"<enabled[^>]*/>")
    await alice.send("<message to='bob@b.test' id='durable1' type='chat'><body>survives a crash</body></message>"
                     "<r xmlns='urn:xmpp:sm:3'/>")
    ack = await alice.read_until(r"<a xmlns='urn:xmpp:sm:3'[^>]*/>")
    assert re.search(r"h='1'", ack), ack
    await alice.close()
    xmpp_server.kill()  # no clean shutdown: only what was committed survives
    xmpp_server.start()
    bob = RawClient(SERVER_ADDRESS, "b.test")
    try:
        await bob.login("bob", PASSWORD, resource="later")
        await bob.send("<presence/>")
        delivered = await bob.read_until(r"<message[^>]*>.*?survives a crash.*?</message>")
        assert "from='alice@a.test/sender'" in delivered
        assert "urn:xmpp:delay" in delivered
    finally:
        await bob.close()


async def test_unacknowledged_messages_go_to_offline_storage_when_the_session_ends(
        xmpp_server: PeerageServer) -> None:
    carol = RawClient(SERVER_ADDRESS, "a.test")
    dave = RawClient(SERVER_ADDRESS, "a.test")
    await carol.login("carol", PASSWORD, resource="phone")
    await dave.login("dave", PASSWORD, resource="desk")
    await carol.send("<enable xmlns='urn:xmpp:sm:3'/><presence/>")
    await carol.read_until(r"<enabled[^>]*/>")
    await dave.send("<message to='carol@a.test/phone' type='chat'><body>never acknowledged</body></message>")
    assert "never acknowledged" in await carol.read_until(r"never acknowledged</body>")
    # carol leaves without acknowledging (XEP-0198 section 4): the server must not drop the message.
    await carol.send("</stream:stream>")
    await carol.read_to_eof()
    await carol.close()
    again = RawClient(SERVER_ADDRESS, "a.test")
    try:
        await again.login("carol", PASSWORD, resource="laptop")
        await again.send("<presence/>")
        redelivered = await again.read_until(r"<message[^>]*>.*?never acknowledged.*?</message>")
        assert "urn:xmpp:delay" in redelivered
    finally:
        await again.close()
        await dave.close()
