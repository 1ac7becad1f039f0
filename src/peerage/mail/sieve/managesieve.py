"""ManageSieve (RFC 5804): the protocol mail clients use to edit an account's Sieve scripts.

This module is in charge of the listener of ``[sieve] listen`` (port 4190, RFC 5804 §1.8) and of one
session per connection: the greeting with the capabilities (§1.7), STARTTLS (§2.2; the RFC defines
no implicit-TLS port, so none is offered), AUTHENTICATE (§2.1) through the one SASL engine
(``peerage.identity.sasl``) and its driver (``peerage.identity.login``: the login-name rule, the
shared throttle, the failure log line), and the script commands PUTSCRIPT, CHECKSCRIPT, HAVESPACE,
LISTSCRIPTS, SETACTIVE, GETSCRIPT, DELETESCRIPT, RENAMESCRIPT, NOOP, UNAUTHENTICATE (§2.14.1), LOGOUT. Scripts are checked by
``peerage.mail.sieve.grammar`` before they are stored: a bad one is refused with its line and column.

As IMAP does, authentication is refused before TLS (``ENCRYPT-NEEDED``), so no password crosses
the network in clear.

Limits (named, with precedent): ``MAX_LINE`` for a command outside literals (Dovecot's
``managesieve`` caps a command line at 64 KiB, Cyrus timsieved at 8 KiB; 8 KiB), ``MAX_QUOTED``
(RFC 5804 §4: quoted strings are at most 1024 octets), literals up to the script size limit (larger
ones are read and dropped up to ``MAX_DISCARD`` and answered ``NO (QUOTA/MAXSIZE)``, beyond that the
connection is closed), ``COMMAND_SECONDS`` for one whole command once it has begun (so a client
dripping a byte at a time cannot hold a session), ``MAX_BAD`` malformed commands before ``BYE``
(Dovecot closes after 10 errors too), and the ``[limits]`` idle timeouts, authentication deadline,
per-address connection cap and unauthenticated gate every protocol shares.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import ssl
import time
from typing import Any, cast

from peerage.identity.login import authenticate, login_names
from peerage.identity.sasl import Failure, SaslServer, channel_bindings_for, offered_mechanisms
from peerage.mail.sieve import scripts_for
from peerage.mail.sieve.grammar import EXTENSIONS, MAX_SCRIPT_SIZE, SieveError, parse
from peerage.mail.sieve.interpret import MAX_REDIRECTS
from peerage.mail.sieve.store import ScriptError, ScriptStore, valid_name
from peerage.net.listen import start_listeners

log = logging.getLogger("peerage.managesieve")

MAX_LINE = 8192
MAX_QUOTED = 1024
MAX_DISCARD = 4 * MAX_SCRIPT_SIZE
COMMAND_SECONDS = 60.0
MAX_BAD = 10
STOP_SECONDS = 3.0
WRITE_TIMEOUT = 30.0
# Bytes asked of the stream at once: more than asyncio's read-ahead (2 × 64 KiB), so one read takes
# everything buffered (what the STARTTLS rule above relies on).
READ_CHUNK = 256 * 1024


_AUTHENTICATED_COMMANDS = frozenset({"HAVESPACE", "PUTSCRIPT", "CHECKSCRIPT", "LISTSCRIPTS", "SETACTIVE",
                                     "GETSCRIPT", "DELETESCRIPT", "RENAMESCRIPT"})


class _Close(Exception):
    pass


class _Bad(Exception):
    """A malformed command: answered NO (RFC 5804 §1.3 has no BAD); counts toward MAX_BAD."""


class _TooLarge(Exception):
    pass


def quote(text: str) -> bytes:
    data = text.encode("utf-8")
    if len(data) <= MAX_QUOTED and b"\r" not in data and b"\n" not in data and b"\0" not in data:
        return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(data) + data


class _Reader:
    """Tokens of one command: atoms, quoted strings, literals ({n} or {n+}, RFC 5804 §4), numbers.

    It keeps its own buffer, filled by reads that take everything the stream holds, so that at
    STARTTLS whatever a client pipelined in plaintext is in this buffer and can be dropped
    (CVE-2011-0411)."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self.stream = stream
        self.deadline = 0.0
        self.buffer = bytearray()

    async def _fill(self, timeout: float | None = None) -> None:
        if timeout is None:
            timeout = self.deadline - time.monotonic()
            if timeout <= 0:
                raise _Close("command took too long")
            reason = "command took too long"
        else:
            reason = "idle for too long"
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow the cancellation the
            # service's stop() sends while the wait completes (CPython gh-86296), and the session runs on.
            async with asyncio.timeout(timeout):
                data = await self.stream.read(READ_CHUNK)
        except TimeoutError:
            raise _Close(reason) from None
        if not data:
            raise _Close("connection closed")
        self.buffer += data

    async def line(self, timeout: float | None = None) -> bytes:
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0:
                if end > MAX_LINE:
                    raise _Close("line too long")
                data = bytes(self.buffer[:end + 1])
                del self.buffer[:end + 1]
                return data[:-2] if data.endswith(b"\r\n") else data[:-1]
            if len(self.buffer) > MAX_LINE:
                raise _Close("line too long")
            await self._fill(timeout)
            timeout = None  # once a command has begun, COMMAND_SECONDS bounds the rest of it

    async def exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            await self._fill()
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    async def command(self, first_timeout: float, cap: float | None = None) -> list[bytes | str]:
        """Read one command; its first line waits up to ``first_timeout`` (idle), the whole command
        must then arrive within COMMAND_SECONDS, and before the monotonic time ``cap`` if given
        (the authentication deadline of a session not yet logged in)."""
        now = time.monotonic()
        self.deadline = now + COMMAND_SECONDS + first_timeout if cap is None else min(cap, now + first_timeout)
        line = await self.line(first_timeout)
        self.deadline = time.monotonic() + COMMAND_SECONDS if cap is None else min(cap, time.monotonic() + COMMAND_SECONDS)
        tokens: list[bytes | str] = []
        too_large = False
        while True:
            literal = self.tokens_of(line, tokens)
            if literal is None:
                break
            if literal > MAX_SCRIPT_SIZE:
                if literal > MAX_DISCARD:
                    raise _Close("literal too large")
                await self._discard(literal)
                too_large = True
                tokens.append(b"")
            else:
                tokens.append(await self.exactly(literal))
            line = await self.line()
        if too_large:
            raise _TooLarge()
        return tokens

    async def _discard(self, size: int) -> None:
        while True:
            taken = min(size, len(self.buffer))
            del self.buffer[:taken]
            size -= taken
            if not size:
                return
            await self._fill()

    @staticmethod
    def tokens_of(line: bytes, tokens: list[bytes | str]) -> int | None:
        """Add the tokens of ``line``; return a literal's size when the line ends with one."""
        i = 0
        n = len(line)
        while i < n:
            ch = line[i:i + 1]
            if ch == b" ":
                i += 1
            elif ch == b'"':
                out = bytearray()
                i += 1
                while True:
                    if i >= n:
                        raise _Bad("unterminated quoted string")
                    c = line[i:i + 1]
                    if c == b"\\" and i + 1 < n and line[i + 1:i + 2] in (b"\\", b'"'):
                        out += line[i + 1:i + 2]
                        i += 2
                    elif c == b'"':
                        i += 1
                        break
                    else:
                        out += c
                        i += 1
                    if len(out) > MAX_QUOTED:
                        raise _Bad("quoted string longer than 1024 octets; use a literal")
                tokens.append(bytes(out))
            elif ch == b"{":
                end = line.find(b"}", i)
                if end != n - 1:
                    raise _Bad("a literal must end its line")
                spec = line[i + 1:end].rstrip(b"+")
                if not spec.isdigit() or len(spec) > 10:
                    raise _Bad("bad literal length")
                return int(spec)
            else:
                end = line.find(b" ", i)
                end = n if end < 0 else end
                tokens.append(line[i:end].decode("ascii", "replace"))
                i = end
        return None


