"""The per-account state the XMPP features share: roster, roster version and blocklist, cached.

This module is in charge of loading an account's roster and blocklist once and keeping them in
memory while any of its resources is online (and, bounded, a while after), so that delivery to an
online session needs no database access. Feature modules change the cached state together with
the stored one; nothing else keeps a copy.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import Any

from peerage.xmpp.storage import RosterItem, XmppStorage

#: Accounts whose roster and blocklist stay cached while nobody of them is online. Online accounts
#: are always cached; this bounds the rest (LRU).
OFFLINE_USER_CACHE = 2048


class UserState:
    """What the features keep about one account: roster, roster version, blocklist."""

    __slots__ = ("bare", "blocklist", "lock", "roster", "version")

    def __init__(self, bare: str, version: int, roster: dict[str, RosterItem], blocklist: set[str]) -> None:
        self.bare = bare
        self.roster = roster
        self.version = version
        self.blocklist = blocklist
        # Serialises read-modify-write of the roster (subscription state machine, roster sets).
        self.lock = asyncio.Lock()


class Users:
    """The cache of ``UserState``, loaded on demand, one load per account at a time."""

    def __init__(self, storage: XmppStorage, exists: Callable[[str], object],
                 is_online: Callable[[str], bool]) -> None:
        self.storage = storage
        self._exists = exists
        self._is_online = is_online
        self._users: OrderedDict[str, UserState] = OrderedDict()
        self._loading: dict[str, asyncio.Future[UserState]] = {}
        #: ``cached(bare)``: the state of ``bare`` if it is in the cache, else None (no load, no
        #: reordering). The dictionary's own ``get``: it is on every stanza's path.
        self.cached: Callable[[str], UserState | None] = self._users.get
        #: ``guard(state)``: an async context manager entered, under ``state.lock``, around every
        #: read-modify-write of a roster (``modifying``). None on a single server, where the lock is
        #: enough; a cluster sets one that serialises the account across nodes and re-reads the
        #: stored roster when another node changed it (peerage.cluster.roster).
        self.guard: Callable[[UserState], contextlib.AbstractAsyncContextManager[Any]] | None = None

    @contextlib.asynccontextmanager
    async def modifying(self, state: UserState) -> AsyncIterator[UserState]:
        """Around a decision taken on ``state``'s roster and the writes it makes (the subscription
        state machine, roster sets): one at a time, on the stored state."""
        async with state.lock:
            if self.guard is None:
                yield state
                return
            async with self.guard(state):
                yield state
                # The state just checked and written is the newest: the cache holds it from now
                # (a copy loaded meanwhile may predate this change).
                if self._users.get(state.bare) is not None:
                    self._users[state.bare] = state

    async def load(self, bare: str) -> UserState:
        """The state of ``bare`` (an account known to exist), from the cache or the store."""
        state = self._users.get(bare)
        if state is not None:
            self._users.move_to_end(bare)
            return state
        pending = self._loading.get(bare)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[UserState] = asyncio.get_running_loop().create_future()
        self._loading[bare] = future
        try:
            version, roster = await self.storage.load_roster(bare)
            blocklist = await self.storage.get_blocklist(bare)
            state = UserState(bare, version, roster, blocklist)
            self._users[bare] = state
            self._evict()
            future.set_result(state)
            return state
        except BaseException as error:
            future.set_exception(error)
            future.exception()  # mark retrieved: the caller gets the error
            raise
        finally:
            del self._loading[bare]

    async def lookup(self, bare: str) -> UserState | None:
        """The state of ``bare``, or None when no such account exists."""
        state = self._users.get(bare)
        if state is not None:
            return state
        exists = self._exists(bare)
        if not await exists:  # type: ignore[misc]
            return None
        return await self.load(bare)

    async def resync(self) -> list[tuple[UserState, dict[str, RosterItem], dict[str, RosterItem]]]:
        """Re-read every cached account whose stored roster version moved under us (a change made
        by another process: ``peerage user import``); the state is updated in place.

        Returns ``(state, before, after)`` for each account re-read: its roster items before and
        after, so that the roster feature can push what changed (RFC 6121 section 2.1.6).
        """
        changed = []
        stored = await self.storage.roster_versions(list(self._users))
        for bare, version in stored.items():
            state = self._users.get(bare)
            if state is None or version == state.version:
                continue
            async with state.lock:  # not in the middle of a subscription change or roster set
                version, roster = await self.storage.load_roster(bare)
                state.blocklist = await self.storage.get_blocklist(bare)
                before, state.roster, state.version = state.roster, roster, version
            changed.append((state, before, roster))
        return changed

    def _evict(self) -> None:
        if len(self._users) <= OFFLINE_USER_CACHE:
            return
        for bare in list(self._users):
            if len(self._users) <= OFFLINE_USER_CACHE:
                break
            if not self._is_online(bare):
                del self._users[bare]
