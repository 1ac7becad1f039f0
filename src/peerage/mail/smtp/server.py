"""SMTP server: the inbound MX (port 25) and submission (587 with STARTTLS, 465 with implicit TLS).

This module is in charge of the policy around peerage's own SMTP protocol core
(`peerage.mail.smtp.engine`, sans-I/O), and of the asyncio Protocol that drives it: who may send what
to whom (hosted domains and existing users only on the MX, no relaying, a user sends only as their
own addresses), SPF/DKIM/DMARC on arrival, SMTP AUTH (SCRAM-SHA-256 and PLAIN, over TLS only,
throttled), per-IP limits, the command timeout, STARTTLS (``loop.start_tls``), 421 on shutdown, and
making every accepted message durable before the 250 goes out (local recipients straight into their
mailbox, others into the queue).

Nothing before the greeting is the engine's: ``GreetingGate`` is the protocol a new connection gets
first (per-IP cap, the unauthenticated gate, the early-talker pause); it makes the connection's
``SmtpConnection`` and hands the transport on with asyncio's ``set_protocol`` only when the greeting
may go.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import logging
import secrets
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from peerage.identity.login import authenticate, login_names
from peerage.identity.sasl import Failure, SaslServer, channel_bindings_for, offered_mechanisms
from peerage.mail.smtp import engine as smtp
from peerage.mail.smtp import policy
from peerage.mail.smtp.headers import header_block, header_values, remove_headers
from peerage.mail.smtp.replies import with_enhanced_code

# RFC 5321 §4.5.1 and RFC 2142: the addresses `peerage dns` publishes as rua= for DMARC and TLS-RPT.
REPORT_ADDRESSES = frozenset({"postmaster", "abuse"})  # = MailService ROLE_ADDRESSES

log = logging.getLogger(__name__)

# RFC 5321 §4.5.3.1.8 requires accepting at least 100 recipients; Postfix's smtpd_recipient_limit is
# 1000. We take the RFC's figure: mailing lists expand on their own servers.
MAX_RECIPIENTS = 100
# RFC 5321 §4.5.3.2.7: the server should wait 5 minutes for a command; Postfix's smtpd_timeout is 300 s.
COMMAND_TIMEOUT_SECONDS = 300.0
# Authentication failures within one connection before it is closed (Postfix's
# smtpd_hard_error_limit is 20 errors; Dovecot closes after 3 failed AUTHs by default).
MAX_AUTH_FAILURES_PER_CONNECTION = 3
# Messages one client IP may submit per minute on the MX port before getting 450 (Postfix's anvil
# smtpd_client_message_rate_limit is off by default; Mox limits 200 messages per minute per IP).
DEFAULT_MX_MESSAGES_PER_MINUTE = 600
# Extensions announced after the engine's own (RFC 2920, RFC 2034).
EXTRA_EXTENSIONS = ("PIPELINING", "ENHANCEDSTATUSCODES")
# The mechanisms AUTH takes to the SASL server; which of them it grants is its decision
# (peerage.identity.sasl), what EHLO lists is `SubmissionHandler.offered`.
SASL_MECHANISMS = frozenset({"PLAIN", "LOGIN", "SCRAM-SHA-1", "SCRAM-SHA-1-PLUS", "SCRAM-SHA-256",
                             "SCRAM-SHA-256-PLUS"})
# Unread client bytes held while a policy hook runs before reading pauses (flow control).
MAX_UNREAD = 1 << 20

OK = "250 2.0.0 Ok"
SENDER_OK = "250 2.1.0 Ok"
RECIPIENT_OK = "250 2.1.5 Ok"
AUTH_REQUIRED = "530 5.7.0 Authentication required"
AUTH_THROTTLED = "454 4.7.0 Too many failed authentications from your address or for this account; try later"
AUTH_INVALID = "535 5.7.8 Authentication credentials invalid"
TOO_MANY_UNAUTHENTICATED = "421 4.7.0 Too many connections waiting to authenticate; try again later"
AUTH_DEADLINE_PASSED = "421 4.4.2 Authentication deadline passed; closing connection"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
RATE_LIMITED = "450 4.7.1 Too many messages from your address; try again later"
TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections from your address; try again later"
NOT_OWN_SENDER = "553 5.7.1 Sender address is not one of your addresses"
NOT_OWN_FROM = "550 5.7.1 From header is not one of your addresses"
DMARC_REJECT = "550 5.7.1 Message rejected: DMARC policy of the From domain says to reject it"
TEMPORARY_FAILURE = "451 4.3.0 Temporary failure storing the message; try again later"
INTERNAL_ERROR = "451 4.3.0 Internal error; try again later"
SHUTTING_DOWN = b"421 4.3.2 Service shutting down; try again later\r\n"
EARLY_TALKER = "554 5.5.1 Protocol error: you spoke before the greeting"
# How long an address that waited for the greeting is not made to wait again (postscreen's
# postscreen_greet_ttl is 1 day).
GREETING_PASS_SECONDS = 86400.0
# Addresses remembered as having passed; past this the memory starts afresh.
MAX_GREETING_PASSES = 100000


@dataclass
class SessionState:
    """What the policy remembers about one connection beyond the engine's protocol state."""

    ip: str
    auth_failures: int = 0
    authenticated_as: str | None = None
    local_recipients: list[str] = field(default_factory=list)
    remote_recipients: list[str] = field(default_factory=list)
    spf_task: asyncio.Future[Any] | None = None
    report: bool = False  # a recipient is a report address (postmaster@, abuse@)

    def reset(self) -> None:
        self.report = False
        self.local_recipients.clear()
        self.remote_recipients.clear()
        if self.spf_task is not None:
            self.spf_task.cancel()
            self.spf_task = None


