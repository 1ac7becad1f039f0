"""The delivery channel between MX worker processes and the main process.

With `[smtp] mx_workers = N`, N extra processes accept on the MX sockets, which the main process binds
once and hands down (so a worker started again after the `[server] user` drop needs no right to bind
port 25; each worker drops privileges itself after taking them over), and run the SMTP sessions, the policy checks and SPF/DKIM/DMARC themselves, so the protocol work is
spread over the CPUs, as Postfix spreads it over smtpd processes. What makes a message durable stays in
one place: a worker hands each accepted message to the main process over a private Unix socket, the
main process stores it (mailbox or queue, with the group commit and the IMAP notifications that only it
can do) and answers; only then does the worker send its 250, as Postfix's smtpd waits for cleanup(8).
Per-IP connection caps and message rates are counted per process, so with N workers a client may get
up to N times the configured figures (Postfix's anvil(8) would be the fix: one shared counter).

This module is in charge of the framing (sans-I/O: `encode_request`, `RequestReader`), of the
worker's side (`WorkerChannel`) and of the main process's side (`WorkerPool`: the socket server and
the worker processes' life cycle). A worker whose main process dies sees its channel close and exits.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# A request's JSON header is small (addresses and trace fields); the message is at most the SMTP size
# limit. These bounds stop a confused peer from making the main process allocate without end.
MAX_HEADER_BYTES = 1024 * 1024
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# How long the main process waits for a worker to report it is listening, and for it to exit.
WORKER_START_SECONDS = 30.0
WORKER_STOP_SECONDS = 10.0
# A worker that dies is replaced after this pause (Postfix's master waits similarly before
# restarting a crashed service, so a worker that dies at once cannot spin the CPU).
WORKER_RESPAWN_SECONDS = 1.0


class ChannelError(Exception):
    """The main process could not store a message, or the channel is gone."""


MX_FDS_ENV = "PEERAGE_MX_FDS"


def bind_listening(address: str, port: int) -> socket.socket:
    """A listening TCP socket for address:port, the way asyncio's create_server makes one."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((address, port))
    sock.listen(100)
    sock.set_inheritable(True)
    return sock


@dataclass(frozen=True)
class Delivery:
    mail_from: str
    local: list[tuple[str, bytes]]  # (recipient, its trace fields)
    remote: list[str]
    remote_prefix: bytes
    folder: str
    smtputf8: bool
    data: bytes
    # Addressed to a report address (postmaster@/abuse@): read as a DMARC or TLS-RPT report too.
    report: bool = False
    # The MX's DMARC evaluation, for our aggregate reports (peerage.mail.reports.store.Seen as JSON).
    dmarc: dict[str, Any] | None = None


def encode_request(request_id: int, delivery: Delivery) -> bytes:
    header = json.dumps(
        {
            "id": request_id,
            "mail_from": delivery.mail_from,
            "local": [[rcpt, base64.b64encode(trace).decode()] for rcpt, trace in delivery.local],
            "remote": delivery.remote,
            "remote_prefix": base64.b64encode(delivery.remote_prefix).decode(),
            "folder": delivery.folder,
            "smtputf8": delivery.smtputf8,
            "report": delivery.report,
            "dmarc": delivery.dmarc,
        }
    ).encode()
    return f"{len(header)} {len(delivery.data)}\n".encode() + header + delivery.data


class RequestReader:
    """Incremental parser of requests: feed bytes, take (request id, Delivery) pairs."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, Delivery | None]]:
        """Complete requests so far; an empty request (id 0, None) is a worker saying it listens."""
        self._buffer += data
        out: list[tuple[int, Delivery | None]] = []
        while True:
            newline = self._buffer.find(b"\n")
            if newline < 0:
                if len(self._buffer) > 64:
                    raise ChannelError("malformed request line")
                return out
            try:
                header_size, data_size = (int(x) for x in bytes(self._buffer[:newline]).split())
            except ValueError:
                raise ChannelError("malformed request line") from None
            if header_size == 0 and data_size == 0:
                del self._buffer[: newline + 1]
                out.append((0, None))
                continue
            if not (0 < header_size <= MAX_HEADER_BYTES and 0 <= data_size <= MAX_MESSAGE_BYTES):
                raise ChannelError("request too large")
            end = newline + 1 + header_size + data_size
            if len(self._buffer) < end:
                return out
            header = json.loads(bytes(self._buffer[newline + 1 : newline + 1 + header_size]))
            data = bytes(self._buffer[newline + 1 + header_size : end])
            del self._buffer[:end]
            out.append(
                (
                    int(header["id"]),
                    Delivery(
                        mail_from=str(header["mail_from"]),
                        local=[(str(r), base64.b64decode(t)) for r, t in header["local"]],
                        remote=[str(r) for r in header["remote"]],
                        remote_prefix=base64.b64decode(header["remote_prefix"]),
                        folder=str(header["folder"]),
                        smtputf8=bool(header["smtputf8"]),
                        data=data,
                        report=bool(header.get("report", False)),
                        dmarc=header.get("dmarc"),
                    ),
                )
            )


class WorkerChannel:
    """The worker's end: send deliveries, wait for each answer; `closed` fires when main goes away."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[None]] = {}
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.closed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        self._reader, self._writer = await asyncio.open_unix_connection(str(self.path))
        self._task = asyncio.create_task(self._read_answers())

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def send_ready(self) -> None:
        assert self._writer is not None
        self._writer.write(b"0 0\n")  # an empty request: "listening"

    async def deliver(self, delivery: Delivery) -> None:
        if self._writer is None or self.closed.is_set():
            raise ChannelError("the main process is gone")
        request_id = next(self._ids)
        answer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = answer
        self._writer.write(encode_request(request_id, delivery))
        await answer

    async def _read_answers(self) -> None:
        assert self._reader is not None
        try:
            while line := await self._reader.readline():
                request_id_text, _, status = line.decode("utf-8", "replace").strip().partition(" ")
                answer = self._waiting.pop(int(request_id_text), None)
                if answer is None or answer.done():
                    continue
                if status == "ok":
                    answer.set_result(None)
                else:
                    answer.set_exception(ChannelError(status))
        except (OSError, ValueError):
            pass
        finally:
            self.closed.set()
            for answer in self._waiting.values():
                if not answer.done():
                    answer.set_exception(ChannelError("the main process is gone"))
            self._waiting.clear()


