"""RFC 6121 rules driven through the events, in-process: fake sessions, an in-memory store, no sockets.

The feature modules are the real ones, wired as the service wires them; what a client would see is
what its fake session received, and what a remote server would get is what the remote sender saw.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from peerage.xmpp.context import XmppContext
from peerage.xmpp.events import HANDLED, Events
from peerage.xmpp.features import mam as mam_module
from peerage.xmpp.features.blocking import Blocking
from peerage.xmpp.features.carbons import Carbons
from peerage.xmpp.features.disco import Disco
from peerage.xmpp.features.im import Im
from peerage.xmpp.features.mam import Mam
from peerage.xmpp.features.offline import Offline
from peerage.xmpp.features.ping import Ping
from peerage.xmpp.features.presence import Presence
from peerage.xmpp.features.roster import Roster
from peerage.xmpp.router import Router
from peerage.xmpp.stanzas import StanzaRouter
from peerage.xmpp.storage import RosterItem
from peerage.xmpp.stream import Element
from peerage.xmpp.users import Users

DOMAIN = "a.test"
ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
REMOTE = "carol@remote.test"


class MemoryStorage:
    """The storage interface the features use, kept in dictionaries."""

    def __init__(self) -> None:
        self.rosters: dict[str, dict[str, RosterItem]] = {}
        self.versions: dict[str, int] = {}
        self.offline: dict[str, list[tuple[int, str]]] = {}
        self.archive: list[dict[str, Any]] = []
        self.blocklists: dict[str, set[str]] = {}
        self.fail_archive = 0
        self.archive_gate: asyncio.Event | None = None
        self._next = 0

    async def load_roster(self, owner: str) -> tuple[int, dict[str, RosterItem]]:
        return self.versions.get(owner, 0), dict(self.rosters.get(owner, {}))

    async def save_roster_item(self, owner: str, item: RosterItem | None, contact: str) -> int:
        roster = self.rosters.setdefault(owner, {})
        if item is None:
            roster.pop(contact, None)
        else:
            roster[contact] = item
        self.versions[owner] = self.versions.get(owner, 0) + 1
        return self.versions[owner]

    async def get_blocklist(self, owner: str) -> set[str]:
        return set(self.blocklists.get(owner, ()))

    async def block(self, owner: str, jids: list[str]) -> None:
        self.blocklists.setdefault(owner, set()).update(jids)

    async def offline_count(self, owner: str) -> int:
        return len(self.offline.get(owner, []))

    async def store_offline(self, owner: str, stanza: str) -> None:
        self._next += 1
        self.offline.setdefault(owner, []).append((self._next, stanza))

    async def take_offline(self, owner: str) -> list[tuple[int, str]]:
        return list(self.offline.get(owner, []))

    async def delete_offline(self, owner: str, up_to_id: int) -> None:
        self.offline[owner] = [row for row in self.offline.get(owner, []) if row[0] > up_to_id]

    async def archive_many(self, rows: list[dict[str, Any]]) -> None:
        if self.archive_gate is not None:
            await self.archive_gate.wait()
        if self.fail_archive:
            self.fail_archive -= 1
            raise OSError("database is away")
        self.archive.extend(rows)


class Accounts:
    def __init__(self, *names: str) -> None:
        self.names = set(names)

    async def exists(self, bare: str) -> bool:
        return bare in self.names


class FakeSession:
    def __init__(self, bare: str, resource: str) -> None:
        self.bare_jid = bare
        self.resource = resource
        self.full_jid = f"{bare}/{resource}"
        self.available = False
        self.priority = 0
        self.last_presence: Element | None = None
        self.directed: set[str] | None = None
        self.roster_requested = False
        self.blocklist_requested = False
        self.carbons = False
        self.received: list[Element] = []

    def send(self, stanza: Element) -> None:
        self.received.append(stanza)

    def bodies(self) -> list[str]:
        return [s.find_text("body") or "" for s in self.received if s.name == "message" and s.find("body") is not None]

    def errors(self) -> list[str]:
        out = []
        for stanza in self.received:
            error = stanza.find("error") if stanza.attrs.get("type") == "error" else None
            if error is not None:
                out.extend(child.name for child in error.elements() if child.name != "text")
        return out


class World:
    def __init__(self, archive: bool = False, storage: Any = None) -> None:
        self.router = Router([DOMAIN])
        self.storage = storage if storage is not None else MemoryStorage()
        accounts = Accounts(ALICE, BOB)
        self.users = Users(self.storage, accounts.exists, lambda bare: bool(self.router.sessions.get(bare)))  # type: ignore[arg-type]
        self.ctx = XmppContext(events=Events(), router=self.router, storage=self.storage,  # type: ignore[arg-type]
                               users=self.users, accounts=accounts, archive_enabled=archive)
        self.ctx.features.extend(cls(self.ctx) for cls in (Roster, Presence, Im, Disco, Ping, Blocking, Carbons,
                                                           Offline, Mam))
        self.stanzas = StanzaRouter(self.ctx)
        self.remote: list[Element] = []

        async def remote_sender(stanza: Element, _domain: str) -> None:
            self.remote.append(stanza)

        self.router.set_remote_sender(remote_sender)

    async def bind(self, bare: str, resource: str, *, available: bool = True, priority: int = 0) -> FakeSession:
        session = FakeSession(bare, resource)
        await self.users.load(bare)
        self.router.bind(session)  # type: ignore[arg-type]
        if available:
            presence = Element("presence", "")
            if priority:
                presence.add("priority", text=str(priority))
            await self.send(session, presence)
        return session

    async def send(self, session: FakeSession, stanza: Element) -> None:
        stanza.attrs["from"] = session.full_jid
        result = self.stanzas.from_client(session, stanza)
        if result is not None:
            await result

    async def arrive(self, stanza: Element) -> None:
        """A stanza from a federated server."""
        assert await self.router.deliver_from_remote(stanza)


def chat(to: str, body: str, mtype: str = "chat", **attrs: str) -> Element:
    message = Element("message", "", {"to": to, "type": mtype, **attrs})
    message.add("body", text=body)
    return message


# --- the event table ------------------------------------------------------------------------------
def test_higher_priority_runs_first_and_the_first_result_ends_the_chain() -> None:
    events = Events()
    seen: list[str] = []
    events.hook("x", lambda e: seen.append("low") or "low", -1)
    events.hook("x", lambda e: seen.append("first") or None, 5)
    events.hook("x", lambda e: seen.append("second") or "second", 5)
    assert events.fire("x", None) == "second"
    assert seen == ["first", "second"]
    assert events.fire("nobody", None) is None


async def test_a_handler_may_return_an_awaitable() -> None:
    events = Events()

    async def later(_event: object) -> str:
        await asyncio.sleep(0)
        return "stored"

    events.hook("x", later)
    events.hook("x", lambda e: HANDLED, -1)
    assert await events.fire("x", None) == "stored"


# --- RFC 6121 section 8.5: messages ---------------------------------------------------------------
async def test_bare_jid_messages_go_to_non_negative_priority_resources() -> None:
    world = World()
    laptop = await world.bind(ALICE, "laptop", priority=1)
    bot = await world.bind(ALICE, "bot", priority=-1)
    bob = await world.bind(BOB, "desk")
    await world.send(bob, chat(ALICE, "hi"))
    assert laptop.bodies() == ["hi"]
    assert bot.bodies() == []


async def test_chat_to_an_absent_full_jid_is_treated_as_bare_and_groupchat_bounces() -> None:
    world = World()
    laptop = await world.bind(ALICE, "laptop")
    bob = await world.bind(BOB, "desk")
    await world.send(bob, chat(f"{ALICE}/phone", "to phone"))
    assert laptop.bodies() == ["to phone"]
    await world.send(bob, chat(f"{ALICE}/phone", "muc", "groupchat"))
    assert laptop.bodies() == ["to phone"]
    assert bob.errors() == ["service-unavailable"]


async def test_messages_wait_offline_until_initial_presence() -> None:
    world = World()
    bob = await world.bind(BOB, "desk")
    await world.send(bob, chat(ALICE, "while away"))
    assert await world.storage.offline_count(ALICE) == 1
    alice = await world.bind(ALICE, "laptop")
    assert alice.bodies() == ["while away"]
    assert await world.storage.offline_count(ALICE) == 0


async def test_a_message_to_no_account_bounces() -> None:
    world = World()
    bob = await world.bind(BOB, "desk")
    await world.send(bob, chat(f"nobody@{DOMAIN}", "hello?"))
    assert bob.errors() == ["service-unavailable"]


# --- RFC 6121 section 3: subscriptions ------------------------------------------------------------
async def test_a_subscription_request_to_no_account_is_answered_unsubscribed() -> None:
    world = World()
    await world.arrive(Element("presence", "", {"from": REMOTE, "to": f"nobody@{DOMAIN}", "type": "subscribe"}))
    assert [(s.attrs["type"], s.attrs["to"]) for s in world.remote] == [("unsubscribed", REMOTE)]


async def test_subscribe_then_subscribed_makes_the_subscription_to() -> None:
    world = World()
    alice = await world.bind(ALICE, "laptop")
    await world.send(alice, Element("presence", "", {"to": REMOTE, "type": "subscribe"}))
    sent = world.remote[-1]
    assert (sent.attrs["type"], sent.attrs["from"], sent.attrs["to"]) == ("subscribe", ALICE, REMOTE)
    assert world.users.cached(ALICE).roster[REMOTE].ask  # type: ignore[union-attr]
    await world.arrive(Element("presence", "", {"from": f"{REMOTE}/phone", "to": ALICE, "type": "subscribed"}))
    item = world.users.cached(ALICE).roster[REMOTE]  # type: ignore[union-attr]
    assert (item.subscription, item.ask) == ("to", False)
    # Section 3.1.6: the user's resources are told, with the contact's bare JID.
    told = [s for s in alice.received if s.name == "presence" and s.attrs.get("type") == "subscribed"]
    assert told and told[-1].attrs["from"] == REMOTE


async def test_pre_approval_answers_the_request_without_asking_the_user() -> None:
    world = World()
    alice = await world.bind(ALICE, "laptop")
    await world.send(alice, Element("presence", "", {"to": REMOTE, "type": "subscribed"}))
    assert world.remote == []  # section 3.4: remembered, not routed
    await world.arrive(Element("presence", "", {"from": REMOTE, "to": ALICE, "type": "subscribe"}))
    # The answer, then the user's current presence (section 3.1.5).
    assert [s.attrs.get("type") for s in world.remote] == ["subscribed", None]
    assert world.users.cached(ALICE).roster[REMOTE].subscription == "from"  # type: ignore[union-attr]


async def test_a_probe_from_a_non_subscriber_gets_unsubscribed() -> None:
    world = World()
    await world.bind(ALICE, "laptop")
    await world.arrive(Element("presence", "", {"from": REMOTE, "to": ALICE, "type": "probe"}))
    assert [s.attrs["type"] for s in world.remote] == ["unsubscribed"]


# --- IQ dispatch and unhandled stanzas (RFC 6120 section 8.3) -------------------------------------
async def test_an_iq_nobody_handles_gets_service_unavailable() -> None:
    world = World()
    alice = await world.bind(ALICE, "laptop")
    iq = Element("iq", "", {"type": "get", "id": "1", "to": DOMAIN})
    iq.add("query", "urn:example:unknown")
    await world.send(alice, iq)
    assert alice.errors() == ["service-unavailable"]


async def test_an_iq_with_two_payloads_is_a_bad_request() -> None:
    world = World()
    alice = await world.bind(ALICE, "laptop")
    iq = Element("iq", "", {"type": "get", "id": "2", "to": DOMAIN})
    iq.add("ping", "urn:xmpp:ping")
    iq.add("ping", "urn:xmpp:ping")
    await world.send(alice, iq)
    assert alice.errors() == ["bad-request"]


async def test_a_ping_to_the_domain_is_answered() -> None:
    world = World()
    alice = await world.bind(ALICE, "laptop")
    iq = Element("iq", "", {"type": "get", "id": "3", "to": DOMAIN})
    iq.add("ping", "urn:xmpp:ping")
    await world.send(alice, iq)
    assert [(s.name, s.attrs.get("type"), s.attrs.get("id")) for s in alice.received][-1] == ("iq", "result", "3")


# --- XEP-0191, XEP-0280 ---------------------------------------------------------------------------
async def test_a_blocked_sender_bounces_and_its_presence_is_dropped() -> None:
    world = World()
    world.storage.blocklists[ALICE] = {BOB}
    alice = await world.bind(ALICE, "laptop")
    bob = await world.bind(BOB, "desk")
    await world.send(bob, chat(ALICE, "let me in"))
    await world.send(bob, Element("presence", "", {"to": ALICE}))
    assert alice.bodies() == []
    assert not [s for s in alice.received if s.attrs.get("from", "").startswith(BOB)]
    assert bob.errors() == ["service-unavailable"]


async def test_carbons_copy_sent_and_received_messages_to_other_resources() -> None:
    world = World()
    laptop = await world.bind(ALICE, "laptop")
    phone = await world.bind(ALICE, "phone")
    phone.carbons = True
    bob = await world.bind(BOB, "desk")
    await world.send(bob, chat(f"{ALICE}/laptop", "to laptop"))
    await world.send(laptop, chat(BOB, "from laptop"))
    kinds = [next(s.elements()).name for s in phone.received if s.name == "message"]
    assert kinds == ["received", "sent"]
    assert bob.bodies() == ["from laptop"]


# --- XEP-0313 archive buffer ----------------------------------------------------------------------
async def test_a_failed_archive_write_is_retried_and_loses_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mam_module, "RETRY_FIRST", 0.001)
    world = World(archive=True)
    world.storage.fail_archive = 2
    await world.bind(ALICE, "laptop")
    bob = await world.bind(BOB, "desk")
    for n in range(3):
        await world.send(bob, chat(ALICE, f"m{n}"))
    mam: Mam = world.ctx.feature(Mam)
    await asyncio.wait_for(mam.flush(), 5)
    assert mam.failed_writes == 2
    # Each message is in the archive of both parties, once.
    assert sorted(row["owner"] for row in world.storage.archive) == [ALICE] * 3 + [BOB] * 3


async def test_a_full_archive_buffer_makes_the_sender_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mam_module, "ARCHIVE_BUFFER_LIMIT", 4)
    monkeypatch.setattr(mam_module, "ARCHIVE_BATCH", 2)
    world = World(archive=True)
    world.storage.archive_gate = asyncio.Event()
    alice = await world.bind(ALICE, "laptop")
    bob = await world.bind(BOB, "desk")
    await world.send(bob, chat(ALICE, "one"))  # two rows: bob's and alice's
    sending = asyncio.ensure_future(world.send(bob, chat(ALICE, "two")))  # four rows: at the limit
    await asyncio.sleep(0.01)
    assert not sending.done()  # held until the writer makes room
    assert alice.bodies() == ["one", "two"]  # delivery itself was not delayed
    world.storage.archive_gate.set()
    await asyncio.wait_for(sending, 5)
    mam: Mam = world.ctx.feature(Mam)
    await mam.flush()
    assert len(world.storage.archive) == 4


# --- roster versioning (XEP-0237) with the real store ----------------------------------------------
def roster_iq(iq_id: str, ver: str | None = None, item: dict[str, str] | None = None) -> Element:
    iq = Element("iq", "", {"type": "set" if item else "get", "id": iq_id})
    query = iq.add("query", "jabber:iq:roster", {"ver": ver} if ver is not None else None)
    if item:
        query.add("item", attrs=item)
    return iq


async def test_removal_records_are_pruned_and_a_too_old_version_gets_the_full_roster(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    from peerage.store.schema import metadata
    from peerage.xmpp import storage as storage_module
    from peerage.xmpp.storage import XmppStorage

    monkeypatch.setattr(storage_module, "MAX_REMOVED_ITEMS", 3)
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/roster.db")
    try:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        store = XmppStorage(engine)
        world = World(storage=store)
        alice = await world.bind(ALICE, "r")
        contacts = [f"c{n}@remote.test" for n in range(6)]
        for n, contact in enumerate(contacts):  # versions 1 to 6
            await world.send(alice, roster_iq(f"add{n}", item={"jid": contact}))
        for n, contact in enumerate(contacts[:5]):  # versions 7 to 11, each leaving a removal record
            await world.send(alice, roster_iq(f"rm{n}", item={"jid": contact, "subscription": "remove"}))
        # Three records are kept (versions 9, 10, 11); the history before them is gone.
        assert await store.roster_removed_since(ALICE, 6) is None
        assert await store.roster_removed_since(ALICE, 9) == [(10, contacts[3]), (11, contacts[4])]

        # A client that last saw version 9 gets an empty result and one push per change since.
        alice.received.clear()
        await world.send(alice, roster_iq("since9", ver="9"))
        result, *pushes = alice.received
        assert result.attrs["type"] == "result" and result.find("query") is None
        removed = [(p.find("query").attrs["ver"], p.find("query").find("item").attrs)  # type: ignore[union-attr]
                   for p in pushes]
        assert removed == [("10", {"jid": contacts[3], "subscription": "remove"}),
                           ("11", {"jid": contacts[4], "subscription": "remove"})]

        # One that last saw version 6, older than the kept history, gets the whole roster.
        alice.received.clear()
        await world.send(alice, roster_iq("since6", ver="6"))
        [full] = [s for s in alice.received if s.attrs.get("id") == "since6"]
        query = full.find("query")
        assert query is not None and query.attrs["ver"] == "11"
        assert [item.attrs["jid"] for item in query.elements()] == [contacts[5]]
    finally:
        await engine.dispose()
