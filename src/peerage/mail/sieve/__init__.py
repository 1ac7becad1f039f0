"""Sieve mail filtering (RFC 5228) for local delivery, and ManageSieve (RFC 5804) to edit the scripts.

The pieces: ``grammar`` (parse and check a script, with line/column errors), ``interpret`` (run it on
one message: the list of actions), ``store`` (scripts and the persisted vacation memory), ``delivery``
(carry the actions out when mail arrives) and ``managesieve`` (the protocol on port 4190).
``scripts_for(host)`` and ``vacation_memory_for(host)`` give the one instance of each per host.
"""

from __future__ import annotations

import weakref
from typing import Any

from peerage.mail.sieve.store import ScriptStore, VacationMemory

__all__ = ["ScriptStore", "VacationMemory", "scripts_for", "vacation_memory_for"]

_scripts: weakref.WeakKeyDictionary[Any, ScriptStore] = weakref.WeakKeyDictionary()
_memories: weakref.WeakKeyDictionary[Any, VacationMemory] = weakref.WeakKeyDictionary()


def scripts_for(host: Any) -> ScriptStore:
    store = _scripts.get(host)
    if store is None:
        store = _scripts[host] = ScriptStore(host.store)
    return store


def vacation_memory_for(host: Any) -> VacationMemory:
    memory = _memories.get(host)
    if memory is None:
        memory = _memories[host] = VacationMemory(host.store)
    return memory