class WorkerPool:
    """The main process's end: a Unix socket server for the workers, and the worker processes."""

    def __init__(self, socket_path: Path, store: Callable[[Delivery], Awaitable[None]]) -> None:
        self.socket_path = socket_path
        self.store = store
        self.server: asyncio.AbstractServer | None = None
        self.processes: list[asyncio.subprocess.Process] = []
        self._ready = 0
        self._ready_event = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._config_path = Path()
        # The MX sockets, bound here once and inherited by every worker, so that a worker started
        # again after the privilege drop needs no right to bind port 25.
        self.sockets: list[socket.socket] = []

    async def _spawn(self) -> None:
        fds = [sock.fileno() for sock in self.sockets]
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "peerage.mail.smtp.worker", str(self._config_path), str(self.socket_path),
            stdin=asyncio.subprocess.DEVNULL, pass_fds=fds,
            env=dict(os.environ, **{MX_FDS_ENV: ",".join(map(str, fds))}) if fds else None,
        )
        self.processes.append(process)
        watcher = asyncio.create_task(self._watch(process))
        self._tasks.add(watcher)
        watcher.add_done_callback(self._tasks.discard)

    async def _watch(self, process: asyncio.subprocess.Process) -> None:
        code = await process.wait()
        if self._stopping:
            return
        log.warning("MX worker %d exited with %s; starting another", process.pid, code)
        with contextlib.suppress(ValueError):
            self.processes.remove(process)
        await asyncio.sleep(WORKER_RESPAWN_SECONDS)
        if not self._stopping:
            try:
                await self._spawn()
            except OSError as exc:
                # After the privilege drop, [server] user must be able to run the interpreter.
                log.error("cannot start another MX worker as uid %d: %s (is %s readable by [server] user?)",
                          os.getuid(), exc, sys.executable)

    async def start(self, count: int, config_path: Path, listens: list[tuple[str, int]] | None = None) -> None:
        self._config_path = config_path
        self.sockets = [bind_listening(address, port) for address, port in listens or []]
        self.socket_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.socket_path.unlink(missing_ok=True)
        self.server = await asyncio.start_unix_server(self._serve, str(self.socket_path))
        os.chmod(self.socket_path, 0o600)
        for _ in range(count):
            await self._spawn()
        try:
            await asyncio.wait_for(self._wait_ready(count), WORKER_START_SECONDS)
        except TimeoutError:
            log.error("only %d of %d MX workers started", self._ready, count)

    async def _wait_ready(self, count: int) -> None:
        while self._ready < count:
            self._ready_event.clear()
            await self._ready_event.wait()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser = RequestReader()
        try:
            while chunk := await reader.read(256 * 1024):
                for request_id, delivery in parser.feed(chunk):
                    if delivery is None:
                        self._ready += 1
                        self._ready_event.set()
                        continue
                    task = asyncio.create_task(self._store_one(request_id, delivery, writer))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
        except (ChannelError, OSError, ValueError) as exc:
            log.error("MX worker channel failed: %s", exc)
        finally:
            writer.close()

    async def _store_one(self, request_id: int, delivery: Delivery, writer: asyncio.StreamWriter) -> None:
        try:
            await self.store(delivery)
            answer = "ok"
        except Exception as exc:
            log.exception("storing a message from an MX worker failed")
            answer = f"error {type(exc).__name__}"
        with contextlib.suppress(OSError, RuntimeError):
            writer.write(f"{request_id} {answer}\n".encode())

    async def stop(self) -> None:
        self._stopping = True
        for sock in self.sockets:
            sock.close()
        self.sockets = []
        for process in self.processes:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                await asyncio.wait_for(process.wait(), WORKER_STOP_SECONDS)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        self.processes.clear()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.socket_path.unlink(missing_ok=True)
