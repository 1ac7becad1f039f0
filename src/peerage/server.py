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

from peerage.config import Config, ConfigError
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
    (("social",), "peerage.social.service", "SocialService"),
    (("web",), "peerage.web.service", "WebService"),
)


class Host:
    def __init__(self, config: Config) -> None:
        from peerage.ops.certs import check_certificates

        check_certificates(config)  # a bad file is one clear error, not an OpenSSL traceback
        self.config = config
        self.store = Store(config.database_url)
        self.accounts = AccountService(self.store, config.domains, cache_size=config.auth.cache_size,
                                       cache_ttl=config.auth.cache_ttl)
        self.tls = TLSContexts(config)
        self.dns = Resolver(config.dns)
        self.limits = Limits(config.limits)
        self.services: list[Any] = []
        self._status: dict[str, Any] = {}
        self._stopping = asyncio.Event()
        # Set by `peerage -v serve`: the configured log_level then never lowers the level on reload.
        self.verbose = False
        self._reloading: asyncio.Task[dict[str, Any]] | None = None
        #: The cluster this node is part of (peerage.cluster), None for a single server.
        self.cluster: Any = None

    @property
    def domains(self) -> list[str]:
        return list(self.config.domains)

    async def open(self) -> None:
        from peerage.ops import metrics

        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        await self.store.migrate()
        metrics.instrument_host(self)

    async def start(self) -> None:
        from peerage.ops import privileges

        account = privileges.resolve(self.config)
        await self.open()
        if self.config.cluster.enabled:
            from peerage.cluster import Cluster

            self.cluster = Cluster(self)
            await self.cluster.start()
        for sections, module_name, class_name in SERVICES:
            if not any(getattr(self.config, s).enabled for s in sections):
                continue
            module = importlib.import_module(module_name)  # imported only when enabled
            service = getattr(module, class_name)()
            await service.start(self)
            self.services.append(service)
        if self.config.metrics.listen:
            from peerage.ops.metrics import MetricsServer

            metrics_server = MetricsServer(self)
            await metrics_server.start()
            self.services.append(metrics_server)
        if self.config.acme.directory:
            from peerage.ops.acme import AcmeService

            acme_service = AcmeService()
            await acme_service.start(self)
            self.services.append(acme_service)
        from peerage.ops import metrics

        metrics.instrument_services(self.services)
        if account is not None:
            privileges.drop(self.config, account)
        self.publish_status("server", {"started_at": time.time(), "config": str(self.config.path)})
        log.info("peerage ready: %s", ", ".join(self.config.domains) or "no domains")

    def request_reload(self) -> None:
        """SIGHUP: reload once; a SIGHUP during a reload runs after it rather than alongside."""
        previous = self._reloading

        async def run() -> dict[str, Any]:
            if previous is not None:
                await asyncio.gather(previous, return_exceptions=True)
            return await self.reload()

        self._reloading = asyncio.get_running_loop().create_task(run())

    async def reload(self) -> dict[str, Any]:
        """Re-read the configuration and apply what can change live; log what needs a restart.

        Certificates (renewed files, or new domains) reach new handshakes in every protocol, open
        connections stay as they are. Domains are added and removed for accounts and every service
        that reads them from the configuration; `log_level` applies at once. A service may also
        define `async reload(host, old_config)` for its own live settings. A configuration that does
        not load, or a certificate that does not, changes nothing and is logged as an error.
        """
        from peerage.config import load_config
        from peerage.ops.certs import check_certificates
        from peerage.ops.reload import apply_live, describe_changes

        log.info("reloading %s", self.config.path)
        try:
            new = load_config(self.config.path)
            check_certificates(new)
            self.tls.reload(new)
        except (ConfigError, OSError, ValueError) as exc:
            log.error("reload failed, the running configuration stays: %s", exc)
            outcome: dict[str, Any] = {"at": time.time(), "ok": False, "error": str(exc)}
            self.publish_status("reload", outcome)
            return outcome
        old = self.config
        live, restart = describe_changes(old, new)
        self.config = apply_live(self, old, new)
        for service in self.services:
            hook = getattr(service, "reload", None)
            if hook is not None:
                try:
                    await hook(self, old)
                except Exception:
                    log.exception("%s could not apply the new configuration", type(service).__name__)
        if restart:
            log.warning("reload: these settings changed but need a restart to take effect: %s", ", ".join(restart))
        log.info("reloaded: certificates%s", "".join(f", {item}" for item in live))
        outcome = {"at": time.time(), "ok": True, "applied": ["certificates", *live], "restart_needed": restart}
        self.publish_status("reload", outcome)
        return outcome

    async def stop(self) -> None:
        if self.cluster is not None:
            await self.cluster.stop_services()
        for service in reversed(self.services):
            try:
                await service.stop()
            except Exception:
                log.exception("error while stopping %s", type(service).__name__)
        self.services.clear()
        if self.cluster is not None:
            await self.cluster.stop()
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
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
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
