"""The outbound queue against peers that fail at every step of an SMTP session (and against our own
client failing): every attempt closes its connection, counts as a temporary failure, and the next
attempt waits for its back-off; connections to one destination never exceed the configured cap.
SMTPUTF8 (RFC 6531): a UTF-8 envelope goes out as UTF-8 when the peer offers the extension and fails
permanently (5.6.7) when it does not.

Each scenario has its own domain and its own scripted peer on 127.0.4.60, and one queue runs them
all at once, so the whole matrix takes a few seconds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.header import decode_header, make_header
from pathlib import Path

import aiosmtplib
import pytest

from peerage.mail.queue_tables import mail_queue
from peerage.mail.smtp import client as smtp_client
from peerage.mail.smtp.client import DELIVERED, PERMANENT, Deliverer, Outcome
from peerage.mail.smtp.queue import OutboundQueue
from peerage.mail.smtp.schedule import Schedule
from peerage.store import Store

PEER_ADDRESS = "127.0.4.60"
FIRST_RETRY = 0.4
ATTEMPTS = 3
SENDER = "alice@example.org"


@dataclass
class Peer:
    """A scripted SMTP server: behaves until `fail_at`, then does `how` there."""

    fail_at: str  # connect, greeting, ehlo, mail, rcpt, data, body, eod, never
    how: str = "451"  # "451", "drop", "garbage" or "hang"
    smtputf8: bool = True
    greeting_delay: float = 0.0
    server: asyncio.AbstractServer | None = None
    port: int = 0
    starts: list[float] = field(default_factory=list)
    open_now: int = 0
    most_open: int = 0
    commands: list[bytes] = field(default_factory=list)
    lines: list[bytes] = field(default_factory=list)  # message lines received after DATA

    async def start(self) -> Peer:
        self.server = await asyncio.start_server(self._session, PEER_ADDRESS, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()

    async def _fail(self, step: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        if step != self.fail_at:
            return False
        if self.how == "451":
            writer.write(b"451 4.3.0 injected failure\r\n")
            await writer.drain()
            return step in ("connect", "greeting")
        if self.how == "garbage":
            writer.write(b"\xff\xfe this is not SMTP \x00\r\n")
            await writer.drain()
        if self.how == "hang":
            # Say nothing, and notice when the client gives up and closes.
            while await reader.read(4096):
                pass
        return True  # drop

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.starts.append(time.monotonic())
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            await self._script(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open_now -= 1
            writer.close()

    async def _script(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if await self._fail("connect", reader, writer):
            return
        await asyncio.sleep(self.greeting_delay)
        if self.fail_at == "greeting" and self.how == "451":
            writer.write(b"421 4.3.2 injected: not now\r\n")
            await writer.drain()
        elif await self._fail("greeting", reader, writer):
            return
        else:
            writer.write(b"220 peer.example ESMTP\r\n")
        while True:
            line = await reader.readline()
            if not line:
                return
            self.commands.append(line)
            verb = line[:4].upper()
            step = {b"EHLO": "ehlo", b"MAIL": "mail", b"RCPT": "rcpt", b"DATA": "data"}.get(verb)
            if verb == b"QUIT":
                writer.write(b"221 2.0.0 bye\r\n")
                await writer.drain()
                return
            if verb == b"RSET" or verb == b"NOOP":
                writer.write(b"250 2.0.0 ok\r\n")
                continue
            if step is not None and step == self.fail_at:
                if await self._fail(step, reader, writer):
                    return
                continue
            if verb == b"EHLO":
                extensions = [b"250-peer.example", b"250-8BITMIME", b"250-PIPELINING"]
                if self.smtputf8:
                    extensions.append(b"250-SMTPUTF8")
                writer.write(b"\r\n".join(extensions) + b"\r\n250 ENHANCEDSTATUSCODES\r\n")
            elif verb == b"DATA":
                writer.write(b"354 go ahead\r\n")
                await writer.drain()
                first = True
                while True:
                    body = await reader.readline()
                    if not body:
                        return
                    if first and self.fail_at == "body" and await self._fail("body", reader, writer):
                        return
                    first = False
                    self.lines.append(body)
                    if body == b".\r\n":
                        break
                if await self._fail("eod", reader, writer):
                    return
                if self.fail_at != "eod":
                    writer.write(b"250 2.0.0 queued\r\n")
            else:
                writer.write(b"250 2.1.0 ok\r\n")
            await writer.drain()


class FakeDns:
    """MX mx.<domain> for every domain, each pointing at the peer's address."""

    async def mx(self, domain: str) -> list[tuple[int, str]]:
        return [(10, f"mx.{domain}")]

    async def a(self, host: str) -> list[str]:
        return [PEER_ADDRESS]

    async def aaaa(self, host: str) -> list[str]:
        return []

    async def tlsa(self, name: str) -> tuple[list[object], bool]:
        return [], False

    async def txt(self, name: str) -> list[object]:
        return []