class SmtpConnection(asyncio.Protocol):
    """One SMTP connection after its greeting: bytes go to the engine, its events to the handler's
    hooks (one at a time, in order, in the connection's task), its replies to the transport."""

    def __init__(self, handler: BaseHandler, engine: smtp.SmtpEngine, *, implicit_tls: bool,
                 tls_context: ssl.SSLContext | None, timeout: float) -> None:
        self.handler = handler
        self.engine = engine
        self.implicit_tls = implicit_tls
        self.tls_context = tls_context
        self.timeout = timeout
        self.transport: asyncio.Transport | None = None
        self.state = SessionState(ip="unknown")
        self._counted_ip: str | None = None
        self._preauth: Any = None
        self._auth_timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Future[None] | None = None
        self._paused = False
        self._eof = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_read = 0.0
        self._timer: asyncio.TimerHandle | None = None

    # What the hooks read of the protocol state.

    @property
    def helo(self) -> str | None:
        return self.engine.helo

    @property
    def tls_active(self) -> bool:
        return self.implicit_tls or self.engine.tls

    def ssl_object(self) -> ssl.SSLObject | None:
        transport = self.transport
        return transport.get_extra_info("ssl_object") if transport is not None else None

    # Set-up and tear-down.

    def take_over(self, gate: GreetingGate) -> None:
        """What the gate acquired for this connection (its per-IP slot, the anonymous slot and the
        authentication deadline) is now this connection's to release."""
        self.state = SessionState(ip=gate.ip)
        self._counted_ip, gate.counted_ip = gate.counted_ip, None
        self._preauth, gate.preauth = gate.preauth, None
        if self._preauth is not None:
            self._auth_timer = asyncio.get_running_loop().call_later(
                max(0.0, gate.auth_deadline - time.monotonic()), self._auth_deadline_passed)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if self.state.ip == "unknown":
            peer = transport.get_extra_info("peername")
            self.state.ip = peer[0] if peer else "unknown"
        self.handler.sessions.add(self)
        self._loop = loop = asyncio.get_running_loop()
        self._last_read = loop.time()
        self._timer = loop.call_later(self.timeout, self._check_timeout)
        self.engine.greeting()
        self._flush()
        self._task = loop.create_task(self._serve())

    def data_received(self, data: bytes) -> None:
        engine = self.engine
        engine.receive(data)
        if self._loop is not None:
            self._last_read = self._loop.time()
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            if not wakeup.done():
                wakeup.set_result(None)
        elif not self._paused and engine.buffered() > MAX_UNREAD and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        # The client has sent all it will: what it pipelined before its end is still answered
        # (a QUIT with its 221), then the connection closes.
        self._eof = True
        wakeup, self._wakeup = self._wakeup, None
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)
        # Half-open until then; asyncio's TLS transports cannot stay half-open (and say so).
        return not self.tls_active

    def connection_lost(self, error: Exception | None) -> None:
        self.authenticated()  # releases the anonymous slot and the deadline timer
        self.handler.sessions.discard(self)
        if self._counted_ip is not None and self.handler.connections is not None:
            self.handler.connections.release(self._counted_ip)
            self._counted_ip = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            self._task.cancel()
        self.state.reset()
        self.transport = None

    def _check_timeout(self) -> None:
        # RFC 5321 §4.5.3.2.7: the command timeout. Re-armed from the last read rather than on every
        # read, which would make and cancel a timer per packet.
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now - self._last_read < self.timeout:
            self._timer = loop.call_later(self._last_read + self.timeout - now, self._check_timeout)
            return
        self._timer = None
        self._close_with(f"421 4.4.2 {self.engine.hostname} Error: timeout exceeded")

    def _auth_deadline_passed(self) -> None:
        self._auth_timer = None
        self._close_with(AUTH_DEADLINE_PASSED)

    def _close_with(self, reply: str) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(reply.encode() + b"\r\n")
            transport.close()

    def authenticated(self) -> None:
        """The client logged in: the deadline and the anonymous slot no longer apply."""
        if self._auth_timer is not None:
            self._auth_timer.cancel()
            self._auth_timer = None
        if self._preauth is not None:
            self._preauth.release()
            self._preauth = None

    def shut_down(self) -> None:
        """The server is stopping: say so (RFC 5321 §3.8) and close."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(SHUTTING_DOWN)
        transport.close()

    # The conversation.

    def _flush(self) -> None:
        out = self.engine.data_to_send()
        transport = self.transport
        if out and transport is not None and not transport.is_closing():
            transport.write(out)

    async def _next(self) -> smtp.Event | None:
        """The engine's next event, waiting for bytes when it needs more; None once it is closed."""
        engine = self.engine
        while True:
            event = engine.next_event()
            if event is not None:
                return event
            self._flush()
            if engine.closed or self._eof:
                return None
            if self._paused and self.transport is not None:
                self._paused = False
                self.transport.resume_reading()
            self._wakeup = asyncio.get_running_loop().create_future()
            await self._wakeup

    async def _serve(self) -> None:
        engine = self.engine
        while True:
            event = await self._next()
            if event is None or isinstance(event, smtp.Quit):
                break
            try:
                await self._handle(event)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("SMTP session error")
                engine.reply(INTERNAL_ERROR)
        self._flush()
        if self.transport is not None:
            self.transport.close()

    async def _handle(self, event: smtp.Event) -> None:
        engine, handler = self.engine, self.handler
        if isinstance(event, smtp.Rcpt):
            engine.reply(await handler.rcpt(self, event.address))
        elif isinstance(event, smtp.Mail):
            engine.reply(await handler.mail(self, event.address, event.options, event.smtputf8))
        elif isinstance(event, smtp.Message):
            self._flush()  # what came before the message text goes out before a slow hook
            reply = await handler.message(self, event.data)
            engine.reply(reply)
            self.state.reset()
        elif isinstance(event, smtp.Reset):
            self.state.reset()
        elif isinstance(event, smtp.Vrfy):
            # RFC 5321 §3.5.3: 252 when we will not say; answering would hand out the user list.
            engine.reply("252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery")
        elif isinstance(event, smtp.Auth):
            answer = await handler.auth(self, event.mechanism, event.initial)
            if answer is not None:
                engine.reply(answer)
        elif isinstance(event, smtp.StartTls):
            await self._start_tls()

    async def challenge(self, data: bytes) -> bytes | None:
        """RFC 4954 §4: send a 334 challenge and return the decoded answer, None when the client
        cancelled it (the engine has answered that)."""
        self.engine.challenge(data)
        event = await self._next()
        if not isinstance(event, smtp.AuthResponse):
            return None
        return event.data

    async def _start_tls(self) -> None:
        self._flush()
        transport, context = self.transport, self.tls_context
        if transport is None or context is None:
            return
        try:
            tls = await asyncio.get_running_loop().start_tls(transport, self, context, server_side=True)
        except (OSError, ssl.SSLError, ConnectionError) as error:
            log.info("STARTTLS with %s failed: %s", self.state.ip, error)
            transport.close()
            return
        if tls is None:
            transport.close()
            return
        self.transport = cast(asyncio.Transport, tls)
        self.engine.tls_started()
        self.state.reset()


