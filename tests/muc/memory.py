"""An in-process group-chat service for the unit tests: the real MucService on a real Router and a
throw-away SQLite store, with local deliveries and remote hand-offs collected per address."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from peerage.store import Store
from peerage.store.schema import load_all_tables
from peerage.xmpp.context import XmppContext
from peerage.xmpp.events import Events
from peerage.xmpp.muc.service import MucService
from peerage.xmpp.router import Router
from peerage.xmpp.storage import XmppStorage
from peerage.xmpp.stream import Element, parse_stored

DOMAIN = "a.test"
SERVICE = f"conference.{DOMAIN}"


async def memory_engine() -> AsyncEngine:
    """A SQLite database in a temporary file, removed with the engine.

    Not ``sqlite+aiosqlite://``: an in-memory database is one connection shared by every task
    (SQLAlchemy's StaticPool), so one task's read ending in ROLLBACK undid the room writer's
    half-done DELETE, and its INSERT then failed ("UNIQUE constraint failed: muc_rooms.jid"). A file
    gives each connection its own transaction, as the server's database does.
    """
    directory = tempfile.mkdtemp(prefix="peerage-muc-")
    engine = Store(f"sqlite+aiosqlite:///{Path(directory) / 'muc.db'}").engine  # with the server's pragmas
    weakref.finalize(engine, shutil.rmtree, directory, True)
    async with engine.begin() as conn:
        await conn.run_sync(load_all_tables().create_all)
    return engine


class MucHarness:
    def __init__(self, engine: AsyncEngine, domains: tuple[str, ...] = (DOMAIN,)) -> None:
        self.router = Router(domains)
        self.inbox: dict[str, list[Element]] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        self.router.set_local_handler(self._local)

        async def remote(stanza: Element, domain: str) -> None:
            self._local(stanza)

        self.router.set_remote_sender(remote)
        self.ctx = XmppContext(events=Events(), router=self.router, storage=XmppStorage(engine), users=None,  # type: ignore[arg-type]
                               accounts=None, spawn=self._spawn)
        self.muc = MucService(self.ctx)
        self.ctx.features.append(self.muc)

    def _spawn(self, coroutine: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def _local(self, stanza: Element) -> None:
        self.inbox.setdefault(stanza.attrs["to"], []).append(stanza)

    async def send(self, xml: str) -> None:
        result = self.router.route(parse_stored(xml))
        if result is not None:
            await result
        for _ in range(3):
            await asyncio.sleep(0)

    async def settle(self) -> None:
        for _ in range(5):
            await asyncio.sleep(0)
        while self.tasks:
            await asyncio.gather(*list(self.tasks))

    def take(self, jid: str) -> list[Element]:
        return self.inbox.pop(jid, [])

    async def join(self, room: str, full: str, nick: str, extra: str = "") -> list[Element]:
        await self.send(f"<presence from='{full}' to='{room}/{nick}'><x xmlns='http://jabber.org/protocol/muc'>"
                        f"{extra}</x></presence>")
        return self.take(full)

    async def create(self, room: str, full: str, nick: str, fields: str = "") -> None:
        """Create ``room`` and submit its configuration (an instant room when ``fields`` is empty)."""
        got = await self.join(room, full, nick)
        assert any(s.find("x", "http://jabber.org/protocol/muc#user") is not None and
                   "201" in codes(s) for s in got), got
        await self.send(f"<iq from='{full}' to='{room}' type='set' id='cfg'><query xmlns='http://jabber.org/protocol/"
                        f"muc#owner'><x xmlns='jabber:x:data' type='submit'>{fields}</x></query></iq>")
        replies = [s for s in self.take(full) if s.name == "iq"]
        assert replies and replies[-1].attrs["type"] == "result", replies


def codes(stanza: Element) -> list[str]:
    x = stanza.find("x", "http://jabber.org/protocol/muc#user")
    return [s.attrs.get("code", "") for s in x.find_all("status")] if x is not None else []


def condition(stanza: Element) -> str:
    error = stanza.find("error")
    assert error is not None, stanza
    return next(c.name for c in error.elements() if c.name != "text")


def field(name: str, *values: str) -> str:
    return f"<field var='{name}'>" + "".join(f"<value>{v}</value>" for v in values) + "</field>"