class Router:
    """Sends each destination domain to its own peer's port."""

    def __init__(self, peers: dict[str, Peer], cap: int = 5) -> None:
        self.peers = peers
        self.deliverers = {
            domain: Deliverer(dns=FakeDns(), hostname="mail.example.org", port=peer.port,
                              connections_per_destination=cap)
            for domain, peer in peers.items()
        }

    async def deliver(self, domain: str, mail_from: str, recipients: list[str], data: bytes,
                      smtputf8: bool) -> dict[str, Outcome]:
        return await self.deliverers[domain].deliver(domain, mail_from, recipients, data, smtputf8=smtputf8)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'queue.db'}")
    await store.migrate()
    try:
        yield store
    finally:
        await store.close()


def _queue(store: Store, tmp_path: Path, router: Router, bounces: list[bytes]) -> OutboundQueue:
    async def deliver_local(address: str, data: bytes, mail_from: str | None = None) -> None:
        bounces.append(data)

    return OutboundQueue(
        store=store,
        spool_dir=tmp_path / "spool",
        schedule=Schedule(first_retry=FIRST_RETRY, lifetime=3600.0, delay_warning=0.0),
        is_local=lambda domain: domain == "example.org",
        deliver_local=deliver_local,
        deliver_remote=router.deliver,
        reporting_mta="mail.example.org",
    )


async def _rows(store: Store) -> list[dict[str, object]]:
    async with store.begin() as conn:
        return [dict(r._mapping) for r in await conn.execute(mail_queue.select())]


