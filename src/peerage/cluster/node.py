"""One node of a peerage cluster: its NATS connection, the heartbeats and who else is alive.

This module is in charge of membership. Every node publishes a heartbeat on ``peerage.cluster.hb``
each ``[cluster] heartbeat_interval`` (its name, an incarnation id that changes at every start, and
the sequence number of its session-table changes); every node keeps the last time it heard each
other one. A node unheard for ``node_timeout`` while this node itself is connected to NATS is dead:
the listeners registered with ``on_node_down`` run (the XMPP registry drops its sessions, held
stanzas are re-routed, its leases are released). A node seen with a new incarnation died and came
back: the old incarnation is dead first, then the new one is up.

Nothing is judged while this node is cut off from NATS (it cannot tell a dead node from its own
outage): after reconnecting it waits one ``node_timeout`` of fresh heartbeats before judging again,
and asks every node for its table again (``on_reconnect``). The connection is retried for ever, from
the first attempt on, so a node starts and serves locally while NATS is unreachable.

Subjects: ``peerage.cluster.hb`` (heartbeats), ``peerage.cluster.status`` (scatter-gather for
``peerage cluster status``), ``peerage.node.<name>.*`` (what is addressed to one node).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

HEARTBEAT_SUBJECT = "peerage.cluster.hb"
STATUS_SUBJECT = "peerage.cluster.status"
#: Seconds between connection attempts while NATS is unreachable (nats-py's reconnect_time_wait
#: default is 2 s; a node that lost NATS wants it back sooner).
RECONNECT_WAIT = 0.5
#: Bytes nats-py buffers while reconnecting before publishing fails (its default is 2 MiB); what is
#: buffered is sent once NATS is back.
PENDING_BYTES = 8 * 1024 * 1024


def node_subject(node: str, what: str) -> str:
    return f"peerage.node.{node}.{what}"


@dataclass
class Peer:
    name: str
    incarnation: str
    last_seen: float
    info: dict[str, Any] = field(default_factory=dict)


NodeListener = Callable[[Peer], "Awaitable[None] | None"]


class NumberedFeed:
    """The numbering of one replicated table's changes as heard from every other node.

    Each node numbers the change batches of a table it owns (the session registry, the rooms each
    user occupies) and publishes them; every other node applies them in order to its replica. A
    batch from an unknown node or incarnation is ignored (its coming up brings the whole table), an
    old number is a duplicate, and a gap means a batch was missed: the whole table is fetched
    again. ``ClusterXmpp`` and ``ClusterMuc`` share this rule through one instance each.
    """

    #: What to do with a batch: apply it, drop it, or fetch the origin's whole table instead.
    APPLY, IGNORE, FETCH = "apply", "ignore", "fetch"

    def __init__(self, node: ClusterNode) -> None:
        self.node = node
        self._last: dict[str, int] = {}

    def _current(self, origin: str, incarnation: str) -> bool:
        peer = self.node.peers.get(origin)
        return peer is not None and peer.incarnation == incarnation

    def batch(self, origin: str, incarnation: str, seq: int) -> str:
        """The verdict on batch ``seq`` from ``origin``; an applied batch's number is recorded."""
        if origin == self.node.name or not self._current(origin, incarnation):
            return self.IGNORE
        last = self._last.get(origin, 0)
        if seq <= last:
            return self.IGNORE
        if seq != last + 1:
            return self.FETCH
        self._last[origin] = seq
        return self.APPLY

    def table(self, origin: str, incarnation: str, seq: int) -> bool:
        """A whole table from ``origin`` numbered up to ``seq``: whether it is current (then its
        number is recorded, never moving back past a batch applied meanwhile)."""
        if not self._current(origin, incarnation):
            return False
        self._last[origin] = max(seq, self._last.get(origin, 0))
        return True

    def restart(self, origin: str) -> None:
        """``origin`` came up: its numbering starts again."""
        self._last[origin] = 0

    def forget(self, origin: str) -> None:
        self._last.pop(origin, None)