class ManageSieveSession:
    def __init__(self, host: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 tls_context: ssl.SSLContext | None) -> None:
        self.host = host
        self.reader = _Reader(reader)
        self.writer = writer
        self.tls_context = tls_context
        self.tls = False
        self.user: str | None = None
        self.scripts: ScriptStore = scripts_for(host)
        peer = writer.get_extra_info("peername")
        self.ip = peer[0] if peer else "unknown"
        self._out = bytearray()
        self._bad = 0
        self._deadline = time.monotonic() + host.config.limits.auth_deadline
        self._preauth = host.limits.preauth()

    # --- output -------------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self._out += data

    def respond(self, status: str, text: str = "", code: str | None = None) -> None:
        out = status.encode()
        if code:
            out += b" (" + code.encode() + b")"
        if text:
            out += b" " + quote(text)
        self._out += out + b"\r\n"

    async def flush(self) -> None:
        if self._out:
            self.writer.write(bytes(self._out))
            self._out.clear()
        try:
            # asyncio.timeout, not wait_for (CPython gh-86296, as in _fill).
            async with asyncio.timeout(WRITE_TIMEOUT):
                await self.writer.drain()
        except TimeoutError:
            self.writer.transport.abort()
            raise _Close("client does not read") from None

    def capabilities(self) -> None:
        mechanisms = " ".join(self._sasl().offered) if self.tls else ""
        self.send(b'"IMPLEMENTATION" "peerage"\r\n')
        self.send(b'"SASL" ' + quote(mechanisms) + b"\r\n")
        self.send(b'"SIEVE" ' + quote(" ".join(EXTENSIONS)) + b"\r\n")
        if not self.tls and self.tls_context is not None:
            self.send(b'"STARTTLS"\r\n')
        self.send(b'"MAXREDIRECTS" "%d"\r\n' % MAX_REDIRECTS)
        if self.user:
            self.send(b'"OWNER" ' + quote(self.user) + b"\r\n")
        self.send(b'"UNAUTHENTICATE"\r\n')
        self.send(b'"VERSION" "1.0"\r\n')

    # --- session ------------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            if self._preauth is None:
                self.respond("BYE", "Too many connections waiting to log in; try again later", "TRYLATER")
                raise _Close()
            self.capabilities()
            self.respond("OK", "peerage ManageSieve ready")
            await self.flush()
            while True:
                limits = self.host.config.limits
                if self.user:
                    timeout = limits.idle_timeout
                else:
                    timeout = min(limits.idle_timeout_unauthenticated, self._deadline - time.monotonic())
                    if timeout <= 0:
                        self.respond("BYE", "Authentication deadline passed")
                        raise _Close()
                try:
                    tokens = await self.reader.command(timeout, None if self.user else self._deadline)
                except _TooLarge:
                    self.respond("NO", f"scripts are limited to {MAX_SCRIPT_SIZE} octets", "QUOTA/MAXSIZE")
                    await self.flush()
                    continue
                except _Bad as exc:
                    await self._malformed(str(exc))
                    continue
                if not tokens:
                    await self._malformed("empty command")
                    continue
                try:
                    await self.execute(tokens)
                except _Bad as exc:
                    await self._malformed(str(exc))
                    continue
                await self.flush()
        except _Close as exc:
            if str(exc) in ("idle for too long", "command took too long", "line too long", "literal too large"):
                self.respond("BYE", str(exc).capitalize())
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            self._release()
            with contextlib.suppress(ConnectionError, ssl.SSLError, RuntimeError):
                if self._out:
                    self.writer.write(bytes(self._out))
                    self._out.clear()
                self.writer.close()

    def _release(self) -> None:
        if self._preauth is not None:
            self._preauth.release()
            self._preauth = None

    async def _malformed(self, message: str) -> None:
        self._bad += 1
        if self._bad >= MAX_BAD:
            self.respond("BYE", "Too many bad commands")
            raise _Close()
        self.respond("NO", message)
        await self.flush()

    @staticmethod
    def _string(token: bytes | str | None, what: str) -> str:
        if not isinstance(token, bytes):
            raise _Bad(f"{what} must be a string")
        try:
            return token.decode("utf-8")
        except UnicodeDecodeError:
            raise _Bad(f"{what} is not UTF-8") from None

    def _args(self, tokens: list[bytes | str], count: int, name: str) -> list[bytes | str]:
        if len(tokens) - 1 != count:
            raise _Bad(f"{name} takes {count} argument{'s' if count != 1 else ''}")
        return tokens[1:]

    async def execute(self, tokens: list[bytes | str]) -> None:
        word = tokens[0]
        if not isinstance(word, str):
            raise _Bad("a command starts with its name")
        name = word.upper()
        if name == "LOGOUT":
            self.respond("OK", "Logout completed")
            raise _Close()
        if name == "CAPABILITY":
            self._args(tokens, 0, name)
            self.capabilities()
            self.respond("OK", "Capability completed")
            return
        if name == "NOOP":
            if len(tokens) > 2:
                raise _Bad("NOOP takes at most one argument")
            if len(tokens) == 2:
                tag = self._string(tokens[1], "the tag")
                self.respond("OK", "Done", "TAG " + quote(tag).decode("utf-8"))
            else:
                self.respond("OK", "Done")
            return
        if name == "STARTTLS":
            await self._starttls(tokens)
            return
        if name == "AUTHENTICATE":
            await self._authenticate(tokens)
            return
        if name == "UNAUTHENTICATE":
            self._args(tokens, 0, name)
            await self._unauthenticate()
            return
        if name not in _AUTHENTICATED_COMMANDS:
            raise _Bad(f"unknown command {name[:32]}")
        if self.user is None:
            self.respond("NO", "Authenticate first")
            return
        account = self.user
        try:
            if name == "HAVESPACE":
                script_name, size = self._args(tokens, 2, name)
                if not isinstance(size, str) or not size.isdigit() or len(size) > 10:
                    raise _Bad("HAVESPACE needs a size")
                await self.scripts.have_space(account, self._string(script_name, "the name"), int(size))
                self.respond("OK")
            elif name in ("PUTSCRIPT", "CHECKSCRIPT"):
                target = ""
                if name == "PUTSCRIPT":
                    name_token, content = self._args(tokens, 2, name)
                    target = self._string(name_token, "the name")
                    if not valid_name(target):
                        self.respond("NO", "invalid script name")
                        return
                else:
                    (content,) = self._args(tokens, 1, name)
                if not isinstance(content, bytes):
                    raise _Bad("the script must be a string")
                try:
                    parse(content)
                except SieveError as exc:
                    self.respond("NO", str(exc))
                    return
                if name == "PUTSCRIPT":
                    await self.scripts.put(account, target, content)
                self.respond("OK")
            elif name == "LISTSCRIPTS":
                self._args(tokens, 0, name)
                for info in await self.scripts.list(account):
                    self.send(quote(info.name) + (b" ACTIVE" if info.active else b"") + b"\r\n")
                self.respond("OK", "Listscripts completed")
            elif name == "SETACTIVE":
                (script_name,) = self._args(tokens, 1, name)
                await self.scripts.set_active(account, self._string(script_name, "the name"))
                self.respond("OK")
            elif name == "GETSCRIPT":
                (script_name,) = self._args(tokens, 1, name)
                stored = await self.scripts.get(account, self._string(script_name, "the name"))
                if stored is None:
                    self.respond("NO", "there is no script of that name", "NONEXISTENT")
                    return
                self.send(b"{%d}\r\n" % len(stored) + stored + b"\r\n")
                self.respond("OK", "Getscript completed")
            elif name == "DELETESCRIPT":
                (script_name,) = self._args(tokens, 1, name)
                await self.scripts.delete(account, self._string(script_name, "the name"))
                self.respond("OK")
            elif name == "RENAMESCRIPT":
                old, new = self._args(tokens, 2, name)
                await self.scripts.rename(account, self._string(old, "the name"), self._string(new, "the new name"))
                self.respond("OK")
            else:
                raise _Bad(f"unknown command {name[:32]}")
        except ScriptError as exc:
            self.respond("NO", exc.text, exc.code)

    async def _starttls(self, tokens: list[bytes | str]) -> None:
        self._args(tokens, 0, "STARTTLS")
        if self.tls:
            self.respond("NO", "TLS is already active")
            return
        if self.tls_context is None:
            self.respond("NO", "TLS is not available")
            return
        # As IMAP does: stop reading before the OK goes out, so the ClientHello is not read into the
        # plaintext buffer; anything pipelined after STARTTLS is dropped (CVE-2011-0411).
        cast(asyncio.Transport, self.writer.transport).pause_reading()
        self.respond("OK", "Begin TLS negotiation now")
        await self.flush()
        self.reader.buffer.clear()
        try:
            # asyncio.timeout, not wait_for (CPython gh-86296, as in _fill).
            async with asyncio.timeout(30):
                await self.writer.start_tls(self.tls_context)
        except (TimeoutError, ssl.SSLError, ConnectionError) as exc:
            log.info("ManageSieve STARTTLS from %s failed: %s", self.ip, exc)
            raise _Close() from None
        self.tls = True
        # RFC 5804 §2.2: after TLS the server sends its capabilities again, unprompted.
        self.capabilities()
        self.respond("OK", "TLS negotiation successful")

    def _sasl(self) -> SaslServer:
        sslobj = self.writer.get_extra_info("ssl_object") if self.tls else None
        bindings = channel_bindings_for(sslobj)
        offered = offered_mechanisms(secure=self.tls, channel_bindings=bindings,
                                     advertise_plus=self.host.config.auth.mail_advertise_plus)
        offered = [m for m in offered if m not in ("LOGIN", "EXTERNAL")]
        return SaslServer(mechanisms=offered, login=login_names(self.host, sslobj),
                          channel_bindings=bindings, secure=self.tls)

    async def _exchange(self, challenge: bytes) -> bytes | None:
        self.send(quote(base64.b64encode(challenge).decode()) + b"\r\n")
        await self.flush()
        self.reader.deadline = time.monotonic() + COMMAND_SECONDS
        tokens: list[bytes | str] = []
        line = await self.reader.line()
        try:
            literal = self.reader.tokens_of(line, tokens)
        except _Bad:
            return None
        if literal is not None:
            if literal > MAX_LINE:
                raise _Close("literal too large")
            tokens.append(await self.reader.exactly(literal))
            await self.reader.line()
        if len(tokens) != 1 or not isinstance(tokens[0], bytes):
            return None
        if tokens[0] == b"*":
            return None
        try:
            return base64.b64decode(tokens[0], validate=True)
        except (binascii.Error, ValueError):
            return None

    async def _unauthenticate(self) -> None:
        """RFC 5804 §2.14.1: back to the non-authenticated state on the same (TLS) connection. Only
        after a login (else NO); the connection is anonymous again, with a place in the global cap
        and the authentication deadline."""
        if self.user is None:
            self.respond("NO", "Not authenticated")
            return
        preauth = self.host.limits.preauth()
        if preauth is None:
            self.respond("NO", "Too many connections waiting to authenticate; try again later", "TRYLATER")
            return
        log.info("ManageSieve UNAUTHENTICATE %s from %s", self.user, self.ip)
        self.user = None
        self._preauth = preauth
        self._deadline = time.monotonic() + self.host.config.limits.auth_deadline
        self.respond("OK", "Unauthenticate completed")

    async def _authenticate(self, tokens: list[bytes | str]) -> None:
        if self.user is not None:
            self.respond("NO", "Already authenticated")
            return
        if len(tokens) not in (2, 3):
            raise _Bad("AUTHENTICATE needs a mechanism")
        if not self.tls:
            self.respond("NO", "Use STARTTLS first; cleartext authentication is refused", "ENCRYPT-NEEDED")
            return
        mechanism = self._string(tokens[1], "the mechanism").upper()
        server = self._sasl()
        if mechanism not in server.offered:
            self.respond("NO", "Unsupported authentication mechanism")
            return
        initial: bytes | None = None
        if len(tokens) == 3:
            raw = tokens[2]
            if not isinstance(raw, bytes):
                raise _Bad("the initial response must be a string")
            try:
                initial = base64.b64decode(raw, validate=True)
            except (binascii.Error, ValueError):
                raise _Bad("invalid base64") from None
        result = await authenticate(server, mechanism, initial, exchange=self._exchange, host=self.host,
                                    ip=self.ip, protocol="managesieve")
        if isinstance(result, Failure):
            if result.condition == "temporary-auth-failure":
                self.respond("NO", "Too many failed attempts; try again later", "TRYLATER")
            elif result.condition == "aborted":
                self.respond("NO", "Authentication cancelled")
            else:
                self.respond("NO", "Authentication failed")
            return
        self.user = result.account
        self._release()
        log.info("ManageSieve login %s from %s", result.account, self.ip)
        if result.data is not None:
            # RFC 5804 §2.1: the server's last SASL message rides in the OK's SASL response code.
            self.respond("OK", "Authenticated", "SASL " + quote(base64.b64encode(result.data).decode()).decode())
        else:
            self.respond("OK", "Authenticated")