async def _until(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate() if callable(predicate) else None
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


SCENARIOS = {
    "connect-drop": ("connect", "drop"),
    "greeting-421": ("greeting", "451"),
    "greeting-garbage": ("greeting", "garbage"),
    "ehlo-451": ("ehlo", "451"),
    "ehlo-drop": ("ehlo", "drop"),
    "mail-451": ("mail", "451"),
    "mail-drop": ("mail", "drop"),
    "rcpt-451": ("rcpt", "451"),
    "rcpt-drop": ("rcpt", "drop"),
    "data-451": ("data", "451"),
    "data-drop": ("data", "drop"),
    "body-drop": ("body", "drop"),
    "eod-451": ("eod", "451"),
    "eod-drop": ("eod", "drop"),
    "eod-hang": ("eod", "hang"),
}


async def test_failure_at_every_step_closes_and_backs_off(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A peer that never answers is given up on after this long (the real figure is minutes).
    monkeypatch.setattr(smtp_client, "COMMAND_TIMEOUT_SECONDS", 0.5)
    peers = {f"{name}.example": await Peer(step, how).start() for name, (step, how) in SCENARIOS.items()}
    # Our own client failing mid-session, as an encoding bug once did at RCPT: must behave the same.
    peers["client-bug.example"] = await Peer("never").start()
    real_rcpt = aiosmtplib.SMTP.rcpt

    async def broken_rcpt(self: aiosmtplib.SMTP, recipient: str, **kwargs: object) -> object:
        if recipient.endswith("@client-bug.example"):
            raise UnicodeEncodeError("ascii", recipient, 0, 1, "injected")
        return await real_rcpt(self, recipient, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(aiosmtplib.SMTP, "rcpt", broken_rcpt)
    router = Router(peers)
    bounces: list[bytes] = []
    queue = _queue(store, tmp_path, router, bounces)
    try:
        for domain in peers:
            await queue.enqueue(SENDER, [f"bob@{domain}"], b"From: alice@example.org\r\nSubject: x\r\n\r\nhi\r\n")
        queue.start()
        await _until(lambda: all(len(p.starts) >= ATTEMPTS for p in peers.values()), 30,
                     f"{ATTEMPTS} attempts at every peer")
        await queue.stop()
        await _until(lambda: all(p.open_now == 0 for p in peers.values()), 30,
                     f"every connection closed: {[d for d, p in peers.items() if p.open_now]}")
        for domain, peer in peers.items():
            # No retry before its back-off: FIRST_RETRY, then twice that (rows hold whole seconds).
            gaps = [b - a for a, b in zip(peer.starts, peer.starts[1:], strict=False)]
            for n, gap in enumerate(gaps[: ATTEMPTS - 1]):
                assert gap >= FIRST_RETRY * (2**n) - 0.05, (domain, gaps)
            # One connection at a time per attempt, and none left open by us.
            assert peer.most_open == 1, domain
            assert not router.deliverers[domain].open_connections, domain
        rows = await _rows(store)
        assert len(rows) == len(peers)
        assert all(int(str(r["attempts"])) >= ATTEMPTS - 1 for r in rows)
        assert not bounces  # temporary failures: nobody is told yet
    finally:
        await queue.stop()
        for peer in peers.values():
            await peer.stop()


async def test_connections_per_destination_are_capped(store: Store, tmp_path: Path) -> None:
    peer = await Peer("never", greeting_delay=0.3).start()
    router = Router({"busy.example": peer}, cap=3)
    queue = _queue(store, tmp_path, router, [])
    try:
        for n in range(12):
            await queue.enqueue(SENDER, [f"u{n}@busy.example"], f"Subject: {n}\r\n\r\nhi\r\n".encode())
        queue.start()
        await _until(lambda: len(peer.starts) >= 12, 30, "every message delivered")

        async def empty() -> bool:
            return not await _rows(store)

        await _until(empty, 20, "the queue emptied")
        assert peer.most_open == 3
    finally:
        await queue.stop()
        await peer.stop()


async def test_smtputf8_envelope_goes_out_as_utf8() -> None:
    peer = await Peer("never").start()
    try:
        deliverer = Deliverer(dns=FakeDns(), hostname="mail.example.org", port=peer.port)
        data = "From: jörg@example.org\r\nSubject: grüße\r\n\r\nhallo\r\n".encode()
        outcome = await deliverer.deliver("utf8.example", "jörg@example.org", ["zoë@utf8.example"], data,
                                          smtputf8=True)
        assert outcome["zoë@utf8.example"].kind == DELIVERED
        mail = next(c for c in peer.commands if c.startswith(b"MAIL"))
        rcpt = next(c for c in peer.commands if c.startswith(b"RCPT"))
        assert mail == "MAIL FROM:<jörg@example.org> SMTPUTF8 BODY=8BITMIME\r\n".encode()
        assert rcpt == "RCPT TO:<zoë@utf8.example>\r\n".encode()
    finally:
        await peer.stop()


async def test_smtputf8_without_the_extension_fails_permanently() -> None:
    peer = await Peer("never", smtputf8=False).start()
    try:
        deliverer = Deliverer(dns=FakeDns(), hostname="mail.example.org", port=peer.port)
        outcome = await deliverer.deliver("old.example", SENDER, ["zoë@old.example"], b"Subject: x\r\n\r\nhi\r\n",
                                          smtputf8=False)
        assert outcome["zoë@old.example"].kind == PERMANENT
        assert outcome["zoë@old.example"].status == "5.6.7"
        # UTF-8 header fields to an ASCII address: sent in their RFC 6857 form, without SMTPUTF8.
        headers_only = await deliverer.deliver("old.example", SENDER, ["bob@old.example"],
                                               "Subject: grüße\r\n\r\nhi\r\n".encode(), smtputf8=True)
        assert headers_only["bob@old.example"].kind == DELIVERED
        subject = next(line for line in peer.lines if line.startswith(b"Subject:"))
        assert subject.isascii() and str(make_header(decode_header(subject[8:].decode().strip()))) == "grüße"
        # Header bytes that are not UTF-8 have no downgraded form: 5.6.9, naming the reason.
        latin1 = await deliverer.deliver("old.example", SENDER, ["bob@old.example"],
                                         b"Subject: gr\xfc\xdfe\r\n\r\nhi\r\n", smtputf8=True)
        assert latin1["bob@old.example"].kind == PERMANENT
        assert latin1["bob@old.example"].status == "5.6.9"
        assert "cannot be downgraded" in latin1["bob@old.example"].reply
        # An ASCII message submitted with SMTPUTF8 needs nothing the peer lacks: it goes as it is.
        plain = await deliverer.deliver("old.example", SENDER, ["bob@old.example"], b"Subject: x\r\n\r\nhi\r\n",
                                        smtputf8=True)
        assert plain["bob@old.example"].kind == DELIVERED
        assert all(b"SMTPUTF8" not in c for c in peer.commands if c.startswith(b"MAIL"))
        assert not deliverer.open_connections
    finally:
        await peer.stop()
