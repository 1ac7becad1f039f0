#!/usr/bin/env python3
"""SIP benchmark: SIPp against peerage and against Kamailio 5.6, same load, same run.

(a) Record-routed stateful calls (INVITE/100/180/200/ACK/BYE/200) from a SIPp UAC through the proxy
    to a SIPp UAS registered there, in steps of STEP_SECONDS (20 s) each: the highest offered rate
    with zero failed and zero unfinished calls when the step's time is up (a backlog drained after
    the step does not count as a pass), and the proxy's CPU-seconds per 1,000 calls at a rate both
    sustain.
(b) Beyond capacity (the first step that fails, and twice the best rate): failed and unfinished
    calls, INVITE and BYE retransmissions by the callers, and 503s received (shedding).
(c) REGISTER with digest authentication (401 challenge, then credentials) per second.

Each proxy is pinned to CPU 0 (SIPp to the other CPUs), so "calls/s" is per core.  Kamailio runs
with ``-m 1024`` (shared memory, MiB) and KAMAILIO_CHILDREN UDP workers, what an operator gives one
core.  Every load loop is bounded: a fixed number of calls per step and a fixed list of rates.

Usage: python3 bench/sip/run.py [--quick] [--rates 1500,2000,2500] [--no-register]

``--rates`` and ``--no-register`` shorten a run (a quiet window on a shared machine is a few
minutes); the section written to RESULTS.md says which steps were run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))
from bench.machine import describe as machine  # noqa: E402
from tests.harness import PeerageServer  # noqa: E402

SCENARIOS = ROOT / "tests" / "sip" / "scenarios"
BENCH_SCENARIOS = Path(__file__).resolve().parent  # uac_call.xml here also counts 503s
KAMAILIO_CFG = ROOT / "tests" / "sip" / "kamailio" / "kamailio.cfg"
PEERAGE_IP, KAMAILIO_IP = "127.0.3.200", "127.0.3.210"
UAS_IP, UAC_IP = "127.0.3.201", "127.0.3.202"
PASSWORD = "bench password"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Offered call rates tried in order; the run stops at the first rate with a failed call.
CALL_RATES = (500, 1000, 1500, 2000, 2500, 3000)
# Seconds of load per step (calls = rate x this), bounded; the issue asks for at least 20 s.
STEP_SECONDS = 20
# Seconds after the last call is started that its calls may still take to finish (a call is a few
# round trips on loopback); what is not finished by then is "unfinished", not a pass.
STEP_GRACE = 4
# Longest a SIPp load run may take (seconds): a collapsed run ends here and counts as failed.
SIPP_RUN_LIMIT = 40
# A step that fails is not retried: 20 s steps are long enough to ride out short stalls.
STEP_ATTEMPTS = 1
# UDP worker processes of Kamailio on one core: its default configuration has 8; on one core an
# operator runs a few (the work is CPU-bound, more processes only add switches), 4 here.
KAMAILIO_CHILDREN = 4
# Kamailio shared memory (MiB), as the issue asks: room for every transaction of a 20 s step.
KAMAILIO_SHM = 1024
# Rate at which CPU per call is compared (both proxies must sustain it).
CPU_RATE = 1000
CPU_CALLS = 10000
REGISTER_RATES = (100, 200, 400, 800, 1200, 1600, 2000)
# Seconds per REGISTER step (shorter: (c) is a secondary figure and the machine is shared).
REGISTER_SECONDS = 5


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def session_cpu(session_id: int) -> float:
    """utime + stime of every process in a session (Kamailio forks workers)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session_id:  # field 6 (session) after the ")"
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def pin(session_id: int, cpu: str) -> None:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == session_id:
                subprocess.run(["taskset", "-a", "-p", "-c", cpu, entry], capture_output=True)


def sipp(workdir: Path, scenario: str, ip: str, port: int, server: str | None, *args: str,
         background: bool = False, limit: int = SIPP_RUN_LIMIT) -> subprocess.CompletedProcess[str] | subprocess.Popen[str]:
    others = ",".join(str(c) for c in range(1, os.cpu_count() or 2)) or "0"
    path = BENCH_SCENARIOS / scenario if (BENCH_SCENARIOS / scenario).exists() else SCENARIOS / scenario
    command = ["taskset", "-c", others, "sipp", "-sf", str(path), "-i", ip, "-p", str(port),
               "-nostdin", "-max_socket", "50000", "-buff_size", "4194304", *args]
    if not background:  # a load run ends by itself even if the proxy collapses
        command += ["-timeout", f"{limit}s", "-timeout_error"]
    if server:
        command.append(server)
    if background:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
                                cwd=workdir, start_new_session=True)
    return subprocess.run(command, capture_output=True, text=True, errors="replace", cwd=workdir,
                          timeout=SIPP_RUN_LIMIT + 30)


