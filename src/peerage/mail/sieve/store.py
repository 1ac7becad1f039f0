"""Where Sieve scripts and the vacation response memory live: the ``sieve_`` tables.

This module is in charge of the ManageSieve storage operations (RFC 5804 §2.6-§2.11: put, list, get,
set active, delete, rename, with the quota checks of HAVESPACE), of handing delivery the compiled
active script of an account (cached, and invalidated by every change made here), and of
``VacationMemory``, the persisted "already answered this sender" record that Sieve vacation
(RFC 5230 §4.1) and the JMAP VacationResponse share.

Quotas (named, with precedent): ``MAX_SCRIPTS`` per account (Pigeonhole's ``sieve_quota_max_scripts``
is unlimited by default; Cyrus timsieved's ``sieve_maxscripts`` default is 5, too few for clients
that keep one script per rule set, so 32) and ``MAX_STORAGE`` (Cyrus's ``sieve_maxscriptsize`` of
32 KiB per script is too small for generated scripts; 1 MiB in all, the size of one script at most).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from peerage.mail.sieve.grammar import MAX_SCRIPT_SIZE, Script, parse
from peerage.mail.sieve.tables import sieve_scripts, sieve_vacation_replies

MAX_SCRIPTS = 32
MAX_STORAGE = MAX_SCRIPT_SIZE
# RFC 5804 §1.6: names are UTF-8 without control characters; servers must allow 128 characters.
MAX_NAME = 512
# How long the "accounts with an active script" set is believed without asking the database again
# (another process, or a node of a cluster, may change it); changes made here apply at once.
ACTIVE_SET_SECONDS = 5.0
# The VacationMemory handle of the JMAP VacationResponse (RFC 8621 §8); Sieve vacations have theirs.
JMAP_VACATION_HANDLE = "jmap:VacationResponse"


class ScriptError(Exception):
    """A refused storage operation; ``code`` is the ManageSieve response code (RFC 5804 §1.3)."""

    def __init__(self, code: str | None, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


def valid_name(name: str) -> bool:
    if not name or len(name) > MAX_NAME:
        return False
    return not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or c in "\u2028\u2029" for c in name)


@dataclass(slots=True)
class ScriptInfo:
    name: str
    active: bool
    size: int


class ScriptStore:
    def __init__(self, db: Any) -> None:
        self.db = db
        self._active: set[str] | None = None
        self._active_loaded = 0.0
        self._compiled: dict[str, tuple[float, Script]] = {}

    # --- delivery's view ----------------------------------------------------------------------

    async def active_script(self, account: str) -> Script | None:
        """The compiled active script of ``account``, or None; one set lookup for accounts without."""
        now = time.monotonic()
        if self._active is None or now - self._active_loaded > ACTIVE_SET_SECONDS:
            async with self.db.begin() as conn:
                rows = await conn.execute(select(sieve_scripts.c.account).where(sieve_scripts.c.active.is_(True)))
                self._active = {row[0] for row in rows}
            self._active_loaded = now
        if account not in self._active:
            return None
        async with self.db.begin() as conn:
            row = (await conn.execute(select(sieve_scripts.c.content, sieve_scripts.c.updated).where(
                sieve_scripts.c.account == account, sieve_scripts.c.active.is_(True)))).first()
        if row is None:
            return None
        cached = self._compiled.get(account)
        if cached is not None and cached[0] == row.updated:
            return cached[1]
        script = parse(bytes(row.content))
        if len(self._compiled) > 10000:
            self._compiled.clear()
        self._compiled[account] = (row.updated, script)
        return script

    def _changed(self, account: str, active: bool | None) -> None:
        self._compiled.pop(account, None)
        if self._active is not None and active is not None:
            (self._active.add if active else self._active.discard)(account)

    # --- ManageSieve operations ---------------------------------------------------------------

    async def list(self, account: str) -> list[ScriptInfo]:
        async with self.db.begin() as conn:
            rows = await conn.execute(select(sieve_scripts.c.name, sieve_scripts.c.active,
                                             func.length(sieve_scripts.c.content))
                                      .where(sieve_scripts.c.account == account).order_by(sieve_scripts.c.name))
            return [ScriptInfo(name, bool(active), int(size or 0)) for name, active, size in rows]

    async def get(self, account: str, name: str) -> bytes | None:
        async with self.db.begin() as conn:
            row = (await conn.execute(select(sieve_scripts.c.content).where(
                sieve_scripts.c.account == account, sieve_scripts.c.name == name))).first()
        return None if row is None else bytes(row[0])

    async def have_space(self, account: str, name: str, size: int) -> None:
        """Raise ScriptError (QUOTA/MAXSIZE, QUOTA/MAXSCRIPTS) unless a script of ``size`` fits."""
        if size > MAX_SCRIPT_SIZE:
            raise ScriptError("QUOTA/MAXSIZE", f"scripts are limited to {MAX_SCRIPT_SIZE} octets")
        scripts = await self.list(account)
        others = [s for s in scripts if s.name != name]
        if len(others) >= MAX_SCRIPTS:
            raise ScriptError("QUOTA/MAXSCRIPTS", f"at most {MAX_SCRIPTS} scripts per account")
        if sum(s.size for s in others) + size > MAX_STORAGE:
            raise ScriptError("QUOTA/MAXSIZE", f"scripts are limited to {MAX_STORAGE} octets in all")

    async def put(self, account: str, name: str, content: bytes) -> None:
        """Store a script (already checked by the caller with ``parse``)."""
        if not valid_name(name):
            raise ScriptError(None, "invalid script name")
        await self.have_space(account, name, len(content))
        now = time.time()
        async with self.db.begin() as conn:
            found = (await conn.execute(select(sieve_scripts.c.active).where(
                sieve_scripts.c.account == account, sieve_scripts.c.name == name))).first()
            if found is None:
                await conn.execute(insert(sieve_scripts).values(account=account, name=name, content=content,
                                                                active=False, updated=now))
            else:
                await conn.execute(update(sieve_scripts).where(
                    sieve_scripts.c.account == account, sieve_scripts.c.name == name)
                    .values(content=content, updated=now))
        self._changed(account, None)

    async def set_active(self, account: str, name: str) -> None:
        """Make ``name`` the active script; the empty name deactivates all (RFC 5804 §2.8)."""
        async with self.db.begin() as conn:
            if name:
                found = (await conn.execute(select(sieve_scripts.c.name).where(
                    sieve_scripts.c.account == account, sieve_scripts.c.name == name))).first()
                if found is None:
                    raise ScriptError("NONEXISTENT", "there is no script of that name")
            await conn.execute(update(sieve_scripts).where(sieve_scripts.c.account == account)
                               .values(active=False))
            if name:
                await conn.execute(update(sieve_scripts).where(
                    sieve_scripts.c.account == account, sieve_scripts.c.name == name)
                    .values(active=True, updated=time.time()))
        self._changed(account, bool(name))

    async def delete(self, account: str, name: str) -> None:
        async with self.db.begin() as conn:
            found = (await conn.execute(select(sieve_scripts.c.active).where(
                sieve_scripts.c.account == account, sieve_scripts.c.name == name))).first()
            if found is None:
                raise ScriptError("NONEXISTENT", "there is no script of that name")
            if found[0]:
                raise ScriptError("ACTIVE", "the active script cannot be deleted (RFC 5804 §2.10)")
            await conn.execute(delete(sieve_scripts).where(
                sieve_scripts.c.account == account, sieve_scripts.c.name == name))
        self._changed(account, None)

    async def rename(self, account: str, old: str, new: str) -> None:
        if not valid_name(new):
            raise ScriptError(None, "invalid script name")
        async with self.db.begin() as conn:
            found = (await conn.execute(select(sieve_scripts.c.active).where(
                sieve_scripts.c.account == account, sieve_scripts.c.name == old))).first()
            if found is None:
                raise ScriptError("NONEXISTENT", "there is no script of that name")
            clash = (await conn.execute(select(sieve_scripts.c.name).where(
                sieve_scripts.c.account == account, sieve_scripts.c.name == new))).first()
            if clash is not None:
                raise ScriptError("ALREADYEXISTS", "a script of the new name exists")
            await conn.execute(update(sieve_scripts).where(
                sieve_scripts.c.account == account, sieve_scripts.c.name == old)
                .values(name=new, updated=time.time()))
        self._changed(account, None)


class VacationMemory:
    """Who was answered, per account and handle, until when (RFC 5230 §4.1-§4.2), in the database."""

    def __init__(self, db: Any) -> None:
        self.db = db

    @staticmethod
    def _digest(handle: str) -> str:
        return hashlib.sha256(handle.encode("utf-8", "surrogatepass")).hexdigest()[:64]

    async def claim(self, account: str, handle: str, sender: str, seconds: float, now: float | None = None) -> bool:
        """True (and remembered for ``seconds``) when ``sender`` may be answered now; False when it
        was answered within its period. Expired entries of the account are dropped on the way."""
        now = time.time() if now is None else now
        key = self._digest(handle)
        sender = sender.lower()[:320]
        table = sieve_vacation_replies
        try:
            async with self.db.begin() as conn:
                await conn.execute(delete(table).where(table.c.account == account, table.c.expires <= now))
                found = (await conn.execute(select(table.c.expires).where(
                    table.c.account == account, table.c.handle == key, table.c.sender == sender))).first()
                if found is not None:
                    return False
                await conn.execute(insert(table).values(account=account, handle=key, sender=sender,
                                                        expires=now + seconds))
        except IntegrityError:
            return False  # a concurrent delivery claimed it first
        return True
