"""The SIP registrar and location service (RFC 3261 §10, RFC 3327 Path, RFC 5626, RFC 5627).

This module is in charge of REGISTER: digest authentication against the account's stored HA1,
binding several contacts per address of record with expiry and q-values, keeping the Path route
set, and answering with the current bindings.  Bindings live in memory for lookups on the call path
and are written through to the ``sip_registrations`` table before the 200 OK is sent, so an
acknowledged registration survives a restart.

Every binding remembers the flow its REGISTER arrived on (transport, source address and port).
Calls reach a user agent through that flow rather than through its Contact when the Contact cannot
be reached directly:

* RFC 5626 outbound: a Contact with ``+sip.instance`` and ``reg-id`` (and ``Supported: outbound``)
  is bound to its flow; a new flow for the same instance and reg-id replaces the old one, and a
  flow whose connection has closed is not used (flow failure, §5.3). A UDP flow has no connection
  to close: the UA sends STUN keep-alives at the Flow-Timer it was given (§4.4.1, answered by the
  transport), and a flow not heard from for longer than that is dead (``expired_udp_flows``, run
  by the service): its bindings are dropped, and requests for the flow get 430 (§5.3).
* Stream connections (TCP, TLS, WebSocket) without outbound: the connection stays the way in
  while it is open (RFC 5923-style reuse), so a Contact naming an ephemeral port or a ``.invalid``
  host (RFC 7118) still works.
* UDP behind NAT: when the top Via's sent-by differs from the packet's source, as Kamailio's
  ``nat_uac_test`` (flags 2 and 16) decides, requests go to the source address and port. The
  service pings such contacts (OPTIONS, nathelper's sipping); one that sends nothing back for
  ``[sip] nat_ping_timeout`` is dropped by the same check as outbound flows (``expired_udp_flows``).

GRUUs (RFC 5627) are handed out for Contacts with ``+sip.instance`` when ``Supported: gruu`` is
present: the public one names the instance, the temporary one is an opaque, signed token.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, delete, insert, select

from peerage.identity.accounts import digest_account, digest_username_in_canonical_case
from peerage.identity.credential_events import RESET, WEB_SESSION, CredentialEvent
from peerage.sip.digest import DigestAuthenticator, Verdict, parse_credentials
from peerage.sip.message import (
    SipMessage,
    SipParseError,
    make_response,
    parse_name_addr,
    parse_uri,
)
from peerage.sip.tables import sip_registrations
from peerage.sip.transaction import Destination

log = logging.getLogger("peerage.sip")

# Most contacts bound to one address of record.  Kamailio's registrar max_contacts defaults to 0
# (unlimited); Asterisk's max_contacts is 1.  Ten covers a phone, a desktop and a few apps.
MAX_CONTACTS_PER_AOR = 10
# Stream connections remembered for registered clients before closed ones are swept out; the
# transport itself caps open connections (transport.MAX_STREAM_CONNECTIONS = 2048).
MAX_TRACKED_CONNECTIONS = 4096
# Keep-alive interval asked of outbound UAs (RFC 5626 §4.4.1 Flow-Timer): streams idle out after
# transport.STREAM_IDLE_TIMEOUT (600 s) here, but NATs and proxies in between drop idle TCP sooner,
# so 120 s as the RFC's §4.4.1 example; UDP NAT bindings can last only 30 s, so 25 s there.
FLOW_TIMER_STREAM = 120
FLOW_TIMER_UDP = 25  # the default of [sip] udp_flow_timer
# Slack past a UDP flow's Flow-Timer before it counts as dead: the UA sends its keep-alive at 80-100%
# of the timer (RFC 5626 §4.4.1), so this covers scheduling delay on either side, not a lost packet.
# One lost keep-alive on a 25 s timer still kills the flow, as the RFC intends; the UA re-registers.
FLOW_SLACK_MIN = 3.0
FLOW_SLACK_SHARE = 0.2
# Failed UDP flows remembered (so requests for them get 430 at once rather than Timer B's 408) until the
# address registers again; beyond this many the oldest are forgotten.
MAX_FAILED_FLOWS = 10000


@dataclass(slots=True)
class Binding:
    aor: str
    contact: str  # the contact URI, without <>
    expires_at: float
    q: float
    call_id: str
    cseq: int
    path: list[str]
    received: str  # "TRANSPORT host port" of the REGISTER's source
    instance: str = ""  # RFC 5626 +sip.instance (a URN), "" without one
    reg_id: int = 0  # RFC 5626 reg-id, 0 without outbound
    nat: bool = False  # reach the contact at ``received`` (behind NAT), not at its URI
    node: str = ""  # the cluster node holding ``received`` ("" for a single server)
    # the credential that authorised it: "password", "app", "web:<web session hash>" (a web SIP token);
    # "" when not recorded. What ends with that credential (``credentials_ended``).
    auth: str = ""

    @property
    def outbound(self) -> bool:
        return self.reg_id > 0

    def expires_in(self, now: float) -> int:
        return max(0, int(self.expires_at - now))

    @property
    def needs_flow(self) -> bool:
        """Reached only through the flow it registered on (outbound, NAT, a stream connection),
        not by dialling its Contact: only the node holding that flow can reach it."""
        return not self.path and (self.outbound or self.nat or not self.received.startswith("UDP "))


class Registrar:
    def __init__(self, host: Any, authenticator: DigestAuthenticator,
                 clock: Callable[[], float] = time.time) -> None:
        self.host = host
        self.config = host.config.sip
        self.authenticator = authenticator
        self.clock = clock
        self.bindings: dict[str, list[Binding]] = {}
        # live stream connections by "TRANSPORT host port", so calls reach clients behind NAT
        self.connections: dict[str, Any] = {}
        self.udp_flow_timer = max(2, int(getattr(self.config, "udp_flow_timer", FLOW_TIMER_UDP)))
        # NAT'd UDP contacts without outbound answer the service's OPTIONS keep-alives (nathelper's
        # sipping); one silent this long is dropped (0: never, and never with CRLF pings, unanswered)
        method = str(getattr(self.config, "nat_ping_method", "options")).lower()
        interval = int(getattr(self.config, "nat_ping_interval", 0))
        timeout = int(getattr(self.config, "nat_ping_timeout", 0))
        self.nat_ping_timeout = timeout if method == "options" and interval > 0 else 0
        # outbound UDP flows: source address -> when last heard from (time.monotonic()); the
        # transport updates it for every datagram from a watched address
        self.udp_heard: dict[tuple[str, int], float] = {}
        # "UDP host port" of flows found dead -> when (time.monotonic())
        self.failed_flows: dict[str, float] = {}
        # key of the temporary GRUUs (RFC 5627 §3.2: they must not reveal the AOR); a restart
        # invalidates them, which the RFC allows (a UA learns new ones at its next REGISTER)
        self.gruu_key = os.urandom(32)
        # peerage.cluster: this node's name (bindings it holds carry it) and who to tell when an
        # address of record changed (the other nodes re-read it from the store)
        self.node = ""
        self.on_change: Callable[[str], None] | None = None

    # -- location service
    def lookup(self, aor: str) -> list[Binding]:
        """Current bindings of ``aor``, highest q first (RFC 3261 §16.6 target ordering)."""
        bindings = self.bindings.get(aor)
        if not bindings:
            return []
        now = self.clock()
        live = [b for b in bindings if b.expires_at > now]
        if len(live) != len(bindings):
            self.bindings[aor] = live
        return sorted(live, key=lambda b: -b.q)

    async def load(self) -> None:
        """Read live bindings from the store (at start-up)."""
        now = self.clock()
        async with self.host.store.begin() as conn:
            await conn.execute(delete(sip_registrations).where(sip_registrations.c.expires_at <= now))
            rows = (await conn.execute(select(sip_registrations))).all()
        self.bindings = {}
        for row in rows:
            self.bindings.setdefault(row.aor, []).append(_binding(row))
        log.info("sip: loaded %d registrations", len(rows))

    async def reload(self, aor: str) -> None:
        """Read the bindings of ``aor`` again (another cluster node changed them)."""
        table = sip_registrations
        async with self.host.store.begin() as conn:
            rows = (await conn.execute(select(table).where(table.c.aor == aor))).all()
        now = self.clock()
        bindings = [_binding(row) for row in rows if row.expires_at > now]
        if bindings:
            self.bindings[aor] = bindings
        else:
            self.bindings.pop(aor, None)

    # -- REGISTER
    async def register(self, request: SipMessage, source: Destination, client_ip: str
                       ) -> SipMessage:
        try:
            return await self._register(request, source, client_ip)
        except SipParseError as error:
            return make_response(request, 400, error.reason[:80])

    async def _register(self, request: SipMessage, source: Destination, client_ip: str
                        ) -> SipMessage:
        to_uri = parse_uri(parse_name_addr(request.get("to") or "").uri)
        domain = to_uri.host
        accounts = self.host.accounts
        if not accounts.is_local_domain(domain) or not to_uri.user:
            return make_response(request, 403, "Not a local domain")
        aor = f"sip:{to_uri.user}@{domain}"
        address = f"{to_uri.user}@{domain}"
        throttle = self.host.limits.auth
        delay = throttle.check(client_ip, address)
        if delay is None:
            return make_response(request, 403, "Too many failed attempts")
        if delay:
            await asyncio.sleep(delay)  # slowed down after repeated failures (AuthThrottle)
        # RFC 3261 §10.3 step 4: authenticate
        credentials = None
        for value in request.get_all_raw("authorization"):
            try:
                candidate = parse_credentials(value)
            except SipParseError:
                continue  # another scheme (RFC 4475 §3.3.7): challenge with the ones we know
            if candidate.realm == domain:
                credentials = candidate
                break
        if credentials is None:
            return self._challenge(request, domain)
        account, ha1s = await accounts.sip_digest_ha1s(credentials.username, domain, credentials.algorithm)
        verdict, matched = self.authenticator.verify_which(credentials, "REGISTER", ha1s)
        if verdict == Verdict.STALE:
            return self._challenge(request, domain, stale=True)
        if verdict != Verdict.OK:
            throttle.failure(client_ip, address, protocol="sip", mechanism="digest")
            meant = digest_username_in_canonical_case(credentials.username, domain)
            if meant is not None:
                # A challenge again would only fail again: say which username the HA1s hash.
                return make_response(request, 403, f"Use the digest username {meant}")
            return self._challenge(request, domain)
        # step 6: the authenticated user may only register its own address of record
        if account is None or account != digest_account(to_uri.user, domain):
            return make_response(request, 403, "Credentials do not match the To user")
        throttle.success(client_ip, address)
        # Which credential this is, so the binding ends with it: the account's own HA1 comes first
        # (AccountService.sip_ha1_all), then app passwords', then web tokens'.
        auth = "password"
        if matched > 0:
            token, web_session = await accounts.sip_tokens.issued_to(
                account, credentials.algorithm, ha1s[matched], full="@" in credentials.username)
            auth = f"web:{web_session or ''}" if token else "app"
        return await self._update(request, aor, source, auth)

    def _challenge(self, request: SipMessage, realm: str, stale: bool = False) -> SipMessage:
        response = make_response(request, 401, to_tag=self._tag(request))
        for value in self.authenticator.challenges(realm, stale, request.get("user-agent")):
            response.add("WWW-Authenticate", value)
        return response

    @staticmethod
    def _tag(request: SipMessage) -> str:
        return f"r{abs(hash(request.call_id)) & 0xFFFFFFFF:x}"

    async def _update(self, request: SipMessage, aor: str, source: Destination, auth: str = "") -> SipMessage:
        now = self.clock()
        call_id = request.call_id
        cseq, _ = request.cseq
        header_expires = request.get("expires")
        default_expires = self.config.default_expires
        if header_expires is not None:
            text = header_expires.strip()
            if not text.isdigit() or len(text) > 10:
                return make_response(request, 400, "Bad Expires")
            default_expires = int(text)
        contacts = [parse_name_addr(value) for value in request.get_all("contact")]
        current = {b.contact: b for b in self.lookup(aor)}
        received = f"{source.transport} {source.address[0]} {source.address[1]}"
        path = request.get_all("path") if self._path_supported(request) else []
        supported = {v.strip().lower() for v in request.get_all("supported")}
        direct = len(request.get_all("via")) == 1 and not path  # the UA is the previous hop
        nat = direct and not source.reliable and _behind_nat(request, source)
        changes: dict[str, Binding | None] = {}
        if any(c.wildcard for c in contacts):
            # §10.3 step 6: "*" only alone and with Expires: 0
            if len(contacts) != 1 or default_expires != 0:
                return make_response(request, 400, "Wildcard Contact needs Expires: 0")
            changes = dict.fromkeys(current)
        else:
            for contact in contacts:
                expires_text = contact.params.get("expires")
                expires = default_expires
                if expires_text is not None:
                    if not expires_text.isdigit() or len(expires_text) > 10:
                        return make_response(request, 400, "Bad expires parameter")
                    expires = int(expires_text)
                if 0 < expires < self.config.min_expires:
                    response = make_response(request, 423, to_tag=self._tag(request))
                    response.add("Min-Expires", str(self.config.min_expires))
                    return response
                expires = min(expires, self.config.max_expires)
                existing = current.get(contact.uri)
                if existing is not None and existing.call_id == call_id and existing.cseq >= cseq:
                    continue  # §10.3 step 7: out-of-order request for this binding
                if expires == 0:
                    changes[contact.uri] = None
                    continue
                q_text = contact.params.get("q") or "1"
                try:
                    q = min(1.0, max(0.0, float(q_text)))
                except ValueError:
                    return make_response(request, 400, "Bad q value")
                parse_uri(contact.uri)  # only sip/sips contacts: 416 surfaced as 400 otherwise
                instance = (contact.params.get("+sip.instance") or "").strip('"<>')
                reg_id = 0
                reg_id_text = contact.params.get("reg-id")
                if reg_id_text is not None and instance and "outbound" in supported:
                    # RFC 5626 §6: an outbound registration; reg-id is 1..2^31-1
                    if not reg_id_text.isdigit() or not 0 < int(reg_id_text) < 2**31:
                        return make_response(request, 400, "Bad reg-id")
                    if not direct and not any(";ob" in p for p in path):
                        # §6: without a flow to us (or an edge proxy's ;ob Path) it cannot be kept
                        response = make_response(request, 439, "First Hop Lacks Outbound Support")
                        return response
                    reg_id = int(reg_id_text)
                    # §6: the same instance and reg-id replaces the old flow, whatever its URI
                    for old in current.values():
                        if old.instance == instance and old.reg_id == reg_id and old.contact != contact.uri:
                            changes[old.contact] = None
                changes[contact.uri] = Binding(aor, contact.uri, now + expires, q, call_id, cseq,
                                               path, received, instance, reg_id, nat, self.node, auth)
        final = dict(current)
        for uri, binding in changes.items():
            if binding is None:
                final.pop(uri, None)
            else:
                final[uri] = binding
        if len(final) > MAX_CONTACTS_PER_AOR:
            return make_response(request, 403, "Too many contacts")
        if changes:
            await self._persist(aor, changes)
        self.bindings[aor] = list(final.values())
        if changes and self.on_change is not None:
            self.on_change(aor)
        if source.transport == "UDP" and any(b is not None and (b.outbound or b.nat) and not b.path
                                             for b in changes.values()):
            self.udp_heard[source.address] = time.monotonic()  # the flow's keep-alive clock starts
            self.failed_flows.pop(received, None)
        if source.reliable and source.connection is not None:
            self.connections[received] = source.connection
            if len(self.connections) > MAX_TRACKED_CONNECTIONS:
                self.connections = {k: c for k, c in self.connections.items()
                                    if not getattr(c, "closed", False)}
        response = make_response(request, 200, to_tag=self._tag(request))
        gruu = "gruu" in supported
        for binding in self.lookup(aor):
            value = f"<{binding.contact}>;expires={binding.expires_in(now)}"
            if binding.q != 1.0:
                value += f";q={binding.q:g}"
            if binding.instance:
                value += f';+sip.instance="<{binding.instance}>"'
                if binding.outbound:
                    value += f";reg-id={binding.reg_id}"
                if gruu:
                    # RFC 5627 §5.4 (the public GRUU names the instance) and §3.2 (temporary)
                    value += f';pub-gruu="{aor};gr={binding.instance}"'
                    value += f';temp-gruu="{self.temp_gruu(aor, binding.instance)}"'
            response.add("Contact", value)
        if any(b.outbound and b.call_id == call_id for b in final.values()):
            response.add("Require", "outbound")  # RFC 5626 §6: the registrar kept the flow
            # §4.4.1: how often the UA should send keep-alives on this flow
            response.add("Flow-Timer", str(FLOW_TIMER_STREAM if source.reliable else self.udp_flow_timer))
        if path:
            for value in path:
                response.add("Path", value)  # RFC 3327 §5.3: echo the Path
        response.add("Supported", "path, outbound, gruu")
        return response

    # -- credentials that ended (peerage.identity.credential_events)
    async def credentials_ended(self, event: CredentialEvent) -> int:
        """Drop the bindings made with credentials that just ended, so calls stop reaching whoever
        holds them at once rather than at the binding's refresh (which would be refused): a deleted
        account loses every binding; a password change, those made with the old password or a web
        token (every web session ended with it; app passwords live on, so their bindings stay); a
        web session's logout or revocation, those made with the SIP tokens it was given."""
        if event.reason == WEB_SESSION:
            def ends(b: Binding) -> bool:
                return b.auth == f"web:{event.web_session or ''}"
        elif event.reason == RESET:
            def ends(b: Binding) -> bool:
                return b.auth == "password" or b.auth.startswith("web:")
        else:
            def ends(b: Binding) -> bool:
                return True
        wanted = f"sip:{event.account}"
        dropped = 0
        for aor in [a for a in self.bindings if a.lower() == wanted]:
            gone = [b for b in self.bindings[aor] if ends(b)]
            if not gone:
                continue
            self.bindings[aor] = [b for b in self.bindings[aor] if b not in gone]
            await self._persist(aor, dict.fromkeys((b.contact for b in gone), None))
            if self.on_change is not None:
                self.on_change(aor)
            dropped += len(gone)
        if dropped:
            log.info("sip: dropped %d binding(s) of %s: its credentials ended (%s)", dropped,
                     event.account, event.reason)
        return dropped

    # -- UDP flow failure (RFC 5626 §4.4.1, §5.3)
    def flow_failed(self, received: str) -> bool:
        return received in self.failed_flows

    async def expired_udp_flows(self, now: float | None = None) -> list[str]:
        """Find the outbound UDP flows not heard from within their Flow-Timer (and slack), drop their
        bindings (memory and store), and return them. Bindings loaded at start-up start their clock
        at the first check."""
        now = time.monotonic() if now is None else now
        limit = self.udp_flow_timer + max(FLOW_SLACK_MIN, self.udp_flow_timer * FLOW_SLACK_SHARE)
        watched: set[tuple[str, int]] = set()
        dead: set[str] = set()
        silent: set[str] = set()  # NAT'd contacts without outbound that stopped answering OPTIONS
        wall = self.clock()
        nat_limit = self.nat_ping_timeout
        for bindings in self.bindings.values():
            for binding in bindings:
                if binding.path or not binding.received.startswith("UDP ") \
                        or binding.expires_at <= wall or binding.node != self.node:
                    continue  # not a UDP flow this node holds (another node watches its own)
                if not binding.outbound and not (binding.nat and nat_limit > 0):
                    continue  # reached at its Contact: nothing to watch
                _, host, port = binding.received.split(" ")
                address = (host, int(port))
                watched.add(address)
                quiet = now - self.udp_heard.setdefault(address, now)
                if binding.outbound and quiet > limit:
                    dead.add(binding.received)
                elif not binding.outbound and quiet > nat_limit:
                    silent.add(binding.received)
        for address in [a for a in self.udp_heard if a not in watched]:
            del self.udp_heard[address]
        for received in sorted(silent - dead):
            _, host, port = received.split(" ")
            self.udp_heard.pop((host, int(port)), None)
            for aor in [aor for aor, bindings in self.bindings.items()
                        if any(b.received == received and b.nat and not b.outbound for b in bindings)]:
                gone = [b for b in self.bindings[aor] if b.received == received and b.nat and not b.outbound
                        and not b.path and b.node == self.node]
                self.bindings[aor] = [b for b in self.bindings[aor] if b not in gone]
                await self._persist(aor, dict.fromkeys((b.contact for b in gone), None))
                if self.on_change is not None:
                    self.on_change(aor)
                log.info("sip: UDP contact %s:%s of %s (behind NAT) answered no keep-alive for over %d s: "
                         "%d binding(s) dropped", host, port, aor, nat_limit, len(gone))
        for received in sorted(dead):
            _, host, port = received.split(" ")
            self.udp_heard.pop((host, int(port)), None)
            self.failed_flows[received] = now
            while len(self.failed_flows) > MAX_FAILED_FLOWS:
                del self.failed_flows[next(iter(self.failed_flows))]
            for aor in [aor for aor, bindings in self.bindings.items()
                        if any(b.received == received and b.outbound for b in bindings)]:
                gone = [b for b in self.bindings[aor]
                        if b.received == received and b.outbound and b.node == self.node]
                self.bindings[aor] = [b for b in self.bindings[aor] if b not in gone]
                await self._persist(aor, dict.fromkeys((b.contact for b in gone), None))
                if self.on_change is not None:
                    self.on_change(aor)
                log.info("sip: outbound UDP flow %s:%s of %s silent for over %.0f s (Flow-Timer %d): "
                         "flow failed, %d binding(s) dropped", host, port, aor, limit, self.udp_flow_timer,
                         len(gone))
        return sorted(dead)

    # -- GRUU (RFC 5627)
    def temp_gruu(self, aor: str, instance: str) -> str:
        """``sip:tgruu.<token>@domain;gr``: the AOR and instance encrypted and signed."""
        domain = aor.rpartition("@")[2]
        plain = f"{aor}\n{instance}".encode()
        nonce = os.urandom(8)
        cipher = bytes(a ^ b for a, b in zip(plain, self._keystream(nonce, len(plain)), strict=True))
        mac = hmac.new(self.gruu_key, nonce + cipher, hashlib.sha256).digest()[:10]
        token = base64.b32encode(nonce + cipher + mac).decode().rstrip("=").lower()
        return f"sip:tgruu.{token}@{domain};gr"

    def resolve_temp_gruu(self, user: str) -> tuple[str, str] | None:
        """(aor, instance) of a temporary GRUU's user part, None if not one of ours."""
        if not user.startswith("tgruu."):
            return None
        text = user[len("tgruu."):].upper()
        try:
            raw = base64.b32decode(text + "=" * (-len(text) % 8))
        except ValueError:
            return None
        if len(raw) < 19:
            return None
        nonce, cipher, mac = raw[:8], raw[8:-10], raw[-10:]
        expected = hmac.new(self.gruu_key, nonce + cipher, hashlib.sha256).digest()[:10]
        if not hmac.compare_digest(mac, expected):
            return None
        plain = bytes(a ^ b for a, b in zip(cipher, self._keystream(nonce, len(cipher)), strict=True))
        aor, _, instance = plain.decode("utf-8", "replace").partition("\n")
        return aor, instance

    def _keystream(self, nonce: bytes, length: int) -> bytes:
        out = b""
        counter = 0
        while len(out) < length:
            out += hashlib.blake2b(nonce + counter.to_bytes(4, "big"), key=self.gruu_key).digest()
            counter += 1
        return out[:length]

    @staticmethod
    def _path_supported(request: SipMessage) -> bool:
        supported = request.get_all("supported")
        return any(v.strip().lower() == "path" for v in supported) or request.has("path")

    async def _persist(self, aor: str, changes: dict[str, Binding | None]) -> None:
        """Commit before the 200 OK is sent (durable before acknowledged)."""
        table = sip_registrations
        async with self.host.store.begin() as conn:
            for uri, binding in changes.items():
                await conn.execute(delete(table).where(and_(table.c.aor == aor, table.c.contact == uri)))
                if binding is not None:
                    await conn.execute(insert(table).values(
                        aor=aor, contact=uri, expires_at=binding.expires_at, q=binding.q,
                        call_id=binding.call_id, cseq=binding.cseq, path="\n".join(binding.path),
                        received=binding.received, instance=binding.instance, reg_id=binding.reg_id,
                        nat=binding.nat, node=binding.node, auth=binding.auth))


def _binding(row: Any) -> Binding:
    return Binding(row.aor, row.contact, row.expires_at, row.q, row.call_id, row.cseq,
                   [p for p in row.path.split("\n") if p], row.received, row.instance or "",
                   row.reg_id or 0, bool(row.nat), row.node or "", row.auth or "")


def _behind_nat(request: SipMessage, source: Destination) -> bool:
    """The UA is behind NAT when its top Via's sent-by is not where the packet came from
    (Kamailio nathelper's nat_uac_test flags 2 and 16: received and source port differ)."""
    try:
        via = request.top_via()
    except SipParseError:
        return False
    return (via.host, via.port or 5060) != (source.address[0], source.address[1])
