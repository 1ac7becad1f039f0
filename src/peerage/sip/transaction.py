"""SIP transactions: the client and server state machines of RFC 3261 §17, with no I/O.

This module is in charge of retransmissions, timeouts and absorbing duplicates.  A
:class:`TransactionLayer` is given a ``send(data, destination)`` function and a ``clock()``; it
never sleeps.  The network adapter calls :meth:`TransactionLayer.tick` with the current time (tests
advance a fake clock instead), and feeds received messages to ``receive_request`` /
``receive_response``.

Timers A-K follow RFC 3261 Table 4 (§A).  Requests and responses are retransmitted over UDP only;
on reliable transports (TCP, TLS, WebSocket) Timers A, E and G are never set and the waiting timers
D, I, J and K are zero (§17.1.1.2, §17.1.2.2, §17.2.1, §17.2.2).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

from peerage.sip.message import SipMessage, make_response

# RFC 3261 §17.1.1.1: T1 is the RTT estimate (500 ms default), T2 the cap on non-INVITE request and
# INVITE response retransmit intervals (4 s), T4 how long a message stays in the network (5 s).
T1 = 0.5
T2 = 4.0
T4 = 5.0
# Timer D: at least 32 s over UDP (§17.1.1.2), so retransmitted final responses are absorbed.
TIMER_D_UNRELIABLE = 32.0
# Branch IDs of RFC 3261 transactions start with this magic cookie (§8.1.1.7).
MAGIC_COOKIE = "z9hG4bK"
# Most live transactions kept; a flood beyond this is refused (503) instead of eating memory.
# Kamailio's tm has no fixed cap but is bounded by shared memory (default 64 MiB); at ~2 KiB per
# transaction pair 100,000 fits in the same order of memory.
MAX_TRANSACTIONS = 100_000


class Destination(NamedTuple):
    """Where a message goes: transport name, peer address, and the stream it arrived on.

    A named tuple rather than a class: for UDP all its fields are atomic, so the garbage collector
    stops tracking it, and there is one per transaction.
    """

    transport: str  # "UDP", "TCP", "TLS", "WS", "WSS"
    address: tuple[str, int]
    connection: Any = None  # a stream handle for responses on the same connection (§18.2.2)
    # the domain a TLS server must prove it is (RFC 5922 §4: the domain of the SIP URI)
    name: str | None = None

    @property
    def reliable(self) -> bool:
        return self.transport != "UDP"


SendFunction = Callable[[bytes, Destination], None]

# A named tuple is never untracked by the collector (CPython untracks exact tuples only), so one per
# transaction is one more object every full collection walks: at 2,000 calls/s that is tens of
# thousands.  UDP peers are few next to their transactions, so their destinations are shared.
_UDP_DESTINATIONS: dict[tuple[str, int], Destination] = {}
# Shared destinations kept at most; past that the table starts again (a scan of many sources).
MAX_SHARED_DESTINATIONS = 65536


def udp_destination(address: tuple[str, int]) -> Destination:
    """The (shared) UDP destination of ``address``."""
    destination = _UDP_DESTINATIONS.get(address)
    if destination is None:
        if len(_UDP_DESTINATIONS) >= MAX_SHARED_DESTINATIONS:
            _UDP_DESTINATIONS.clear()
        destination = _UDP_DESTINATIONS[address] = Destination("UDP", address)
    return destination


class ClientTransaction:
    """RFC 3261 §17.1: sends a request, retransmits it, passes responses to its owner."""

    __slots__ = (
        "data",
        "destination",
        "interval",
        "invite",
        "key",
        "last_status",
        "layer",
        "on_response",
        "on_timeout",
        "owner",
        "request",
        "started",
        "state",
        "timers",
    )

    def __init__(self, layer: TransactionLayer, key: tuple[str, str], request: SipMessage,
                 destination: Destination) -> None:
        self.layer = layer
        self.key = key
        self.request = request
        self.data = request.serialize()
        self.destination = destination
        self.invite = request.method == "INVITE"
        self.state = "calling" if self.invite else "trying"
        self.interval = T1
        self.started = 0.0
        self.on_response: Callable[[ClientTransaction, SipMessage], None] | None = None
        self.on_timeout: Callable[[ClientTransaction], None] | None = None
        self.owner: Any = None
        self.timers: dict[str, float] = {}
        self.last_status = 0

    def start(self) -> None:
        layer = self.layer
        self.started = layer.clock()
        layer.send(self.data, self.destination)
        if not self.destination.reliable:
            # Timer B/F is folded into the retransmission chain (see _arm): it is set when the
            # next retransmission would come after it, so an answered transaction leaves no
            # 32-second timer behind.
            layer.set_timer(self, "A" if self.invite else "E", T1)
        else:
            layer.set_timer(self, "B" if self.invite else "F", 64 * T1)

    def _arm(self, retransmit: str, give_up: str) -> None:
        layer = self.layer
        give_up_at = self.started + 64 * T1
        if layer.clock() + self.interval < give_up_at:
            layer.set_timer(self, retransmit, self.interval)
        else:
            layer.set_timer_at(self, give_up, give_up_at)

    # -- inputs
    def receive(self, response: SipMessage) -> None:
        status = response.status
        if self.invite:
            self._receive_invite(response, status)
        else:
            self._receive_non_invite(response, status)

    def _receive_invite(self, response: SipMessage, status: int) -> None:
        state = self.state
        if state in ("calling", "proceeding"):
            self.timers.pop("A", None)
            if status < 200:
                self.state = "proceeding"
                self._deliver(response)
            elif status < 300:
                # §17.1.1.2: 2xx terminates; the ACK is the TU's business (end to end).
                self._deliver(response)
                self.terminate()
            else:
                self.state = "completed"
                self.timers.pop("B", None)
                self.layer.send(self._ack_for(response), self.destination)
                self._deliver(response)
                self._delivered_final()
                self.layer.set_timer(
                    self, "D", 0.0 if self.destination.reliable else TIMER_D_UNRELIABLE)
        elif state == "completed" and status >= 300:
            # retransmitted final response: send the ACK again, tell no one
            self.layer.send(self._ack_for(response), self.destination)

    def _receive_non_invite(self, response: SipMessage, status: int) -> None:
        state = self.state
        if state in ("trying", "proceeding"):
            if status < 200:
                self.state = "proceeding"
                self._deliver(response)
            else:
                self.state = "completed"
                self.timers.pop("E", None)
                self.timers.pop("F", None)
                self._deliver(response)
                self._delivered_final()
                self.request = None  # type: ignore[assignment]  # nothing is resent now
                self.data = b""
                self.layer.set_timer(self, "K", 0.0 if self.destination.reliable else T4)

    def _delivered_final(self) -> None:
        """The final response is with the TU: in "completed" nothing more goes to it (§17.1.1.2,
        §17.1.2.2), so the owner is let go now rather than after Timer D/K.  At a few thousand
        calls a second that is tens of thousands of proxy contexts, branches and messages fewer
        kept alive, which every full garbage collection would otherwise walk."""
        self.owner = None
        self.on_response = None
        self.on_timeout = None

    def _deliver(self, response: SipMessage) -> None:
        self.last_status = response.status
        if self.on_response is not None:
            self.on_response(self, response)

    def _ack_for(self, response: SipMessage) -> bytes:
        """ACK for a non-2xx final response (RFC 3261 §17.1.1.3)."""
        request = self.request
        ack = SipMessage(method="ACK", uri=request.uri)
        for entry in request.headers:
            key = entry[0]
            if key == "via":
                ack.headers.append((key, entry[1], request.first_value("via") or entry[2]))
            elif key in ("from", "call-id", "route", "max-forwards"):
                ack.headers.append(entry)
        to = response.get("to")
        if to is not None:
            ack.add("To", to)
        ack.add("CSeq", f"{request.cseq[0]} ACK")
        return ack.serialize()

    def on_timer(self, name: str) -> None:
        layer = self.layer
        if name == "A" and self.state == "calling":
            layer.send(self.data, self.destination)
            self.interval *= 2
            self._arm("A", "B")
        elif name == "E" and self.state in ("trying", "proceeding"):
            layer.send(self.data, self.destination)
            self.interval = T2 if self.state == "proceeding" else min(self.interval * 2, T2)
            self._arm("E", "F")
        elif name == "B":
            if self.state == "calling":  # §17.1.1.2: once ringing, only the TU's Timer C applies
                self._time_out()
        elif name == "F":
            if self.state in ("trying", "proceeding"):
                self._time_out()
        elif name in ("D", "K"):
            self.terminate()

    def transport_error(self) -> None:
        """§17.1.4: a transport failure is reported like a timeout."""
        if self.state in ("calling", "proceeding", "trying"):
            self._time_out()

    def _time_out(self) -> None:
        callback = self.on_timeout
        self.state = "terminated"
        self.timers.clear()
        self.layer.client.pop(self.key, None)
        if callback is not None:
            callback(self)
        self._release()

    def terminate(self) -> None:
        self.state = "terminated"
        self.timers.clear()
        self.layer.client.pop(self.key, None)
        self._release()

    def _release(self) -> None:
        # Break the owner <-> transaction reference cycle so the call's objects are freed by
        # reference counting at once, not by a cyclic garbage collection pass (which stalls the
        # event loop for long at thousands of calls per second).
        self.owner = None
        self.on_response = None
        self.on_timeout = None
        self.request = None  # type: ignore[assignment]
        self.data = b""


class ServerTransaction:
    """RFC 3261 §17.2: absorbs retransmitted requests, retransmits final responses."""

    __slots__ = (
        "_reply_to",
        "interval",
        "invite",
        "key",
        "last_response",
        "layer",
        "on_ack",
        "owner",
        "request",
        "source",
        "state",
        "timers",
    )

    def __init__(self, layer: TransactionLayer, key: tuple[Any, ...], request: SipMessage,
                 source: Destination) -> None:
        self.layer = layer
        self.key = key
        self.request = request
        self.source = source
        self.invite = request.method == "INVITE"
        self.state = "proceeding" if self.invite else "trying"
        self.last_response: bytes | None = None
        self.interval = T1
        self.timers: dict[str, float] = {}
        self.owner: Any = None
        self.on_ack: Callable[[ServerTransaction], None] | None = None
        self._reply_to: Destination | None = None

    @property
    def reply_to(self) -> Destination:
        if self._reply_to is None:
            self._reply_to = self.layer.response_destination(self.request, self.source)
        return self._reply_to

    def respond(self, response: SipMessage, data: bytes | None = None) -> None:
        """Send a response from the TU (§17.2.1, §17.2.2); ``data``: its wire form, when the TU
        has it already (a proxy forwarding a response's received bytes)."""
        state = self.state
        if state in ("completed", "confirmed", "terminated"):
            return  # a final response was already sent
        if data is None:
            data = response.serialize()
        self.last_response = data
        status = response.status
        layer = self.layer
        layer.send(data, self.reply_to)
        if status < 200:
            if not self.invite:
                self.state = "proceeding"
            return
        reliable = self.source.reliable
        # A final answer is out: keep only what retransmissions need (the bytes and where they go),
        # so the request and the proxy's state are freed now rather than after Timer H/J.
        self.owner = None
        self.request = None  # type: ignore[assignment]
        if self.invite:
            if status < 300:
                self.terminate()  # §17.2.1: 2xx retransmission is the TU's (UAS core) job
                return
            self.state = "completed"
            if not reliable:
                layer.set_timer(self, "G", T1)
            layer.set_timer(self, "H", 64 * T1)
        else:
            self.state = "completed"
            layer.set_timer(self, "J", 0.0 if reliable else 64 * T1)

    def respond_status(self, status: int, reason: str | None = None,
                       to_tag: str | None = None) -> SipMessage | None:
        if self.request is None:
            return None  # a final response was already sent
        response = make_response(self.request, status, reason, to_tag or self.layer.local_tag)
        self.respond(response)
        return response

    def retransmission(self) -> None:
        """The request arrived again: resend the last response (§17.2.1, §17.2.2)."""
        if self.last_response is not None and self.state in ("proceeding", "trying", "completed"):
            self.layer.send(self.last_response, self.reply_to)

    def receive_ack(self) -> None:
        if self.state == "completed":
            self.state = "confirmed"
            self.timers.pop("G", None)
            self.timers.pop("H", None)
            self.layer.set_timer(self, "I", 0.0 if self.source.reliable else T4)
            if self.on_ack is not None:
                self.on_ack(self)

    def on_timer(self, name: str) -> None:
        if name == "G" and self.state == "completed" and self.last_response is not None:
            self.layer.send(self.last_response, self.reply_to)
            self.interval = min(self.interval * 2, T2)
            self.layer.set_timer(self, "G", self.interval)
        elif name in ("H", "I", "J"):
            self.terminate()

    def terminate(self) -> None:
        self.state = "terminated"
        self.timers.clear()
        self.layer.server.pop(self.key, None)
        self.owner = None  # see ClientTransaction._release
        self.on_ack = None


def _deadline(entry: tuple[float, Any, str]) -> float:
    return entry[0]


class TransactionLayer:
    """Holds the live transactions and their timers; matching per RFC 3261 §17.1.3 and §17.2.3."""

    def __init__(self, send: SendFunction, clock: Callable[[], float],
                 local_tag: str = "peerage") -> None:
        self.send = send
        self.clock = clock
        self.local_tag = local_tag
        self.client: dict[tuple[str, str], ClientTransaction] = {}
        self.server: dict[tuple[Any, ...], ServerTransaction] = {}
        # One FIFO per timer duration: every timer of the same duration is due in the order it was
        # set, so each queue stays sorted with O(1) appends and pops (a timing wheel with one
        # slot per RFC 3261 duration; there are only a handful: T1 multiples, T2, T4, 64*T1, 32 s).
        # A timer is three entries in a row (deadline, transaction, timer name), not a tuple: a
        # tuple holding a transaction stays tracked by the collector, one more object per live
        # timer for every full collection to walk.
        self._queues: dict[float | str, deque[Any]] = {}

    # -- timers
    def set_timer(self, transaction: ClientTransaction | ServerTransaction, name: str,
                  delay: float) -> None:
        deadline = self.clock() + delay
        transaction.timers[name] = deadline
        queue = self._queues.get(delay)
        if queue is None:
            queue = self._queues[delay] = deque()
        queue.append(deadline)
        queue.append(transaction)
        queue.append(name)

    def set_timer_at(self, transaction: ClientTransaction | ServerTransaction, name: str,
                     deadline: float) -> None:
        """A timer at an absolute time, queued with the others of its name.

        Those are set in the order of their deadlines give or take a timer tick, so the queue
        stays (nearly) sorted; a timer behind a later one fires at most that jitter late.
        """
        transaction.timers[name] = deadline
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = deque()
        queue.append(deadline)
        queue.append(transaction)
        queue.append(name)

    def next_deadline(self) -> float | None:
        earliest: float | None = None
        for queue in self._queues.values():
            while queue:
                deadline, transaction, name = queue[0], queue[1], queue[2]
                if transaction.timers.get(name) == deadline:
                    if earliest is None or deadline < earliest:
                        earliest = deadline
                    break
                queue.popleft()  # cancelled or rescheduled
                queue.popleft()
                queue.popleft()
        return earliest

    def tick(self, now: float | None = None) -> None:
        """Fire every timer due at ``now`` (default: the clock), earliest first."""
        now = self.clock() if now is None else now
        while True:
            due: list[tuple[float, ClientTransaction | ServerTransaction, str]] = []
            for queue in self._queues.values():
                pop = queue.popleft
                while queue and queue[0] <= now:
                    due.append((pop(), pop(), pop()))
            if not due:
                return
            due.sort(key=_deadline)
            for deadline, transaction, name in due:
                if transaction.timers.get(name) != deadline:
                    continue  # cancelled or rescheduled
                del transaction.timers[name]
                transaction.on_timer(name)

    @property
    def count(self) -> int:
        return len(self.client) + len(self.server)

    # -- client side
    def new_client(self, request: SipMessage, destination: Destination) -> ClientTransaction:
        """Create (not yet started) a client transaction; the request's top Via has its branch."""
        branch = request.top_via().branch or ""
        method = request.method or ""
        key = (branch, "INVITE" if method == "ACK" else method)
        transaction = ClientTransaction(self, key, request, destination)
        self.client[key] = transaction
        return transaction

    def receive_response(self, response: SipMessage) -> ClientTransaction | None:
        """Match a response to its client transaction (§17.1.3); None means stray."""
        key = (response.top_branch() or "", response.cseq[1])
        transaction = self.client.get(key)
        if transaction is not None:
            transaction.receive(response)
        return transaction

    # -- server side
    def server_key(self, request: SipMessage) -> tuple[Any, ...]:
        via = request.top_via()
        method = request.method or ""
        if method == "ACK":
            method = "INVITE"
        branch = via.branch
        if branch and branch.startswith(MAGIC_COOKIE):
            # RFC 3261 §17.2.3 matches branch, sent-by and method; the Call-ID is added so that
            # user agents reusing a branch across calls (RFC 4475's messages all share one) do
            # not have a new request taken for a retransmission.  Retransmissions, CANCEL and the
            # ACK of a non-2xx carry the same Call-ID, so nothing that should match stops matching.
            return (branch, via.host, via.port, request.call_id, method)
        # RFC 2543 peers (§17.2.3 last paragraph): match on the dialog and CSeq identifiers.
        number, _ = request.cseq
        return (request.uri if method != "INVITE" else "", request.from_tag(), request.call_id,
                number, str(via), method)

    def receive_request(self, request: SipMessage, source: Destination
                        ) -> tuple[ServerTransaction | None, bool]:
        """Returns ``(transaction, is_new)``.

        A retransmission is absorbed here (the last response is resent) and comes back with
        ``is_new=False``.  An ACK returns the INVITE transaction it completes, or ``(None, True)``
        for an ACK to a 2xx, which belongs to no transaction and goes to the TU.
        """
        key = self.server_key(request)
        transaction = self.server.get(key)
        if request.method == "ACK":
            if transaction is not None and transaction.state in ("completed", "confirmed"):
                transaction.receive_ack()
                return transaction, False
            return None, True
        if transaction is not None:
            transaction.retransmission()
            return transaction, False
        transaction = ServerTransaction(self, key, request, source)
        self.server[key] = transaction
        return transaction, True

    def find_invite_for_cancel(self, cancel: SipMessage) -> ServerTransaction | None:
        """The INVITE server transaction a CANCEL refers to (§9.2: same key with method INVITE)."""
        key = self.server_key(cancel)
        return self.server.get((*key[:-1], "INVITE"))

    @staticmethod
    def response_destination(request: SipMessage, source: Destination) -> Destination:
        """Where responses go (§18.2.2 with rport, RFC 3581 §4)."""
        if source.reliable:
            return source
        via = request.top_via()
        if "rport" in via.params or via.params.get("maddr") is None:
            # Answer the source address and port: with rport that is mandatory, and without it
            # the source address is what §18.2.2 and "received" already point to.  Using the
            # Via port when no rport was asked keeps RFC 3261 behaviour.
            if "rport" in via.params:
                return source
            return udp_destination((source.address[0], via.port or 5060))
        maddr = via.params["maddr"] or source.address[0]
        return udp_destination((maddr, via.port or 5060))
