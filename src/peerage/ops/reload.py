"""What a reload changes: the settings that apply live, and the ones that wait for a restart.

This module is in charge of comparing the running configuration with the file as it is now, applying
the live part (hosted domains and their certificates, `[server] log_level`) and naming every other
changed key as `[section] key`, so the operator knows a restart is needed and for what. The running
configuration keeps its old value for those keys until then, so nothing half-applies.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from peerage.config import Config

log = logging.getLogger("peerage.ops")

# (section, key) pairs applied by a reload; `[[domain]]` entries are live too.
LIVE_SETTINGS = frozenset({("server", "log_level")})


def _sections(config: Config) -> list[str]:
    # Sections other packages add (web, metrics, ...) are compared the same way.
    return [f.name for f in dataclasses.fields(config) if dataclasses.is_dataclass(getattr(config, f.name))]


def describe_changes(old: Config, new: Config) -> tuple[list[str], list[str]]:
    """(live changes, changed keys that need a restart), both as words for the log."""
    live: list[str] = []
    restart: list[str] = []
    added = [d for d in new.domains if d not in old.domains]
    removed = [d for d in old.domains if d not in new.domains]
    changed = [d for d in new.domains if d in old.domains and new.domains[d] != old.domains[d]]
    if added:
        live.append("domains added: " + ", ".join(added))
    if removed:
        live.append("domains removed: " + ", ".join(removed))
    if changed:
        live.append("certificate files changed: " + ", ".join(changed))
    for section in _sections(new):
        before, after = getattr(old, section, None), getattr(new, section)
        if before == after or before is None:
            continue
        for f in dataclasses.fields(after):
            if getattr(before, f.name) != getattr(after, f.name):
                (live if (section, f.name) in LIVE_SETTINGS else restart).append(f"[{section}] {f.name}")
    return live, restart


def apply_live(host: Any, old: Config, new: Config) -> Config:
    """The configuration to run with now: the old one with the live settings of `new`."""
    # Services hold the domains mapping itself (routers, mail), so it is updated in place.
    domains = old.domains
    domains.clear()
    domains.update(new.domains)
    host.accounts.domains = frozenset(domains)
    if old.server.log_level != new.server.log_level and not getattr(host, "verbose", False):
        logging.getLogger().setLevel(new.server.log_level.upper())
    server = dataclasses.replace(old.server, log_level=new.server.log_level)
    return dataclasses.replace(old, server=server, domains=domains)
