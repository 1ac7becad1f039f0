"""Local delivery with group commit: many arriving messages, one mailbox transaction.

This module is in charge of putting messages for local users into their mailboxes through the
mailbox store, batching deliveries that arrive while the previous batch is being committed (the way
databases group commits, and Postfix's local(8) runs deliveries through one queue manager). Each caller
waits until its own message is durable; a batch that fails falls back to one atomic delivery per
message, so one bad message never takes others down with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

# Messages committed in one transaction at most: large enough to amortise the commit under load,
# small enough that one batch's blob writes take a few tens of milliseconds.
MAX_BATCH = 64
# A folder's id is reused for this long without asking again; an IMAP DELETE or RENAME in between is
# caught by the store (the append fails and the slow path resolves the name afresh).
MAILBOX_ID_SECONDS = 1.0
# Addresses whose mailbox owner key (the PRECIS-normalised address) is remembered; a pure function of
# the address, so only the memory is bounded.
MAX_OWNER_CACHE = 10000


@dataclass(slots=True)
class _Pending:
    address: str
    folder: str
    data: bytes
    flags: tuple[str, ...]
    done: asyncio.Future[None]


class LocalDelivery:
    def __init__(self, host: Any) -> None:
        self.host = host
        self._pending: list[_Pending] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._box_ids: dict[tuple[str, str], tuple[int, float]] = {}
        self._owners: dict[str, str] = {}

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="local-delivery")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        from peerage.mail import mailbox

        try:
            await mailbox.store_for(self.host).search.close()
        except Exception:  # the catch-up of the next search indexes what was not written
            log.exception("writing the deferred full-text index entries at stop failed")
        for item in self._pending:
            if not item.done.done():
                item.done.set_exception(RuntimeError("mail service stopping"))
        self._pending.clear()

    async def deliver(self, address: str, data: bytes, folder: str = "INBOX", flags: tuple[str, ...] = ()) -> None:
        """Return once the message is durably in `address`'s `folder` (with `flags`, which Sieve's
        imap4flags sets); raise if it could not be."""
        if self._task is None:
            from peerage.mail import mailbox

            await mailbox.deliver(self.host, address, data, folder=folder, flags=flags)
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(address, folder, data, tuple(flags), done))
        self._wake.set()
        await done

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            if self._pending:
                self._wake.set()
            if batch:
                await self._commit(batch)

    async def _mailbox_id(self, store: Any, owner: str, folder: str) -> int:
        from peerage.mail import mailbox

        now = time.monotonic()
        cached = self._box_ids.get((owner, folder))
        if cached is not None and cached[1] > now:
            return cached[0]
        box = await store.get_mailbox(owner, folder)
        if box is None:
            with contextlib.suppress(mailbox.MailboxExists):
                await store.create_mailbox(owner, folder)
            box = await store.get_mailbox(owner, folder)
        if box is None:
            raise mailbox.NoSuchMailbox(f"{folder} of {owner} cannot be created")
        if len(self._box_ids) > MAX_BATCH * 16:
            self._box_ids.clear()
        self._box_ids[(owner, folder)] = (int(box.id), now + MAILBOX_ID_SECONDS)
        return int(box.id)

    def owner_of(self, address: str) -> str:
        """The mailbox owner key of ``address`` (cached: PRECIS normalisation is not free)."""
        return self._owners.get(address) or self._owner(address)

    def _owner(self, address: str) -> str:
        from peerage.mail import mailbox

        owner = str(mailbox.mailbox_owner(address))
        if len(self._owners) >= MAX_OWNER_CACHE:
            self._owners.clear()
        self._owners[address] = owner
        return owner

    async def _commit(self, batch: list[_Pending]) -> None:
        from peerage.mail import mailbox

        store = mailbox.store_for(self.host)
        groups: dict[tuple[str, str], list[_Pending]] = defaultdict(list)
        for item in batch:
            try:
                owner = self._owners.get(item.address) or self._owner(item.address)
            except Exception as exc:
                item.done.set_exception(exc)
                continue
            groups[(owner, item.folder)].append(item)
        for (owner, folder), items in groups.items():
            try:
                box_id = await self._mailbox_id(store, owner, folder)
                # The full-text index entries follow in batches of their own (peerage.mail.mailbox.search).
                await store.append_many(box_id, [(item.data, item.flags, None, 0) for item in items],
                                        index_later=True)
            except Exception:
                self._box_ids.pop((owner, folder), None)
                log.exception("batched delivery to %s/%s failed; delivering one by one", owner, folder)
                for item in items:
                    try:
                        await mailbox.deliver(self.host, item.address, item.data, folder=item.folder, flags=item.flags)
                    except Exception as exc:
                        if not item.done.done():
                            item.done.set_exception(exc)
                        continue
                    if not item.done.done():
                        item.done.set_result(None)
                continue
            for item in items:
                if not item.done.done():
                    item.done.set_result(None)
