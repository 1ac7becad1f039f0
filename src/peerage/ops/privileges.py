"""Dropping root after the listeners are bound: `[server] user` and `[server] group`.

This module is in charge of resolving the account, handing it the files it must write (the data
folder, the status file), loading every peerage module while still root (a virtual environment under
/root stays readable only to root), and then switching group, supplementary groups and user, so that
the process cannot get root back. Without `user`, nothing changes: run under systemd with `User=` and
`AmbientCapabilities=CAP_NET_BIND_SERVICE` instead (see `peerage systemd-unit`).
"""

from __future__ import annotations

import grp
import importlib
import logging
import os
import pkgutil
import pwd
from dataclasses import dataclass
from pathlib import Path

from peerage.config import Config, ConfigError

log = logging.getLogger("peerage.ops")


@dataclass(frozen=True)
class Account:
    user: str
    uid: int
    gid: int


def resolve(config: Config) -> Account | None:
    """The account to run as, or None when `[server] user` is empty; a bad name is a ConfigError."""
    server = config.server
    if not server.user:
        if server.group:
            raise ConfigError(f"{config.path}: [server] group is set without [server] user; set both")
        return None
    try:
        entry = pwd.getpwnam(server.user)
    except KeyError:
        raise ConfigError(
            f"{config.path}: [server] user = {server.user!r}: no such user; create it "
            f"(adduser --system --group {server.user}) or change the setting"
        ) from None
    gid = entry.pw_gid
    if server.group:
        try:
            gid = grp.getgrnam(server.group).gr_gid
        except KeyError:
            raise ConfigError(f"{config.path}: [server] group = {server.group!r}: no such group") from None
    if os.geteuid() != 0 and os.geteuid() != entry.pw_uid:
        raise ConfigError(
            f"{config.path}: [server] user = {server.user!r} needs peerage to start as root (it drops to "
            "that user after binding); start it as root, or empty the setting"
        )
    return Account(server.user, entry.pw_uid, gid)


def _own(path: Path, account: Account) -> None:
    if not path.exists():
        return
    todo = [path]
    if path.is_dir():
        todo += list(path.rglob("*"))
    for item in todo:
        try:
            info = item.lstat()
            if (info.st_uid, info.st_gid) != (account.uid, account.gid):
                os.lchown(item, account.uid, account.gid)
        except FileNotFoundError:
            continue


def preload_modules() -> None:
    """Import every peerage module now, while the interpreter's files are certainly readable."""
    import peerage

    for module in pkgutil.walk_packages(peerage.__path__, "peerage."):
        if ".migrations.versions" in module.name or module.name.endswith("__main__"):
            continue
        try:
            importlib.import_module(module.name)
        except Exception as exc:  # an optional dependency this build lacks
            log.debug("not preloading %s: %s", module.name, exc)


def drop(config: Config, account: Account) -> None:
    """Become `account` for good. Call after every listener is bound."""
    if os.geteuid() == account.uid and os.getegid() == account.gid:
        return
    preload_modules()
    _own(config.data_dir, account)
    os.setgroups([account.gid])
    os.setgid(account.gid)
    os.setuid(account.uid)
    if os.getuid() == 0 or os.geteuid() == 0:  # pragma: no cover - the kernel refused
        raise RuntimeError("could not drop root privileges")
    log.info("running as user %s (uid %d, gid %d) from now on", account.user, account.uid, account.gid)
    if not os.access(config.status_path.parent, os.W_OK):
        log.warning("the folder of [server] status_file (%s) is not writable by %s; `peerage s2s status` and "
                    "`peerage reload` need it", config.status_path.parent, account.user)
    for name, domain in config.domains.items():
        if domain.key is not None and not os.access(domain.key, os.R_OK):
            log.warning("%s: the key %s is not readable by %s, so a reload cannot load a renewed certificate; "
                        "chgrp %s it and chmod 640", name, domain.key, account.user, config.server.group or account.user)
