"""Offline storage against logins in progress: every message to a bare JID is delivered exactly once.

These tests run the real router, feature modules and storage (SQLite) in-process, with hook points in the
storage so the interleavings that a loaded server produces now and then happen every time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from peerage.store import Store
from peerage.xmpp.context import XmppContext
from peerage.xmpp.events import Events
from peerage.xmpp.features.im import Im
from peerage.xmpp.features.offline import Offline
from peerage.xmpp.features.presence import Presence
from peerage.xmpp.features.roster import Roster
from peerage.xmpp.router import Router
from peerage.xmpp.stanzas import StanzaRouter
from peerage.xmpp.storage import XmppStorage
from peerage.xmpp.stream import Element
from peerage.xmpp.users import Users

BARE = "alice@a.test"
SENDER = "bob@a.test/desk"
#: Seconds a login gets to read the offline queue while a message is being stored (it takes a few
#: milliseconds; with the queue held by the store it must wait, so this bound is always used up).
READ_WINDOW = 0.5
#: Bound on any single step of these tests.
STEP_TIMEOUT = 30.0  # SQLite commits on a loaded CI machine; a step that ends sooner returns sooner


class HookedStorage(XmppStorage):
    """The real storage, with hook points around the offline queue."""

    def __init__(self, engine: object) -> None:
        super().__init__(engine)  # type: ignore[arg-type]
        self.insert_reached = asyncio.Event()
        self.insert_gate = asyncio.Event()
        self.insert_gate.set()
        self.queue_read = asyncio.Event()

    async def store_offline(self, owner: str, stanza: str) -> None:
        self.insert_reached.set()
        await self.insert_gate.wait()
        await super().store_offline(owner, stanza)

    async def take_offline(self, owner: str) -> list[tuple[int, str]]:
        rows = await super().take_offline(owner)
        self.queue_read.set()
        return rows


class Accounts:
    """Every address asked about exists."""

    async def exists(self, _bare: str) -> bool:
        return True


class ClientSession:
    """A bound session as the router and core see it (a client's stream reduced to what it receives)."""

    def __init__(self, resource: str) -> None:
        self.bare_jid = BARE
        self.resource = resource
        self.full_jid = f"{BARE}/{resource}"
        self.available = False
        self.priority = 0
        self.last_presence: Element | None = None
        self.directed: set[str] | None = None
        self.roster_requested = False
        self.carbons = False
        self.received: list[Element] = []

    def send(self, stanza: Element) -> None:
        self.received.append(stanza)

    def bodies(self) -> list[str]:
        return [s.find_text("body") or "" for s in self.received if s.name == "message"]


class World:
    def __init__(self, store: Store) -> None:
        self.router = Router(["a.test"])
        self.storage = HookedStorage(store.engine)
        accounts = Accounts()
        self.users = Users(self.storage, accounts.exists, lambda bare: bool(self.router.sessions.get(bare)))
        self.ctx = XmppContext(events=Events(), router=self.router, storage=self.storage, users=self.users,
                               accounts=accounts, archive_enabled=False)
        self.ctx.features.extend(cls(self.ctx) for cls in (Roster, Presence, Im, Offline))
        self.presence_module: Presence = self.ctx.feature(Presence)
        self.stanzas = StanzaRouter(self.ctx)

    def message(self, body: str) -> asyncio.Future[None]:
        """Route a chat message to the bare JID; the future ends once it is delivered or committed."""
        stanza = Element("message", "", {"from": SENDER, "to": BARE, "type": "chat"})
        stanza.add("body", text=body)

        async def route() -> None:
            result = self.router.route(stanza)
            if result is not None:
                await result

        return asyncio.ensure_future(route())

    async def bind(self, resource: str) -> ClientSession:
        session = ClientSession(resource)
        await self.users.load(BARE)
        self.router.bind(session)
        return session

    async def presence(self, session: ClientSession, priority: int | None = None) -> None:
        stanza = Element("presence", "", {"from": session.full_jid})
        if priority is not None:
            stanza.add("priority", text=str(priority))
        await self.presence_module.broadcast(session, stanza)

    async def stored(self) -> int:
        return await XmppStorage.offline_count(self.storage, BARE)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'race.sqlite'}")
    await store.migrate()
    try:
        yield World(store)
    finally:
        await store.close()


async def test_message_stored_while_the_login_reads_the_queue_is_delivered_once(world: World) -> None:
    # The message finds no available resource and is on its way to the offline queue...
    world.storage.insert_gate.clear()
    sending = world.message("during login")
    await asyncio.wait_for(world.storage.insert_reached.wait(), STEP_TIMEOUT)
    # ...when the user logs in and sends initial presence, which empties the queue.
    session = await world.bind("laptop")
    login = asyncio.ensure_future(world.presence(session))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(world.storage.queue_read.wait(), READ_WINDOW)
    # Only now is the message committed.
    world.storage.insert_gate.set()
    await asyncio.wait_for(asyncio.gather(sending, login), STEP_TIMEOUT)
    assert session.bodies() == ["during login"]
    assert await world.stored() == 0


async def test_many_messages_racing_a_login_each_arrive_exactly_once(world: World) -> None:
    count = 40
    early = [world.message(f"early {n}") for n in range(count // 2)]
    await asyncio.wait_for(world.storage.insert_reached.wait(), STEP_TIMEOUT)
    session = await world.bind("phone")
    login = asyncio.ensure_future(world.presence(session))
    late = [world.message(f"late {n}") for n in range(count // 2)]
    await asyncio.wait_for(asyncio.gather(*early, login, *late), STEP_TIMEOUT)
    bodies = session.bodies()
    assert sorted(bodies) == sorted([f"early {n}" for n in range(count // 2)] + [f"late {n}" for n in range(count // 2)])
    assert await world.stored() == 0


async def test_two_resources_logging_in_together_share_the_queue(world: World) -> None:
    await asyncio.wait_for(asyncio.gather(*(world.message(f"stored {n}") for n in range(3))), STEP_TIMEOUT)
    assert await world.stored() == 3
    laptop = await world.bind("laptop")
    phone = await world.bind("phone")
    await asyncio.wait_for(asyncio.gather(world.presence(laptop), world.presence(phone)), STEP_TIMEOUT)
    # XEP-0160: the stored messages go out once, to whichever resource emptied the queue.
    assert sorted(laptop.bodies() + phone.bodies()) == ["stored 0", "stored 1", "stored 2"]
    assert await world.stored() == 0


async def test_stored_messages_wait_for_a_non_negative_priority(world: World) -> None:
    await asyncio.wait_for(world.message("kept"), STEP_TIMEOUT)
    session = await world.bind("bot")
    await world.presence(session, priority=-1)
    assert session.bodies() == []
    assert await world.stored() == 1
    # RFC 6121 section 8.5.2.1.1: once the priority is non-negative, the stored message is due.
    await world.presence(session, priority=0)
    assert session.bodies() == ["kept"]
    assert await world.stored() == 0