class ManageSieveService:
    def __init__(self) -> None:
        self.host: Any = None
        self._servers: list[asyncio.AbstractServer] = []
        self._sessions: dict[asyncio.Task[None], ManageSieveSession] = {}

    async def start(self, host: Any) -> None:
        self.host = host
        self._servers += await start_listeners("managesieve", "[sieve] listen", host.config.sieve.listen,
                                               stream_handler=self._serve)

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        for task, session in list(self._sessions.items()):
            session.respond("BYE", "Server shutting down", "TRYLATER")
            task.cancel()
        if self._sessions:
            await asyncio.wait(set(self._sessions), timeout=STOP_SECONDS)
        for server in self._servers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), STOP_SECONDS)
        self._servers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host = self.host
        peer = writer.get_extra_info("peername")
        ip = peer[0] if peer else "unknown"
        if not host.limits.connections.acquire(ip):
            writer.write(b'BYE (TRYLATER) "Too many connections from your address"\r\n')
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        try:
            tls_context = host.tls.server_context() if host.tls.available else None
            session = ManageSieveSession(host, reader, writer, tls_context)
            self._sessions[task] = session
            await session.run()
        except asyncio.CancelledError:
            session = self._sessions.get(task)  # type: ignore[assignment]
            with contextlib.suppress(Exception):
                if session is not None and session._out:
                    writer.write(bytes(session._out))
            writer.close()
        finally:
            self._sessions.pop(task, None)
            host.limits.connections.release(ip)