def counts(output: str) -> tuple[int, int]:
    ok = re.findall(r"Successful call\s*\|\s*\d+\s*\|\s*(\d+)", output)
    failed = re.findall(r"Failed call\s*\|\s*\d+\s*\|\s*(\d+)", output)
    return (int(ok[-1]) if ok else 0), (int(failed[-1]) if failed else -1)


def step_figures(output: str) -> dict[str, int]:
    """From SIPp's final screen: calls created/ok/failed/unfinished, retransmissions, 503s."""
    created = re.findall(r"Outgoing calls created\s*\|\s*\d+\s*\|\s*(\d+)", output)
    ok, failed = counts(output)
    figures = {"created": int(created[-1]) if created else 0, "ok": ok, "failed": max(failed, 0)}
    figures["unfinished"] = max(0, figures["created"] - ok - figures["failed"])
    screen = output[output.rfind("Messages  Retrans"):] if "Messages  Retrans" in output else output
    for method in ("INVITE", "BYE"):
        found = re.search(rf"^\s*{method} -+>\s+(?:[A-Za-z][\w-]*\s+)?(\d+)\s+(\d+)", screen, re.M)
        figures[f"{method.lower()}_retrans"] = int(found.group(2)) if found else 0
    shed = re.search(r"^\s*503 <-+\s+(\d+)", screen, re.M)
    figures["503"] = int(shed.group(1)) if shed else 0
    return figures


def load_step(proxy: Peerage | Kamailio, workdir: Path, keys: list[str], rate: int) -> dict[str, int]:
    run = sipp(workdir, "uac_call.xml", UAC_IP, 5401, proxy.address, *keys, "-r", str(rate),
               "-m", str(rate * STEP_SECONDS), "-l", str(rate * 4), limit=STEP_SECONDS + STEP_GRACE)
    assert isinstance(run, subprocess.CompletedProcess)
    figures = step_figures(run.stdout)
    figures["rate"] = rate
    figures["load"] = int(os.getloadavg()[0] * 10)  # tenths
    print(f"  {proxy.name}: {rate} calls/s for {STEP_SECONDS} s -> {figures}", flush=True)
    return figures