_date_cache: tuple[int, str] = (0, "")


def dmarc_seen(results: Any, ip: str) -> dict[str, Any] | None:
    """What our aggregate report says of this message (RFC 7489 §7.2, Appendix C `record`), or None
    when its From domain publishes no DMARC record."""
    verdict = results.dmarc
    if not verdict.tags or verdict.result not in ("pass", "fail"):
        return None
    tags = dict(verdict.tags)
    disposition = "none"
    if verdict.result == "fail" and verdict.policy in ("quarantine", "reject"):
        disposition = verdict.policy
    return {
        "from_domain": verdict.from_domain,
        "policy_domain": verdict.policy_domain or verdict.from_domain,
        "source_ip": ip,
        "disposition": disposition,
        "dkim": "pass" if verdict.dkim_aligned else "fail",
        "spf": "pass" if verdict.spf_aligned else "fail",
        "auth": {
            "envelope_from": results.mail_from.rpartition("@")[2].lower(),
            "dkim": [{"domain": d.domain, "selector": d.selector, "result": d.result}
                     for d in results.dkim if d.result != "none"][:8],
            "spf": {"domain": results.spf.domain, "scope": "mfrom" if results.mail_from else "helo",
                    "result": results.spf.result},
        },
        "policy": {k: v for k, v in tags.items() if k in ("p", "sp", "pct", "adkim", "aspf", "fo")},
    }


