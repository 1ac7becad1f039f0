"""SMTP server: the inbound MX (port 25) and submission (587 with STARTTLS, 465 with implicit TLS).

This module is in charge of the policy around aiosmtpd's protocol engine, written as its handler hooks:
who may send what to whom (hosted domains and existing users only on the MX, no relaying, a user sends
only as their own addresses), SPF/DKIM/DMARC on arrival, SMTP AUTH (SCRAM-SHA-256 and PLAIN, over TLS
only, throttled), per-IP limits, refusal of bare CR/LF, and making every accepted message durable
before the 250 goes out (local recipients straight into their mailbox, others into the queue).

How it uses aiosmtpd (pinned to 1.4.6 in pyproject.toml, the version these tests run against):
through its public API — handler hooks (``handle_*``, ``auth_*``), subclassing ``SMTP`` with
``smtp_<COMMAND>`` methods (its documented way to add or wrap commands), ``push``, ``Session``
(``ssl``, ``peer``), the constructor's switches (``auth_require_tls=False`` on port 465, where TLS
comes before aiosmtpd) — and asyncio's Protocol API (``connection_made``, ``data_received``,
``connection_lost``) that ``SMTP`` is built on. Bare CR/LF in command lines (RFC 5321 §2.3.8) is
caught in ``data_received`` before the engine reads the bytes.

Nothing before the greeting is aiosmtpd's: ``GreetingGate`` is the protocol a new connection gets
first (per-IP cap, the unauthenticated gate, the early-talker pause); it makes the engine and hands
the transport on with asyncio's ``set_protocol`` only when the greeting may go.

No private method is overridden: MAIL and RCPT keep a fast path for the usual ``<local@domain>``
as ``smtp_MAIL``/``smtp_RCPT`` of their own, built from the engine's public parts, and hand every
other line to aiosmtpd's commands. Bytes pipelined after the end of a message's data are checked for
bare line endings like any command line (``data_received`` splits at the final dot).
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import inspect
import logging
import re
import secrets
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session, syntax

from peerage.identity.login import authenticate, login_names
from peerage.identity.sasl import Failure, SaslServer, channel_bindings_for, offered_mechanisms
from peerage.mail.smtp import policy
from peerage.mail.smtp.headers import header_block, header_values, remove_headers
from peerage.mail.smtp.replies import with_enhanced_code

# RFC 5321 §4.5.1 and RFC 2142: the addresses `peerage dns` publishes as rua= for DMARC and TLS-RPT.
REPORT_ADDRESSES = frozenset({"postmaster", "abuse"})  # = MailService ROLE_ADDRESSES
# A path MAIL and RCPT handle without aiosmtpd's parser: "<local@domain>" with no character that
# needs RFC 5321 §4.1.2 quoting or is a source route, then the parameters.
_PLAIN_PATH = re.compile(r'[ \t]*<([^\s"\\()<>,;:\[\]@]+@[^\s"\\()<>,;:\[\]@]+)>(?:[ \t]+(.*))?[ \t]*\Z', re.S)

log = logging.getLogger(__name__)



class _LoginDataNotice(logging.Filter):
    """aiosmtpd 1.4.6 itself assigns the deprecated Session.login_data after every successful AUTH
    (smtp.py, smtp_AUTH) and logs a warning for it on its "mail.log" logger, once per login; nothing
    here reads login_data, so that one line says nothing to an operator."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Session.login_data is deprecated")