def stop_session(process: subprocess.Popen[str] | subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


class Peerage:
    name = "peerage"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.server = self._server(shedding=False)
        for user in ("uas", "reg"):
            self.server.add_user(f"{user}@bench.test", PASSWORD)
        self.address = f"{PEERAGE_IP}:5060"
        self.register_scenario = "register.xml"

    def _server(self, shedding: bool) -> PeerageServer:
        """The CPU per call is measured with overload shedding off (every call carried through, as
        Kamailio does); the load steps run with it on, as deployed (overload_delay's default)."""
        sip: dict[str, Any] = {"digest_algorithms": ["MD5", "SHA-256"], "flood_requests_per_second": 10_000_000,
                               "udp_listen": [f"{PEERAGE_IP}:5060"], "tcp_listen": [], "tls_listen": []}
        if not shedding:
            sip["overload_delay"] = 0
        return PeerageServer(self.workdir / "peerage", ["bench.test"], PEERAGE_IP, services=("sip",),
                             config={"server": {"log_level": "info"}, "sip": sip})

    def shedding_on(self) -> None:
        """Restart with the default overload control; registrations persist in the store."""
        self.stop()
        self.server = self._server(shedding=True)
        self.start()

    def start(self) -> None:
        self.server.start()
        assert self.server.process is not None
        self.pid = self.server.process.pid
        subprocess.run(["taskset", "-a", "-p", "-c", "0", str(self.pid)], capture_output=True)

    def cpu(self) -> float:
        return process_cpu(self.pid)  # one process: peerage is single-threaded

    def stop(self) -> None:
        try:
            self.server.stop(timeout=30)
        except RuntimeError:  # still draining a backlog on a busy machine: end it
            self.server.kill()


class Kamailio:
    name = "kamailio"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir / "kamailio"
        self.workdir.mkdir()
        self.address = f"{KAMAILIO_IP}:5060"
        self.register_scenario = "register.xml"
        modules = Path(next(iter(Path("/usr/lib").glob("*/kamailio/modules/tm.so")))).parent
        config = KAMAILIO_CFG.read_text().replace("LISTEN_IP", KAMAILIO_IP)
        config = config.replace("MPATH", f"{modules}/").replace("RUNDIR", str(self.workdir))
        config = config.replace("alias=\"k.test\"", "alias=\"bench.test\"")
        config = config.replace("debug=2", "debug=0").replace("children=2", f"children={KAMAILIO_CHILDREN}")
        # equivalent digest REGISTER: the auth module checks a password (peerage checks a stored HA1)
        config = config.replace('loadmodule "ctl.so"', 'loadmodule "ctl.so"\nloadmodule "auth.so"')
        config = config.replace(
            '		if (!save("location")) {',
            f'		if (!pv_www_authenticate("$td", "{PASSWORD}", "0")) {{\n'
            '			www_challenge("$td", "0");\n			exit;\n		}\n'
            '		if (!save("location")) {')
        (self.workdir / "kamailio.cfg").write_text(config)
        self.process: subprocess.Popen[bytes] | None = None

    def cpu(self) -> float:
        assert self.process is not None
        return session_cpu(self.process.pid)  # the main process and every worker it forked

    def start(self) -> None:
        command = ["kamailio", "-f", str(self.workdir / "kamailio.cfg"), "-DD", "-E", "-Y", str(self.workdir),
                   "-P", str(self.workdir / "k.pid"), "-m", str(KAMAILIO_SHM), "-M", "16", "-w", str(self.workdir)]
        log = open(self.workdir / "kamailio.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex((KAMAILIO_IP, 5060)) == 0:
                    break
            time.sleep(0.1)
        time.sleep(0.5)
        pin(self.process.pid, "0")

    def stop(self) -> None:
        if self.process is not None:
            stop_session(self.process)

    def shedding_on(self) -> None:
        """Kamailio's configuration sheds nothing (no overload control loaded)."""


def bench_proxy(proxy: Peerage | Kamailio, workdir: Path, quick: bool, rates: tuple[int, ...] = CALL_RATES,
                register: bool = True) -> dict[str, Any]:
    proxy.start()
    result: dict[str, Any] = {}
    uas = None
    try:
        reg = sipp(workdir, proxy.register_scenario, UAS_IP, 5400, proxy.address, "-s", "uas", "-key", "domain",
                   "bench.test", "-au", "uas", "-ap", PASSWORD, "-m", "1")
        assert isinstance(reg, subprocess.CompletedProcess)
        if reg.returncode != 0:
            raise RuntimeError(f"{proxy.name}: UAS registration failed: {reg.stderr[-500:]}")
        uas = sipp(workdir, "uas_call.xml", UAS_IP, 5400, None, "-d", "0", background=True)
        assert isinstance(uas, subprocess.Popen)
        time.sleep(0.5)
        keys = ["-s", "uas", "-key", "domain", "bench.test", "-key", "caller", "caller",
                "-key", "caller_domain", "elsewhere.test"]
        # CPU per call at a common rate
        before = proxy.cpu()
        run = sipp(workdir, "uac_call.xml", UAC_IP, 5401, proxy.address, *keys, "-r", str(CPU_RATE),
                   "-m", str(CPU_CALLS // (4 if quick else 1)))
        assert isinstance(run, subprocess.CompletedProcess)
        ok, failed = counts(run.stdout)
        used = proxy.cpu() - before
        result["cpu_per_1000"] = used / max(ok, 1) * 1000
        proxy.shedding_on()
        result["cpu_rate_failed"] = failed
        # highest rate with zero failed and zero unfinished calls at the end of its step
        best = 0
        steps: list[dict[str, int]] = []
        for rate in rates[: 2 if quick else None]:
            figures = load_step(proxy, workdir, keys, rate)
            steps.append(figures)
            time.sleep(3)  # retransmissions of this step drain before the next
            if figures["failed"] or figures["unfinished"] or figures["ok"] < rate * STEP_SECONDS:
                break
            best = rate
        result["calls_per_second"] = best
        result["steps"] = steps
        # beyond capacity: twice the best rate (or the first rate if none passed)
        over = max(2 * best, rates[0])
        if not quick and all(step["rate"] != over for step in steps):
            result["overload"] = load_step(proxy, workdir, keys, over)
            time.sleep(3)
        else:
            result["overload"] = next(step for step in steps if step["rate"] == over) if any(
                step["rate"] == over for step in steps) else steps[-1]
        stop_session(uas)
        uas = None
        # REGISTER with digest per second
        best_register = 0
        for rate in REGISTER_RATES[: 2 if quick else None] if register else ():
            run = sipp(workdir, proxy.register_scenario, UAC_IP, 5402, proxy.address, "-s", "reg", "-key",
                       "domain", "bench.test", "-au", "reg", "-ap", PASSWORD, "-r", str(rate),
                       "-m", str(rate * REGISTER_SECONDS))
            assert isinstance(run, subprocess.CompletedProcess)
            ok, failed = counts(run.stdout)
            print(f"  {proxy.name}: {rate} REGISTER/s offered -> {ok} ok, {failed} failed", flush=True)
            if failed != 0 or ok < rate * REGISTER_SECONDS:
                break
            best_register = rate
        result["registers_per_second"] = best_register
    finally:
        if isinstance(uas, subprocess.Popen):
            stop_session(uas)
        proxy.stop()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer steps (a smoke run)")
    parser.add_argument("--rates", help="call rates to step through, comma-separated (default: "
                        + ",".join(map(str, CALL_RATES)) + ")")
    parser.add_argument("--no-register", action="store_true", help="leave out the REGISTER steps (c)")
    args = parser.parse_args()
    rates = tuple(int(r) for r in args.rates.split(",")) if args.rates else CALL_RATES
    for binary in ("sipp", "kamailio", "taskset"):
        if shutil.which(binary) is None:
            print(f"{binary} is required", file=sys.stderr)
            return 2
    workdir = Path(tempfile.mkdtemp(prefix="bench-sip-"))
    load_before = os.getloadavg()[0]
    results = {}
    for proxy_class in (Peerage, Kamailio):
        proxy = proxy_class(workdir)
        print(f"{proxy.name}:", flush=True)
        results[proxy.name] = bench_proxy(proxy, workdir, args.quick, rates, not args.no_register)
    p, k = results["peerage"], results["kamailio"]
    ratio = p["cpu_per_1000"] / k["cpu_per_1000"] if k["cpu_per_1000"] else float("inf")
    lines = [
        f"\n## SIP proxy (bench/sip) — {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"Machine: {machine()}. Each proxy pinned to CPU 0, SIPp on the others. "
        f"1-minute load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; above about 1, "
        "other work shared the CPUs, and a failed step can be the machine's, not the proxy's.",
        "",
        "| measure | peerage | Kamailio 5.6 | peerage / Kamailio |",
        "|---|---|---|---|",
        f"| record-routed calls/s, zero failures (steps tried: {', '.join(map(str, rates))}) | "
        f"{p['calls_per_second']:.0f} | "
        f"{k['calls_per_second']:.0f} | {p['calls_per_second'] / max(k['calls_per_second'], 1):.2f} |",
        f"| proxy CPU-seconds per 1,000 completed calls (at {CPU_RATE} calls/s, peerage without shedding; failed calls: "
        f"{p['cpu_rate_failed']:.0f} peerage, {k['cpu_rate_failed']:.0f} Kamailio) | {p['cpu_per_1000']:.3f} | "
        f"{k['cpu_per_1000']:.3f} | {ratio:.2f} |",
        f"| one-core capacity implied by CPU per call (calls/s) | {1000 / max(p['cpu_per_1000'], 1e-9):.0f} | "
        f"{1000 / max(k['cpu_per_1000'], 1e-9):.0f} | {1 / ratio if ratio else 0:.2f} |",
        *([f"| REGISTER with digest /s, zero failures, {REGISTER_SECONDS} s steps (max tried {REGISTER_RATES[-1]}) | "
           f"{p['registers_per_second']:.0f} | {k['registers_per_second']:.0f} | "
           f"{p['registers_per_second'] / max(k['registers_per_second'], 1):.2f} |"] if not args.no_register else []),
        "",
        f"Call steps of {STEP_SECONDS} s (calls = rate x {STEP_SECONDS}); a step passes with 0 failed and 0 "
        f"unfinished calls {STEP_GRACE} s after its last call was started. Kamailio 5.6: -m {KAMAILIO_SHM}, "
        f"children={KAMAILIO_CHILDREN} (UDP workers on the one core it is pinned to). Per step, as "
        "calls/s offered: ok / failed / unfinished calls, caller INVITE and BYE retransmissions, 503s "
        "received, load average x10 after the step:",
        "",
        "| proxy | calls/s offered | ok | failed | unfinished (incl. not started in time) | INVITE retrans | BYE retrans | 503 | load x10 |",
        "|---|---|---|---|---|---|---|---|---|",
        *[f"| {name} | {st['rate']} | {st['ok']} | {st['failed']} | {st['unfinished'] + st['rate'] * STEP_SECONDS - st['created']} | {st['invite_retrans']} | "
          f"{st['bye_retrans']} | {st['503']} | {st['load']} |"
          for name, r in (("peerage", p), ("Kamailio", k))
          for st in [*r["steps"], *([r["overload"]] if r["overload"] not in r["steps"] else [])]],
        "",
        ("REGISTER steps (c) not run this time (--no-register)." if args.no_register else
         "peerage commits each registration to SQLite (synchronous=FULL) before the 200 OK; Kamailio runs "
         "usrloc in memory (db_mode 0) and checks a cleartext password (pv_www_authenticate), so (c) is not "
         "like for like."),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.quick:  # smoke runs are not results
        with (ROOT / "bench" / "RESULTS.md").open("a") as file:
            file.write(text)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