class ClusterNode:
    """The NATS side of one node: connection, heartbeats, membership, message handlers."""

    def __init__(self, name: str, urls: list[str], *, heartbeat_interval: float, node_timeout: float) -> None:
        self.name = name
        self.urls = urls
        self.incarnation = secrets.token_hex(6)
        self.heartbeat_interval = heartbeat_interval
        self.node_timeout = node_timeout
        self.nc: Any = None
        self.peers: dict[str, Peer] = {}
        self.connected = False
        #: Monotonic time from which missing heartbeats count (reset at every (re)connection).
        self._judge_from = float("inf")
        self._down: list[NodeListener] = []
        self._up: list[NodeListener] = []
        self._reconnect: list[Callable[[], Any]] = []
        self._subscriptions: list[tuple[str, Callable[[Any], Awaitable[None]]]] = []
        #: Extra heartbeat fields (``info()`` of each provider, merged).
        self.heartbeat_info: list[Callable[[], dict[str, Any]]] = []
        #: What this node answers to ``peerage cluster status`` (merged); each gets the request.
        self.status_info: list[Callable[[dict[str, Any]], dict[str, Any]]] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopping = False
        self.started_at = time.time()
        self._out: list[tuple[str, bytes, str]] = []
        self._draining: asyncio.Future[None] | None = None

    # --- registration (before start) ---------------------------------------------------------------
    def on_node_down(self, listener: NodeListener) -> None:
        self._down.append(listener)

    def on_node_up(self, listener: NodeListener) -> None:
        self._up.append(listener)

    def on_reconnect(self, listener: Callable[[], Any]) -> None:
        self._reconnect.append(listener)

    def subscribe(self, subject: str, handler: Callable[[Any], Awaitable[None]]) -> None:
        """Handle ``subject`` (subscribed now if connected, and again after each connection)."""
        self._subscriptions.append((subject, handler))
        if self.nc is not None and self.connected:
            self._tasks.append(asyncio.ensure_future(self.nc.subscribe(subject, cb=handler)))

    # --- life cycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        self._tasks.append(asyncio.ensure_future(self._connect_loop()))
        self._tasks.append(asyncio.ensure_future(self._heartbeat_loop()))
        # A short wait for the first connection, so a node starting with NATS up is routable at once.
        for _ in range(40):
            if self.connected:
                break
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.drain(), 2)
            with contextlib.suppress(Exception):
                await self.nc.close()

    async def _connect_loop(self) -> None:
        import nats

        while not self._stopping:
            try:
                self.nc = await nats.connect(
                    servers=self.urls, name=f"peerage-{self.name}", allow_reconnect=True,
                    max_reconnect_attempts=-1, reconnect_time_wait=RECONNECT_WAIT, connect_timeout=2,
                    ping_interval=5, max_outstanding_pings=2, pending_size=PENDING_BYTES,
                    disconnected_cb=self._disconnected, reconnected_cb=self._reconnected,
                    error_cb=self._error,
                )
            except Exception as exc:
                log.warning("cluster: NATS unreachable (%s); serving locally, retrying", exc)
                await asyncio.sleep(RECONNECT_WAIT)
                continue
            for subject, handler in self._subscriptions:
                await self.nc.subscribe(subject, cb=handler)
            await self.nc.subscribe(HEARTBEAT_SUBJECT, cb=self._heartbeat_received)
            await self.nc.subscribe(STATUS_SUBJECT, cb=self._status_requested)
            self._connected_now()
            log.info("cluster: node %s connected to NATS", self.name)
            return

    def _connected_now(self) -> None:
        self.connected = True
        self._judge_from = time.monotonic() + self.node_timeout
        now = time.monotonic()
        for peer in self.peers.values():
            peer.last_seen = max(peer.last_seen, now)
        self.publish_heartbeat()
        for listener in self._reconnect:
            listener()

    async def _disconnected(self) -> None:
        if self.connected:
            log.warning("cluster: lost NATS; local delivery goes on, routing to other nodes waits")
        self.connected = False
        self._judge_from = float("inf")

    async def _reconnected(self) -> None:
        log.info("cluster: NATS connection back")
        self._connected_now()

    async def _error(self, exc: Exception) -> None:
        log.debug("cluster: NATS error: %s", exc)

    # --- publishing ----------------------------------------------------------------------------------
    def publish(self, subject: str, payload: bytes, reply: str = "") -> bool:
        """Publish without waiting (buffered by nats-py while reconnecting); False if impossible.

        Everything published in one turn of the event loop goes out from one task, in order."""
        if self.nc is None:
            return False
        self._out.append((subject, payload, reply))
        if self._draining is None:
            self._draining = asyncio.ensure_future(self._drain_out())
            self._draining.add_done_callback(_log_failure)
        return True

    async def _drain_out(self) -> None:
        try:
            while self._out:
                batch, self._out = self._out, []
                for subject, payload, reply in batch:
                    try:
                        await self.nc.publish(subject, payload, reply=reply)
                    except Exception as exc:
                        log.debug("cluster: publish to %s failed: %s", subject, exc)
        finally:
            self._draining = None

    async def request(self, subject: str, payload: bytes, timeout: float) -> bytes | None:
        if self.nc is None or not self.connected:
            return None
        try:
            msg = await self.nc.request(subject, payload, timeout=timeout)
        except Exception as exc:
            log.debug("cluster: request %s failed: %s", subject, exc)
            return None
        return bytes(msg.data)

    # --- heartbeats and membership --------------------------------------------------------------------
    def publish_heartbeat(self) -> None:
        info: dict[str, Any] = {"node": self.name, "inc": self.incarnation}
        for provider in self.heartbeat_info:
            info.update(provider())
        if self.connected:
            self.publish(HEARTBEAT_SUBJECT, json.dumps(info).encode())

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            try:
                self.publish_heartbeat()
                await self._judge()
            except Exception:
                log.exception("cluster: heartbeat round failed")

    async def _heartbeat_received(self, msg: Any) -> None:
        try:
            info = json.loads(msg.data)
            name, incarnation = str(info["node"]), str(info["inc"])
        except (ValueError, KeyError, TypeError):
            return
        if name == self.name:
            return
        now = time.monotonic()
        peer = self.peers.get(name)
        if peer is not None and peer.incarnation != incarnation:
            log.warning("cluster: node %s restarted; its previous sessions are gone", name)
            del self.peers[name]
            await self._notify(self._down, peer)
            peer = None
        if peer is None:
            peer = Peer(name, incarnation, now, info)
            self.peers[name] = peer
            log.info("cluster: node %s is up", name)
            await self._notify(self._up, peer)
        peer.last_seen = now
        peer.info = info

    async def _judge(self) -> None:
        now = time.monotonic()
        if not self.connected or now < self._judge_from:
            return
        for peer in list(self.peers.values()):
            if now - peer.last_seen > self.node_timeout:
                log.warning("cluster: node %s unheard for %.1f s: dead", peer.name, now - peer.last_seen)
                del self.peers[peer.name]
                await self._notify(self._down, peer)

    async def _notify(self, listeners: list[NodeListener], peer: Peer) -> None:
        for listener in listeners:
            try:
                result = listener(peer)
                if result is not None:
                    await result
            except Exception:
                log.exception("cluster: node listener failed for %s", peer.name)

    def alive(self, name: str) -> bool:
        return name == self.name or name in self.peers

    # --- status --------------------------------------------------------------------------------------
    async def _status_requested(self, msg: Any) -> None:
        try:
            request = dict(json.loads(msg.data or b"{}"))
        except (ValueError, TypeError):
            request = {}
        info: dict[str, Any] = {"node": self.name, "incarnation": self.incarnation, "started_at": self.started_at,
                                "peers": sorted(self.peers)}
        for provider in self.status_info:
            info.update(provider(request))
        if msg.reply:
            await self.nc.publish(msg.reply, json.dumps(info).encode())


def _log_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("cluster: publish failed: %s", task.exception())
