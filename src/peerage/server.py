"""The Host: one process serving every enabled protocol for every hosted domain.

This module is in charge of building the shared pieces from the configuration (store, accounts, TLS,
DNS, limits), starting each enabled service in order, publishing runtime status for the command line,
and stopping everything cleanly on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import signal
import time
from typing import Any, Protocol

from peerage.config import Config
from peerage.identity.accounts import AccountService
from peerage.net.dns import Resolver
from peerage.net.limits import Limits
from peerage.net.tls import TLSContexts
from peerage.store import Store

log = logging.getLogger("peerage")


class Service(Protocol):
    async def start(self, host: Host) -> None: ...

    async def stop(self) -> None: ...


# (config section that enables it, module, class). Mail covers SMTP and IMAP. The web service comes
# last: the others register their routes with it (peerage.web.routes_for) while they start.
SERVICES: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("xmpp",), "peerage.xmpp.service", "XmppService"),
    (("sip",), "peerage.sip.service", "SipService"),
    (("smtp", "imap"), "peerage.mail.service", "MailService"),
    (("web",), "peerage.web.service", "WebService"),
)


class Host:
    def __init__(self, config: Config) -> None:
        from peerage.ops.certs import check_certificates

        check_certificates(config)  # a bad file is one clear error, not an OpenSSL traceback
        self.config = config
        self.store = Store(config.database_url)
        self.accounts = AccountService(self.store, config.domains)
        self.tls = TLSContexts(config)
        self.dns = Resolver(config.dns)
        self.limits = Limits(config.limits)
        self.services: list[Any] = []
        self._status: dict[str, Any] = {}
        self._stopping = asyncio.Event()

    @property
    def domains(self) -> list[str]:
        return list(self.config.domains)

    async def open(self) -> None:
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        await self.store.migrate()

    async def start(self) -> None:
        await self.open()
        for sections, module_name, class_name in SERVICES:
            if not any(getattr(self.config, s).enabled for s in sections):
                continue
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if exc.name != module_name:
                    raise
                log.warning("%s is not available in this build; skipping", module_name)
                continue
            service = getattr(module, class_name)()
            await service.start(self)
            self.services.append(service)
        log.info("peerage ready: %s", ", ".join(self.config.domains) or "no domains")

    async def stop(self) -> None:
        for service in reversed(self.services):
            try:
                await service.stop()
            except Exception:
                log.exception("error while stopping %s", type(service).__name__)
        self.services.clear()
        await self.store.close()
        # What a stopped server published is no longer true: the CLI then says nothing is running.
        self.config.status_path.unlink(missing_ok=True)

    def publish_status(self, key: str, value: Any) -> None:
        """Record runtime status (e.g. s2s levels) where `peerage s2s status` can read it.

        The file also says which process wrote it and when (`updated_at`, seconds since the epoch), so a
        reader can tell live data from what a killed server left behind.
        """
        self._status[key] = value
        self._status["pid"] = os.getpid()
        self._status["updated_at"] = time.time()
        path = self.config.status_path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self._status, indent=1, default=str))
        os.replace(tmp, path)

    def request_stop(self) -> None:
        self._stopping.set()

    async def run_until_stopped(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        try:
            await self.start()
            await self._stopping.wait()
            log.info("shutting down")
        finally:
            await self.stop()


def read_status(config: Config) -> dict[str, Any]:
    """What the running server published; empty when none runs (stopped, or killed: its pid is gone)."""
    try:
        status = dict(json.loads(config.status_path.read_text()))
    except (FileNotFoundError, ValueError):
        return {}
    pid = status.get("pid")
    if isinstance(pid, int) and not _alive(pid):
        return {}
    return status


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, under another user (the server after dropping privileges)
        return True
    return True