logging.getLogger("mail.log").addFilter(_LoginDataNotice())

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
# Extensions aiosmtpd does not announce by itself but supports (RFC 2920, RFC 2034).
EXTRA_EXTENSIONS = ("PIPELINING", "ENHANCEDSTATUSCODES")

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
SHUTTING_DOWN = b"421 4.3.2 Service shutting down; try again later\r\n"
EARLY_TALKER = "554 5.5.1 Protocol error: you spoke before the greeting"
# How long an address that waited for the greeting is not made to wait again (postscreen's
# postscreen_greet_ttl is 1 day).
GREETING_PASS_SECONDS = 86400.0
# Addresses remembered as having passed; past this the memory starts afresh.
MAX_GREETING_PASSES = 100000
BARE_LINE_ENDING_IN_COMMAND = (
    "500 5.5.2 Bare <CR> or <LF> in a command line; only <CR><LF> may end a line (RFC 5321 2.3.8)"
)
# What a command line ending in a bare LF (or holding a bare CR) is replaced with before aiosmtpd's
# command loop sees it: a command of our own (an ``smtp_<NAME>`` method, aiosmtpd's documented way to
# add commands), so the refusal keeps its place among pipelined replies. The offending line itself is
# never interpreted.
BARE_LINE_ENDING_COMMAND = "XBARE_LINE_ENDING"
_BARE_LINE_ENDING_LINE = BARE_LINE_ENDING_COMMAND.encode("ascii") + b"\r\n"
# Command bytes held back while their line is incomplete; past this the bytes go on as they are and
# aiosmtpd's own line-length limit (RFC 5321 §4.5.3.1.4, 512 octets and the extensions' additions)
# refuses the line.
MAX_HELD_COMMAND = 65536


def check_command_lines(data: bytes) -> tuple[bytes, bytes]:
    """(what may go to the engine, what to hold until more arrives) for bytes of the command phase:
    each complete line that does not end in CRLF, or holds a bare CR, becomes the refusal command."""
    end = data.rfind(b"\n")
    if end < 0:
        return b"", data
    complete, rest = data[: end + 1], data[end + 1 :]
    if b"\r" not in complete.replace(b"\r\n", b"") and complete.count(b"\n") == complete.count(b"\r\n"):
        return complete, rest  # the usual case: every line ends in CRLF and holds no other CR
    out = []
    for line in complete.split(b"\n")[:-1]:
        out.append(line + b"\n" if line.endswith(b"\r") and b"\r" not in line[:-1] else _BARE_LINE_ENDING_LINE)
    return b"".join(out), rest


@dataclass
class SessionState:
    """What the policy remembers about one connection, beyond aiosmtpd's Session."""

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