def _date_now() -> str:
    """The RFC 5322 date-time of this second, formatted once per second (every Received field of a
    busy second carries the same text)."""
    global _date_cache
    second = int(time.time())
    if _date_cache[0] != second:
        _date_cache = (second, email.utils.format_datetime(email.utils.localtime()))
    return _date_cache[1]


class BaseHandler:
    """Hooks shared by the MX and submission listeners, called by `SmtpConnection` for the events
    of its engine."""

    submission = False

    def __init__(self, service: Any) -> None:
        self.service = service
        self.connections = service.connections
        # Open sessions and gates, told 421 when the server stops.
        self.sessions: set[Any] = service.smtp_sessions
        # Client addresses that waited for the greeting, with the time they may skip the wait until.
        self.greeting_passes: dict[str, float] = service.greeting_passes

    def offered(self, conn: SmtpConnection) -> list[str]:
        """The mechanisms EHLO lists after AUTH; none on the MX."""
        return []

    async def mail(self, conn: SmtpConnection, address: str, options: list[str], smtputf8: bool) -> str:
        raise NotImplementedError

    async def rcpt(self, conn: SmtpConnection, address: str) -> str:
        raise NotImplementedError

    async def message(self, conn: SmtpConnection, data: bytes) -> str:
        raise NotImplementedError

    async def auth(self, conn: SmtpConnection, mechanism: str, initial: str | None) -> str | None:
        return "504 5.5.4 Unrecognized authentication type"

    def _received(self, conn: SmtpConnection, recipient: str) -> bytes:
        state = conn.state
        protocol = "ESMTP" if conn.engine.extended else "SMTP"
        if conn.tls_active:
            protocol += "S"
        if state.authenticated_as:
            protocol += "A"  # RFC 3848
        tls = ""
        ssl_object = conn.ssl_object()
        if ssl_object is not None:
            tls = f"\r\n\t(using {ssl_object.version()} with cipher {ssl_object.cipher()[0]})"  # type: ignore[index]
        helo = (conn.helo or "unknown").replace("(", "").replace(")", "")
        stamp = _date_now()
        for_clause = f"\r\n\tfor <{recipient}>" if recipient else ""
        return (
            f"Received: from {helo} ([{state.ip}]){tls}\r\n\tby {self.service.hostname} (peerage) with {protocol}"
            f" id {secrets.token_hex(8)}{for_clause};\r\n\t{stamp}\r\n"
        ).encode("utf-8", "replace")

    def _check_body(self, data: bytes) -> str | None:
        if policy.has_bare_line_ending(data):
            return "550 5.5.2 Bare <CR> or <LF> received; only <CR><LF> may end a line (RFC 5321 2.3.8)"
        if policy.count_received(data) > policy.MAX_HOPS:
            return "554 5.4.6 Too many hops: the message is looping (RFC 5321 6.3)"
        return None

    async def _route(self, mailbox: policy.Mailbox) -> str | None:
        """The account this hosted mailbox is delivered to (postmaster@ and abuse@ always have one)."""
        routed = await self.service.route_recipient(str(mailbox))
        return str(routed) if routed is not None else None

    def _recipient_path(self, address: str) -> policy.Mailbox:
        """RFC 5321 §4.1.1.3: `RCPT TO:<Postmaster>` without a domain must be accepted; it names the
        postmaster of this server (its first hosted domain)."""
        if address.lower() == "postmaster" and self.service.domains:
            return policy.Mailbox("postmaster", self.service.domains[0].lower())
        return policy.parse_mailbox(address)


