"""Instructions per delivered message on the MX, counted by callgrind: a steadier figure than msg/s on a busy machine.

The server runs in this process as `peerage serve` runs it (Host, the configuration bench/smtp/run.py
gives, uvloop when installed); Postfix's smtp-source, a separate process that valgrind does not follow,
sends the load over loopback as in that benchmark (one message per connection, 10 sessions, 4096
bytes, SPF and DMARC records for the sender). Only the measured window is counted: the server starts
and takes its warm-up messages with callgrind's instrumentation off; the counters are zeroed, the
messages are sent, the deferred full-text index entries are written (part of each delivery's cost),
and the counters are dumped. Every thread of the process is counted (SQLite runs in aiosqlite's).

The count still moves with the machine's speed (runs of one tree read 7.9-8.6 M): some work is per
second, not per message (the full-text writer's one-second batches, the report loop, the mailbox-id
cache), and the group commit gathers more messages per batch when the sender outpaces it. Compare
trees within one run (several --src), not across runs.

Usage: python bench/smtp/profile_delivery.py [--src DIR ...] [--messages 300] [--keep DIR]
       (each --src is a `src/` tree, e.g. `git archive REV src | tar -x -C DIR`; default: this tree's)

`--inner` is the part that runs under valgrind; it is started by the outer part, which prepares the
DNS zone, the certificates, the configuration and the user outside the measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DNS_ADDRESS = "127.0.4.173"
SERVER_ADDRESS = "127.0.4.171"
SENDER = "load@example.net"
RECIPIENT = "alice@example.org"
WARM_UP = 20
SESSIONS = 10
SIZE = 4096
MAX_MESSAGES = 5000
# Bounds: smtp-source's run under valgrind is about fifty times slower than without.
SOURCE_TIMEOUT = 1800.0

# The callgrind client requests (valgrind/callgrind.h) are macros of inline machine code: a few
# lines of C, built once per machine and loaded with ctypes.
_HELPER = r"""
#include <valgrind/callgrind.h>
void peerage_zero(void) { CALLGRIND_ZERO_STATS; }
void peerage_dump(const char *name) { CALLGRIND_DUMP_STATS_AT(name); }
void peerage_start(void) { CALLGRIND_START_INSTRUMENTATION; }
void peerage_stop(void) { CALLGRIND_STOP_INSTRUMENTATION; }
"""


def _helper() -> ctypes.CDLL:
    target = Path(tempfile.gettempdir()) / f"peerage-callgrind-{os.getuid()}.so"
    if not target.exists():
        source = target.with_suffix(".c")
        source.write_text(_HELPER)
        subprocess.run(["cc", "-O1", "-shared", "-fPIC", "-o", str(target), str(source)], check=True)
    return ctypes.CDLL(str(target))


def _smtp_source(messages: int) -> list[str]:
    return ["smtp-source", "-s", str(SESSIONS), "-m", str(messages), "-l", str(SIZE), "-f", SENDER,
            "-t", RECIPIENT, "-M", "bench.example.net", f"{SERVER_ADDRESS}:25"]


async def _send(messages: int) -> None:
    process = await asyncio.create_subprocess_exec(*_smtp_source(messages), stdout=subprocess.DEVNULL,
                                                   stderr=subprocess.PIPE)
    async with asyncio.timeout(SOURCE_TIMEOUT):
        _, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"smtp-source failed: {err.decode(errors='replace')}")


async def _inner(config_path: Path, messages: int, profile_out: Path | None) -> None:
    import logging

    from peerage.config import load_config
    from peerage.server import Host

    config = load_config(config_path)
    logging.basicConfig(level=config.server.log_level.upper(), stream=sys.stderr)
    for noisy in ("aiosqlite", "alembic", "asyncio", "sqlalchemy.engine", "sqlalchemy.pool"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    calls = _helper() if profile_out is None else None
    host = Host(config)
    await host.start()
    try:
        from peerage.mail import mailbox

        store = mailbox.store_for(host)
        # The first connection waits out the greeting delay; the warm-up also fills the caches
        # (recipient, SPF, DMARC record, mailbox id) that every later message finds.
        await _send(WARM_UP)
        if calls is not None:
            calls.peerage_start()
            calls.peerage_zero()
        else:
            import cProfile

            # CPU time of the event-loop thread: waits for SQLite's thread or the client are not counted.
            profiler = cProfile.Profile(time.thread_time)
            profiler.enable()
        await _send(messages)
        # smtp-source ends after the last 250, which comes after the mailbox commit; what follows
        # the commit is the deferred full-text entries (absent from trees that write them inline).
        flush = getattr(getattr(store, "search", None), "flush", None)
        if flush is not None:
            await flush()
        if calls is not None:
            calls.peerage_dump(b"delivery")
            calls.peerage_stop()
        else:
            profiler.disable()
            profiler.dump_stats(str(profile_out))
    finally:
        await host.stop()


def _prepare(workdir: Path, src: Path) -> Path:
    sys.path[:0] = [str(ROOT), str(src)]
    from tests.harness import PeerageServer, TestCA

    ca = TestCA(workdir / "ca")
    server = PeerageServer(
        workdir / "peerage", "example.org", SERVER_ADDRESS, services=("smtp",),
        config={
            "server": {"log_level": "info"},
            "dns": {"nameservers": [DNS_ADDRESS], "port": 53, "timeout": 2.0},
            "smtp": {"mx_messages_per_minute": 10_000_000, "max_message_size": 10_240_000, "mx_workers": 0},
            "limits": {"connections_per_ip": 10_000},
        },
        certs={"example.org": ca.issue("example.org")},
    )
    sys.path.insert(0, str(ROOT / "bench" / "smtp"))
    from run import _add_user  # the same tolerance of older trees' configuration as the benchmark

    os.environ["PYTHONPATH"] = str(src)
    _add_user(server, RECIPIENT, "bench password")
    return server.config_path


def _total(out_file: Path) -> int:
    text = out_file.read_text()
    found = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
    if found is None:
        raise RuntimeError(f"no totals in {out_file}")
    return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, action="append", default=None,
                        help="a src/ tree to measure (repeatable); default this tree's")
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--keep", type=Path, default=None, help="keep the callgrind output files here")
    parser.add_argument("--cprofile", type=Path, default=None,
                        help="instead of callgrind, run natively under cProfile (event-loop thread only) and "
                             "write DIR/N.prof per tree, to see which Python functions the instructions go to")
    parser.add_argument("--inner", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    messages = min(max(args.messages, 1), MAX_MESSAGES)
    if args.inner is not None:
        sys.path[:0] = [str(ROOT)]
        try:
            import uvloop
        except ImportError:
            asyncio.run(_inner(args.inner, messages, args.profile_out))
        else:
            uvloop.run(_inner(args.inner, messages, args.profile_out))
        return 0
    for tool in ("valgrind", "smtp-source", "cc"):
        if shutil.which(tool) is None:
            print(f"{tool} is required", file=sys.stderr)
            return 2
    sys.path.insert(0, str(ROOT))
    from tests.harness import LocalDNS

    dns = LocalDNS(DNS_ADDRESS, 53).start()
    dns.add_mx("example.org", 10, "mx.example.org")
    dns.add_a("mx.example.org", SERVER_ADDRESS)
    dns.add_txt("example.net", "v=spf1 ip4:127.0.0.0/8 -all")
    dns.add_txt("_dmarc.example.net", "v=DMARC1; p=none")
    figures: list[tuple[str, int]] = []
    try:
        for src in [s.resolve() for s in (args.src or [ROOT / "src"])]:
            workdir = Path(tempfile.mkdtemp(prefix="profile-delivery-"))
            try:
                config_path = subprocess.run(
                    [sys.executable, "-c", "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]);"
                     " from bench.smtp.profile_delivery import _prepare;"
                     " print(_prepare(Path(sys.argv[2]), Path(sys.argv[3])))",
                     str(ROOT), str(workdir), str(src)],
                    check=True, capture_output=True, text=True, timeout=300,
                ).stdout.strip().splitlines()[-1]
                out_file = workdir / "callgrind.out"
                started = time.monotonic()
                inner = [sys.executable, str(Path(__file__).resolve()), "--inner", config_path,
                         "--messages", str(messages)]
                env = dict(os.environ, PYTHONPATH=str(src))
                if args.cprofile is not None:
                    args.cprofile.mkdir(parents=True, exist_ok=True)
                    target = args.cprofile.resolve() / f"{len(figures) + 1}.prof"
                    subprocess.run([*inner, "--profile-out", str(target)], check=True, env=env,
                                   timeout=SOURCE_TIMEOUT, stdout=subprocess.DEVNULL)
                    figures.append((str(src), 0))
                    print(f"{src}: {target} ({time.monotonic() - started:.1f} s)", flush=True)
                    continue
                subprocess.run(
                    ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out_file}", *inner],
                    check=True, env=env, timeout=SOURCE_TIMEOUT + 600,
                    stdout=subprocess.DEVNULL, stderr=open(workdir / "inner.log", "wb"),  # noqa: SIM115
                )
                dumps = sorted(workdir.glob("callgrind.out*"), key=lambda p: p.stat().st_mtime)
                measured = [p for p in dumps if "delivery" in p.read_text(errors="replace")[:4000]]
                if not measured:
                    raise RuntimeError(f"no measured dump in {workdir}")
                total = _total(measured[0])
                figures.append((str(src), total))
                print(f"{src}: {total / messages / 1e6:.2f} M instructions per message "
                      f"({total} in {messages} messages, {time.monotonic() - started:.0f} s under callgrind)",
                      flush=True)
                if args.keep is not None:
                    args.keep.mkdir(parents=True, exist_ok=True)
                    shutil.copy(measured[0], args.keep / f"callgrind.{len(figures)}.out")
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
    finally:
        dns.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