class PeerageSMTP(SMTP):
    """aiosmtpd's engine with enhanced status codes, per-IP connection caps and a TLS flag for 465."""

    def __init__(self, handler: Any, *, implicit_tls: bool = False, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._raw_replies = False
        self._collected: list[bytes] | None = None
        self._implicit_tls = implicit_tls
        self._counted_ip: str | None = None
        self.peer_state: SessionState | None = None
        self._preauth: Any = None
        self._auth_timer: asyncio.TimerHandle | None = None
        # Command-phase bytes whose line has not ended yet, and whether the message text is being
        # read (DATA lines are checked as a whole by `policy.has_bare_line_ending`).
        self._held = b""
        self._in_data = False
        self._data_tail = b""  # the last bytes of message data seen, to find a final dot split over reads

    def data_received(self, data: bytes) -> None:
        # asyncio's Protocol API: every byte from the client passes here before the engine reads it.
        if self._in_data:
            # RFC 5321 §4.1.1.4: the data ends at CRLF "." CRLF. What a pipelining client sent after it
            # in the same read is command lines again, checked as such.
            window = self._data_tail + data
            end = window.find(b"\r\n.\r\n")
            if end < 0:
                self._data_tail = window[-4:]
                super().data_received(data)
                return
            cut = end + 5 - len(self._data_tail)
            self._in_data = False
            super().data_received(data[:cut])
            data = data[cut:]
            if not data:
                return
        data = self._held + data
        ready, self._held = check_command_lines(data)
        if len(self._held) > MAX_HELD_COMMAND:
            ready, self._held = ready + self._held, b""
        if ready:
            super().data_received(ready)

    async def smtp_DATA(self, arg: str) -> None:
        self._in_data = True
        self._data_tail = b"\r\n"  # the DATA line's own CRLF: a message may be just "." CRLF
        try:
            await super().smtp_DATA(arg)
        finally:
            self._in_data = False

    async def smtp_XBARE_LINE_ENDING(self, arg: str | None) -> None:
        await self.push(BARE_LINE_ENDING_IN_COMMAND)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        super().connection_made(transport)
        if not first:
            return  # the STARTTLS re-wrap of an existing connection
        if self.peer_state is None:
            peer = transport.get_extra_info("peername")
            self.peer_state = SessionState(ip=peer[0] if peer else "unknown")
        sessions = getattr(self.event_handler, "sessions", None)
        if sessions is not None:
            sessions.add(self)

    def take_over(self, gate: GreetingGate) -> None:
        """What the gate acquired for this connection (its per-IP slot, the anonymous slot and the
        authentication deadline) is now this engine's to release."""
        self.peer_state = SessionState(ip=gate.ip)
        self._counted_ip, gate.counted_ip = gate.counted_ip, None
        self._preauth, gate.preauth = gate.preauth, None
        if self._preauth is not None:
            self._auth_timer = asyncio.get_running_loop().call_later(
                max(0.0, gate.auth_deadline - time.monotonic()), self._auth_deadline_passed)

    def _auth_deadline_passed(self) -> None:
        self._auth_timer = None
        transport = cast(asyncio.Transport | None, self.transport)  # uvloop's are not registered subclasses
        if transport is not None and not transport.is_closing():
            transport.write(AUTH_DEADLINE_PASSED.encode() + b"\r\n")
            transport.close()

    def authenticated(self) -> None:
        """The client logged in: the deadline and the anonymous slot no longer apply."""
        if self._auth_timer is not None:
            self._auth_timer.cancel()
            self._auth_timer = None
        if self._preauth is not None:
            self._preauth.release()
            self._preauth = None

    def connection_lost(self, error: Exception | None) -> None:
        self.authenticated()  # releases the anonymous slot and the deadline timer
        sessions = getattr(self.event_handler, "sessions", None)
        if sessions is not None:
            sessions.discard(self)
        if self._counted_ip is not None and self.event_handler.connections is not None:
            self.event_handler.connections.release(self._counted_ip)
            self._counted_ip = None
        super().connection_lost(error)

    def shut_down(self) -> None:
        """The server is stopping: say so (RFC 5321 §3.8) and close."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        # uvloop's transports are not asyncio.WriteTransport subclasses, but they write.
        write = getattr(transport, "write", None)
        if write is not None:
            write(SHUTTING_DOWN)
        transport.close()

    @property
    def tls_active(self) -> bool:
        # Session.ssl is aiosmtpd's documented record of TLS it started (STARTTLS).
        return self._implicit_tls or (self.session is not None and self.session.ssl is not None)

    def ssl_object(self) -> ssl.SSLObject | None:
        transport = self.transport
        return transport.get_extra_info("ssl_object") if transport is not None else None

    async def push(self, status: Any) -> None:
        if isinstance(status, str) and not self._raw_replies:
            status = with_enhanced_code(status)
        if self._collected is not None:
            self._collected.append(status.encode("utf-8") if isinstance(status, str) else status)
            return
        await super().push(status)

    async def smtp_EHLO(self, hostname: str) -> None:
        # The EHLO reply is a dozen lines; aiosmtpd writes each on its own. Send them in one write.
        self._raw_replies = True
        self._collected = []
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._raw_replies = False
            lines, self._collected = self._collected, None
        if lines:
            await super().push(b"\r\n".join(lines))

    # The usual MAIL and RCPT lines take a fast path: aiosmtpd parses every path with the RFC 5322
    # header parser of the standard library (about 0.3 ms a call, a fifth of a message's time in
    # bench/smtp). A plain "<local@domain>" with the parameters we know is handled here with the
    # engine's public parts (check_helo_needed, check_auth_needed, session, envelope, the
    # handler's hooks); anything else (quotes, routes, the null path, unknown or bad parameters,
    # a nested MAIL) goes to aiosmtpd's own command, which answers it.

    def _plain_path(self, arg: str | None, keyword: str) -> tuple[str, list[str]] | None:
        if arg is None or arg[: len(keyword)].upper() != keyword:
            return None
        found = _PLAIN_PATH.match(arg, len(keyword))
        if found is None:
            return None
        address = found.group(1)
        local = address.partition("@")[0]
        if self.local_part_limit and len(local) > self.local_part_limit:
            return None
        return address, (found.group(2) or "").upper().split()

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:
        plain = self._plain_path(arg, "FROM:")
        session, envelope = self.session, self.envelope
        if plain is None or session is None or envelope is None or envelope.mail_from:
            await super().smtp_MAIL(arg)
            return
        address, options = plain
        if options and not session.extended_smtp:
            await super().smtp_MAIL(arg)
            return
        smtputf8 = False
        for option in options:
            name, _, value = option.partition("=")
            if name == "SIZE" and value.isdigit():
                if self.data_size_limit and int(value) > self.data_size_limit:
                    await super().smtp_MAIL(arg)  # its 552
                    return
            elif name == "BODY" and value in ("7BIT", "8BITMIME"):
                pass
            elif option == "SMTPUTF8" and self.enable_SMTPUTF8:
                smtputf8 = True
            else:
                await super().smtp_MAIL(arg)
                return
        if await self.check_helo_needed() or await self.check_auth_needed("MAIL"):
            return
        envelope.smtp_utf8 = smtputf8
        await self.push(await self.event_handler.handle_MAIL(self, session, envelope, address, options))

    @syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg: str | None) -> None:
        plain = self._plain_path(arg, "TO:")
        session, envelope = self.session, self.envelope
        # RCPT parameters: aiosmtpd knows none and refuses them (555); it answers those lines itself.
        if plain is None or plain[1] or session is None or envelope is None or envelope.mail_from is None:
            if envelope is not None and envelope.mail_from == "":
                # The null reverse-path of a bounce (RFC 5321 §4.5.5) is stored as "", which
                # aiosmtpd's RCPT takes for "no MAIL yet": it sees a stand-in while it answers.
                envelope.mail_from = "<>"
                try:
                    await super().smtp_RCPT(arg)
                finally:
                    if envelope.mail_from == "<>":
                        envelope.mail_from = ""
                return
            await super().smtp_RCPT(arg)
            return
        if await self.check_helo_needed() or await self.check_auth_needed("RCPT"):
            return
        await self.push(await self.event_handler.handle_RCPT(self, session, envelope, plain[0], []))

    async def smtp_HELO(self, hostname: str) -> None:
        self._raw_replies = True
        try:
            await super().smtp_HELO(hostname)
        finally:
            self._raw_replies = False



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


def _state(server: SMTP) -> SessionState:
    state = getattr(server, "peer_state", None)
    assert state is not None
    return state


class BaseHandler:
    """Hooks shared by the MX and submission listeners."""

    submission = False

    def __init__(self, service: Any) -> None:
        self.service = service
        self.connections = service.connections
        # Open sessions, told 421 when the server stops.
        self.sessions: set[Any] = service.smtp_sessions  # engines and gates: told 421 on shutdown
        # Client addresses that waited for the greeting, with the time they may skip the wait until.
        self.greeting_passes: dict[str, float] = service.greeting_passes

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        last = responses.pop()  # "250 HELP"
        responses = [r for r in responses if r.strip() != "250-AUTH"]
        responses.extend(f"250-{ext}" for ext in EXTRA_EXTENSIONS)
        responses.append(last)
        return responses

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        _state(server).reset()
        return OK

    async def handle_exception(self, error: Exception) -> str:
        # aiosmtpd's default names the exception to the client; say less and log the rest.
        log.exception("SMTP session error", exc_info=error)
        return "451 4.3.0 Internal error; try again later"

    async def handle_NOOP(self, server: SMTP, session: Session, envelope: Envelope, arg: str) -> str:
        return OK

    async def handle_VRFY(self, server: SMTP, session: Session, envelope: Envelope, address: str) -> str:
        # RFC 5321 §3.5.3: 252 when we will not say; answering would hand out the user list.
        return "252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery"

    def _received(self, server: PeerageSMTP, session: Session, envelope: Envelope, recipient: str) -> bytes:
        state = _state(server)
        protocol = "ESMTP" if session.extended_smtp else "SMTP"
        if server.tls_active:
            protocol += "S"
        if state.authenticated_as:
            protocol += "A"  # RFC 3848
        tls = ""
        ssl_object = server.ssl_object()
        if ssl_object is not None:
            tls = f"\r\n\t(using {ssl_object.version()} with cipher {ssl_object.cipher()[0]})"  # type: ignore[index]
        helo = (session.host_name or "unknown").replace("(", "").replace(")", "")
        stamp = _date_now()
        for_clause = f"\r\n\tfor <{recipient}>" if recipient else ""
        return (
            f"Received: from {helo} ([{state.ip}]){tls}\r\n\tby {self.service.hostname} (peerage) with {protocol}"
            f" id {secrets.token_hex(8)}{for_clause};\r\n\t{stamp}\r\n"
        ).encode("utf-8", "replace")

    def _check_body(self, envelope: Envelope) -> tuple[bytes, str | None]:
        data = envelope.original_content or b""
        if policy.has_bare_line_ending(data):
            return data, "550 5.5.2 Bare <CR> or <LF> received; only <CR><LF> may end a line (RFC 5321 2.3.8)"
        if policy.count_received(data) > policy.MAX_HOPS:
            return data, "554 5.4.6 Too many hops: the message is looping (RFC 5321 6.3)"
        return data, None

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


# aiosmtpd inspects handle_EHLO's signature for every connection (to tell its old 4-argument form
# from the current one); a precomputed __signature__ makes that a lookup.
BaseHandler.handle_EHLO.__signature__ = inspect.signature(BaseHandler.handle_EHLO)  # type: ignore[attr-defined]


class MxHandler(BaseHandler):
    """Port 25: mail from anywhere to hosted domains' existing users."""

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        state = _state(server)
        if address != "<>":
            try:
                policy.parse_mailbox(address, refusal=policy.BAD_SENDER)
            except policy.PathRefused:
                return policy.BAD_SENDER
        if not self.service.mx_rate.allow(state.ip):
            return RATE_LIMITED
        state.reset()
        envelope.mail_from = "" if address == "<>" else address
        state.spf_task = self.service.start_spf(state.ip, envelope.mail_from, session.host_name or "")
        envelope.mail_options.extend(mail_options)
        return SENDER_OK

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        state = _state(server)
        if envelope.mail_from is None:
            return "503 5.5.1 Error: need MAIL command"
        try:
            mailbox = self._recipient_path(address)
        except policy.PathRefused as refused:
            return refused.reply
        if not self.service.is_hosted(mailbox.domain):
            return policy.RELAY_DENIED
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return TOO_MANY_RECIPIENTS
        routed = await self._route(mailbox)
        if routed is None:
            return policy.NO_SUCH_USER
        if mailbox.local.lower() in REPORT_ADDRESSES:
            state.report = True
        envelope.rcpt_tos.append(routed)
        state.local_recipients.append(routed)
        return RECIPIENT_OK

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(server, PeerageSMTP)
        state = _state(server)
        data, refusal = self._check_body(envelope)
        if refusal:
            return refusal
        mail_from = envelope.mail_from or ""
        spf_task, state.spf_task = state.spf_task, None
        results = await self.service.authenticate(data, state.ip, mail_from, session.host_name or "", spf_task)
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
                prefix=lambda rcpt: self._received(server, session, envelope, rcpt) + prefix,
                folder=folder,
                smtputf8=envelope.smtp_utf8,
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

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        responses = await super().handle_EHLO(server, session, envelope, hostname, responses)
        # aiosmtpd lists every auth_* method; list what this connection offers, strongest first.
        return [("250-AUTH " + " ".join(self.offered(server))) if r.startswith("250-AUTH ") else r
                for r in responses]

    # Every mechanism goes through the one SASL server (peerage.identity.sasl) and its driver
    # (peerage.identity.login): the login-name rule, the throttle and the failure log line live there.
    async def auth_PLAIN(self, server: SMTP, args: list[str]) -> AuthResult:
        return await self._sasl(server, "PLAIN", args)

    async def auth_LOGIN(self, server: SMTP, args: list[str]) -> AuthResult:
        return await self._sasl(server, "LOGIN", args)

    async def auth_SCRAM__SHA__1(self, server: SMTP, args: list[str]) -> AuthResult:
        return await self._sasl(server, "SCRAM-SHA-1", args)

    async def auth_SCRAM__SHA__1__PLUS(self, server: SMTP, args: list[str]) -> AuthResult:
        return await self._sasl(server, "SCRAM-SHA-1-PLUS", args)

    async def auth_SCRAM__SHA__256(self, server: SMTP, args: list[str]) -> AuthResult:
        return await self._sasl(server, "SCRAM-SHA-256", args)

    async def auth_SCRAM__SHA__256__PLUS(self, server: SMTP, args: list[str]) -> AuthResult:
        return await self._sasl(server, "SCRAM-SHA-256-PLUS", args)

    def offered(self, server: SMTP) -> list[str]:
        """The mechanisms listed in EHLO (with TLS): -PLUS only if configured (see [auth])."""
        assert isinstance(server, PeerageSMTP)
        auth = self.service.host.config.auth
        return offered_mechanisms(secure=True, channel_bindings=channel_bindings_for(server.ssl_object()),
                                  advertise_plus=auth.mail_advertise_plus, login=auth.smtp_login)

    async def _sasl(self, server: SMTP, mechanism: str, args: list[str]) -> AuthResult:
        assert isinstance(server, PeerageSMTP)
        state = _state(server)
        initial: bytes | None = None
        if len(args) == 2:
            # RFC 4954 §4: "=" is an empty initial response.
            blob = args[1].encode("ascii", "replace")
            try:
                initial = b"" if blob == b"=" else base64.b64decode(blob, validate=True)
            except ValueError:
                return AuthResult(success=False, handled=False, message="501 5.5.2 Can't decode base64")
        sslobj = server.ssl_object()
        bindings = channel_bindings_for(sslobj)
        auth = self.service.host.config.auth
        if mechanism == "LOGIN" and not auth.smtp_login:
            return AuthResult(success=False, handled=False, message="504 5.5.4 Unrecognized authentication type")
        engine = SaslServer(
            mechanisms=offered_mechanisms(secure=True, channel_bindings=bindings,
                                          advertise_plus=auth.mail_advertise_plus, login=auth.smtp_login),
            login=login_names(self.service.host, sslobj), channel_bindings=bindings, secure=True,
        )
        cancelled = False

        async def exchange(challenge: bytes) -> bytes | None:
            nonlocal cancelled
            answer = await server.challenge_auth(challenge)
            if not isinstance(answer, bytes):
                cancelled = True  # aiosmtpd has already answered 501
                return None
            return answer

        result = await authenticate(engine, mechanism, initial, exchange=exchange, host=self.service.host,
                                    ip=state.ip, protocol="smtp")
        if isinstance(result, Failure):
            if cancelled:
                return AuthResult(success=False, handled=True)
            if result.condition == "temporary-auth-failure":
                return AuthResult(success=False, handled=False, message=AUTH_THROTTLED)
            if result.condition in ("malformed-request", "incorrect-encoding", "invalid-mechanism"):
                return AuthResult(success=False, handled=False, message="501 5.5.2 " + result.text[:200])
            state.auth_failures += 1
            if state.auth_failures >= MAX_AUTH_FAILURES_PER_CONNECTION and server.transport is not None:
                asyncio.get_running_loop().call_soon(server.transport.close)
            return AuthResult(success=False, handled=False, message=AUTH_INVALID)
        if result.data is not None:
            # RFC 4954 §4: server-final travels in a 334 challenge; the client answers with an empty line.
            closing = await server.challenge_auth(result.data)
            if closing != b"":
                return AuthResult(success=False, handled=True)
        state.authenticated_as = result.account
        server.authenticated()
        return AuthResult(success=True, auth_data=result.account)

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

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        state = _state(server)
        if not session.authenticated or state.authenticated_as is None:
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
        envelope.mail_from = str(mailbox)
        envelope.mail_options.extend(mail_options)
        return SENDER_OK

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        state = _state(server)
        if envelope.mail_from is None:
            return "503 5.5.1 Error: need MAIL command"
        try:
            mailbox = self._recipient_path(address)
        except policy.PathRefused as refused:
            return refused.reply
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
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
        envelope.rcpt_tos.append(target)
        return RECIPIENT_OK

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(server, PeerageSMTP)
        state = _state(server)
        data, refusal = self._check_body(envelope)
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
            sender_domain = (envelope.mail_from or "").rpartition("@")[2] or self.service.hostname
            additions += f"Message-ID: <{secrets.token_hex(12)}@{sender_domain}>\r\n".encode()
        data = additions + data
        sender = envelope.mail_from or ""
        if state.remote_recipients:
            data = await self.service.sign(sender.rpartition("@")[2], data)
        try:
            await self.service.accept(
                mail_from=sender,
                local=list(state.local_recipients),
                remote=list(state.remote_recipients),
                data=data,
                prefix=lambda rcpt: self._received(server, session, envelope, rcpt),
                folder="INBOX",
                smtputf8=envelope.smtp_utf8,
            )
        except Exception:
            log.exception("storing a submitted message from %s failed", state.authenticated_as)
            return TEMPORARY_FAILURE
        return OK


class GreetingGate(asyncio.Protocol):
    """What answers a new connection before the SMTP engine exists (asyncio's Protocol API; the
    connection is handed on with ``transport.set_protocol``, as aiosmtpd itself does for STARTTLS).

    It refuses, without a greeting, a client over its per-IP connection cap or, on submission, over
    the global cap of connections waiting to authenticate; on the MX it keeps quiet for
    ``greeting_delay`` seconds first, as Postfix's postscreen does (RFC 5321 §4.3.1: the client waits
    for the greeting): a client that sends anything meanwhile is a spam engine that does not read
    replies, and gets 554. An address that waited once is trusted for a day. Only then is the engine
    made, given the transport, and the greeting goes out."""

    def __init__(self, make_engine: Callable[[], PeerageSMTP], handler: Any, greeting_delay: float) -> None:
        self.make_engine = make_engine
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
        if getattr(self.handler, "submission", False):
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
        engine = self.make_engine()
        engine.take_over(self)
        transport.set_protocol(engine)
        engine.connection_made(transport)

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
    def engine() -> PeerageSMTP:
        return PeerageSMTP(
            handler,
            implicit_tls=implicit_tls,
            hostname=hostname,
            ident="peerage ESMTP",
            data_size_limit=max_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            tls_context=None if implicit_tls else tls_context,
            require_starttls=submission and not implicit_tls and tls_context is not None,
            timeout=COMMAND_TIMEOUT_SECONDS,
            auth_required=submission,
            # Port 465 is TLS from the first byte, which aiosmtpd does not know of: there, AUTH needs
            # no STARTTLS (the constructor's documented switch).
            auth_require_tls=not implicit_tls,
            auth_exclude_mechanism=[] if submission else ["LOGIN", "PLAIN"],
        )

    def factory() -> GreetingGate:
        return GreetingGate(engine, handler, greeting_delay)

    return factory

