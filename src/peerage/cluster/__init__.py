"""A peerage cluster: several nodes over one PostgreSQL and NATS (``[cluster]``).

This package is in charge of what changes when ``[cluster] node`` is set, and of nothing else: a
node without it runs exactly as a single server. ``Cluster`` is built by the Host before the
services start; each service hands it its pieces once started (``attach_xmpp``, ``attach_queue``),
and it wires them to the other nodes:

- ``node``: the NATS connection, heartbeats, and which nodes are alive;
- ``xmpp``: the replicated session registry, routing to sessions on other nodes, held stanzas and
  failover, roster cache coherence, one owner node per remote XMPP domain;
- ``sip``: one location service for every node, and requests to flows another node holds sent to
  that node over NATS;
- ``mail``: the shared queue (bodies in PostgreSQL, rows claimed with SKIP LOCKED), IMAP IDLE and
  JMAP push woken on every node;
- ``blobs``: what a single node keeps under its data directory and another node must read (large
  mail bodies, uploads, media, DKIM and account keys), in PostgreSQL instead (``blobs``, ``keys``);
- ``leases``: the ``cluster_leases`` table; ``cli``: ``peerage cluster status``.

What every node holds is described in docs/scaling.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from typing import Any

from peerage.cluster.blobs import DatabaseBlobs, SharedKeys
from peerage.cluster.leases import Leases
from peerage.cluster.node import ClusterNode

log = logging.getLogger(__name__)

#: Each kind of shared body and the folder under data_dir where a single node keeps it.
BLOB_FOLDERS = {"mail": "mail/blobs", "upload": "upload/blobs", "media": "social/media"}


class Cluster:
    def __init__(self, host: Any) -> None:
        config = host.config.cluster
        self.host = host
        self.name = config.node
        self.node = ClusterNode(config.node, list(config.nats_urls), heartbeat_interval=config.heartbeat_interval,
                                node_timeout=config.node_timeout)
        self.leases = Leases(host.store, config.node)
        self.xmpp: Any = None
        self.mail_bridge: Any = None
        self.sip: Any = None
        #: Private keys every node signs with alike (DKIM, social accounts).
        self.keys = SharedKeys(host.store.engine)
        self._blobs: dict[str, DatabaseBlobs] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        from peerage.mail.mailbox import store_for

        self._loop = asyncio.get_running_loop()
        await self.node.start()
        self.leases.start()
        # Large mail bodies in PostgreSQL, before any service stores or reads one.
        store_for(self.host).blobs = self.blobs("mail")
        if self.host.config.imap.enabled or self.host.config.smtp.enabled or self.host.config.web.enabled:
            from peerage.cluster.mail import MailboxBridge

            self.mail_bridge = MailboxBridge(self.node, store_for(self.host).notifier)
        self.node.status_info.append(lambda request: {"domains": list(self.host.config.domains)})

    def blobs(self, kind: str) -> DatabaseBlobs:
        """The shared store of ``kind`` (``mail``, ``upload``, ``media``), in place of a folder."""
        blobs = self._blobs.get(kind)
        if blobs is None:
            from pathlib import Path

            from peerage.mail.mailbox.blobs import BlobStore

            loop = self._loop or asyncio.get_running_loop()
            # The folder a single node uses: bodies from before the cluster are read from there.
            folder = Path(self.host.config.data_dir) / BLOB_FOLDERS[kind]
            blobs = self._blobs[kind] = DatabaseBlobs(self.host.store.engine, kind, loop, BlobStore(folder))
        return blobs

    def attach_xmpp(self, service: Any) -> None:
        """The XMPP service started: route through the cluster."""
        from peerage.cluster.xmpp import ClusterXmpp

        self.xmpp = ClusterXmpp(self.node, service, self.leases)
        self.xmpp.attach()
        # What is alive once XMPP is routed through the cluster (modules, configuration, the NATS
        # client, the registry) lives as long as the process: frozen, the collector's full passes
        # under cross-node traffic walk only what came after (as the IMAP and SIP services do).
        gc.freeze()

    async def attach_sip(self, service: Any) -> None:
        """The SIP service started: registrations of every node, calls to flows held elsewhere."""
        from peerage.cluster.sip import ClusterSip

        self.sip = ClusterSip(self.node, service)
        await self.sip.attach()

    def attach_queue(self, queue: Any) -> None:
        """The outbound mail queue, before it recovers or runs: shared bodies, claimed rows."""
        from peerage.cluster.mail import DatabaseSpool, claim_due

        queue.spool = DatabaseSpool(self.host.store, asyncio.get_running_loop())
        queue.claim_due = claim_due
        self._sweeper = asyncio.ensure_future(self._sweep_orphans())

    async def _sweep_orphans(self) -> None:
        from peerage.cluster.mail import ORPHAN_AFTER, ORPHAN_SWEEP, sweep_orphans

        while True:
            await asyncio.sleep(ORPHAN_SWEEP)
            try:
                removed = await sweep_orphans(self.host.store)
                if removed:
                    log.info("cluster: removed %d queued bodies without rows", removed)
                removed = await self._sweep_blobs(ORPHAN_AFTER)
                if removed:
                    log.info("cluster: removed %d uploaded files and media without rows", removed)
            except Exception:
                log.exception("cluster: orphan sweep failed")

    async def _sweep_blobs(self, min_age: float) -> int:
        from peerage.cluster.blobs import sweep_files

        return await sweep_files(self.blobs("upload"), self.blobs("media"), min_age)

    async def stop_services(self) -> None:
        """Before the services stop: tell the others this node's sessions are ending."""
        if self.xmpp is not None:
            await self.xmpp.stop()
        if self.sip is not None:
            await self.sip.stop()

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self.leases.stop()
        await self.node.stop()
