"""XEP-0012 Last Activity and XEP-0202 Entity Time over raw XML."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable

import pytest

from tests.harness import PeerageServer
from tests.xmpp.conftest import PASSWORD
from tests.xmpp.rawclient import RawClient
from tests.xmpp.test_pep import iq

SERVER_ADDRESS = "127.0.10.4"
SERVER_USERS = ["alice@a.test", "erin@a.test"]


@pytest.fixture
async def raw(xmpp_server: PeerageServer) -> AsyncIterator[Callable[..., object]]:
    made: list[RawClient] = []

    async def login(user: str, resource: str = "raw") -> RawClient:
        local, _, domain = user.partition("@")
        client = RawClient(SERVER_ADDRESS, domain)
        await client.login(local, PASSWORD, resource=resource)
        made.append(client)
        return client

    yield login
    for client in made:
        await client.close()


async def test_entity_time(raw: Callable[..., object]) -> None:
    alice: RawClient = await raw("alice@a.test")  # type: ignore[misc]
    reply = await iq(alice, "<time xmlns='urn:xmpp:time'/>", to="a.test", itype="get")
    assert "<tzo>+00:00</tzo>" in reply
    assert re.search(r"<utc>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z</utc>", reply), reply


async def test_last_activity(raw: Callable[..., object]) -> None:
    alice: RawClient = await raw("alice@a.test", "one")  # type: ignore[misc]
    reply = await iq(alice, "<query xmlns='jabber:iq:last'/>", to="a.test", itype="get")
    assert re.search(r"seconds=['\"]\d+['\"]", reply), reply
    await alice.send("<presence/>")
    reply = await iq(alice, "<query xmlns='jabber:iq:last'/>", to="alice@a.test", itype="get")
    assert re.search(r"seconds=['\"]0['\"]", reply), reply
    # Not a contact: refused.
    erin: RawClient = await raw("erin@a.test")  # type: ignore[misc]
    reply = await iq(erin, "<query xmlns='jabber:iq:last'/>", to="alice@a.test", itype="get")
    assert "forbidden" in reply
    # The last session ends with a status; the account's next session (not available) reads it.
    await alice.send("<presence type='unavailable'><status>gone fishing</status></presence>")
    await alice.close()
    second: RawClient = await raw("alice@a.test", "two")  # type: ignore[misc]
    for _ in range(50):
        reply = await iq(second, "<query xmlns='jabber:iq:last'/>", to="alice@a.test", itype="get")
        if "gone fishing" in reply:
            break
        await asyncio.sleep(0.1)
    assert "gone fishing" in reply and re.search(r"seconds=['\"]\d+['\"]", reply), reply


async def test_pep_items_survive_a_restart(xmpp_server: PeerageServer, raw: Callable[..., object]) -> None:
    """XEP-0223: items are in the database, not in memory (runs last: it restarts the module's server)."""
    from tests.xmpp.test_pep import items, publish

    alice: RawClient = await raw("alice@a.test", "before")  # type: ignore[misc]
    reply = await iq(alice, publish("urn:example:kept", "k1", "<x xmlns='urn:example'>kept</x>",
                                    {"pubsub#access_model": "open"}))
    assert "type='result'" in reply.replace('"', "'"), reply
    # XEP-0012: the logout just before the stop is written (logouts are written in batches; the
    # server writes what is pending before it stops).
    await alice.send("<presence/><presence type='unavailable'><status>see you after the restart</status></presence>")
    # The ping's answer comes after both presences are handled (a stream's elements are handled in
    # order); elements still queued when the connection closes are not.
    await iq(alice, "<ping xmlns='urn:xmpp:ping'/>", to="a.test", itype="get")
    await alice.close()
    await asyncio.get_running_loop().run_in_executor(None, xmpp_server.stop)
    await asyncio.get_running_loop().run_in_executor(None, xmpp_server.start)
    erin: RawClient = await raw("erin@a.test", "after")  # type: ignore[misc]
    reply = await iq(erin, items("urn:example:kept"), to="alice@a.test", itype="get")
    assert "kept" in reply and "k1" in reply, reply
    again: RawClient = await raw("alice@a.test", "after")  # type: ignore[misc]
    reply = await iq(again, "<query xmlns='jabber:iq:last'/>", to="alice@a.test", itype="get")
    assert "see you after the restart" in reply, reply