class MxHandler(BaseHandler):
    """Port 25: mail from anywhere to hosted domains' existing users."""

    async def mail(self, conn: SmtpConnection, address: str, options: list[str], smtputf8: bool) -> str:
        state, engine = conn.state, conn.engine
        if address != "<>":
            try:
                policy.parse_mailbox(address, refusal=policy.BAD_SENDER)
            except policy.PathRefused:
                return policy.BAD_SENDER
        if not self.service.mx_rate.allow(state.ip):
            return RATE_LIMITED
        state.reset()
        engine.mail_from = "" if address == "<>" else address
        engine.smtputf8 = smtputf8
        engine.mail_options = options
        state.spf_task = self.service.start_spf(state.ip, engine.mail_from, conn.helo or "")
        return SENDER_OK

    async def rcpt(self, conn: SmtpConnection, address: str) -> str:
        state, engine = conn.state, conn.engine
        try:
            mailbox = self._recipient_path(address)
        except policy.PathRefused as refused:
            return refused.reply
        if not self.service.is_hosted(mailbox.domain):
            return policy.RELAY_DENIED
        if len(engine.rcpt_tos) >= MAX_RECIPIENTS:
            return TOO_MANY_RECIPIENTS
        routed = await self._route(mailbox)
        if routed is None:
            return policy.NO_SUCH_USER
        if mailbox.local.lower() in REPORT_ADDRESSES:
            state.report = True
        engine.rcpt_tos.append(routed)
        state.local_recipients.append(routed)
        return RECIPIENT_OK

    async def message(self, conn: SmtpConnection, data: bytes) -> str:
        state, engine = conn.state, conn.engine
        refusal = self._check_body(data)
        if refusal:
            return refusal
        mail_from = engine.mail_from or ""
        helo = conn.helo or ""
        spf_task, state.spf_task = state.spf_task, None
        results = await self.service.authenticate(data, state.ip, mail_from, helo, spf_task)
        folder = "INBOX"
        seen = dmarc_seen(results, state.ip) if results is not None else None
        if results is not None:
            if results.dmarc.result == "fail" and results.dmarc.policy == "reject":
                if seen is not None:
                    await self.service.note_dmarc(seen)
                return DMARC_REJECT
            if results.dmarc.result == "fail" and results.dmarc.policy == "quarantine":
                folder = "Junk"
        authserv_id = self.service.hostname.encode()
        # RFC 8601 §5: remove Authentication-Results that claim to be ours; they are forgeries.
        if b"authentication-results" in header_block(data).lower():
            data = remove_headers(
                data,
                {b"authentication-results"},
                keep=lambda value: value.split(b";", 1)[0].strip().lower() != authserv_id.lower(),
            )
        prefix = results.header(self.service.hostname) if results is not None else b""
        try:
            await self.service.accept(
                mail_from=mail_from,
                local=list(state.local_recipients),
                remote=[],
                data=data,
                prefix=lambda rcpt: self._received(conn, rcpt) + prefix,
                folder=folder,
                smtputf8=engine.smtputf8,
                report=state.report,
                dmarc=seen,
            )
        except Exception:
            log.exception("storing a message from %s failed", state.ip)
            return TEMPORARY_FAILURE
        return OK


