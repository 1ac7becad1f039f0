"""One IMAP connection: IMAP4rev2 (RFC 9051) with IMAP4rev1 (RFC 3501) compatibility.

The session turns parsed commands into mailbox-store calls and writes the responses. Port 143
offers STARTTLS and refuses authentication before it (LOGINDISABLED); port 993 is TLS from the first
byte. Every authentication path (LOGIN, AUTHENTICATE PLAIN, AUTHENTICATE SCRAM-SHA-256) goes through
the host's ``AuthThrottle``. A session with a mailbox selected watches it: changes made by other
sessions or by local delivery are read back by MODSEQ and reported as untagged EXISTS, FETCH and
EXPUNGE (or VANISHED under QRESYNC) at the points RFC 9051 §7.5.1 allows, and at once during IDLE.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import contextlib
import logging
import re
import ssl
import time
import weakref
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from peerage.identity.login import authenticate, login_names
from peerage.identity.sasl import Failure, SaslServer, channel_bindings_for, offered_mechanisms
from peerage.mail.imap import mime
from peerage.mail.imap import search as searching
from peerage.mail.imap.parser import (
    Command,
    CommandReader,
    Continue,
    FetchAttribute,
    Line,
    Literal8,
    LiteralRefused,
    Malformed,
    ParseError,
    SearchKey,
    SequenceSet,
    astring,
    astring_bytes,
    decode_mailbox_name,
    encode_mailbox_name,
    format_datetime,
    format_sequence_set,
    literal,
    number,
    parse_datetime,
    parse_fetch_attributes,
    parse_search,
    parse_sequence_set,
    quoted_or_literal,
)
from peerage.mail.mailbox import flags as flaglib
from peerage.mail.mailbox.notify import Watch
from peerage.mail.mailbox.store import (
    HIERARCHY_DELIMITER,
    INBOX,
    MailboxError,
    MailboxExists,
    MailboxInfo,
    MailboxStore,
    MessageRow,
    NoSuchMailbox,
)

log = logging.getLogger("peerage.imap")

# Bytes read from the socket at a time: one TLS record is at most 16 KiB, so this takes several per
# system call without holding much per idle connection.
READ_CHUNK = 65536
# Responses are flushed to the socket once this much is buffered (keeps FETCH of 10k headers from
# holding the whole answer in memory).
WRITE_FLUSH = 262144
# Seconds a client may leave our responses unread before the connection is dropped (Postfix's
# smtpd_timeout and Dovecot's client output timeouts are of the same order: 300 s).
WRITE_TIMEOUT = 300.0
# Messages read from disk per thread hop in FETCH and SEARCH.
BLOB_BATCH = 200
# Bytes of message files held in memory at once by one FETCH (a few large attachments, not a
# mailbox's worth).
FETCH_READ_BYTES = 16 * 1024 * 1024
# Message rows read from the database per step of a FETCH.
FETCH_ROW_BATCH = 1000
# Dovecot disconnects after 20 invalid commands in a row ("Too many invalid IMAP commands",
# CLIENT_MAX_BAD_COMMANDS); we close after as many BAD answers without a good command between.
MAX_CONSECUTIVE_BAD = 20
# RFC 2177 §3: clients re-issue IDLE every 29 minutes; the server may drop an IDLE after 30.
IDLE_LIMIT_SECONDS = 1800.0
# RFC 4978 COMPRESS=DEFLATE: output of one inflate step, so a small compressed input cannot expand
# without bound in one go (a "zip bomb"); the rest waits in `unconsumed_tail`.
MAX_INFLATE_STEP = 65536
# zlib level for server output; Dovecot's imap_zlib_compress_level defaults to 6.
DEFLATE_LEVEL = 6
# An IDLE session also looks for changes this often, for those committed by another process on
# the same database, which the in-process notifier does not see (Dovecot's mailbox_idle_check_interval
# is 30 s).
IDLE_POLL_SECONDS = 30.0
# SASL responses are one line of base64; 12 KiB is far above any SCRAM or PLAIN exchange.
MAX_SASL_LINE = 12288

SERVER_ID = ("name", "peerage", "vendor", "peerage")
BASE_FLAGS = (*flaglib.SYSTEM_FLAGS, *flaglib.WELL_KNOWN_KEYWORDS)
_BASE_FLAG_SET = frozenset(BASE_FLAGS)
# Mailbox names written as bare atoms (as Dovecot does); anything else is quoted.
_ATOM_SAFE = re.compile(r"[A-Za-z0-9_.\-/&+,:]+")
ENABLEABLE = ("CONDSTORE", "QRESYNC", "IMAP4REV2")


class Bad(Exception):
    """Answer the command with BAD."""


class No(Exception):
    """Answer the command with NO (``code`` is the optional response code)."""

    def __init__(self, text: str, code: str = "") -> None:
        super().__init__(text)
        self.code = code


class CloseConnection(Exception):
    pass


# \Recent (RFC 3501 §2.3.2) is gone from IMAP4rev2 but IMAP4rev1 clients may still ask: a message is
# recent in the one session that first selects its mailbox after it arrived. Per mailbox, the highest
# UID already handed out as recent. In this process's memory only: after a restart the first session
# to select a mailbox sees its messages as recent once more (the flag is advisory; Dovecot keeps it in
# its index files).
# Per mailbox store (one per server; tests run several in one process), keyed by (mailbox id,
# UIDVALIDITY): a deleted mailbox's id may be given to a new one.
_RECENT_CLAIMED: weakref.WeakKeyDictionary[Any, dict[tuple[int, int], int]] = weakref.WeakKeyDictionary()
# Mailboxes remembered per store; past this the memory starts afresh (messages may be recent again).
MAX_RECENT_MAILBOXES = 100000


def _recent_boundary(store: Any, box: MailboxInfo) -> int:
    return _RECENT_CLAIMED.get(store, {}).get((box.id, box.uidvalidity), 0)


def _claim_recent(store: Any, box: MailboxInfo, uid: int) -> None:
    claimed = _RECENT_CLAIMED.setdefault(store, {})
    key = (box.id, box.uidvalidity)
    if len(claimed) >= MAX_RECENT_MAILBOXES and key not in claimed:
        claimed.clear()
    claimed[key] = max(uid, claimed.get(key, 0))


@dataclass
class Selected:
    info: MailboxInfo
    uids: list[int]
    modseq: int
    read_only: bool
    watch: Watch
    own_modseqs: set[int] = field(default_factory=set)
    deferred_expunges: set[int] = field(default_factory=set)
    recent: set[int] = field(default_factory=set)  # UIDs that are \Recent in this session
    keywords: set[str] = field(default_factory=set)  # keywords the last untagged FLAGS named

    def seq_of(self, uid: int) -> int:
        index = bisect.bisect_left(self.uids, uid)
        if index < len(self.uids) and self.uids[index] == uid:
            return index + 1
        return 0


class ImapSession:
    """The protocol engine for one client connection."""

    def __init__(
        self,
        host: Any,
        store: MailboxStore,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        implicit_tls: bool,
        tls_context: ssl.SSLContext | None,
    ) -> None:
        self.host = host
        self.store = store
        self.reader = reader
        self.writer = writer
        self.tls = implicit_tls
        self.tls_context = tls_context
        peer = writer.get_extra_info("peername")
        self.peer_ip = peer[0] if peer else "unknown"
        self.append_limit = int(host.config.imap.append_limit)
        self.commands = CommandReader(self.append_limit)
        self.user: str | None = None
        self.selected: Selected | None = None
        self.enabled: set[str] = set()
        self.condstore = False
        self._out = bytearray()
        self._events: list[Any] = []
        self._bad_count = 0
        self._closed = False
        self._inflater: Any = None
        self._deflater: Any = None
        self._compressed_tail = b""
        self._bindings: dict[str, bytes] | None = None
        # The deadline to authenticate and the place in the global cap on anonymous connections.
        self._auth_deadline = time.monotonic() + host.config.limits.auth_deadline
        self._preauth = host.limits.preauth()
        # UIDs saved by SEARCH RETURN (SAVE) for "$" (RFC 5182); reset when a mailbox is selected.
        self.saved_result: list[int] = []

    # -- I/O -------------------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self._out += data

    def untagged(self, text: bytes | str) -> None:
        self._out += b"* " + (text.encode() if isinstance(text, str) else text) + b"\r\n"

    async def flush(self) -> None:
        if self._out:
            # The buffer itself goes to the transport (which may keep it queued) and a new one takes
            # its place, so a write of up to WRITE_FLUSH bytes is not copied first.
            payload: bytes | bytearray = self._out
            self._out = bytearray()
            if self._deflater is not None:
                payload = self._deflater.compress(payload) + self._deflater.flush(zlib.Z_SYNC_FLUSH)
            self.writer.write(payload)
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow the cancellation the
            # service's stop() sends while the wait completes (CPython gh-86296), and the session runs on.
            async with asyncio.timeout(WRITE_TIMEOUT):
                await self.writer.drain()
        except TimeoutError:
            # A client that stops reading would otherwise hold the session (and our buffers) forever.
            self.writer.transport.abort()
            raise CloseConnection() from None

    async def maybe_flush(self) -> None:
        if len(self._out) >= WRITE_FLUSH:
            await self.flush()

    async def _read(self) -> bytes:
        limits = self.host.config.limits
        if self.user:
            timeout = limits.idle_timeout
        else:
            timeout = min(limits.idle_timeout_unauthenticated, self._auth_deadline - time.monotonic())
            if timeout <= 0:
                self.untagged("BYE Authentication deadline passed")
                await self.flush()
                raise CloseConnection()
        try:
            # asyncio.timeout, not wait_for (CPython gh-86296, as in flush).
            async with asyncio.timeout(timeout):
                data = await self.reader.read(READ_CHUNK)
        except TimeoutError:
            self.untagged("BYE Autologout; idle for too long")
            await self.flush()
            raise CloseConnection() from None
        if not data:
            raise CloseConnection()
        return data

    def _inflate(self, data: bytes) -> bytes:
        if self._inflater is None:
            return data
        try:
            out: bytes = self._inflater.decompress(self._compressed_tail + data, MAX_INFLATE_STEP)
        except zlib.error:
            raise CloseConnection() from None
        self._compressed_tail = self._inflater.unconsumed_tail
        return out

    async def next_event(self) -> Any:
        while not self._events:
            self._events = self.commands.receive(b"")
            if self._events:
                break
            if self._compressed_tail:
                self._events = self.commands.receive(self._inflate(b""))
            else:
                self._events = self.commands.receive(self._inflate(await self._read()))
        return self._events.pop(0)

    async def read_line(self) -> bytes:
        """One raw line (SASL responses, IDLE's DONE)."""
        self.commands.line_mode = True
        try:
            while True:
                event = await self.next_event()
                if isinstance(event, Line):
                    return event.data
                if isinstance(event, Malformed):
                    raise Bad(event.message)
        finally:
            self.commands.line_mode = False

    # -- main loop -------------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            if self._preauth is None:
                self.untagged("BYE Too many connections waiting to log in; try again later")
                raise CloseConnection()
            greeting = "OK [CAPABILITY " + self.capabilities() + "] peerage IMAP4rev2 ready"
            self.untagged(greeting)
            await self.flush()
            while not self._closed:
                event = await self.next_event()
                if isinstance(event, Continue):
                    self.send(b"+ Ready for literal data\r\n")
                    await self.flush()
                elif isinstance(event, LiteralRefused):
                    await self._refuse_literal(event)
                elif isinstance(event, Malformed):
                    await self._bad(event.tag, event.message)
                elif isinstance(event, Command):
                    await self.execute(event)
                elif isinstance(event, Line):
                    await self._bad("*", "unexpected line")
        except CloseConnection:
            pass
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            self._release_preauth()
            self._deselect()
            # Hand the last words (BYE, the LOGOUT answer) to the transport without waiting on a
            # client that may not read; close() sends them before the FIN.
            with contextlib.suppress(ConnectionError, ssl.SSLError, RuntimeError, zlib.error):
                payload = bytes(self._out)
                self._out.clear()
                if payload and self._deflater is not None:
                    payload = self._deflater.compress(payload) + self._deflater.flush(zlib.Z_SYNC_FLUSH)
                if payload:
                    self.writer.write(payload)
            self.writer.close()

    async def _refuse_literal(self, event: LiteralRefused) -> None:
        if event.command == "APPEND":
            text = f"NO [TOOBIG] Message larger than the APPENDLIMIT of {event.limit} octets"
        else:
            text = f"BAD Literal larger than {event.limit} octets"
        self.send(f"{event.tag} {text}\r\n".encode())
        await self.flush()

    async def _bad(self, tag: str, message: str) -> None:
        self._bad_count += 1
        self.send(f"{tag} BAD {message}\r\n".encode())
        if self._bad_count >= MAX_CONSECUTIVE_BAD:
            self.untagged("BYE Too many invalid commands")
            await self.flush()
            raise CloseConnection()
        await self.flush()

    async def execute(self, command: Command) -> None:
        handler = _HANDLERS.get(command.name)
        if handler is None:
            await self._bad(command.tag, f"Unknown command {command.name[:30]}")
            return
        states, function = handler
        state = "selected" if self.selected else ("auth" if self.user else "noauth")
        if state not in states:
            if state == "noauth":
                await self._bad(command.tag, "Log in first")
            else:
                await self._bad(command.tag, f"{command.name} is not valid in this state")
            return
        try:
            result = await function(self, command)
        except _Handled:
            self._bad_count = 0
            return
        except Bad as exc:
            await self._bad(command.tag, str(exc))
            return
        except ParseError as exc:
            await self._bad(command.tag, str(exc))
            return
        except No as exc:
            code = f"[{exc.code}] " if exc.code else ""
            await self._after_command(command)
            self.send(f"{command.tag} NO {code}{exc}\r\n".encode())
            await self.flush()
            return
        except NoSuchMailbox as exc:
            await self._after_command(command)
            self.send(f"{command.tag} NO [NONEXISTENT] {exc}\r\n".encode())
            await self.flush()
            return
        except MailboxExists as exc:
            self.send(f"{command.tag} NO [ALREADYEXISTS] {exc}\r\n".encode())
            await self.flush()
            return
        except MailboxError as exc:
            self.send(f"{command.tag} NO {exc}\r\n".encode())
            await self.flush()
            return
        except (CloseConnection, ConnectionError, ssl.SSLError):
            raise
        except Exception:
            log.exception("IMAP %s failed", command.name)
            self.send(f"{command.tag} NO [SERVERBUG] Internal error\r\n".encode())
            await self.flush()
            return
        self._bad_count = 0
        if result is None:
            result = f"OK {command.name} completed"
        if command.name not in ("LOGOUT", "STARTTLS"):
            await self._after_command(command)
        self.send(f"{command.tag} {result}\r\n".encode())
        await self.flush()

    async def _after_command(self, command: Command) -> None:
        if self.selected is None:
            return
        allow_expunge = command.name not in ("FETCH", "STORE", "SEARCH", "SORT", "THREAD")
        await self.report_changes(allow_expunge)

    # -- mailbox change reporting ----------------------------------------------------------------

    async def report_changes(self, allow_expunge: bool) -> None:
        selected = self.selected
        if selected is None:
            return
        changes = await self.store.changes_since(selected.info.id, selected.modseq)
        if not changes.changed and not changes.expunged and not (
            allow_expunge and selected.deferred_expunges
        ):
            return
        expunged = set(changes.expunged) | selected.deferred_expunges
        if allow_expunge:
            self._report_expunges(sorted(uid for uid in expunged if selected.seq_of(uid)))
            selected.deferred_expunges.clear()
        else:
            selected.deferred_expunges |= {uid for uid in expunged if selected.seq_of(uid)}
        known_max = selected.uids[-1] if selected.uids else 0
        new_uids = [uid for uid, _, _ in changes.changed if uid > known_max]
        if new_uids:
            selected.uids.extend(new_uids)
            self.untagged(f"{len(selected.uids)} EXISTS")
            if "IMAP4REV2" not in self.enabled:
                boundary = _recent_boundary(self.store, selected.info)
                selected.recent.update(uid for uid in new_uids if uid > boundary)
                if not selected.read_only:
                    _claim_recent(self.store, selected.info, new_uids[-1])
                self.untagged(f"{len(selected.recent)} RECENT")
        for uid, flags, modseq in changes.changed:
            if uid > known_max or modseq in selected.own_modseqs:
                continue
            seq = selected.seq_of(uid)
            if seq:
                self.untagged(self._flags_fetch(seq, uid, flags, modseq, with_uid=True))
        selected.modseq = max(selected.modseq, changes.highestmodseq)
        selected.own_modseqs = {m for m in selected.own_modseqs if m > selected.modseq}

    def _report_expunges(self, uids: Sequence[int]) -> None:
        selected = self.selected
        assert selected is not None
        if not uids:
            return
        selected.recent.difference_update(uids)
        if "QRESYNC" in self.enabled:
            # RFC 7162 §3.2.10: VANISHED without EARLIER lowers the client's message count by one a
            # UID, so it names only messages this session has announced. EXPUNGE can remove a
            # \Deleted message another session appended after this one last reported changes.
            known = [uid for uid in uids if selected.seq_of(uid)]
            for uid in known:
                del selected.uids[selected.seq_of(uid) - 1]
            if known:
                self.untagged("VANISHED " + format_sequence_set(known))
            return
        for uid in sorted(uids, reverse=True):
            seq = selected.seq_of(uid)
            if seq:
                del selected.uids[seq - 1]
                self.untagged(f"{seq} EXPUNGE")

    def _flags_fetch(
        self, seq: int, uid: int, flags: Sequence[str], modseq: int, with_uid: bool
    ) -> str:
        items = []
        if with_uid or "QRESYNC" in self.enabled:
            items.append(f"UID {uid}")
        items.append("FLAGS (" + self._flag_list(uid, flags) + ")")
        if self.condstore:
            items.append(f"MODSEQ ({modseq})")
        return f"{seq} FETCH (" + " ".join(items) + ")"

    def _flag_list(self, uid: int, flags: Sequence[str]) -> str:
        selected = self.selected
        if selected is not None and not all(f in selected.keywords or f in _BASE_FLAG_SET for f in flags):
            new = {f for f in flags if not f.startswith("\\")} - selected.keywords - _BASE_FLAG_SET
            if new:
                # RFC 9051 §7.3.5 / RFC 3501 §7.2.6: the client learns of a keyword from FLAGS before a
                # message carries it (another session may just have created it).
                selected.keywords |= new
                self._announce_flags()
        if selected is not None and uid in selected.recent and "IMAP4REV2" not in self.enabled:
            return " ".join((*flags, "\\Recent"))
        return " ".join(flags)

    def _announce_flags(self) -> None:
        selected = self.selected
        assert selected is not None
        all_flags = " ".join((*BASE_FLAGS, *sorted(selected.keywords)))
        self.untagged(f"FLAGS ({all_flags})")
        if selected.read_only:
            self.untagged("OK [PERMANENTFLAGS ()] Read-only mailbox")
        else:
            self.untagged(f"OK [PERMANENTFLAGS ({all_flags} \\*)] Flags permitted")

    def _deselect(self) -> None:
        self.saved_result = []
        if self.selected is not None:
            self.selected.watch.close()
            self.selected = None

    # -- helpers ---------------------------------------------------------------------------------

    @property
    def utf8(self) -> bool:
        return "IMAP4REV2" in self.enabled

    def mailbox_arg(self, token: object) -> str:
        name = astring(token)
        if not self.utf8:
            try:
                name = decode_mailbox_name(name)
            except ParseError:
                # A well-formed command naming a mailbox that cannot exist: NO, as for any name
                # the server refuses (RFC 9051 §6.3), not BAD.
                raise No("Invalid mailbox name: not modified UTF-7 (RFC 3501 5.1.3)", "CANNOT") from None
        if not name or len(name) > 1000 or any(ord(c) < 0x20 for c in name):
            raise Bad("Invalid mailbox name")
        if name.upper() == INBOX:
            return INBOX
        return name

    def mailbox_out(self, name: str) -> bytes:
        wire = name if self.utf8 else encode_mailbox_name(name)
        if _ATOM_SAFE.fullmatch(wire):
            return wire.encode()
        return quoted_or_literal(wire, utf8=self.utf8)

    def capabilities(self) -> str:
        caps = ["IMAP4rev1", "IMAP4rev2"]
        if not self.tls:
            caps += ["STARTTLS", "LOGINDISABLED"]
        elif self.user is None:
            caps += [f"AUTH={name}" for name in self._sasl_server().offered] + ["SASL-IR"]
        caps += [
            "LITERAL+",
            "ENABLE",
            "ID",
            "IDLE",
            "NAMESPACE",
            "UIDPLUS",
            "MOVE",
            "CONDSTORE",
            "QRESYNC",
            "SPECIAL-USE",
            "LIST-EXTENDED",
            "LIST-STATUS",
            "CHILDREN",
            "UNSELECT",
            "UNAUTHENTICATE",
            "ESEARCH",
            "SEARCHRES",
            "SORT",
            "THREAD=REFERENCES",
            "STATUS=SIZE",
            "BINARY",
            f"APPENDLIMIT={self.append_limit}",
        ]
        if self.tls and self._deflater is None:
            caps.append("COMPRESS=DEFLATE")
        return " ".join(caps)

    def _resolve(self, token: object, uid: bool) -> list[int]:
        """UIDs named by a sequence set (of UIDs when ``uid``), in ascending order."""
        selected = self.selected
        assert selected is not None
        sequence_set = parse_sequence_set(token)
        if sequence_set.saved:
            present = set(selected.uids)
            return [u for u in self.saved_result if u in present]
        if uid:
            return sequence_set.select(selected.uids)
        count = len(selected.uids)
        picked: set[int] = set()
        for low, high in sequence_set.resolve(count):
            if high > count or low < 1:
                if count == 0:
                    raise Bad("No messages in the mailbox")
                raise Bad("Invalid message sequence number")
            picked.update(range(low, high + 1))
        return [selected.uids[seq - 1] for seq in sorted(picked)]

    async def _read_bodies(self, rows: Sequence[MessageRow]) -> dict[int, bytes]:
        """Whole messages by UID, from the database (inline) or files; b"" for one gone meanwhile."""
        return await self.store.read_bodies(rows)

    # -- any state ------------------------------------------------------------------------------

    async def cmd_capability(self, command: Command) -> str | None:
        self.untagged("CAPABILITY " + self.capabilities())
        return None

    async def cmd_noop(self, command: Command) -> str | None:
        return None

    async def cmd_logout(self, command: Command) -> str | None:
        self.untagged("BYE peerage logging out")
        self._closed = True
        return "OK LOGOUT completed"

    async def cmd_id(self, command: Command) -> str | None:
        self.untagged("ID (" + " ".join(f'"{item}"' for item in SERVER_ID) + ")")
        return None

    # -- not authenticated ----------------------------------------------------------------------

    async def cmd_starttls(self, command: Command) -> str | None:
        if self.tls:
            raise Bad("TLS is already active")
        if self.tls_context is None:
            raise No("TLS is not available")
        if command.args:
            raise Bad("STARTTLS takes no arguments")
        # Stop reading before the client can see the OK: otherwise its ClientHello may be read into the
        # plaintext buffer while the reply drains, and the handshake then waits for bytes already taken.
        # start_tls resumes reading on the TLS side.
        cast(asyncio.Transport, self.writer.transport).pause_reading()
        self.send(f"{command.tag} OK Begin TLS negotiation now\r\n".encode())
        await self.flush()
        # RFC 9051 §6.2.1 / CVE-2011-0411: anything pipelined after STARTTLS is discarded.
        self.commands = CommandReader(self.append_limit)
        self._events = []
        try:
            # asyncio.timeout, not wait_for (CPython gh-86296, as in flush).
            async with asyncio.timeout(30):
                await self.writer.start_tls(self.tls_context)
        except (TimeoutError, ssl.SSLError, ConnectionError) as exc:
            log.info("IMAP STARTTLS from %s failed: %s", self.peer_ip, exc)
            raise CloseConnection() from None
        self.tls = True
        raise _Handled()

    async def cmd_compress(self, command: Command) -> str | None:
        if len(command.args) != 1 or astring(command.args[0]).upper() != "DEFLATE":
            raise Bad("Only COMPRESS DEFLATE is supported")
        if self._deflater is not None:
            raise No("Compression is already active", "COMPRESSIONACTIVE")
        self.send(f"{command.tag} OK DEFLATE active\r\n".encode())
        await self.flush()
        # RFC 4978 §3: raw deflate (no zlib header) both ways from the byte after the CRLF.
        self._deflater = zlib.compressobj(DEFLATE_LEVEL, zlib.DEFLATED, -15)
        self._inflater = zlib.decompressobj(-15)
        log.debug("IMAP COMPRESS=DEFLATE active for %s", self.user)
        self._events = self.commands.receive(self._inflate(self.commands.detach_buffer()))
        raise _Handled()

    def _require_tls(self) -> None:
        if not self.tls:
            raise No("Use STARTTLS first; cleartext authentication is refused", "PRIVACYREQUIRED")

    # Authentication goes through the one SASL server (peerage.identity.sasl) and its driver
    # (peerage.identity.login): the login-name rule, the throttle and the failure log line live there.
    def _sasl_server(self) -> SaslServer:
        bindings = self.channel_bindings()
        offered = offered_mechanisms(secure=self.tls, channel_bindings=bindings,
                                     advertise_plus=self.host.config.auth.mail_advertise_plus)
        return SaslServer(mechanisms=offered, login=login_names(self.host, self._ssl_object()),
                          channel_bindings=bindings, secure=self.tls)

    def _ssl_object(self) -> Any:
        return self.writer.get_extra_info("ssl_object") if self.tls else None

    async def _authenticate(self, mechanism: str, initial: bytes | None, exchange: Any = None) -> str | None:
        result = await authenticate(self._sasl_server(), mechanism, initial, exchange=exchange or self._sasl_response,
                                    host=self.host, ip=self.peer_ip, protocol="imap")
        if isinstance(result, Failure):
            if result.condition == "temporary-auth-failure":
                raise No("Too many failed attempts; try again later", "UNAVAILABLE")
            if result.condition == "aborted":
                raise Bad("Authentication cancelled")
            if result.condition == "invalid-mechanism":
                raise No("Unsupported authentication mechanism")
            if result.condition in ("malformed-request", "incorrect-encoding"):
                raise Bad(result.text)
            raise No("Authentication failed", "AUTHENTICATIONFAILED")
        # RFC 9051 §6.2.2: the server's final message goes in a continuation, answered empty.
        if result.data is not None and await self._sasl_response(result.data) is None:
            raise Bad("Authentication cancelled")
        self.user = result.account
        self._release_preauth()
        await self.store.ensure_defaults(result.account)
        log.info("IMAP login %s from %s", result.account, self.peer_ip)
        return "OK [CAPABILITY " + self.capabilities() + "] Logged in"

    async def cmd_unauthenticate(self, command: Command) -> str | None:
        """RFC 8437: end the login and go back to the not-authenticated state on the same connection.
        A selected mailbox is left as UNSELECT leaves it (no expunge); ENABLEd extensions and the
        SEARCHRES result go with the login (§3); TLS and COMPRESS stay, since they belong to the
        connection. The connection counts as anonymous again: it takes a place in the global cap of
        anonymous connections and has the authentication deadline once more."""
        if command.args:
            raise Bad("UNAUTHENTICATE takes no arguments")
        preauth = self.host.limits.preauth()
        if preauth is None:
            raise No("Too many connections waiting to authenticate; try again later", "UNAVAILABLE")
        if self.selected is not None:
            self._deselect()
        log.info("IMAP UNAUTHENTICATE %s from %s", self.user, self.peer_ip)
        self.user = None
        self.enabled.clear()
        self.condstore = False
        self.saved_result = []
        self._preauth = preauth
        self._auth_deadline = time.monotonic() + self.host.config.limits.auth_deadline
        return None

    async def cmd_login(self, command: Command) -> str | None:
        self._require_tls()
        if len(command.args) != 2:
            raise Bad("LOGIN needs a user name and a password")
        # LOGIN is PLAIN without the framing (RFC 9051 §6.2.3); Dovecot does the same internally.
        user, password = astring_bytes(command.args[0]), astring_bytes(command.args[1])
        return await self._authenticate("PLAIN", b"\0" + user + b"\0" + password)

    async def cmd_authenticate(self, command: Command) -> str | None:
        self._require_tls()
        if not command.args or len(command.args) > 2:
            raise Bad("AUTHENTICATE needs a mechanism")
        mechanism = astring(command.args[0]).upper()
        if mechanism in ("LOGIN", "EXTERNAL"):
            raise No("Unsupported authentication mechanism")
        initial = self._b64(astring_bytes(command.args[1])) if len(command.args) == 2 else None
        return await self._authenticate(mechanism, initial)

    async def _sasl_response(self, challenge: bytes) -> bytes | None:
        self.send(b"+ " + base64.b64encode(challenge) + b"\r\n")
        await self.flush()
        line = await self.read_line()
        if len(line) > MAX_SASL_LINE:
            raise Bad("SASL response too long")
        if line.strip() == b"*":
            return None
        return self._b64(line)

    @staticmethod
    def _b64(data: bytes) -> bytes:
        if data.strip() == b"=":
            return b""
        try:
            return base64.b64decode(data.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise Bad("Invalid base64") from None

    def _release_preauth(self) -> None:
        if self._preauth is not None:
            self._preauth.release()
            self._preauth = None

    def channel_bindings(self) -> dict[str, bytes]:
        """tls-exporter (TLS 1.3) and tls-server-end-point of the certificate this connection presented."""
        if self._bindings is None:
            self._bindings = channel_bindings_for(self._ssl_object())
        return self._bindings

    # -- authenticated ----------------------------------------------------------------------------

    async def cmd_enable(self, command: Command) -> str | None:
        if not command.args:
            raise Bad("ENABLE needs capability names")
        newly = []
        for token in command.args:
            name = astring(token).upper()
            if name in ENABLEABLE and name not in self.enabled:
                self.enabled.add(name)
                newly.append(name)
                if name == "QRESYNC":
                    self.enabled.add("CONDSTORE")
        if self.enabled & {"CONDSTORE", "QRESYNC"}:
            self.condstore = True
        spelled = {"IMAP4REV2": "IMAP4rev2"}
        self.untagged("ENABLED" + "".join(" " + spelled.get(n, n) for n in newly))
        return None

    async def cmd_namespace(self, command: Command) -> str | None:
        self.untagged(f'NAMESPACE (("" "{HIERARCHY_DELIMITER}")) NIL NIL')
        return None

    async def _select(self, command: Command, read_only: bool) -> str | None:
        if self.selected is not None:
            self._deselect()
            # RFC 7162 §3.2.11 / RFC 9051 §7.1: the previous mailbox is closed before the new one opens.
            self.untagged("OK [CLOSED] Previous mailbox closed")
        if not command.args:
            raise Bad("SELECT needs a mailbox")
        name = self.mailbox_arg(command.args[0])
        qresync: list[object] | None = None
        if len(command.args) > 1:
            options = command.args[1]
            if not isinstance(options, list):
                raise Bad("Invalid SELECT parameters")
            index = 0
            while index < len(options):
                option = astring(options[index]).upper()
                if option == "CONDSTORE":
                    self.condstore = True
                elif option == "QRESYNC":
                    if "QRESYNC" not in self.enabled:
                        raise Bad("ENABLE QRESYNC first")
                    index += 1
                    if index >= len(options) or not isinstance(options[index], list):
                        raise Bad("QRESYNC needs parameters")
                    qresync = _as_list(options[index])
                else:
                    raise Bad(f"Unknown SELECT parameter {option[:30]}")
                index += 1
        assert self.user is not None
        info = await self.store.get_mailbox(self.user, name)
        if info is None:
            raise No(f"Mailbox {name} does not exist", "NONEXISTENT")
        watch = self.store.notifier.watch(info.id)
        info, uids, flag_groups = await self.store.view(info.id)
        # The mod-sequence seen is the highest among the rows read, so nothing committed after
        # the read is missed (it has a higher mod-sequence) or reported twice.
        seen_modseq = info.highestmodseq
        self.selected = Selected(info, uids, seen_modseq, read_only, watch)
        distinct = {flag for text, _ in flag_groups for flag in text.split()}
        keywords = sorted({f for f in distinct if not f.startswith("\\")} - set(BASE_FLAGS))
        self.selected.keywords = set(keywords)
        all_flags = " ".join((*BASE_FLAGS, *keywords))
        self.untagged(f"{len(uids)} EXISTS")
        if "IMAP4REV2" not in self.enabled:
            boundary = _recent_boundary(self.store, info)
            self.selected.recent = {uid for uid in uids if uid > boundary}
            if uids and not read_only:
                _claim_recent(self.store, info, uids[-1])  # EXAMINE leaves them recent (RFC 3501 §6.3.2)
            self.untagged(f"{len(self.selected.recent)} RECENT")
            lowest = min((uid for text, uid in flag_groups if flaglib.SEEN not in text.split()), default=0)
            # The flags are a second read, so their lowest unseen UID may be one the UID list lacks
            # (appended or expunged in between): the first message at or above it is named.
            index = bisect.bisect_left(uids, lowest) if lowest else len(uids)
            first_unseen = index + 1 if index < len(uids) else 0
            if first_unseen:
                self.untagged(f"OK [UNSEEN {first_unseen}] First unseen")
        self.untagged(f"FLAGS ({all_flags})")
        if read_only:
            self.untagged("OK [PERMANENTFLAGS ()] Read-only mailbox")
        else:
            # RFC 9051 §7.1: every flag and keyword the mailbox has can be set permanently, and
            # \* says new keywords can be made (as Dovecot lists them).
            self.untagged(f"OK [PERMANENTFLAGS ({all_flags} \\*)] Flags permitted")
        self.untagged(f"OK [UIDVALIDITY {info.uidvalidity}] UIDs valid")
        self.untagged(f"OK [UIDNEXT {info.uidnext}] Predicted next UID")
        self.untagged(f"OK [HIGHESTMODSEQ {info.highestmodseq}] Highest")
        if "IMAP4REV2" in self.enabled:
            self.send(b"* LIST () \"/\" " + self.mailbox_out(info.name) + b"\r\n")
        if qresync is not None:
            await self._qresync(qresync, info)
        mode = "READ-ONLY" if read_only else "READ-WRITE"
        return f"OK [{mode}] {command.name} completed"

    async def _qresync(self, params: list[object], info: MailboxInfo) -> None:
        if len(params) < 2:
            raise Bad("QRESYNC needs UIDVALIDITY and MODSEQ")
        uidvalidity = number(params[0], "uidvalidity")
        modseq = number(params[1], "mod-sequence")
        known: SequenceSet | None = None
        if len(params) > 2 and not isinstance(params[2], list):
            known = parse_sequence_set(params[2])
        if uidvalidity != info.uidvalidity:
            return  # RFC 7162 §3.2.5.1: a different UIDVALIDITY means a full resync; say nothing
        changes = await self.store.changes_since(info.id, modseq)
        largest = info.uidnext
        vanished = [uid for uid in changes.expunged if known is None or known.contains(uid, largest)]
        if vanished:
            self.untagged("VANISHED (EARLIER) " + format_sequence_set(vanished))
        assert self.selected is not None
        for uid, flags, message_modseq in changes.changed:
            seq = self.selected.seq_of(uid)
            if seq:
                self.untagged(self._flags_fetch(seq, uid, flags, message_modseq, with_uid=True))

    async def cmd_select(self, command: Command) -> str | None:
        return await self._select(command, read_only=False)

    async def cmd_examine(self, command: Command) -> str | None:
        return await self._select(command, read_only=True)

    async def cmd_create(self, command: Command) -> str | None:
        if not command.args:
            raise Bad("CREATE needs a mailbox")
        name = self.mailbox_arg(command.args[0]).rstrip(HIERARCHY_DELIMITER)
        special = None
        if len(command.args) > 1:
            # RFC 6154 §5.2 CREATE ... (USE (\Sent))
            options = command.args[1]
            if isinstance(options, list) and len(options) == 2 and astring(options[0]).upper() == "USE":
                uses = options[1]
                if isinstance(uses, list) and uses:
                    special = astring(uses[0])
        assert self.user is not None
        if name == INBOX:
            raise No("INBOX already exists", "ALREADYEXISTS")
        # RFC 9051 §6.3.4: CREATE does not subscribe (clients that want it send SUBSCRIBE).
        await self.store.create_mailbox(self.user, name, special, subscribed=False)
        return None

    async def cmd_delete(self, command: Command) -> str | None:
        if not command.args:
            raise Bad("DELETE needs a mailbox")
        name = self.mailbox_arg(command.args[0])
        assert self.user is not None
        if self.selected is not None and self.selected.info.name == name:
            self._deselect()
        await self.store.delete_mailbox(self.user, name)
        return None

    async def cmd_rename(self, command: Command) -> str | None:
        if len(command.args) != 2:
            raise Bad("RENAME needs two mailboxes")
        assert self.user is not None
        await self.store.rename_mailbox(
            self.user, self.mailbox_arg(command.args[0]), self.mailbox_arg(command.args[1])
        )
        return None

    async def cmd_subscribe(self, command: Command) -> str | None:
        assert self.user is not None
        if not command.args:
            raise Bad("SUBSCRIBE needs a mailbox")
        await self.store.set_subscribed(self.user, self.mailbox_arg(command.args[0]), True)
        return None

    async def cmd_unsubscribe(self, command: Command) -> str | None:
        assert self.user is not None
        if not command.args:
            raise Bad("UNSUBSCRIBE needs a mailbox")
        with contextlib.suppress(NoSuchMailbox):
            await self.store.set_subscribed(self.user, self.mailbox_arg(command.args[0]), False)
        return None

    async def cmd_list(self, command: Command) -> str | None:
        return await self._list(command, lsub=False)

    async def cmd_lsub(self, command: Command) -> str | None:
        return await self._list(command, lsub=True)

    async def _list(self, command: Command, lsub: bool) -> str | None:
        args = list(command.args)
        selection: set[str] = set()
        if args and isinstance(args[0], list):
            selection = {astring(item).upper() for item in _as_list(args.pop(0))}
            # RFC 5258 §3: an unknown selection option is an error, and RECURSIVEMATCH needs another
            # selection option beside it.
            if unknown := selection - LIST_SELECTION_OPTIONS:
                raise Bad(f"Unknown LIST selection option {sorted(unknown)[0]}")
            if "RECURSIVEMATCH" in selection and not selection - {"RECURSIVEMATCH", "REMOTE"}:
                raise Bad("RECURSIVEMATCH needs another selection option")
        if len(args) < 2:
            raise Bad("LIST needs a reference and a pattern")
        reference = astring(args[0])
        patterns_token = args[1]
        patterns = (
            [astring(p) for p in patterns_token]
            if isinstance(patterns_token, list)
            else [astring(patterns_token)]
        )
        returns: set[str] = set()
        status_items: list[str] = []
        if len(args) > 2:
            if len(args) != 4 or astring(args[2]).upper() != "RETURN" or not isinstance(args[3], list):
                raise Bad("Invalid LIST return options")
            items = args[3]
            index = 0
            while index < len(items):
                option = astring(items[index]).upper()
                if option not in LIST_RETURN_OPTIONS:
                    raise Bad(f"Unknown LIST return option {option}")
                returns.add(option)
                if option == "STATUS":
                    index += 1
                    if index >= len(items) or not isinstance(items[index], list):
                        raise Bad("STATUS return option needs items")
                    status_items = [astring(i).upper() for i in _as_list(items[index])]
                index += 1
        if not self.utf8:
            # A pattern that is not modified UTF-7 matches no name, rather than failing the command.
            with contextlib.suppress(ParseError):
                reference = decode_mailbox_name(reference)
            patterns = [_decoded_or_raw(p) for p in patterns]
        if patterns == [""]:
            self.untagged(f'LIST (\\Noselect) "{HIERARCHY_DELIMITER}" ""')
            return None
        assert self.user is not None
        boxes = await self.store.list_mailboxes(self.user)
        names = {box.name for box in boxes}
        regexes = [_pattern_regex(reference + pattern) for pattern in patterns]
        verb = "LSUB" if lsub else "LIST"
        if lsub:
            # RFC 3501 §6.3.9: when `%` stops above a subscribed mailbox, its parent is listed with
            # \Noselect (unless the parent is itself subscribed and listed as it is).
            listed = {box.name for box in boxes if box.subscribed and any(r.match(box.name) for r in regexes)}
            parents: set[str] = set()
            for box in boxes:
                if not box.subscribed or box.name in listed:
                    continue
                parts = box.name.split(HIERARCHY_DELIMITER)
                for depth in range(1, len(parts)):
                    parent = HIERARCHY_DELIMITER.join(parts[:depth])
                    if parent not in listed and any(r.match(parent) for r in regexes):
                        parents.add(parent)
            for parent in sorted(parents):
                self.send(
                    b"* LSUB (\\Noselect) " + f'"{HIERARCHY_DELIMITER}" '.encode() + self.mailbox_out(parent) + b"\r\n"
                )
        subscribed_only = lsub or "SUBSCRIBED" in selection
        childinfo: set[str] = set()
        if "SUBSCRIBED" in selection and "RECURSIVEMATCH" in selection:
            # RFC 5258 §3.5: a name that matches but is not subscribed is listed with
            # CHILDINFO ("SUBSCRIBED") when a subscribed descendant does not match by itself.
            subscribed_names = {b.name for b in boxes if b.subscribed} | set(
                await self.store.subscribed_without_mailbox(self.user))
            for name in subscribed_names:
                if any(r.match(name) for r in regexes):
                    continue
                parts = name.split(HIERARCHY_DELIMITER)
                for depth in range(1, len(parts)):
                    parent = HIERARCHY_DELIMITER.join(parts[:depth])
                    if parent not in subscribed_names and any(r.match(parent) for r in regexes):
                        childinfo.add(parent)
        if subscribed_only and not lsub:
            # Subscribed names without a mailbox (RFC 5258 §3.4 \NonExistent).
            for name in await self.store.subscribed_without_mailbox(self.user):
                if any(regex.match(name) for regex in regexes):
                    self.send(b'* LIST (\\Subscribed \\NonExistent) "' + HIERARCHY_DELIMITER.encode() + b'" '
                              + self.mailbox_out(name) + b"\r\n")
        elif lsub:
            for name in await self.store.subscribed_without_mailbox(self.user):
                if any(regex.match(name) for regex in regexes):
                    self.send(b'* LSUB (\\Noselect) "' + HIERARCHY_DELIMITER.encode() + b'" '
                              + self.mailbox_out(name) + b"\r\n")
        for parent in sorted(childinfo - names):
            # A parent that exists only as a level of the hierarchy.
            self.send(b'* LIST (\\NonExistent) "' + HIERARCHY_DELIMITER.encode() + b'" '
                      + self.mailbox_out(parent) + b' (CHILDINFO ("SUBSCRIBED"))\r\n')
        for box in boxes:
            if not any(regex.match(box.name) for regex in regexes):
                continue
            if box.name in childinfo and not box.subscribed:
                attributes = []
                if "CHILDREN" in returns:
                    attributes.append("\\HasChildren")
                self.send(f"* LIST ({' '.join(attributes)}) \"{HIERARCHY_DELIMITER}\" ".encode()
                          + self.mailbox_out(box.name) + b' (CHILDINFO ("SUBSCRIBED"))\r\n')
                continue
            if subscribed_only and not box.subscribed:
                continue
            if "SPECIAL-USE" in selection and not box.special_use:
                continue
            attributes = []
            has_children = any(other.startswith(box.name + HIERARCHY_DELIMITER) for other in names)
            attributes.append("\\HasChildren" if has_children else "\\HasNoChildren")
            if box.special_use:
                attributes.append(box.special_use)
            if box.subscribed and (lsub or "SUBSCRIBED" in selection or "SUBSCRIBED" in returns):
                attributes.append("\\Subscribed")
            self.send(
                f"* {verb} (".encode()
                + " ".join(attributes).encode()
                + f') "{HIERARCHY_DELIMITER}" '.encode()
                + self.mailbox_out(box.name)
                + b"\r\n"
            )
            if status_items:
                await self._status_response(box, status_items)
        return None

    async def cmd_status(self, command: Command) -> str | None:
        if len(command.args) != 2 or not isinstance(command.args[1], list):
            raise Bad("STATUS needs a mailbox and a list of items")
        name = self.mailbox_arg(command.args[0])
        items = [astring(item).upper() for item in command.args[1]]
        assert self.user is not None
        box = await self.store.get_mailbox(self.user, name)
        if box is None:
            raise No(f"Mailbox {name} does not exist", "NONEXISTENT")
        await self._status_response(box, items)
        return None

    async def _status_response(self, box: MailboxInfo, items: list[str]) -> None:
        values = await self.store.status(box.id)
        values["RECENT"] = 0
        if "RECENT" in items:
            boundary = _recent_boundary(self.store, box)
            _, uids, _ = await self.store.view(box.id)
            values["RECENT"] = sum(1 for uid in uids if uid > boundary)
        parts = []
        for item in items:
            if item not in values:
                raise Bad(f"Unknown STATUS item {item[:30]}")
            parts.append(f"{item} {values[item]}")
        if "HIGHESTMODSEQ" in items:
            self.condstore = True
        self.send(b"* STATUS " + self.mailbox_out(box.name) + (" (" + " ".join(parts) + ")\r\n").encode())

    async def cmd_append(self, command: Command) -> str | None:
        args = list(command.args)
        if len(args) < 2:
            raise Bad("APPEND needs a mailbox and a message")
        name = self.mailbox_arg(args.pop(0))
        flags: tuple[str, ...] = ()
        internal_date: float | None = None
        zone = 0
        if args and isinstance(args[0], list):
            flags = tuple(astring(f) for f in _as_list(args.pop(0)))
            for flag in flags:
                if flag.startswith("\\") and flaglib.canonical(flag) not in flaglib.SYSTEM_FLAGS:
                    raise Bad(f"Invalid flag {flag[:30]}")
        if len(args) == 2:
            moment = parse_datetime(args.pop(0))
            internal_date = moment.timestamp()
            offset = moment.utcoffset()
            zone = int(offset.total_seconds() // 60) if offset else 0
        if len(args) != 1 or not isinstance(args[0], bytes):
            raise Bad("APPEND needs the message as a literal")
        message = args[0]
        if len(message) > self.append_limit:
            raise No("Message too large", "TOOBIG")
        if isinstance(message, Literal8) or b"\0" in message:
            message = mime.binary_parts_to_base64(message)
        assert self.user is not None
        box = await self.store.get_mailbox(self.user, name)
        if box is None:
            raise No(f"Mailbox {name} does not exist", "TRYCREATE")
        uid, uidvalidity = await self.store.append(box.id, message, flags, internal_date, zone)
        return f"OK [APPENDUID {uidvalidity} {uid}] APPEND completed"

    async def cmd_idle(self, command: Command) -> str | None:
        self.send(b"+ idling\r\n")
        await self.report_changes(True)
        await self.flush()
        self.commands.line_mode = True
        watch = self.selected.watch if self.selected else None
        deadline = time.monotonic() + IDLE_LIMIT_SECONDS
        try:
            while True:
                if not self._events:
                    self._events = self.commands.receive(
                        self._inflate(b"") if self._compressed_tail else b""
                    )
                if self._events:
                    event = self._events.pop(0)
                    if isinstance(event, Line) and event.data.strip().upper() == b"DONE":
                        return None
                    raise Bad("Expected DONE")
                read_task = asyncio.ensure_future(self.reader.read(READ_CHUNK))
                waiters: set[asyncio.Future[Any]] = {read_task}
                event_task = None
                if watch is not None:
                    event_task = asyncio.ensure_future(watch.event.wait())
                    waiters.add(event_task)
                try:
                    while True:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            self.untagged("BYE IDLE for too long")
                            await self.flush()
                            raise CloseConnection()
                        done, _ = await asyncio.wait(
                            waiters,
                            timeout=min(remaining, IDLE_POLL_SECONDS),
                            return_when=asyncio.FIRST_COMPLETED,
                        )
                        if not done or (event_task is not None and event_task in done):
                            # Woken by this process's notifier, or polling for changes another
                            # process (another node on the same database) committed.
                            if watch is not None:
                                watch.event.clear()
                            await self.report_changes(True)
                            await self.flush()
                            if event_task is not None and event_task in done:
                                assert watch is not None
                                waiters.discard(event_task)
                                event_task = asyncio.ensure_future(watch.event.wait())
                                waiters.add(event_task)
                        if read_task in done:
                            data = read_task.result()
                            if not data:
                                raise CloseConnection()
                            self._events = self.commands.receive(self._inflate(data))
                            break
                finally:
                    for task in waiters:
                        task.cancel()
        finally:
            self.commands.line_mode = False

    # -- selected -------------------------------------------------------------------------------

    async def cmd_check(self, command: Command) -> str | None:
        return None

    async def cmd_close(self, command: Command) -> str | None:
        selected = self.selected
        assert selected is not None
        if not selected.read_only:
            await self.store.expunge(selected.info.id)
        self._deselect()
        return None

    async def cmd_unselect(self, command: Command) -> str | None:
        self._deselect()
        return None

    async def cmd_expunge(self, command: Command) -> str | None:
        return await self._expunge(None)

    async def cmd_uid_expunge(self, command: Command) -> str | None:
        if len(command.args) != 1:
            raise Bad("UID EXPUNGE needs a UID set")
        return await self._expunge(self._resolve(command.args[0], uid=True))

    async def _expunge(self, uids: list[int] | None) -> str | None:
        selected = self.selected
        assert selected is not None
        if selected.read_only:
            raise No("Mailbox is read-only", "READ-ONLY")
        await self.report_changes(True)
        gone = await self.store.expunge(selected.info.id, uids)
        self._report_expunges(gone)
        return None

    async def cmd_fetch(self, command: Command) -> str | None:
        return await self._fetch(command, uid=False)

    async def cmd_uid_fetch(self, command: Command) -> str | None:
        return await self._fetch(command, uid=True)

    async def _fetch(self, command: Command, uid: bool) -> str | None:
        selected = self.selected
        assert selected is not None
        if len(command.args) < 2:
            raise Bad("FETCH needs a sequence set and items")
        uids = self._resolve(command.args[0], uid)
        attributes = parse_fetch_attributes(command.args[1])
        changed_since: int | None = None
        vanished = False
        if len(command.args) > 2:
            modifiers = command.args[2]
            if not isinstance(modifiers, list):
                raise Bad("Invalid FETCH modifiers")
            index = 0
            while index < len(modifiers):
                name = astring(modifiers[index]).upper()
                if name == "CHANGEDSINCE" and index + 1 < len(modifiers):
                    changed_since = number(modifiers[index + 1], "mod-sequence")
                    index += 2
                elif name == "VANISHED":
                    if not uid or "QRESYNC" not in self.enabled:
                        raise Bad("VANISHED needs UID FETCH and QRESYNC")
                    vanished = True
                    index += 1
                else:
                    raise Bad(f"Unknown FETCH modifier {name[:30]}")
            if len(command.args) > 3:
                raise Bad("Too many FETCH arguments")
        if vanished and changed_since is None:
            raise Bad("VANISHED needs CHANGEDSINCE")
        names = {attribute.name for attribute in attributes}
        if changed_since is not None or "MODSEQ" in names:
            await self._enable_condstore()
        if (uid or "QRESYNC" in self.enabled) and "UID" not in names:
            # RFC 7162 §3.2 (RFC 5162 erratum 1807): under QRESYNC a FETCH response names its message
            # by UID, so a client whose sequence numbers have shifted (VANISHED) can still place it.
            attributes.insert(0, FetchAttribute("UID"))
        if (changed_since is not None or (self.condstore and "FLAGS" in names)) and "MODSEQ" not in names:
            attributes.append(FetchAttribute("MODSEQ"))
        if vanished and changed_since is not None:
            changes = await self.store.changes_since(selected.info.id, changed_since)
            gone = [u for u in changes.expunged if parse_sequence_set(command.args[0]).contains(u, selected.info.uidnext)]
            if gone:
                self.untagged("VANISHED (EARLIER) " + format_sequence_set(gone))
        need_header = any(
            a.name in ("ENVELOPE", "RFC822.HEADER")
            or (a.section is not None and not a.section.part and a.section.text.startswith("HEADER"))
            for a in attributes
        )
        need_structure = any(
            a.name == "BODYSTRUCTURE" or (a.name == "BODY" and a.section is None) for a in attributes
        )
        need_body = any(
            a.name in ("RFC822", "RFC822.TEXT", "BINARY", "BINARY.SIZE")
            or (
                a.name == "BODY"
                and a.section is not None
                and not (not a.section.part and a.section.text.startswith("HEADER"))
            )
            for a in attributes
        )
        sets_seen = not selected.read_only and any(a.sets_seen for a in attributes)
        plan = _fetch_plan(attributes)
        # RFC 9051 §6.4.5: a FETCH that sets \Seen reports the new flags even when not asked for them.
        flags_after = sets_seen and "FLAGS" not in names
        body_gone = False
        for start in range(0, len(uids), FETCH_ROW_BATCH):
            batch = uids[start : start + FETCH_ROW_BATCH]
            rows = await self.store.messages(
                selected.info.id, batch, with_header=need_header, with_structure=need_structure,
                with_summary=False,
            )
            if changed_since is not None:
                rows = [row for row in rows if row.modseq > changed_since]
            if sets_seen:
                await self._mark_seen(rows)
            for group in _read_groups(rows) if (need_body or need_structure) else [rows]:
                # Bodies are read for body sections, and for structures not cached at delivery.
                wanted = group if need_body else [row for row in group if need_structure and row.structure is None]
                bodies = await self._read_bodies(wanted) if wanted else {}
                for row in group:
                    seq = selected.seq_of(row.uid)
                    if not seq:
                        continue
                    raw = bodies.get(row.uid)
                    if raw == b"" and row.size > 0:
                        # Another session expunged it between reading its row and its body: send
                        # nothing rather than an empty body (imaptest's stress mode catches that).
                        body_gone = True
                        continue
                    self._fetch_one(seq, row, plan, raw, flags_after)
                    if len(self._out) >= WRITE_FLUSH:  # maybe_flush, without a coroutine per message
                        await self.flush()
                await self.flush()
        if body_gone:
            # RFC 5530 §3: the client should NOOP to learn of the expunge.
            raise No("Some of the requested messages no longer exist", "EXPUNGEISSUED")
        return None

    async def _mark_seen(self, rows: list[MessageRow]) -> None:
        selected = self.selected
        assert selected is not None
        unseen = [row.uid for row in rows if flaglib.SEEN not in row.flags]
        if not unseen:
            return
        result, _, _ = await self.store.store_flags(selected.info.id, unseen, "add", [flaglib.SEEN])
        by_uid = {uid: (flags, modseq) for uid, flags, modseq in result}
        for row in rows:
            if row.uid in by_uid:
                row.flags, row.modseq = by_uid[row.uid]
                selected.own_modseqs.add(row.modseq)

    def _fetch_one(
        self,
        seq: int,
        row: MessageRow,
        plan: list[tuple[int, FetchAttribute, bytes]],
        raw: bytes | None,
        flags_after: bool,
    ) -> None:
        parts: list[bytes] = []
        for kind, attribute, prefix in plan:
            if kind == _F_HEADER:
                parts.append(prefix + self._partial(row.header, attribute))
            elif kind == _F_UID:
                parts.append(b"UID %d" % row.uid)
            elif kind == _F_FLAGS:
                parts.append(b"FLAGS (" + self._flag_list(row.uid, row.flags).encode() + b")")
            elif kind == _F_MODSEQ:
                parts.append(b"MODSEQ (%d)" % row.modseq)
            elif kind == _F_INTERNALDATE:
                parts.append(b'INTERNALDATE "' + format_datetime(row.internal_date, row.internal_zone).encode() + b'"')
            elif kind == _F_SIZE:
                parts.append(b"RFC822.SIZE %d" % row.size)
            elif kind == _F_ENVELOPE:
                parts.append(b"ENVELOPE " + mime.envelope(row.header))
            elif kind == _F_RFC822_HEADER:
                parts.append(b"RFC822.HEADER " + literal(row.header))
            elif kind == _F_RFC822:
                parts.append(b"RFC822 " + literal(raw or b""))
            elif kind == _F_RFC822_TEXT:
                parts.append(b"RFC822.TEXT " + literal(mime.split_header_body(raw or b"")[1]))
            elif kind == _F_BODYSTRUCTURE:
                structure = row.structure
                if structure is None:
                    structure = mime.body_structure(raw or b"", extended=True)
                parts.append(b"BODYSTRUCTURE " + structure)
            elif kind == _F_BODY:
                basic = row.basic_structure
                if basic is None:
                    basic = mime.body_structure(raw or b"", extended=False)
                parts.append(b"BODY " + basic)
            elif kind == _F_HEADER_FIELDS:
                section = attribute.section
                assert section is not None
                fields = mime.header_fields(row.header, section.fields, section.text == "HEADER.FIELDS.NOT")
                parts.append(prefix + self._partial(fields, attribute))
            elif kind == _F_SECTION:
                section = attribute.section
                assert section is not None
                data: bytes | None = mime.section_bytes(raw or b"", section.part, section.text, section.fields)
                parts.append(prefix + self._partial(data, attribute))
            elif kind in (_F_BINARY, _F_BINARY_SIZE):
                assert attribute.section is not None
                data = mime.binary_section(raw or b"", attribute.section.part)
                if data is None:
                    raise No("Unknown content transfer encoding", "UNKNOWN-CTE")
                if kind == _F_BINARY:
                    parts.append(prefix + self._partial(data, attribute, binary=True))
                else:
                    parts.append(prefix + b"%d" % len(data))
            elif kind == _F_SAVEDATE:
                parts.append(b"SAVEDATE NIL")
        if flags_after:
            parts.append(b"FLAGS (" + self._flag_list(row.uid, row.flags).encode() + b")")
        out = self._out
        out += b"* %d FETCH (" % seq
        out += b" ".join(parts)
        out += b")\r\n"

    @staticmethod
    def _partial(data: bytes | None, attribute: FetchAttribute, binary: bool = False) -> bytes:
        if data is None:
            return b"NIL"
        if attribute.partial is not None:
            start, length = attribute.partial
            data = data[start : start + length]
        if binary and b"\0" in data:
            return b"~" + literal(data)
        if not data:
            return b'""'
        return literal(data)

    async def cmd_store(self, command: Command) -> str | None:
        return await self._store(command, uid=False)

    async def cmd_uid_store(self, command: Command) -> str | None:
        return await self._store(command, uid=True)

    async def _store(self, command: Command, uid: bool) -> str | None:
        selected = self.selected
        assert selected is not None
        args = list(command.args)
        if len(args) < 3:
            raise Bad("STORE needs a sequence set, an item and flags")
        uids = self._resolve(args.pop(0), uid)
        unchanged_since: int | None = None
        if isinstance(args[0], list):
            modifier = _as_list(args.pop(0))
            if len(modifier) != 2 or astring(modifier[0]).upper() != "UNCHANGEDSINCE":
                raise Bad("Unknown STORE modifier")
            unchanged_since = number(modifier[1], "mod-sequence")
            await self._enable_condstore()
        item = astring(args.pop(0)).upper()
        silent = item.endswith(".SILENT")
        item = item.removesuffix(".SILENT")
        modes = {"FLAGS": "set", "+FLAGS": "add", "-FLAGS": "remove"}
        if item not in modes:
            raise Bad(f"Unknown STORE item {item[:30]}")
        flag_tokens = args[0] if len(args) == 1 and isinstance(args[0], list) else args
        flags = [astring(f) for f in flag_tokens]
        for flag in flags:
            if flag.startswith("\\") and flaglib.canonical(flag) not in flaglib.SYSTEM_FLAGS:
                raise Bad(f"Invalid flag {flag[:30]}")
        if selected.read_only:
            raise No("Mailbox is read-only", "READ-ONLY")
        result, failed, own = await self.store.store_flags(
            selected.info.id, uids, modes[item], flags, unchanged_since
        )
        failed_set = set(failed)
        if own and own - 1 == selected.modseq:
            # Nothing happened between what this session has reported and its own change.
            selected.modseq = own
        for message_uid, message_flags, modseq in result:
            if message_uid in failed_set:
                continue
            selected.own_modseqs.add(modseq)
            seq = selected.seq_of(message_uid)
            if not seq:
                continue
            if not silent or (unchanged_since is not None):
                if silent:
                    with_uid = uid or "QRESYNC" in self.enabled
                    self.untagged(f"{seq} FETCH (" + (f"UID {message_uid} " if with_uid else "") + f"MODSEQ ({modseq}))")
                else:
                    self.untagged(self._flags_fetch(seq, message_uid, message_flags, modseq, with_uid=uid))
            await self.maybe_flush()
        if failed:
            shown = failed if uid else [selected.seq_of(u) for u in failed if selected.seq_of(u)]
            return f"OK [MODIFIED {format_sequence_set(sorted(shown))}] Conditional STORE failed"
        return None

    async def cmd_copy(self, command: Command) -> str | None:
        return await self._copy(command, uid=False, move=False)

    async def cmd_uid_copy(self, command: Command) -> str | None:
        return await self._copy(command, uid=True, move=False)

    async def cmd_move(self, command: Command) -> str | None:
        return await self._copy(command, uid=False, move=True)

    async def cmd_uid_move(self, command: Command) -> str | None:
        return await self._copy(command, uid=True, move=True)

    async def _copy(self, command: Command, uid: bool, move: bool) -> str | None:
        selected = self.selected
        assert selected is not None and self.user is not None
        if len(command.args) != 2:
            raise Bad("COPY/MOVE needs a sequence set and a mailbox")
        uids = self._resolve(command.args[0], uid)
        target = await self.store.get_mailbox(self.user, self.mailbox_arg(command.args[1]))
        if target is None:
            raise No("Destination does not exist", "TRYCREATE")
        if move and selected.read_only:
            raise No("Mailbox is read-only", "READ-ONLY")
        if move and target.id == selected.info.id:
            # RFC 6851 §3.3 allows it: the messages get new UIDs at the end of the mailbox, as a COPY
            # followed by an EXPUNGE of the originals would give them (Dovecot does the same).
            uidvalidity, mapping = await self.store.copy(selected.info.id, uids, target.id)
            if mapping:
                await self.store.expunge(selected.info.id, [m[0] for m in mapping])
        elif move:
            uidvalidity, mapping = await self.store.move(selected.info.id, uids, target.id)
        else:
            uidvalidity, mapping = await self.store.copy(selected.info.id, uids, target.id)
        if not mapping:
            return None
        code = (
            f"COPYUID {uidvalidity} {format_sequence_set([m[0] for m in mapping])} "
            f"{format_sequence_set([m[1] for m in mapping])}"
        )
        if move:
            self.untagged(f"OK [{code}] Moved")
            self._report_expunges([m[0] for m in mapping])
            return None
        return f"OK [{code}] COPY completed"

    async def cmd_search(self, command: Command) -> str | None:
        return await self._search(command, uid=False, mode="SEARCH")

    async def cmd_uid_search(self, command: Command) -> str | None:
        return await self._search(command, uid=True, mode="SEARCH")

    async def cmd_sort(self, command: Command) -> str | None:
        return await self._search(command, uid=False, mode="SORT")

    async def cmd_uid_sort(self, command: Command) -> str | None:
        return await self._search(command, uid=True, mode="SORT")

    async def cmd_thread(self, command: Command) -> str | None:
        return await self._search(command, uid=False, mode="THREAD")

    async def cmd_uid_thread(self, command: Command) -> str | None:
        return await self._search(command, uid=True, mode="THREAD")

    async def _search(self, command: Command, uid: bool, mode: str) -> str | None:
        selected = self.selected
        assert selected is not None
        args = list(command.args)
        return_options: list[str] | None = None
        sort_criteria: list[str] = []
        if mode == "SEARCH" and len(args) >= 2 and isinstance(args[0], str) and args[0].upper() == "RETURN":
            if not isinstance(args[1], list):
                raise Bad("RETURN needs a list")
            return_options = [astring(o).upper() for o in args[1]] or ["ALL"]
            args = args[2:]
        if mode == "SORT":
            if not args or not isinstance(args[0], list):
                raise Bad("SORT needs criteria")
            sort_criteria = [astring(c).upper() for c in _as_list(args.pop(0))]
            valid = {"ARRIVAL", "CC", "DATE", "FROM", "REVERSE", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO"}
            if not sort_criteria or any(c not in valid for c in sort_criteria) or sort_criteria[-1] == "REVERSE":
                raise Bad("Invalid sort criteria")
        if mode == "THREAD" and (not args or astring(args.pop(0)).upper() != "REFERENCES"):
            raise No("Only THREAD=REFERENCES is supported")
        if mode in ("SORT", "THREAD"):
            if not args:
                raise Bad("Charset missing")
            charset = astring(args.pop(0)).upper()
            if charset not in ("UTF-8", "US-ASCII"):
                raise No("Unsupported charset", "BADCHARSET (UTF-8 US-ASCII)")
        elif len(args) >= 2 and isinstance(args[0], str) and args[0].upper() == "CHARSET":
            charset = astring(args[1]).upper()
            if charset not in ("UTF-8", "US-ASCII"):
                raise No("Unsupported charset", "BADCHARSET (UTF-8 US-ASCII)")
            args = args[2:]
        key = _substitute_saved(parse_search(args), self.saved_result)
        needles: dict[str, searching.Needle] = {}
        searching.compile_needles(key, needles)
        need_header, need_body = searching.needs(key)
        if mode != "SEARCH":
            need_header = True
        rows = await self.store.messages(selected.info.id, None, with_header=need_header, with_summary=False)
        largest_uid = selected.uids[-1] if selected.uids else 0
        largest_seq = len(selected.uids)
        candidates: list[searching.Candidate] = []
        for row in rows:
            seq = selected.seq_of(row.uid)
            if seq:
                candidate = searching.Candidate(seq, row, largest_seq, largest_uid, self.store.read_body)
                candidate.recent = row.uid in selected.recent
                candidates.append(candidate)
        matched: list[searching.Candidate] = []
        for start in range(0, len(candidates), BLOB_BATCH):
            batch = candidates[start : start + BLOB_BATCH]
            if need_body:
                # Inline bodies come from the database a batch at a time; files are read lazily.
                await self.store.load_bodies([c.row for c in batch])
                matched.extend(await asyncio.to_thread(_match_batch, key, batch, needles, True))
            else:
                matched.extend(_match_batch(key, batch, needles, False))
        uses_modseq = _uses_modseq(key)
        if uses_modseq:
            await self._enable_condstore()
        if mode == "SORT":
            try:
                matched.sort(key=lambda c: searching.sort_key(sort_criteria, c))
            except ValueError:
                raise Bad("Invalid sort criteria") from None
            values = [c.row.uid if uid else c.seq for c in matched]
            self.untagged("SORT" + "".join(f" {v}" for v in values))
            return None
        if mode == "THREAD":
            self.untagged("THREAD " + searching.thread_references(matched, uid))
            return None
        values = [c.row.uid if uid else c.seq for c in matched]
        highest = max((c.row.modseq for c in matched), default=0)
        if return_options is None and "IMAP4REV2" not in self.enabled:
            line = "SEARCH" + "".join(f" {v}" for v in values)
            if uses_modseq and values:
                line += f" (MODSEQ {highest})"
            self.untagged(line)
            return None
        options = return_options or ["ALL"]
        if "SAVE" in options:
            # RFC 5182: the result is kept for "$"; with SAVE alone nothing is returned.
            self.saved_result = [c.row.uid for c in matched]
            options = [option for option in options if option != "SAVE"]
            if not options:
                return None
        out = f'ESEARCH (TAG "{command.tag}")' + (" UID" if uid else "")
        if values:
            if "MIN" in options:
                out += f" MIN {values[0]}"
            if "MAX" in options:
                out += f" MAX {values[-1]}"
            if "ALL" in options:
                out += f" ALL {format_sequence_set(values)}"
        if "COUNT" in options:
            out += f" COUNT {len(values)}"
        if uses_modseq and values:
            if not set(options) - {"MIN", "MAX"}:
                # RFC 4731 §3.2 (RFC 7162 §3.1.5): with only MIN and/or MAX, the highest mod-sequence
                # of the messages returned, not of every match.
                shown = ([matched[0]] if "MIN" in options else []) + ([matched[-1]] if "MAX" in options else [])
                highest = max(c.row.modseq for c in shown)
            out += f" MODSEQ {highest}"
        self.untagged(out)
        return None

    async def _enable_condstore(self) -> None:
        """RFC 7162 §3.1: the first CONDSTORE-enabling command in a selected mailbox is told the
        mailbox's HIGHESTMODSEQ (an untagged OK before its own answer)."""
        if self.condstore:
            return
        self.condstore = True
        if self.selected is not None:
            info = await self.store.mailbox_by_id(self.selected.info.id)
            if info is not None:
                self.untagged(f"OK [HIGHESTMODSEQ {info.highestmodseq}] Highest")


# RFC 5258 §3 selection options, RFC 6154 SPECIAL-USE; REMOTE is accepted and changes nothing (no
# remote mailboxes here).
LIST_SELECTION_OPTIONS = frozenset({"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"})
# RFC 5258 §3 return options, RFC 5819 STATUS, RFC 6154 SPECIAL-USE.
LIST_RETURN_OPTIONS = frozenset({"SUBSCRIBED", "CHILDREN", "STATUS", "SPECIAL-USE"})


class _Handled(Exception):
    """The command already wrote its tagged response (STARTTLS)."""


# What each FETCH item is (_fetch_plan), worked out once per command rather than per message.
(_F_UID, _F_FLAGS, _F_MODSEQ, _F_INTERNALDATE, _F_SIZE, _F_ENVELOPE, _F_RFC822_HEADER, _F_RFC822,
 _F_RFC822_TEXT, _F_BODYSTRUCTURE, _F_BODY, _F_HEADER, _F_HEADER_FIELDS, _F_SECTION, _F_BINARY,
 _F_BINARY_SIZE, _F_SAVEDATE, _F_UNKNOWN) = range(18)
_SIMPLE_KINDS = {
    "UID": _F_UID, "FLAGS": _F_FLAGS, "MODSEQ": _F_MODSEQ, "INTERNALDATE": _F_INTERNALDATE,
    "RFC822.SIZE": _F_SIZE, "ENVELOPE": _F_ENVELOPE, "RFC822.HEADER": _F_RFC822_HEADER, "RFC822": _F_RFC822,
    "RFC822.TEXT": _F_RFC822_TEXT, "BODYSTRUCTURE": _F_BODYSTRUCTURE, "SAVEDATE": _F_SAVEDATE,
}


def _fetch_plan(attributes: list[FetchAttribute]) -> list[tuple[int, FetchAttribute, bytes]]:
    """Each FETCH item's kind and the name its response starts with ("BODY[HEADER] ", ...)."""
    plan = []
    for attribute in attributes:
        name, section = attribute.name, attribute.section
        prefix = b""
        if name == "BODY" and section is None:
            kind = _F_BODY
        elif name == "BODY":
            assert section is not None
            if not section.part and section.text == "HEADER":
                kind = _F_HEADER
            elif not section.part and section.text.startswith("HEADER"):
                kind = _F_HEADER_FIELDS
            else:
                kind = _F_SECTION
            prefix = attribute.response_name().encode() + b" "
        elif name in ("BINARY", "BINARY.SIZE"):
            kind = _F_BINARY if name == "BINARY" else _F_BINARY_SIZE
            prefix = attribute.response_name().encode() + b" "
        else:
            kind = _SIMPLE_KINDS.get(name, _F_UNKNOWN)
        plan.append((kind, attribute, prefix))
    return plan


def _match_batch(
    key: SearchKey, batch: list[searching.Candidate], needles: dict[str, searching.Needle], release: bool
) -> list[searching.Candidate]:
    out = []
    for candidate in batch:
        if searching.matches(key, candidate, needles):
            out.append(candidate)
        if release:
            candidate._raw = None
            candidate._body_text = None
    return out


def _read_groups(rows: list[MessageRow]) -> list[list[MessageRow]]:
    """Rows in groups whose files together stay under FETCH_READ_BYTES (one large message alone)."""
    groups: list[list[MessageRow]] = []
    current: list[MessageRow] = []
    size = 0
    for row in rows:
        if current and (size + row.size > FETCH_READ_BYTES or len(current) >= BLOB_BATCH):
            groups.append(current)
            current, size = [], 0
        current.append(row)
        size += row.size
    if current:
        groups.append(current)
    return groups


def _as_list(token: object) -> list[object]:
    if not isinstance(token, list):
        raise Bad("Expected a parenthesised list")
    return token


def _substitute_saved(key: SearchKey, saved: list[int]) -> SearchKey:
    """Replace "$" (RFC 5182) in a search key by the saved UIDs."""
    if key.op in ("SEQ", "UID") and isinstance(key.args[0], SequenceSet) and key.args[0].saved:
        return SearchKey("UIDIN", [frozenset(saved)])
    if key.op in ("AND", "OR", "NOT"):
        return SearchKey(key.op, [_substitute_saved(arg, saved) for arg in key.args])  # type: ignore[arg-type]
    return key


def _uses_modseq(key: SearchKey) -> bool:
    if key.op == "MODSEQ":
        return True
    return any(isinstance(arg, SearchKey) and _uses_modseq(arg) for arg in key.args)


def _decoded_or_raw(pattern: str) -> str:
    try:
        return decode_mailbox_name(pattern)
    except ParseError:
        return pattern


def _pattern_regex(pattern: str) -> Any:
    out = []
    for char in pattern:
        if char == "*":
            out.append(".*")
        elif char == "%":
            out.append(f"[^{re.escape(HIERARCHY_DELIMITER)}]*")
        else:
            out.append(re.escape(char))
    regex = "".join(out)
    if pattern.upper().startswith("INBOX"):
        regex = "(?i:INBOX)" + "".join(out[5:])
    return re.compile(f"^{regex}$", re.S)


_ANY = ("noauth", "auth", "selected")
_AUTHED = ("auth", "selected")
_SELECTED = ("selected",)
_HANDLERS: dict[str, tuple[tuple[str, ...], Any]] = {
    "CAPABILITY": (_ANY, ImapSession.cmd_capability),
    "NOOP": (_ANY, ImapSession.cmd_noop),
    "LOGOUT": (_ANY, ImapSession.cmd_logout),
    "ID": (_ANY, ImapSession.cmd_id),
    "STARTTLS": (("noauth",), ImapSession.cmd_starttls),
    "LOGIN": (("noauth",), ImapSession.cmd_login),
    "AUTHENTICATE": (("noauth",), ImapSession.cmd_authenticate),
    "ENABLE": (_AUTHED, ImapSession.cmd_enable),
    "NAMESPACE": (_AUTHED, ImapSession.cmd_namespace),
    "SELECT": (_AUTHED, ImapSession.cmd_select),
    "EXAMINE": (_AUTHED, ImapSession.cmd_examine),
    "CREATE": (_AUTHED, ImapSession.cmd_create),
    "DELETE": (_AUTHED, ImapSession.cmd_delete),
    "RENAME": (_AUTHED, ImapSession.cmd_rename),
    "SUBSCRIBE": (_AUTHED, ImapSession.cmd_subscribe),
    "UNSUBSCRIBE": (_AUTHED, ImapSession.cmd_unsubscribe),
    "LIST": (_AUTHED, ImapSession.cmd_list),
    "LSUB": (_AUTHED, ImapSession.cmd_lsub),
    "STATUS": (_AUTHED, ImapSession.cmd_status),
    "APPEND": (_AUTHED, ImapSession.cmd_append),
    "IDLE": (_AUTHED, ImapSession.cmd_idle),
    "COMPRESS": (_AUTHED, ImapSession.cmd_compress),
    "CHECK": (_SELECTED, ImapSession.cmd_check),
    "CLOSE": (_SELECTED, ImapSession.cmd_close),
    "UNSELECT": (_SELECTED, ImapSession.cmd_unselect),
    "UNAUTHENTICATE": (_AUTHED, ImapSession.cmd_unauthenticate),
    "EXPUNGE": (_SELECTED, ImapSession.cmd_expunge),
    "UID EXPUNGE": (_SELECTED, ImapSession.cmd_uid_expunge),
    "FETCH": (_SELECTED, ImapSession.cmd_fetch),
    "UID FETCH": (_SELECTED, ImapSession.cmd_uid_fetch),
    "STORE": (_SELECTED, ImapSession.cmd_store),
    "UID STORE": (_SELECTED, ImapSession.cmd_uid_store),
    "COPY": (_SELECTED, ImapSession.cmd_copy),
    "UID COPY": (_SELECTED, ImapSession.cmd_uid_copy),
    "MOVE": (_SELECTED, ImapSession.cmd_move),
    "UID MOVE": (_SELECTED, ImapSession.cmd_uid_move),
    "SEARCH": (_SELECTED, ImapSession.cmd_search),
    "UID SEARCH": (_SELECTED, ImapSession.cmd_uid_search),
    "SORT": (_SELECTED, ImapSession.cmd_sort),
    "UID SORT": (_SELECTED, ImapSession.cmd_uid_sort),
    "THREAD": (_SELECTED, ImapSession.cmd_thread),
    "UID THREAD": (_SELECTED, ImapSession.cmd_uid_thread),
}
