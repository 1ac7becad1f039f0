"""SIP across the nodes of a cluster: one location service, and calls to flows another node holds.

This module is in charge of making every node's registrar and proxy serve every registration of the
cluster, and of carrying SIP between nodes over NATS.

Registrations. The registrar writes every binding to ``sip_registrations`` (PostgreSQL) before its
200 OK, with the name of the node that holds the flow the REGISTER came on. After a change it
publishes the address of record on ``peerage.cluster.sip.aor``; every other node reads that AOR's
rows again (one reader per node, in arrival order, so the last read is the newest state). Lookups
on the call path stay in memory. After a NATS outage each node reads the whole table again.

Flows. A binding reached through its flow (RFC 5626 outbound, a UA behind NAT, a TCP/TLS/WebSocket
connection: ``Binding.needs_flow``) can only be reached by the node holding that connection or NAT
binding. A node routing a request to such a binding on another node forwards it there, statefully:
its branch carries a Route naming the holder's TCP endpoint with the flow in its user part and the
Record-Route mark (the nodes share that secret through the store), and the holder sends the request
down the flow as it does for in-dialog requests. Each node keeps its own transactions (RFC 3261
§16: each is a proxy in the path, both Record-Route), so responses, CANCEL, ACK and BYE follow the
ordinary rules. Other bindings (a UA on UDP with a reachable Contact) are dialled directly by
whichever node takes the call.

The wire between nodes is NATS: each node's TCP endpoint is announced in its heartbeat, and the
others keep a ``PeerLink`` in their SIP transport's connection table under that endpoint, so a
message the proxy sends to another node's address goes to ``peerage.node.<name>.sip`` instead of
opening a TCP connection. A message received there enters the proxy as if it arrived on a TCP
connection from that node, and its responses go back the same way.

Failure. When a node dies, the others drop its flow-bound bindings (memory and rows): those UAs
must register again (through another node, as RFC 5626 §4.4 flow recovery does); its UDP bindings
stay usable. A node starting again drops the flow-bound rows of its previous run (its connections
died with it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from sqlalchemy import and_, delete, not_, or_

from peerage.cluster.node import ClusterNode, Peer, node_subject
from peerage.sip.message import SipParseError, parse_datagram
from peerage.sip.tables import sip_registrations
from peerage.sip.transaction import Destination
from peerage.sip.transport import stamp_via

log = logging.getLogger(__name__)

AOR_SUBJECT = "peerage.cluster.sip.aor"
#: Largest SIP message accepted from another node ([sip] max_message_size bounds what a node
#: forwards; this is a sanity bound on the NATS side, NATS' own max_payload is 1 MiB).
MAX_FORWARDED_MESSAGE = 1024 * 1024
#: Addresses of record waiting to be read again before the reader gives up on the oldest (a
#: backlog that long means the store is down; the full reload after it recovers catches up).
MAX_PENDING_RELOADS = 100_000
#: Header lines of other nodes remembered (one per node and SIP endpoint; a bound, not a size).
MAX_SENDERS = 1024


class PeerLink:
    """Another node's SIP endpoint as the transport sees a connection: writes go over NATS."""

    cluster_peer = True  # the proxy accepts flow routes for new requests only from these
    verified_name = None

    def __init__(self, sip: ClusterSip, node: str, endpoint: tuple[str, int]) -> None:
        self.sip = sip
        self.node = node
        self.key = ("TCP", endpoint[0], endpoint[1])
        self.closed = False

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.sip.node.publish(node_subject(self.node, "sip"), self.sip.header + data)

    def close(self) -> None:
        self.closed = True