class SubmissionHandler(BaseHandler):
    """Ports 587 and 465: authenticated users send to anyone, only as themselves."""

    submission = True

    def offered(self, conn: SmtpConnection) -> list[str]:
        """The mechanisms listed in EHLO (with TLS), strongest first: -PLUS only if configured
        (see [auth])."""
        auth = self.service.host.config.auth
        return offered_mechanisms(secure=True, channel_bindings=channel_bindings_for(conn.ssl_object()),
                                  advertise_plus=auth.mail_advertise_plus, login=auth.smtp_login)

    # Every mechanism goes through the one SASL server (peerage.identity.sasl) and its driver
    # (peerage.identity.login): the login-name rule, the throttle and the failure log line live there.
    async def auth(self, conn: SmtpConnection, mechanism: str, initial_text: str | None) -> str | None:
        state = conn.state
        initial: bytes | None = None
        if initial_text is not None:
            # RFC 4954 §4: "=" is an empty initial response.
            blob = initial_text.encode("ascii", "replace")
            try:
                initial = b"" if blob == b"=" else base64.b64decode(blob, validate=True)
            except ValueError:
                return "501 5.5.2 Can't decode base64"
        sslobj = conn.ssl_object()
        bindings = channel_bindings_for(sslobj)
        auth = self.service.host.config.auth
        if mechanism == "LOGIN" and not auth.smtp_login:
            return "504 5.5.4 Unrecognized authentication type"
        engine = SaslServer(
            mechanisms=offered_mechanisms(secure=True, channel_bindings=bindings,
                                          advertise_plus=auth.mail_advertise_plus, login=auth.smtp_login),
            login=login_names(self.service.host, sslobj), channel_bindings=bindings, secure=True,
        )
        cancelled = False

        async def exchange(challenge: bytes) -> bytes | None:
            nonlocal cancelled
            answer = await conn.challenge(challenge)
            if answer is None:
                cancelled = True  # the engine has already answered 501
            return answer

        result = await authenticate(engine, mechanism, initial, exchange=exchange, host=self.service.host,
                                    ip=state.ip, protocol="smtp")
        if isinstance(result, Failure):
            if cancelled:
                return None
            if result.condition == "temporary-auth-failure":
                return AUTH_THROTTLED
            if result.condition in ("malformed-request", "incorrect-encoding", "invalid-mechanism"):
                return "501 5.5.2 " + result.text[:200]
            state.auth_failures += 1
            if state.auth_failures >= MAX_AUTH_FAILURES_PER_CONNECTION and conn.transport is not None:
                asyncio.get_running_loop().call_soon(conn.transport.close)
            return AUTH_INVALID
        if result.data is not None:
            # RFC 4954 §4: server-final travels in a 334 challenge; the client answers with an empty line.
            closing = await conn.challenge(result.data)
            if closing is None:
                return None
            if closing != b"":
                return "501 5.5.2 Expected an empty response to the server's final message"
        state.authenticated_as = result.account
        conn.authenticated()
        conn.engine.authenticated = True
        return "235 2.7.0 Authentication successful"

    def _own_addresses(self, state: SessionState) -> set[str]:
        assert state.authenticated_as is not None
        return {state.authenticated_as.lower()}

    def _is_own(self, state: SessionState, address: str) -> bool:
        address = address.strip().lower()
        own = self._own_addresses(state)
        if address in own:
            return True
        # Subaddressing (RFC 5233): alice+tag@example.org belongs to alice@example.org.
        local, _, domain = address.rpartition("@")
        base = local.split("+", 1)[0]
        return f"{base}@{domain}" in own

    async def mail(self, conn: SmtpConnection, address: str, options: list[str], smtputf8: bool) -> str:
        state, engine = conn.state, conn.engine
        if not engine.authenticated or state.authenticated_as is None:
            return AUTH_REQUIRED
        if address == "<>":
            return NOT_OWN_SENDER
        try:
            mailbox = policy.parse_mailbox(address, refusal=policy.BAD_SENDER)
        except policy.PathRefused:
            return policy.BAD_SENDER
        if not self._is_own(state, str(mailbox)):
            return NOT_OWN_SENDER
        state.reset()
        engine.mail_from = str(mailbox)
        engine.smtputf8 = smtputf8
        engine.mail_options = options
        return SENDER_OK

    async def rcpt(self, conn: SmtpConnection, address: str) -> str:
        state, engine = conn.state, conn.engine
        try:
            mailbox = self._recipient_path(address)
        except policy.PathRefused as refused:
            return refused.reply
        if len(engine.rcpt_tos) >= MAX_RECIPIENTS:
            return TOO_MANY_RECIPIENTS
        target = str(mailbox)
        if self.service.is_hosted(mailbox.domain):
            routed = await self._route(mailbox)
            if routed is None:
                return policy.NO_SUCH_USER
            target = routed
            state.local_recipients.append(target)
        else:
            state.remote_recipients.append(target)
        engine.rcpt_tos.append(target)
        return RECIPIENT_OK

    async def message(self, conn: SmtpConnection, data: bytes) -> str:
        state, engine = conn.state, conn.engine
        refusal = self._check_body(data)
        if refusal:
            return refusal
        from_values = header_values(data, "From")
        if len(from_values) != 1:
            return "550 5.6.0 The message needs exactly one From header (RFC 5322 3.6)"
        authors = [addr for _, addr in email.utils.getaddresses(from_values) if addr]
        if not authors or not all(self._is_own(state, a) for a in authors):
            return NOT_OWN_FROM
        # Fill in what RFC 5322 §3.6 requires and MUAs sometimes leave to the submission server
        # (RFC 6409 §8.2, 8.3).
        additions = b""
        if not header_values(data, "Date"):
            additions += f"Date: {email.utils.format_datetime(email.utils.localtime())}\r\n".encode()
        if not header_values(data, "Message-ID"):
            sender_domain = (engine.mail_from or "").rpartition("@")[2] or self.service.hostname
            additions += f"Message-ID: <{secrets.token_hex(12)}@{sender_domain}>\r\n".encode()
        data = additions + data
        sender = engine.mail_from or ""
        if state.remote_recipients:
            data = await self.service.sign(sender.rpartition("@")[2], data)
        try:
            await self.service.accept(
                mail_from=sender,
                local=list(state.local_recipients),
                remote=list(state.remote_recipients),
                data=data,
                prefix=lambda rcpt: self._received(conn, rcpt),
                folder="INBOX",
                smtputf8=engine.smtputf8,
            )
        except Exception:
            log.exception("storing a submitted message from %s failed", state.authenticated_as)
            return TEMPORARY_FAILURE
        return OK


