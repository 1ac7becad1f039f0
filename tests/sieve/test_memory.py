"""The vacation reply memory (RFC 5230 §4.1): persisted in the database, shared by Sieve vacation and
the JMAP VacationResponse (separate handles), and forgetting a sender once the period is over."""

from __future__ import annotations

from pathlib import Path

from peerage.mail.jmap.vacation import MEMORY_HANDLE
from peerage.mail.sieve.store import VacationMemory
from peerage.store import Store


async def test_memory_survives_a_new_store_and_expires(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'memory.db'}"
    first = Store(url)
    await first.migrate()
    memory = VacationMemory(first)
    assert await memory.claim("alice@example.org", MEMORY_HANDLE, "Bob@Example.net", 100.0, now=1000.0)
    assert not await memory.claim("alice@example.org", MEMORY_HANDLE, "bob@example.net", 100.0, now=1050.0)
    # A Sieve vacation has its own handle: it may answer the same sender once too (RFC 5230 §4.2).
    assert await memory.claim("alice@example.org", "sieve:away", "bob@example.net", 100.0, now=1050.0)
    await first.close()
    second = Store(url)  # as after a restart
    again = VacationMemory(second)
    assert not await again.claim("alice@example.org", MEMORY_HANDLE, "bob@example.net", 100.0, now=1090.0)
    assert await again.claim("alice@example.org", MEMORY_HANDLE, "bob@example.net", 100.0, now=1101.0)
    assert await again.claim("carol@example.org", MEMORY_HANDLE, "bob@example.net", 100.0, now=1101.0)
    await second.close()
