"""The stateful SIP proxy core (RFC 3261 §16) with the peering policy applied.

This module is in charge of what happens to each request once it is parsed: validation (§16.3:
Max-Forwards 483, loops 482, Proxy-Require 420), route processing (§16.4, loose routing with our
Record-Route), target selection (location service for local addresses of record, RFC 3263 for
foreign domains), parallel forking (§16.6), best-response selection (§16.7), CANCEL (§16.10), and
stateless forwarding of ACKs for 2xx and of stray responses (§16.11).

It sits on the transaction layer and sends through an injected ``send`` function; it awaits only
when a request needs the database (REGISTER, digest HA1) or the DNS (foreign domains), so calls to
registered local users take a synchronous path.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import ipaddress
import itertools
import logging
import os
import re
import zlib
from collections.abc import Callable
from typing import Any

from peerage.identity.accounts import digest_account, digest_username_in_canonical_case
from peerage.sip.digest import DigestAuthenticator, Verdict, parse_credentials
from peerage.sip.locate import Locator, Target
from peerage.sip.message import (
    Header,
    Recent,
    SipMessage,
    SipParseError,
    SipUri,
    UnsupportedScheme,
    make_response,
    parse_name_addr,
    parse_uri,
    parse_via,
    via_line,
    without_top_via,
)
from peerage.sip.policy import (
    AUTHENTICATE_OUTBOUND,
    DELIVER_LOCAL,
    REFUSE_DOMAIN,
    REFUSE_RELAY,
    FloodGuard,
    PeeringPolicy,
)
from peerage.sip.registrar import Registrar
from peerage.sip.transaction import (
    MAGIC_COOKIE,
    MAX_TRANSACTIONS,
    ClientTransaction,
    Destination,
    ServerTransaction,
    TransactionLayer,
    udp_destination,
)

log = logging.getLogger("peerage.sip")

# RFC 3261 §16.6 step 3 / §8.1.1.6: Max-Forwards starts at 70.
DEFAULT_MAX_FORWARDS = 70
# Extensions we support as a proxy (Proxy-Require values outside this set get 420).
SUPPORTED_PROXY_EXTENSIONS: frozenset[str] = frozenset()
# Methods that can create a dialog: we Record-Route them so in-dialog requests come back (§16.6.4).
DIALOG_CREATING = frozenset({"INVITE", "SUBSCRIBE", "REFER", "NOTIFY"})
ALLOWED_METHODS = "INVITE, ACK, CANCEL, BYE, OPTIONS, MESSAGE, REGISTER, INFO, UPDATE, PRACK, " \
                  "SUBSCRIBE, NOTIFY, REFER"
# Most branches one request forks to (bounded by the registrar's contact cap anyway).
MAX_FORK_BRANCHES = 16
# Failover targets (RFC 3263 §4.3) tried per branch, bounded by locate.MAX_TARGETS as well.
MAX_FAILOVER = 8
# Timer C (RFC 3261 §16.6 step 11): a proxied INVITE still unanswered after this many seconds is
# CANCELled.  The RFC asks for more than 3 minutes; Kamailio's fr_inv_timer defaults to 120 s, and
# 180 s matches the RFC.
TIMER_C = 180.0

# Seconds a caller shed with 503 is asked to wait (RFC 3261 §20.33); Kamailio's sl_send_reply
# leaves it to the script, where 5 s is a common choice.
RETRY_AFTER = 5

Flow = tuple[str, str, int]  # (transport, address, port) of a directly connected user agent


# Flow tokens remembered both ways: every call builds two and every in-dialog request reads them back.
FLOW_TOKEN_CACHE_SIZE = 4096
# Record-Route MACs remembered (see ProxyCore._route_mac): some seconds of calls at a few thousand
# calls a second, so a call's ACK and BYE find the MAC its INVITE's Record-Route was made with.
MAC_CACHE_SIZE = 8192
# Route values and their URIs remembered: a dialog's ACK and BYE carry as Route the
# Record-Route its INVITE got from us moments before.
ROUTE_CACHE_SIZE = 8192
_ROUTES = Recent(ROUTE_CACHE_SIZE)


# Where a numeric next hop (RFC 3263 §4.2: an IP address, no DNS) leads, by the Route value or the
# Request-URI that names it: a registered contact is called again and again.
_ROUTE_DESTINATIONS = Recent(4096)
_URI_DESTINATIONS = Recent(4096)


def route_uri(value: str) -> SipUri:
    """The SIP URI of a Route (or Record-Route) value; callers treat it as read-only."""
    uri: SipUri | None = _ROUTES[value]
    if uri is None:
        uri = parse_uri(parse_name_addr(value).uri)
        _ROUTES.put(value, uri)
    return uri


@functools.lru_cache(maxsize=FLOW_TOKEN_CACHE_SIZE)
def flow_token(flow: Flow) -> str:
    """A flow as URI user-part text (base64url: letters, digits, '-' and '_')."""
    raw = f"{flow[0]}/{flow[1]}/{flow[2]}".encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@functools.lru_cache(maxsize=FLOW_TOKEN_CACHE_SIZE)
def parse_flow_token(token: str) -> Flow | None:
    if not token:
        return None
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        transport, address, port = text.split("/")
        return transport, address, int(port)
    except (ValueError, UnicodeDecodeError):
        return None


class Branch:
    __slots__ = (
        "cancel_pending",
        "cancelled",
        "done",
        "flow",
        "provisional",
        "request",
        "response",
        "route_via_connection",
        "server_name",
        "targets",
        "timer_c",
        "transaction",
    )

    def __init__(self, request: SipMessage, targets: list[Target] | None) -> None:
        self.request = request  # the forwarded request before our Via is added
        self.targets = targets or []
        self.transaction: ClientTransaction | None = None
        self.provisional = False
        self.done = False
        self.cancel_pending = False
        self.cancelled = False
        self.response: SipMessage | None = None
        self.route_via_connection: Destination | None = None
        self.flow: Flow | None = None  # the callee is directly connected on this flow
        self.timer_c: asyncio.TimerHandle | None = None
        self.server_name: str | None = None  # the SIP domain a TLS next hop must prove

    def finish(self) -> None:
        self.done = True
        if self.timer_c is not None:
            self.timer_c.cancel()  # drops its references to this branch at once
            self.timer_c = None


class ProxyContext:
    """One proxied request: its server transaction and the branches it forked into."""

    __slots__ = ("branches", "cancelled", "final_sent", "forwarded", "in_dialog", "loop_key", "request", "server")

    def __init__(self, server: ServerTransaction, request: SipMessage) -> None:
        self.server = server
        self.request = request
        self.in_dialog = request.to_tag() is not None  # §12.2: a To tag makes it in-dialog
        self.branches: list[Branch] = []
        self.final_sent = False
        self.cancelled = False
        self.forwarded = False
        self.loop_key: str | None = None  # §16.6 step 8, made once for all branches


class ProxyCore:
    def __init__(self, *, host: Any, layer: TransactionLayer, send: Callable[[bytes, Destination], None],
                 registrar: Registrar, authenticator: DigestAuthenticator, locator: Locator,
                 policy: PeeringPolicy, flood: FloodGuard, local_endpoints: dict[str, tuple[str, int]],
                 local_hosts: set[str], secret: bytes | None = None,
                 connection_for: Callable[[Flow], Any] | None = None) -> None:
        self.host = host
        self.layer = layer
        self.send = send
        self.registrar = registrar
        self.authenticator = authenticator
        self.locator = locator
        self.policy = policy
        self.flood = flood
        # transport name -> (advertised host, port) used in Via / Record-Route
        self.local_endpoints = local_endpoints
        self.local_hosts = {h.lower() for h in local_hosts}
        self.local_ports = {port for _, port in local_endpoints.values()} | {5060, 5061}
        sip_config = getattr(getattr(host, "config", None), "sip", None)
        self.trusted_sources = [ipaddress.ip_network(n, strict=False)
                                for n in getattr(sip_config, "trusted_sources", None) or ()]
        self.secret = secret or os.urandom(16)
        self._mac_secret: bytes | None = None
        self._mac_base: Any = None
        self._macs = Recent(MAC_CACHE_SIZE)  # "Call-ID|flows" -> MAC
        # set by the service while the event loop runs late: new INVITEs are shed with 503
        self.overloaded = False
        self.shed = 0  # INVITEs refused so far
        # the open stream connection of a flow, or None (from the transport)
        self.connection_for = connection_for or (lambda flow: None)
        # peerage.cluster: the (host, port) of another node's TCP endpoint by node name, None when
        # that node is not alive; set only in a cluster
        self.peer_endpoint: Callable[[str], tuple[str, int] | None] | None = None
        self._branch_counter = itertools.count(1)
        self._branch_prefix = os.urandom(3).hex()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.accounts = host.accounts
        # a Request-URI naming one of our addresses with a user part means that user of our
        # (first) domain, as Kamailio's is_myself() treats listen addresses as aliases
        self.primary_domain = next(iter(host.config.domains), "")
        self.max_message_size = host.config.sip.max_message_size
        via_markers = set()
        for _name, (address, port) in local_endpoints.items():
            via_markers.add(f"{address}:{port}")
        self._via_markers = via_markers

    # ------------------------------------------------------------------ entry points
    def receive(self, message: SipMessage, source: Destination) -> None:
        try:
            if message.method is None:
                self.receive_response(message)
            else:
                self.receive_request(message, source)
        except SipParseError as error:
            if message.method is not None and message.method != "ACK":
                self._reply_stateless(message, source, error.status, error.reason)
        except Exception:
            log.exception("sip: error handling %r", message)
            if message.method is not None and message.method != "ACK":
                self._reply_stateless(message, source, 500, None)

    def _reply_stateless(self, request: SipMessage, source: Destination, status: int,
                         reason: str | None) -> None:
        try:
            response = make_response(request, status, reason[:80] if reason else None, "pg400")
            self.send(response.serialize(), self.layer.response_destination(request, source))
        except Exception:  # not even enough to answer; drop (RFC 3261 §16.3 allows it)
            log.debug("sip: could not answer malformed request", exc_info=True)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("sip: task failed", exc_info=task.exception())

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    # ------------------------------------------------------------------ requests
    def receive_request(self, request: SipMessage, source: Destination) -> None:
        method = request.method
        if method == "ACK":
            transaction, _ = self.layer.receive_request(request, source)
            if transaction is None:
                self._forward_ack(request, source)
            return
        if method == "CANCEL":
            self._receive_cancel(request, source)
            return
        if (self.layer.count >= MAX_TRANSACTIONS or (self.overloaded and method == "INVITE"
                                                      and request.to_tag() is None)) \
                and self.layer.server_key(request) not in self.layer.server:
            # Overloaded: shed new work statelessly (RFC 3261 §21.5.4 503 with Retry-After), new
            # calls first, so calls in progress (their ACK, BYE, retransmissions) keep flowing and
            # callers hear at once rather than retransmitting into a queue (RFC 6357 §4).
            self.shed += 1
            response = make_response(request, 503, to_tag=self.layer.local_tag)
            response.add("Retry-After", str(RETRY_AFTER))
            self.send(response.serialize(), self.layer.response_destination(request, source))
            return
        transaction, new = self.layer.receive_request(request, source)
        if not new or transaction is None:
            return  # retransmission, absorbed by the transaction layer
        if method == "INVITE":
            transaction.respond_status(100)  # §16.2: quench upstream retransmissions now
        # §16.3 request validation
        uri_text = request.uri or ""
        try:
            uri = parse_uri(uri_text)
        except UnsupportedScheme:
            transaction.respond_status(416)
            return
        if uri.headers:
            # RFC 4475 §3.1.2.11 (escruri): a Request-URI cannot carry headers (RFC 3261 §19.1.5)
            transaction.respond_status(400, "Headers in Request-URI")
            return
        max_forwards_text = request.get("max-forwards")
        max_forwards = int(max_forwards_text) if max_forwards_text is not None else DEFAULT_MAX_FORWARDS
        if max_forwards == 0 and not (method == "OPTIONS" and self._is_us(uri)):
            transaction.respond_status(483)
            return
        proxy_require = request.get("proxy-require")
        if proxy_require is not None:
            unsupported = [tag for tag in request.get_all("proxy-require")
                           if tag.lower() not in SUPPORTED_PROXY_EXTENSIONS]
            if unsupported:
                response = make_response(request, 420, to_tag=self.layer.local_tag)
                response.add("Unsupported", ", ".join(unsupported))
                transaction.respond(response)
                return
        if self._looped(request):
            transaction.respond_status(482)
            return
        # §16.4 route information preprocessing
        if "pr" in uri.params and self._is_us(uri):
            # a strict router put our Record-Route in the Request-URI: restore the real target
            last_route = request.get_all("route")
            if not last_route:
                transaction.respond_status(404)
                return
            request.uri = parse_name_addr(last_route[-1]).uri
            self._remove_last_route(request)
            uri = parse_uri(request.uri)
        own_route, flows = self._pop_own_routes(request)
        if own_route is False:
            transaction.respond_status(403, "Route not issued here")
            return
        routes = request.get("route")
        context = ProxyContext(transaction, request)
        transaction.owner = context
        # Another node of our cluster hands us a request for a user agent whose flow we hold (see
        # _deliver_local); the route it used carries our mark, so it came from a node sharing our
        # secret, and that node authenticated the caller already.
        in_dialog = context.in_dialog
        if own_route is True and flows is not None and routes is None and not in_dialog \
                and getattr(source.connection, "cluster_peer", False) \
                and self._forward_by_flow(context, flows, source, max_forwards):
            return
        if in_dialog:
            # In-dialog request (§16.4, §12.2): it may only follow a route set we signed when we
            # Record-Routed the dialog; anything else would make us a relay for strangers.
            if own_route is True:
                if flows is not None and routes is None and \
                        self._forward_by_flow(context, flows, source, max_forwards):
                    return
                if routes is not None:
                    self._forward_by_route(context, max_forwards)
                elif not self._is_us(uri):
                    self._forward_to_uri(context, uri, max_forwards)
                elif method == "OPTIONS":
                    self._answer_options(transaction)
                else:
                    transaction.respond_status(481)
            elif self._is_us(uri) and method == "OPTIONS":
                self._answer_options(transaction)
            else:
                transaction.respond_status(481 if self._is_us(uri) else 403,
                                           None if self._is_us(uri) else "Not routed through this proxy")
            return
        if routes is not None:
            # Kamailio's default configuration answers the same: an initial request may name us
            # as its outbound proxy, but may not steer us onwards with a preloaded route set.
            transaction.respond_status(403, "Preloaded Route denied")
            return
        if self._is_us(uri) or (uri.user is None and self.policy.is_local_domain(uri.host)):
            if method == "REGISTER":
                self._spawn(self._register(context, source))
            elif method == "OPTIONS":
                self._answer_options(transaction)
            else:
                transaction.respond_status(404 if method != "INVITE" else 480)
            return
        if method == "REGISTER":
            transaction.respond_status(403, "Not a registrar for this domain")
            return
        self._route_new(context, uri, max_forwards, source)

    def _answer_options(self, transaction: ServerTransaction) -> None:
        response = make_response(transaction.request, 200, to_tag=self.layer.local_tag)
        response.add("Allow", ALLOWED_METHODS)
        response.add("Accept", "application/sdp, text/plain")
        response.add("Supported", "path")
        transaction.respond(response)

    # -- validation helpers
    def _is_us(self, uri: Any) -> bool:
        if uri.user is not None:
            return False
        host = uri.host
        if host in self.local_hosts:
            return uri.port is None or uri.port in self.local_ports
        return self.policy.is_local_domain(host) and uri.port is None

    @staticmethod
    def _loop_key(request: SipMessage) -> str:
        """§16.6 step 8's loop hash: of the Request-URI, the From (with its tag), Call-ID and CSeq
        (with its number) as received, Proxy-Require, Proxy-Authorization and Route."""
        get = request.index().get
        text = (f"{request.uri or ''}|{get('from', '')}|{get('call-id', '')}|{get('cseq', '')}|"
                f"{get('proxy-require', '')}|{get('proxy-authorization', '')}|{get('route', '')}")
        return f"{zlib.crc32(text.encode('utf-8', 'surrogateescape')):08x}"

    def _looped(self, request: SipMessage) -> bool:
        """§16.3 step 4: our own Via with the same loop hash means the request came back unchanged."""
        markers = self._via_markers
        vias = "\n".join([entry[2] for entry in request.headers if entry[0] == "via"])
        if not any(marker in vias for marker in markers):
            return False
        key = self._loop_key(request)
        for value in request.get_all("via"):
            via = parse_via(value)
            branch = via.branch or ""
            if (f"{via.host}:{via.port}" in markers and branch.startswith(MAGIC_COOKIE + "-pg-")
                    and branch.split("-")[2] == key):
                return True
        return False

    # -- Record-Route / Route handling
    def _record_route(self, transport: str, call_id: str, flows: str = "") -> str:
        """Our Record-Route, marked for this Call-ID; ``flows`` (the user part) names the flows of
        the directly connected caller and callee, as an RFC 5626 §5.3 flow token does, so that
        in-dialog requests reach them on the connection or NAT binding they use."""
        address, port = self.local_endpoints.get(transport) or self.local_endpoints["UDP"]
        host = f"[{address}]" if ":" in address else address
        suffix = "" if transport == "UDP" else f";transport={transport.lower()}"
        user = f"{flows}@" if flows else ""
        mac = self._route_mac(call_id, flows)
        value = f"<sip:{user}{host}:{port};lr;pr={mac}{suffix}>"
        # its URI as parse_uri gives it, for the Route of the dialog's ACK and BYE
        params: dict[str, str | None] = {"lr": None, "pr": mac}
        if suffix:
            params["transport"] = transport.lower()
        _ROUTES.put(value, SipUri("sip", flows or None, address.lower(), port, params))
        return value

    def _route_mac(self, call_id: str, flows: str = "") -> str:
        """A keyed hash of the Call-ID and flows (BLAKE2s in keyed mode is a MAC, RFC 7693 §2.5).

        The MACs of recent dialogs are remembered: the one made for an INVITE's Record-Route is
        checked again on its ACK and BYE moments later."""
        secret = self.secret
        if self._mac_secret is not secret:  # keyed once: each MAC copies the keyed state
            self._mac_secret = secret
            self._mac_base = hashlib.blake2s(key=secret[:32], digest_size=8)
            self._macs.forget()
        text = call_id if not flows else f"{call_id}|{flows}"
        found: str | None = self._macs[text]
        if found is None:
            mac = self._mac_base.copy()
            mac.update(text.encode("utf-8", "surrogateescape"))
            found = mac.hexdigest()
            self._macs.put(text, found)
        return found

    def _pop_own_routes(self, request: SipMessage) -> tuple[bool | str | None, str | None]:
        """Remove our Route values from the top (§16.4).

        Returns True when one of them carried our valid mark (we Record-Routed this dialog),
        "plain" when they were ours but unmarked (a UA using us as its outbound proxy), None when
        none was ours, and False when a Route claims to be ours with a mark not issued for this
        Call-ID (a forged route set: refusing it keeps us from being an open relay); and the
        flows recorded in our marked route, if any.
        """
        popped: bool | str | None = None
        flows: str | None = None
        while True:
            value = request.first_value("route")
            if value is None:
                return popped, flows
            try:
                uri = route_uri(value)
            except SipParseError:
                return popped, flows
            if not (uri.host in self.local_hosts or self.policy.is_local_domain(uri.host)):
                return popped, flows
            if uri.port is not None and uri.port not in self.local_ports:
                return popped, flows
            mark = uri.params.get("pr")
            if uri.user is not None and mark is None:
                return popped, flows  # a user's address at our domain, not a route of ours
            if mark is not None:
                if not hmac.compare_digest(mark, self._route_mac(request.call_id, uri.user or "")):
                    return False, None
                popped = True
                if uri.user:
                    flows = uri.user
            elif popped is None:
                popped = "plain"
            request.pop_first_value("route")

    def _flow_destination(self, flow: Flow) -> Destination | None:
        """Where a flow leads now: the UDP address, or the open connection (None: it failed)."""
        transport, address, port = flow
        if transport == "UDP":
            if self.registrar.failed_flows and self.registrar.flow_failed(f"UDP {address} {port}"):
                return None  # its keep-alives stopped (RFC 5626 §4.4.1)
            return udp_destination((address, port))
        connection = self.connection_for(flow)
        if connection is None or getattr(connection, "closed", False):
            return None
        return Destination(transport, (address, port), connection)

    def _forward_by_flow(self, context: ProxyContext, flows: str, source: Destination,
                         max_forwards: int) -> bool:
        """An in-dialog request through our flow-marked route: towards the other party's flow.

        A request from the caller's flow goes to the callee's and the other way round (RFC 5626
        §5.3); False when the other side has no flow recorded, so normal routing applies.
        """
        target = self._other_flow(flows, source)
        if target is None:
            return False
        destination = self._flow_destination(target)
        if destination is None:
            context.server.respond_status(430)  # RFC 5626 §5.3: the flow is gone
            return True
        request = context.request
        forwarded = self._copy_for_forwarding(request, request.uri or "", max_forwards)
        branch = Branch(forwarded, None)
        branch.route_via_connection = destination
        if not context.in_dialog:
            branch.flow = target  # a new dialog (from a cluster peer): Record-Route the flow
        context.branches.append(branch)
        self._start_branch(context, branch)
        return True

    @staticmethod
    def _remove_last_route(request: SipMessage) -> None:
        values = request.get_all("route")
        request.remove("route")
        for value in values[:-1]:
            request.add("Route", value)

    # ------------------------------------------------------------------ routing decisions
    def _route_new(self, context: ProxyContext, uri: Any, max_forwards: int, source: Destination) -> None:
        request = context.request
        transaction = context.server
        try:
            from_uri = parse_uri(parse_name_addr(request.get("from") or "").uri)
            from_domain = from_uri.host
        except UnsupportedScheme:
            from_domain, from_uri = "", None
        target_domain = self.primary_domain if uri.host in self.local_hosts else uri.host
        decision = self.policy.decide(target_domain, from_domain)
        if decision == DELIVER_LOCAL:
            if from_uri is not None and self.policy.is_local_domain(from_domain) \
                    and not self._on_callers_own_flow(from_uri, source):
                # A request that claims to come from one of our users is that user's or nobody's: it is
                # challenged like an outbound call (Kamailio's default route: `from_uri==myself` ->
                # auth_check), or anyone could spoof alice calling or messaging bob.
                self._spawn(self._local_from_local(context, uri, from_uri, target_domain, max_forwards, source))
            else:
                self._deliver_local(context, uri, target_domain, max_forwards)
        elif decision == AUTHENTICATE_OUTBOUND:
            self._spawn(self._outbound(context, uri, from_uri, max_forwards, source))
        elif decision == REFUSE_RELAY:
            transaction.respond_status(403, "Relaying denied")
        elif decision == REFUSE_DOMAIN:
            transaction.respond_status(403, "Domain not allowed")

    def _deliver_local(self, context: ProxyContext, uri: Any, domain: str, max_forwards: int) -> None:
        aor = f"sip:{uri.user}@{domain}"
        instance = None
        if "gr" in uri.params:
            # RFC 5627 §8.4: a GRUU reaches only the instance it names
            temporary = self.registrar.resolve_temp_gruu(uri.user or "")
            if temporary is not None:
                aor, instance = temporary
            else:
                instance = (uri.params.get("gr") or "").strip('"<>')
        bindings = self.registrar.lookup(aor)
        if instance is not None:
            bindings = [b for b in bindings if b.instance == instance]
        if not bindings:
            self._spawn(self._no_binding(context, f"{uri.user}@{domain}"))
            return
        request = context.request
        failed = 0
        for binding in bindings[:MAX_FORK_BRANCHES]:
            transport, address, port_text = binding.received.split(" ")
            flow: Flow = (transport, address, int(port_text))
            if binding.node != self.registrar.node and binding.needs_flow:
                # peerage.cluster: the flow is held by another node; the request goes there
                # through its flow-marked route, and that node sends it down the flow
                peer = self.peer_endpoint(binding.node) if self.peer_endpoint is not None else None
                if peer is None:
                    failed += 1
                    continue  # that node is gone, and its flows with it
                forwarded = self._copy_for_forwarding(request, binding.contact, max_forwards)
                forwarded.add_first("Route", self._peer_route(peer, request.call_id, flow))
                context.branches.append(Branch(forwarded, None))
                continue
            direct = not binding.path
            destination = None
            if direct and (binding.outbound or binding.nat or transport != "UDP"):
                # reach the UA on the flow it registered from (RFC 5626 §5.3, NAT, RFC 7118)
                destination = self._flow_destination(flow)
                if destination is None and (binding.outbound or _unreachable_contact(binding.contact)):
                    failed += 1
                    continue  # the flow failed and the contact cannot be dialled
            forwarded = self._copy_for_forwarding(request, binding.contact, max_forwards)
            for value in reversed(binding.path):
                forwarded.add_first("Route", value)
            branch = Branch(forwarded, None)
            branch.route_via_connection = destination
            if direct:
                branch.flow = flow
            context.branches.append(branch)
        if not context.branches:
            context.server.respond_status(430 if failed and instance is not None else 480)
            return
        for branch in list(context.branches):
            self._start_branch(context, branch)

    def _peer_route(self, peer: tuple[str, int], call_id: str, flow: Flow) -> str:
        """A Route to another cluster node naming the callee's flow there (the nodes share the
        Record-Route secret, so the mark is valid on that node)."""
        host = f"[{peer[0]}]" if ":" in peer[0] else peer[0]
        flows = f".{flow_token(flow)}"
        return f"<sip:{flows}@{host}:{peer[1]};lr;pr={self._route_mac(call_id, flows)};transport=tcp>"

    async def _no_binding(self, context: ProxyContext, address: str) -> None:
        try:
            exists = await self.accounts.exists(address)
        except Exception:  # an address the identity layer cannot even parse is not an account
            exists = False
        context.server.respond_status(480 if exists else 404)

    def _on_callers_own_flow(self, from_uri: Any, source: Destination) -> bool:
        """True when the request comes from a `[sip] trusted_sources` address, or arrived on a connection
        over which the From user registered (and so authenticated). Only connection-oriented flows
        count: a UDP source address can be forged."""
        if self.trusted_sources:
            address = ipaddress.ip_address(source.address[0])
            if any(address in network for network in self.trusted_sources):
                return True
        if source.transport == "UDP" or source.connection is None:
            return False
        host = self.primary_domain if from_uri.host in self.local_hosts else from_uri.host
        flow = f"{source.transport} {source.address[0]} {source.address[1]}"
        node = self.registrar.node
        return any(b.received == flow and b.node == node
                   for b in self.registrar.lookup(f"sip:{from_uri.user}@{host}"))

    async def _local_from_local(self, context: ProxyContext, uri: Any, from_uri: Any, domain: str,
                                max_forwards: int, source: Destination) -> None:
        if await self._caller_authenticated(context, from_uri, source):
            self._deliver_local(context, uri, domain, max_forwards)

    async def _outbound(self, context: ProxyContext, uri: Any, from_uri: Any, max_forwards: int,
                        source: Destination) -> None:
        """(b): authenticate the local caller (407), then route by RFC 3263."""
        if await self._caller_authenticated(context, from_uri, source):
            await self._forward_located(context, uri, context.request.uri or "", max_forwards)

    async def _caller_authenticated(self, context: ProxyContext, from_uri: Any, source: Destination) -> bool:
        """Check the local caller's Proxy-Authorization (RFC 3261 §22.3); False after answering it
        (407 challenge, 403) when the request must not go on."""
        request = context.request
        transaction = context.server
        realm = from_uri.host
        throttle = self.host.limits.auth
        client_ip = source.address[0]
        user = f"{from_uri.user}@{realm}"
        delay = throttle.check(client_ip, user)
        if delay is None:
            transaction.respond_status(403, "Too many failed attempts")
            return False
        if delay:
            await asyncio.sleep(delay)  # slowed down after repeated failures (AuthThrottle)
        credentials = None
        for value in request.get_all_raw("proxy-authorization"):
            try:
                candidate = parse_credentials(value)
            except SipParseError:
                continue
            if candidate.realm == realm:
                credentials = candidate
                break
        if credentials is None:
            self._challenge(transaction, realm)
            return False
        account, ha1s = await self.accounts.sip_digest_ha1s(credentials.username, realm, credentials.algorithm)
        if context.cancelled or context.final_sent:
            return False
        verdict = self.authenticator.verify_any(credentials, request.method or "", ha1s)
        if verdict != Verdict.OK:
            if verdict == Verdict.FAILED:
                throttle.failure(client_ip, user, protocol="sip", mechanism="digest")
                meant = digest_username_in_canonical_case(credentials.username, realm)
                if meant is not None:
                    transaction.respond_status(403, f"Use the digest username {meant}")
                    return False
            self._challenge(transaction, realm, stale=verdict == Verdict.STALE)
            return False
        if account is None or account != digest_account(from_uri.user or "", realm):
            transaction.respond_status(403, "From does not match the credentials")
            return False
        throttle.success(client_ip, user)
        # consume our credentials (they are for us, not for the next hop)
        kept = [v for v in request.get_all_raw("proxy-authorization") if f'realm="{realm}"' not in v]
        request.remove("proxy-authorization")
        for value in kept:
            request.add("Proxy-Authorization", value)
        return True

    def _challenge(self, transaction: ServerTransaction, realm: str, stale: bool = False) -> None:
        if transaction.request is None:
            return  # answered meanwhile (CANCEL)
        response = make_response(transaction.request, 407, to_tag=self.layer.local_tag)
        user_agent = transaction.request.get("user-agent")
        for value in self.authenticator.challenges(realm, stale, user_agent):
            response.add("Proxy-Authenticate", value)
        transaction.respond(response)

    async def _forward_located(self, context: ProxyContext, next_hop: Any, target_uri: str,
                               max_forwards: int) -> None:
        targets = await self.locator.locate(next_hop)
        if context.cancelled:
            return
        if not targets:
            context.server.respond_status(404 if next_hop.user else 503, "Destination not found")
            return
        forwarded = self._copy_for_forwarding(context.request, target_uri, max_forwards)
        branch = Branch(forwarded, targets[:MAX_FAILOVER])
        branch.server_name = next_hop.host
        context.branches.append(branch)
        self._start_branch(context, branch)

    def _forward_by_route(self, context: ProxyContext, max_forwards: int) -> None:
        request = context.request
        route_uri = parse_uri(parse_name_addr(request.first_value("route") or "").uri)
        self._forward_to_next_hop(context, route_uri, request.uri or "", max_forwards)

    def _forward_to_uri(self, context: ProxyContext, uri: Any, max_forwards: int) -> None:
        self._forward_to_next_hop(context, uri, context.request.uri or "", max_forwards)

    def _forward_to_next_hop(self, context: ProxyContext, next_hop: Any, target_uri: str,
                             max_forwards: int) -> None:
        numeric = numeric_target(next_hop)
        if numeric is not None:
            forwarded = self._copy_for_forwarding(context.request, target_uri, max_forwards)
            branch = Branch(forwarded, numeric)
            context.branches.append(branch)
            self._start_branch(context, branch)
        else:
            self._spawn(self._forward_located(context, next_hop, target_uri, max_forwards))

    @staticmethod
    def _copy_for_forwarding(request: SipMessage, target_uri: str, max_forwards: int,
                             via: list[Header] | None = None) -> SipMessage:
        """§16.6 steps 1-3: copy, new Request-URI, Max-Forwards decremented in its place (added
        below the top Via line when it was missing); the other lines stay as they are.  ``via``:
        our Via line, put on top in the same copy (step 8) when the copy is sent at once."""
        value = str(max_forwards - 1)
        if request.get("max-forwards") is None:
            headers = list(request.headers)
            headers.insert(1, ("max-forwards", "Max-Forwards", value))
        else:
            headers = [entry if entry[0] != "max-forwards" else ("max-forwards", entry[1], value)
                       for entry in request.headers]
        if via is not None:
            headers[:0] = via
        copy = SipMessage(method=request.method, uri=target_uri, headers=headers, body=request.body)
        copy.inherit_views(request, "max-forwards", value)
        if via is not None:
            copy.headers_changed("via")
        return copy

    # ------------------------------------------------------------------ branches
    def _start_branch(self, context: ProxyContext, branch: Branch) -> None:
        if context.cancelled:
            branch.finish()
            self._maybe_finish(context)
            return
        if branch.route_via_connection is not None:
            destination = branch.route_via_connection
        elif branch.targets:
            target = branch.targets.pop(0)
            name = (branch.server_name or target.host) if target.transport == "TLS" else None
            destination = (udp_destination((target.address, target.port)) if target.transport == "UDP"
                           else Destination(target.transport, (target.address, target.port), name=name))
        else:
            # numeric contact: resolve now (registrations hold IP contacts in practice)
            route = branch.request.first_value("route")
            known = _ROUTE_DESTINATIONS if route else _URI_DESTINATIONS
            text = route or branch.request.uri or ""
            destination = known[text]
            if destination is None:
                try:
                    uri = route_uri(text) if route else parse_uri(text)
                except SipParseError:
                    branch.finish()
                    branch.response = make_response(context.request, 502, "Bad contact")
                    self._maybe_finish(context)
                    return
                targets = numeric_target(uri)
                if targets is None:
                    self._spawn(self._locate_branch(context, branch, uri))
                    return
                target = targets[0]
                destination = (udp_destination((target.address, target.port)) if target.transport == "UDP"
                               else Destination(target.transport, (target.address, target.port)))
                known.put(text, destination)
        self._send_branch(context, branch, destination)

    async def _locate_branch(self, context: ProxyContext, branch: Branch, uri: Any) -> None:
        branch.targets = (await self.locator.locate(uri))[:MAX_FAILOVER]
        if not branch.targets:
            branch.finish()
            branch.response = make_response(context.request, 404, "Contact not resolvable")
            self._maybe_finish(context)
            return
        self._start_branch(context, branch)

    def _send_branch(self, context: ProxyContext, branch: Branch, destination: Destination) -> None:
        request = context.request
        transport = destination.transport
        address, port = self.local_endpoints.get(transport) or self.local_endpoints["UDP"]
        loop_key = context.loop_key
        if loop_key is None:
            loop_key = context.loop_key = self._loop_key(request)
        branch_id = f"{MAGIC_COOKIE}-pg-{loop_key}-{self._branch_prefix}{next(self._branch_counter):x}"
        via_entry, via = via_line(transport, address, port, branch_id)
        if request.method in DIALOG_CREATING and not context.in_dialog:
            # §16.6 step 4: our Record-Route above any others (at the top, as Kamailio puts it)
            flows = self._flows(context, branch)
            top = [("record-route", "Record-Route", self._record_route(transport, request.call_id, flows))]
            incoming = context.server.source.transport
            if incoming != transport:
                # RFC 5658 double Record-Route when the transport changes: the one for the next
                # hop's transport on top, the one for the previous hop's under it
                top.append(("record-route", "Record-Route", self._record_route(incoming, request.call_id, flows)))
            top.append(via_entry)
        else:
            top = [via_entry]
        forwarded = branch.request.prepended(top, via)  # the branch's request stays for failover
        transaction = self.layer.new_client(forwarded, destination)
        transaction.owner = (context, branch)
        transaction.on_response = self._on_branch_response
        transaction.on_timeout = self._on_branch_timeout
        branch.transaction = transaction
        context.forwarded = True
        transaction.start()
        if transaction.invite and branch.timer_c is None:
            branch.timer_c = asyncio.get_running_loop().call_later(TIMER_C, self._timer_c, context, branch)

    @staticmethod
    def _flows(context: ProxyContext, branch: Branch) -> str:
        """The flow token of a dialog: "<caller flow>.<callee flow>", each part empty when that
        side is not directly connected to us (it came through, or goes to, another proxy)."""
        source = context.server.source
        caller = ""
        if len(context.request.get_all("via")) == 1:
            caller = flow_token((source.transport, source.address[0], source.address[1]))
        callee = flow_token(branch.flow) if branch.flow is not None else ""
        return f"{caller}.{callee}" if caller or callee else ""

    def _timer_c(self, context: ProxyContext, branch: Branch) -> None:
        """§16.8: the branch rang too long: CANCEL it (its 487 then completes the request)."""
        if not branch.done and not branch.cancelled and not context.final_sent:
            branch.cancelled = True
            if branch.provisional:
                self._send_cancel(branch)
            else:
                branch.cancel_pending = True

    def _on_branch_timeout(self, transaction: ClientTransaction) -> None:
        context, branch = transaction.owner
        if branch.targets and not context.cancelled and not branch.cancelled:
            self._start_branch(context, branch)  # RFC 3263 §4.3 failover
            return
        branch.finish()
        if branch.response is None:
            branch.response = make_response(context.request, 408 if not branch.provisional else 480)
        self._maybe_finish(context)

    def _on_branch_response(self, transaction: ClientTransaction, response: SipMessage) -> None:
        context, branch = transaction.owner
        status = response.status
        if status < 200:
            if not branch.provisional:
                branch.provisional = True
                if branch.cancel_pending:
                    self._send_cancel(branch)
            if status == 100 or context.final_sent:
                return
            self._forward_upstream(context, response)
            return
        branch.finish()
        if status < 300:
            self._forward_upstream(context, response)
            context.final_sent = True
            self._cancel_branches(context, except_branch=branch)
            return
        if status == 503 and branch.targets and not context.cancelled:
            branch.done = False
            branch.provisional = False
            self._start_branch(context, branch)  # RFC 3263 §4.3 failover on 503
            return
        branch.response = response
        if status >= 600:
            self._cancel_branches(context, except_branch=branch)
        self._maybe_finish(context)

    def _maybe_finish(self, context: ProxyContext) -> None:
        if context.final_sent or not all(b.done for b in context.branches):
            return
        responses = [b.response for b in context.branches if b.response is not None]
        if context.cancelled and not responses:
            context.server.respond_status(487)
            context.final_sent = True
            return
        if not responses:
            context.server.respond_status(480)
            context.final_sent = True
            return
        best = min(responses, key=_response_rank)
        if context.cancelled and best.status < 600 and not 200 <= best.status < 300:
            # §16.10: a CANCELled request ends in 487 whatever the branches timed out with
            context.server.respond_status(487)
            context.final_sent = True
            return
        if best.status in (401, 407):
            # §16.7 step 7: gather every challenge
            for other in responses:
                if other is not best and other.status in (401, 407):
                    for name in ("www-authenticate", "proxy-authenticate"):
                        for value in other.get_all_raw(name):
                            best.add(name, value)
        if best.status == 503:
            best.status, best.reason = 500, "Server Internal Error"  # §16.7 step 6
        if best.get("via") is not None and len(best.get_all("via")) > len(context.request.get_all("via")):
            self._forward_upstream(context, best)
        else:
            context.server.respond(_as_upstream(best, context.request))
        context.final_sent = True

    def _forward_upstream(self, context: ProxyContext, response: SipMessage) -> None:
        """§16.7 step 9: remove our Via and send through the server transaction."""
        server = context.server
        data = without_top_via(response)
        if data is not None:
            if server.state == "terminated":
                self.send(data, server.reply_to)  # as below
            else:
                server.respond(response, data)
            return
        upstream = SipMessage(status=response.status, reason=response.reason,
                              headers=list(response.headers), body=response.body)
        upstream.pop_first_value("via")
        if server.state == "terminated":
            # a further 2xx after the first ended the INVITE server transaction (§16.7 step 10)
            self.send(upstream.serialize(), server.reply_to)
            return
        server.respond(upstream)

    def _cancel_branches(self, context: ProxyContext, except_branch: Branch | None = None) -> None:
        for branch in context.branches:
            if branch is except_branch or branch.done or branch.cancelled:
                continue
            if branch.transaction is None or not branch.transaction.invite:
                continue
            branch.cancelled = True
            if branch.provisional:
                self._send_cancel(branch)
            else:
                branch.cancel_pending = True  # §9.1: wait for a provisional before CANCEL

    def _send_cancel(self, branch: Branch) -> None:
        invite_tx = branch.transaction
        if invite_tx is None:
            return
        invite = invite_tx.request
        cancel = SipMessage(method="CANCEL", uri=invite.uri)
        via_copied = False
        for entry in invite.headers:
            key = entry[0]
            if key == "via":
                if not via_copied:
                    cancel.headers.append(("via", "Via", invite.first_value("via") or entry[2]))
                    via_copied = True
            elif key in ("from", "to", "call-id", "route", "max-forwards"):
                cancel.headers.append(entry)
        cancel.add("CSeq", f"{invite.cseq[0]} CANCEL")
        transaction = self.layer.new_client(cancel, invite_tx.destination)
        transaction.start()

    # ------------------------------------------------------------------ CANCEL and ACK
    def _receive_cancel(self, cancel: SipMessage, source: Destination) -> None:
        transaction, new = self.layer.receive_request(cancel, source)
        if not new or transaction is None:
            return
        invite_tx = self.layer.find_invite_for_cancel(cancel)
        if invite_tx is None or invite_tx.owner is None:
            # §16.10: no matching transaction: forward statelessly? We answer 481 like Kamailio.
            transaction.respond_status(481)
            return
        transaction.respond_status(200)
        context: ProxyContext = invite_tx.owner
        if context.final_sent:
            return
        context.cancelled = True
        if not context.forwarded:
            context.server.respond_status(487)
            context.final_sent = True
            return
        self._cancel_branches(context)
        # branches still waiting for a provisional: stop here, answer 487 (§16.10, §9.1)

    def _forward_ack(self, ack: SipMessage, source: Destination) -> None:
        """ACK for a 2xx: end to end, forwarded statelessly along the route set (§16.11)."""
        own, flows = self._pop_own_routes(ack)
        if own is not True:
            return  # not a dialog we Record-Routed: drop (ACKs get no response)
        route = ack.first_value("route")
        if flows is not None and route is None:
            destination = self._ack_flow(flows, source)
            if destination is not None:
                max_forwards_text = ack.get("max-forwards")
                hops = int(max_forwards_text) if max_forwards_text else DEFAULT_MAX_FORWARDS
                if hops > 0:
                    self._send_stateless_to(ack, destination, hops)
                return
        try:
            next_hop = parse_uri(parse_name_addr(route).uri) if route else parse_uri(ack.uri or "")
        except SipParseError:
            return
        max_forwards_text = ack.get("max-forwards")
        max_forwards = int(max_forwards_text) if max_forwards_text else DEFAULT_MAX_FORWARDS
        if max_forwards <= 0:
            return
        forwarded = self._copy_for_forwarding(ack, ack.uri or "", max_forwards)
        targets = numeric_target(next_hop)
        if targets is not None:
            self._send_stateless(forwarded, targets[0])
        else:
            self._spawn(self._forward_ack_located(forwarded, next_hop))

    async def _forward_ack_located(self, ack: SipMessage, next_hop: Any) -> None:
        targets = await self.locator.locate(next_hop)
        if targets:
            self._send_stateless(ack, targets[0])

    def _ack_flow(self, flows: str, source: Destination) -> Destination | None:
        target = self._other_flow(flows, source)
        return self._flow_destination(target) if target is not None else None

    @staticmethod
    def _other_flow(flows: str, source: Destination) -> Flow | None:
        """The flow at the other end of the dialog from ``source``: the callee's for a request
        from the caller's flow and the other way round; the one recorded flow for a request from
        elsewhere (a peer proxy); None when routing by the Request-URI should decide."""
        caller_text, _, callee_text = flows.partition(".")
        caller, callee = parse_flow_token(caller_text), parse_flow_token(callee_text)
        here = (source.transport, source.address[0], source.address[1])
        if here == caller:
            return callee
        if here == callee:
            return caller
        if caller is None or callee is None:
            return caller or callee
        return None

    def _send_stateless(self, request: SipMessage, target: Target) -> None:
        self._send_stateless_to(request, Destination(target.transport, (target.address, target.port)))

    def _send_stateless_to(self, request: SipMessage, destination: Destination,
                           max_forwards: int | None = None) -> None:
        """Send ``request`` with our Via on top; with ``max_forwards``, ``request`` is the one
        received, copied for forwarding (§16.6 steps 1-3) with the Via in one go."""
        address, port = self.local_endpoints.get(destination.transport) or self.local_endpoints["UDP"]
        # §16.11: the branch of a stateless forward is derived from the request, so a retransmitted
        # ACK gets the same branch.
        seed = f"{request.call_id}|{request.cseq[0]}|{request.uri}|{request.first_value('via')}"
        branch = f"{MAGIC_COOKIE}-pgs-{zlib.crc32(seed.encode('utf-8', 'surrogateescape')):08x}"
        via_entry, _via = via_line(destination.transport, address, port, branch)
        if max_forwards is not None:
            forwarded = self._copy_for_forwarding(request, request.uri or "", max_forwards, [via_entry])
        else:
            forwarded = request.prepended([via_entry])
        self.send(forwarded.serialize(), destination)

    # ------------------------------------------------------------------ responses
    def receive_response(self, response: SipMessage) -> None:
        transaction = self.layer.receive_response(response)
        if transaction is not None:
            return
        # stray response (e.g. 2xx retransmission): forward statelessly if the top Via is ours
        via = response.top_via()
        if not (via.branch or "").startswith(MAGIC_COOKIE + "-pg"):
            return
        upstream = SipMessage(status=response.status, reason=response.reason,
                              headers=list(response.headers), body=response.body)
        upstream.pop_first_value("via")
        next_via_text = upstream.first_value("via")
        if next_via_text is None:
            return
        next_via = parse_via(next_via_text)
        host = next_via.params.get("received") or next_via.host
        rport = next_via.params.get("rport")
        port = int(rport) if rport and rport.isdigit() else (next_via.port or 5060)
        self.send(upstream.serialize(), Destination(next_via.transport, (host, port)))

    # ------------------------------------------------------------------ registrar
    async def _register(self, context: ProxyContext, source: Destination) -> None:
        response = await self.registrar.register(context.request, source, source.address[0])
        context.server.respond(response)


def _unreachable_contact(contact: str) -> bool:
    """A contact nobody can dial: a ``.invalid`` host (RFC 7118 §5) or not a SIP URI at all."""
    try:
        host = parse_uri(contact).host
    except SipParseError:
        return True
    return host.endswith(".invalid")


def numeric_target(uri: Any) -> list[Target] | None:
    """Targets for a URI with an IP host, without DNS (RFC 3263 §4.2 numeric case)."""
    host = uri.params.get("maddr") or uri.host
    if not _looks_numeric(host):
        return None
    transport = (uri.transport or ("tls" if uri.scheme == "sips" else "udp")).upper()
    if transport not in ("UDP", "TCP", "TLS"):
        return None
    port = uri.port or (5061 if transport == "TLS" else 5060)
    return [Target(transport, host, host, port)]


_IPV4 = re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}")


def _looks_numeric(host: str) -> bool:
    if _IPV4.fullmatch(host):
        return True
    if ":" in host:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return False
        return True
    return False


def _response_rank(response: SipMessage) -> tuple[int, int, int]:
    status = response.status
    klass = 0 if status >= 600 else status // 100
    # among equals prefer a definite answer over "try later" ones (RFC 3261 §16.7 step 6 leaves
    # the choice within a class to the proxy)
    vague = 1 if status in (408, 480, 500, 503) else 0
    return (klass, vague, status)


def _as_upstream(response: SipMessage, request: SipMessage) -> SipMessage:
    """A locally generated branch response (408/480) rebuilt for the original request."""
    fresh = make_response(request, response.status, response.reason, "pg")
    return fresh