class ClusterSip:
    def __init__(self, node: ClusterNode, service: Any) -> None:
        self.node = node
        self.service = service
        self.registrar = service.registrar
        self.proxy = service.proxy
        self.transport = service.transport
        self.store = service.registrar.host.store
        self.endpoint: tuple[str, int] | None = self.proxy.local_endpoints.get("TCP") \
            if "TCP" in self.transport.endpoints else None
        self.header = json.dumps({"node": node.name, "sip": list(self.endpoint or ("", 0))}).encode() + b"\n"
        self.links: dict[str, PeerLink] = {}
        #: header line -> (node, its SIP endpoint), as read from the other nodes' messages
        self._senders: dict[bytes, tuple[str, tuple[str, int]]] = {}
        self._pending: dict[str, None] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def attach(self) -> None:
        registrar = self.registrar
        registrar.node = self.node.name
        await self._drop_flows_of(self.node.name)  # our previous run's connections are gone
        registrar.on_change = self._changed
        self.proxy.peer_endpoint = self.peer_endpoint
        if self.endpoint is None:
            log.warning("cluster: [sip] tcp_listen is off on node %s: calls to flows held here cannot "
                        "come from other nodes", self.node.name)
        node = self.node
        node.heartbeat_info.append(lambda: {"sip": list(self.endpoint)} if self.endpoint else {})
        node.subscribe(node_subject(node.name, "sip"), self._received)
        node.subscribe(AOR_SUBJECT, self._aor_changed)
        node.on_node_down(self._node_down)
        node.on_reconnect(self._reconnected)
        node.status_info.append(self.status)
        self._tasks.append(asyncio.ensure_future(self._reader()))
        node.publish_heartbeat()  # the others learn our SIP endpoint now, not a heartbeat later

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # --- registrations -------------------------------------------------------------------------------
    def _changed(self, aor: str) -> None:
        self.node.publish(AOR_SUBJECT, json.dumps({"node": self.node.name, "aor": aor}).encode())

    async def _aor_changed(self, msg: Any) -> None:
        try:
            info = json.loads(msg.data)
            origin, aor = str(info["node"]), str(info["aor"])
        except (ValueError, KeyError, TypeError):
            return
        if origin == self.node.name:
            return
        if len(self._pending) >= MAX_PENDING_RELOADS:
            self._pending.pop(next(iter(self._pending)))
        self._pending.pop(aor, None)
        self._pending[aor] = None
        self._wake.set()

    async def _reader(self) -> None:
        """Read changed addresses of record one at a time, in the order they were announced."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                aor = next(iter(self._pending))
                del self._pending[aor]
                try:
                    await self.registrar.reload(aor)
                except Exception:
                    log.exception("cluster: could not read the registrations of %s", aor)

    def _reconnected(self) -> None:
        """Back on NATS: changes may have been missed meanwhile; read the whole table again."""
        self._tasks.append(asyncio.ensure_future(self._reload_all()))

    async def _reload_all(self) -> None:
        try:
            await self.registrar.load()
        except Exception:
            log.exception("cluster: could not read the registrations again")

    # --- nodes ---------------------------------------------------------------------------------------
    def peer_endpoint(self, name: str) -> tuple[str, int] | None:
        """Where another live node takes SIP from us (its TCP endpoint), or None."""
        peer = self.node.peers.get(name)
        if peer is None:
            return None
        endpoint = peer.info.get("sip")
        if not endpoint:
            return None
        address = (str(endpoint[0]), int(endpoint[1]))
        self._link(name, address)
        return address

    def _link(self, name: str, endpoint: tuple[str, int]) -> PeerLink:
        link = self.links.get(name)
        if link is not None and link.key[1:] == endpoint and not link.closed:
            return link
        if link is not None:
            self._unlink(name)
        link = PeerLink(self, name, endpoint)
        self.links[name] = link
        # the transport writes what the proxy sends to that address into the link (no TCP)
        self.transport.connections[link.key] = link
        return link

    def _unlink(self, name: str) -> None:
        link = self.links.pop(name, None)
        if link is not None:
            link.close()
            if self.transport.connections.get(link.key) is link:
                del self.transport.connections[link.key]

    async def _node_down(self, peer: Peer) -> None:
        self._unlink(peer.name)
        await self._drop_flows_of(peer.name)

    async def _drop_flows_of(self, name: str) -> None:
        """The flows of ``name`` are gone: forget the bindings only they reached."""
        registrar = self.registrar
        dropped = 0
        for aor, bindings in list(registrar.bindings.items()):
            kept = [b for b in bindings if not (b.node == name and b.needs_flow)]
            if len(kept) != len(bindings):
                dropped += len(bindings) - len(kept)
                if kept:
                    registrar.bindings[aor] = kept
                else:
                    del registrar.bindings[aor]
        table = sip_registrations
        flow_bound = or_(table.c.reg_id > 0, table.c.nat, not_(table.c.received.like("UDP %")))
        try:
            async with self.store.begin() as conn:
                await conn.execute(delete(table).where(and_(table.c.node == name, table.c.path == "",
                                                            flow_bound)))
        except Exception:
            log.exception("cluster: could not remove the SIP flows of node %s", name)
        if dropped:
            log.info("cluster: %d SIP registrations reached through node %s's flows removed", dropped, name)

    # --- messages from other nodes -------------------------------------------------------------------
    async def _received(self, msg: Any) -> None:
        data = bytes(msg.data)
        head, _, body = data.partition(b"\n")
        if len(body) > MAX_FORWARDED_MESSAGE:
            return
        try:
            sender = self._senders.get(head)
            if sender is None:
                # each node's header is the same bytes on every message: read once
                info = json.loads(head)
                sender = (str(info["node"]), (str(info["sip"][0]), int(info["sip"][1])))
                if len(self._senders) >= MAX_SENDERS:
                    self._senders.clear()
                self._senders[head] = sender
            origin, endpoint = sender
            message = parse_datagram(body)
        except (ValueError, KeyError, TypeError, IndexError, SipParseError) as exc:
            log.debug("cluster: unreadable SIP message from another node: %s", exc)
            return
        link = self._link(origin, endpoint)
        source = Destination("TCP", endpoint, link)
        if message.method is not None:
            try:
                stamp_via(message, endpoint[0], endpoint[1])
            except SipParseError:
                return
        # Not through the flood guard: the other nodes carry many users' traffic from one address.
        self.service._receive(message, source)

    def status(self, request: dict[str, Any]) -> dict[str, Any]:
        name = self.node.name
        held = [b for bindings in self.registrar.bindings.values() for b in bindings if b.node == name]
        answer: dict[str, Any] = {"sip_registrations": len(held),
                                  "sip_flows": sum(1 for b in held if b.needs_flow)}
        if request.get("registry"):
            # every binding this node would route to: address of record -> holding nodes
            answer["sip_registry"] = {aor: sorted({b.node for b in bindings})
                                      for aor, bindings in self.registrar.bindings.items()}
        return answer