class GreetingGate(asyncio.Protocol):
    """What answers a new connection before its `SmtpConnection` exists (asyncio's Protocol API; the
    connection is handed on with ``transport.set_protocol``).

    It refuses, without a greeting, a client over its per-IP connection cap or, on submission, over
    the global cap of connections waiting to authenticate; on the MX it keeps quiet for
    ``greeting_delay`` seconds first, as Postfix's postscreen does (RFC 5321 §4.3.1: the client waits
    for the greeting): a client that sends anything meanwhile is a spam engine that does not read
    replies, and gets 554. An address that waited once is trusted for a day. Only then is the engine
    made, given the transport, and the greeting goes out."""

    def __init__(self, make_connection: Callable[[], SmtpConnection], handler: BaseHandler,
                 greeting_delay: float) -> None:
        self.make_connection = make_connection
        self.handler = handler
        self.greeting_delay = greeting_delay
        self.transport: asyncio.Transport | None = None
        self.ip = "unknown"
        self.counted_ip: str | None = None
        self.preauth: Any = None
        self.auth_deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.ip = peer[0] if peer else "unknown"
        counter = self.handler.connections
        if counter is not None:
            if not counter.acquire(self.ip):
                self._refuse(TOO_MANY_CONNECTIONS)
                return
            self.counted_ip = self.ip
        if self.handler.submission:
            # Submission must authenticate within [limits] auth_deadline (counted from the connection),
            # and anonymous connections share one global cap (peerage.net.limits.UnauthenticatedGate).
            limits = self.handler.service.host.limits
            self.preauth = limits.preauth()
            if self.preauth is None:
                self._refuse(TOO_MANY_UNAUTHENTICATED)
                return
            self.auth_deadline = time.monotonic() + limits.config.auth_deadline
        passes: dict[str, float] | None = getattr(self.handler, "greeting_passes", None)
        if self.greeting_delay <= 0 or passes is None or passes.get(self.ip, 0.0) > time.monotonic():
            self._hand_on()
            return
        sessions = getattr(self.handler, "sessions", None)
        if sessions is not None:
            sessions.add(self)
        self._timer = asyncio.get_running_loop().call_later(self.greeting_delay, self._waited)

    def _waited(self) -> None:
        self._timer = None
        passes: dict[str, float] = self.handler.greeting_passes
        if len(passes) >= MAX_GREETING_PASSES:
            passes.clear()
        passes[self.ip] = time.monotonic() + GREETING_PASS_SECONDS
        self._hand_on()

    def data_received(self, data: bytes) -> None:
        if self._done or not data:
            return
        log.info("refusing %s: it spoke before the greeting", self.ip)
        self._refuse(EARLY_TALKER)

    def _hand_on(self) -> None:
        transport = self.transport
        if self._done or transport is None or transport.is_closing():
            return
        self._done = True
        self._forget()
        connection = self.make_connection()
        connection.take_over(self)
        transport.set_protocol(connection)
        connection.connection_made(transport)

    def _refuse(self, reply: str) -> None:
        self._done = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(with_enhanced_code(reply).encode("ascii") + b"\r\n")
            self.transport.close()

    def _forget(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        sessions = getattr(self.handler, "sessions", None)
        if sessions is not None:
            sessions.discard(self)

    def shut_down(self) -> None:
        """The server is stopping while this client waits for its greeting."""
        self._forget()
        self._refuse(SHUTTING_DOWN.decode("ascii").rstrip("\r\n"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._done = True
        self._forget()
        if self.counted_ip is not None and self.handler.connections is not None:
            self.handler.connections.release(self.counted_ip)
            self.counted_ip = None
        if self.preauth is not None:
            self.preauth.release()
            self.preauth = None


def make_server_factory(
    handler: BaseHandler,
    *,
    hostname: str,
    tls_context: ssl.SSLContext | None,
    max_size: int,
    implicit_tls: bool = False,
    submission: bool = False,
    greeting_delay: float = 0.0,
) -> Callable[[], GreetingGate]:
    starttls = tls_context if not implicit_tls else None

    def connection() -> SmtpConnection:
        engine = smtp.SmtpEngine(
            hostname=hostname,
            ident="peerage ESMTP",
            max_size=max_size,
            smtputf8=True,
            starttls_available=starttls is not None,
            require_starttls=submission and starttls is not None,
            tls=implicit_tls,
            auth_required=submission,
            # Port 465 is TLS from the first byte; elsewhere AUTH waits for STARTTLS (RFC 4954 §4).
            auth_require_tls=True,
            auth_mechanisms=SASL_MECHANISMS if submission else frozenset(),
            extensions=EXTRA_EXTENSIONS,
        )
        conn = SmtpConnection(handler, engine, implicit_tls=implicit_tls, tls_context=starttls,
                              timeout=COMMAND_TIMEOUT_SECONDS)
        if submission:
            engine.offer_auth = lambda: handler.offered(conn)
        return conn

    def factory() -> GreetingGate:
        return GreetingGate(connection, handler, greeting_delay)

    return factory
