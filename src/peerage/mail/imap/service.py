"""The IMAP listeners: port 143 (STARTTLS required before login) and port 993 (implicit TLS).

``ImapService`` binds the addresses of the ``[imap]`` section, enforces the per-IP connection cap of
``[limits]`` and runs one ``ImapSession`` per connection; ``stop`` closes listeners and sessions. At
start it also sweeps message files orphaned by a crash between file write and commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from typing import Any

from peerage.mail.imap.server import ImapSession
from peerage.mail.mailbox import store_for
from peerage.net.listen import start_listeners

log = logging.getLogger("peerage.imap")
# How long stopping waits for sessions to finish their last words and for the listeners to close.
STOP_SECONDS = 3.0


class ImapService:
    def __init__(self) -> None:
        self.host: Any = None
        self._servers: list[asyncio.AbstractServer] = []
        self._sessions: set[asyncio.Task[None]] = set()
        self._engines: dict[asyncio.Task[None], ImapSession] = {}
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, host: Any) -> None:
        self.host = host
        config = host.config.imap
        tls_context = host.tls.server_context() if host.tls.available else None
        self._servers += await start_listeners(
            "imap", "[imap] listen", config.listen, stream_handler=self._plain
        )
        if config.tls_listen:
            if tls_context is None:
                log.warning("no certificate: IMAP over implicit TLS (993) is not offered")
            else:
                self._servers += await start_listeners(
                    "imaps", "[imap] tls_listen", config.tls_listen,
                    stream_handler=self._implicit_tls, ssl_context=tls_context,
                )
        self._sweeper = asyncio.create_task(self._sweep_orphans())
        # What is alive once the service is up (modules, configuration, the database engine) lives as
        # long as the process. Left in the collector's generations, every full collection walks it
        # again, and a SELECT or FETCH of a large mailbox (a row per message) sets off such collections
        # in the middle of the command; frozen, the collections only walk what came after (as SIP does).
        gc.freeze()

    async def _sweep_orphans(self) -> None:
        try:
            removed = await store_for(self.host).collect_orphans()
        except Exception:
            log.exception("sweeping orphaned message files failed")
            return
        if removed:
            log.info("removed %d orphaned message files", removed)

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for server in self._servers:
            server.close()
        for task in list(self._sessions):
            # RFC 9051 §7.1.5: the server tells every client it is closing; the session's last words
            # (this BYE) go out before the connection closes.
            engine = self._engines.get(task)
            if engine is not None:
                engine.untagged("BYE [UNAVAILABLE] Server shutting down")
            task.cancel()
        if self._sessions:
            # A session stuck writing to a client that does not read must not hold the shutdown.
            await asyncio.wait(set(self._sessions), timeout=STOP_SECONDS)
        for server in self._servers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), STOP_SECONDS)
        self._servers.clear()

    async def _plain(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._serve(reader, writer, implicit_tls=False)

    async def _implicit_tls(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._serve(reader, writer, implicit_tls=True)

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, implicit_tls: bool
    ) -> None:
        host = self.host
        peer = writer.get_extra_info("peername")
        ip = peer[0] if peer else "unknown"
        if not host.limits.connections.acquire(ip):
            writer.write(b"* BYE Too many connections from your address\r\n")
            try:
                await writer.drain()
            finally:
                writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        try:
            tls_context = host.tls.server_context() if host.tls.available else None
            session = ImapSession(host, store_for(host), reader, writer, implicit_tls, tls_context)
            self._engines[task] = session
            await session.run()
        except asyncio.CancelledError:
            writer.close()
        finally:
            self._sessions.discard(task)
            self._engines.pop(task, None)
            host.limits.connections.release(ip)
