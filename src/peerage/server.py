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

    def publish_status(self, key: str, value: Any) -> None:
        """Record runtime status (e.g. s2s levels) where `peerage s2s status` can read it."""
        self._status[key] = value
        path = self.config.data_dir / self.config.server.status_file
        tmp = path.with_suffix(".tmp")
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
    path = config.data_dir / config.server.status_file
    try:
        return dict(json.loads(path.read_text()))
    except FileNotFoundError:
        return {}
