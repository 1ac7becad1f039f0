#!/usr/bin/env python3
"""SIP benchmark: SIPp against peerage and against Kamailio 5.6, same load, same run.

(a) Record-routed stateful calls (INVITE/100/180/200/ACK/BYE/200) from a SIPp UAC through the proxy
    to a SIPp UAS registered there: the highest offered rate completed with zero failed calls, and
    the proxy's CPU-seconds per 1,000 calls at a rate both sustain.
(b) REGISTER with digest authentication (401 challenge, then credentials) per second.

Each proxy is pinned to CPU 0 (SIPp to the other CPUs), so "calls/s" is per core.  Every load loop
is bounded: a fixed number of calls per step and a fixed list of rates.

Usage: python3 bench/sip/run.py [--quick]
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

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))
from bench.machine import describe as machine  # noqa: E402
from tests.harness import PeerageServer  # noqa: E402

SCENARIOS = ROOT / "tests" / "sip" / "scenarios"
KAMAILIO_CFG = ROOT / "tests" / "sip" / "kamailio" / "kamailio.cfg"
PEERAGE_IP, KAMAILIO_IP = "127.0.3.200", "127.0.3.210"
UAS_IP, UAC_IP = "127.0.3.201", "127.0.3.202"
PASSWORD = "bench password"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Offered call rates tried in order; the run stops at the first rate with a failed call.
CALL_RATES = (250, 500, 1000, 1500, 2000, 2500, 3000)
# Seconds of load per step (calls = rate x this), bounded.
STEP_SECONDS = 5
# Longest a SIPp load run may take (seconds): a collapsed run ends here and counts as failed.
SIPP_RUN_LIMIT = 40
# A step that fails is tried again once: other work on the shared machine can stall a run.
STEP_ATTEMPTS = 2
# Rate at which CPU per call is compared (both proxies must sustain it).
CPU_RATE = 1000
CPU_CALLS = 10000
REGISTER_RATES = (100, 200, 400, 800, 1200, 1600, 2000)


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
         background: bool = False) -> subprocess.CompletedProcess[str] | subprocess.Popen[str]:
    others = ",".join(str(c) for c in range(1, os.cpu_count() or 2)) or "0"
    command = ["taskset", "-c", others, "sipp", "-sf", str(SCENARIOS / scenario), "-i", ip, "-p", str(port),
               "-nostdin", "-max_socket", "50000", "-buff_size", "4194304", *args]
    if not background:  # a load run ends by itself even if the proxy collapses
        command += ["-timeout", f"{SIPP_RUN_LIMIT}s", "-timeout_error"]
    if server:
        command.append(server)
    if background:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
                                cwd=workdir, start_new_session=True)
    return subprocess.run(command, capture_output=True, text=True, cwd=workdir, timeout=SIPP_RUN_LIMIT + 30)


def counts(output: str) -> tuple[int, int]:
    ok = re.findall(r"Successful call\s*\|\s*\d+\s*\|\s*(\d+)", output)
    failed = re.findall(r"Failed call\s*\|\s*\d+\s*\|\s*(\d+)", output)
    return (int(ok[-1]) if ok else 0), (int(failed[-1]) if failed else -1)


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
        self.server = PeerageServer(
            workdir / "peerage", ["bench.test"], PEERAGE_IP, services=("sip",),
            config={"server": {"log_level": "info"},
                    "sip": {"digest_algorithms": ["MD5", "SHA-256"], "flood_requests_per_second": 10_000_000,
                            "udp_listen": [f"{PEERAGE_IP}:5060"], "tcp_listen": [], "tls_listen": []}})
        for user in ("uas", "reg"):
            self.server.add_user(f"{user}@bench.test", PASSWORD)
        self.address = f"{PEERAGE_IP}:5060"
        self.register_scenario = "register.xml"

    def start(self) -> None:
        self.server.start()
        assert self.server.process is not None
        self.pid = self.server.process.pid
        subprocess.run(["taskset", "-a", "-p", "-c", "0", str(self.pid)], capture_output=True)

    def cpu(self) -> float:
        return process_cpu(self.pid)  # one process: peerage is single-threaded

    def stop(self) -> None:
        self.server.stop()


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
        config = config.replace("debug=2", "debug=0").replace("children=2", "children=1")
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
                   "-P", str(self.workdir / "k.pid"), "-m", "256", "-M", "16", "-w", str(self.workdir)]
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


def bench_proxy(proxy: Peerage | Kamailio, workdir: Path, quick: bool) -> dict[str, float]:
    proxy.start()
    result: dict[str, float] = {}
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
        result["cpu_rate_failed"] = failed
        # highest rate with zero failed calls
        best = 0
        for rate in CALL_RATES[: 3 if quick else None]:
            passed = False
            for attempt in range(STEP_ATTEMPTS):
                run = sipp(workdir, "uac_call.xml", UAC_IP, 5401, proxy.address, *keys, "-r", str(rate),
                           "-m", str(rate * STEP_SECONDS), "-l", str(rate * 4))
                assert isinstance(run, subprocess.CompletedProcess)
                ok, failed = counts(run.stdout)
                print(f"  {proxy.name}: {rate} calls/s offered (try {attempt + 1}) -> {ok} ok, {failed} failed",
                      flush=True)
                if failed == 0 and ok >= rate * STEP_SECONDS:
                    passed = True
                    break
                time.sleep(STEP_SECONDS)  # let retransmissions of the failed step drain
            if not passed:
                break
            best = rate
        result["calls_per_second"] = best
        stop_session(uas)
        uas = None
        # REGISTER with digest per second
        best_register = 0
        for rate in REGISTER_RATES[: 3 if quick else None]:
            run = sipp(workdir, proxy.register_scenario, UAC_IP, 5402, proxy.address, "-s", "reg", "-key",
                       "domain", "bench.test", "-au", "reg", "-ap", PASSWORD, "-r", str(rate),
                       "-m", str(rate * STEP_SECONDS))
            assert isinstance(run, subprocess.CompletedProcess)
            ok, failed = counts(run.stdout)
            print(f"  {proxy.name}: {rate} REGISTER/s offered -> {ok} ok, {failed} failed", flush=True)
            if failed != 0 or ok < rate * STEP_SECONDS:
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
    args = parser.parse_args()
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
        results[proxy.name] = bench_proxy(proxy, workdir, args.quick)
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
        f"| record-routed calls/s, zero failures (max tried {CALL_RATES[-1]}) | {p['calls_per_second']:.0f} | "
        f"{k['calls_per_second']:.0f} | {p['calls_per_second'] / max(k['calls_per_second'], 1):.2f} |",
        f"| proxy CPU-seconds per 1,000 calls (at {CPU_RATE} calls/s) | {p['cpu_per_1000']:.3f} | "
        f"{k['cpu_per_1000']:.3f} | {ratio:.2f} |",
        f"| one-core capacity implied by CPU per call (calls/s) | {1000 / max(p['cpu_per_1000'], 1e-9):.0f} | "
        f"{1000 / max(k['cpu_per_1000'], 1e-9):.0f} | {1 / ratio if ratio else 0:.2f} |",
        f"| REGISTER with digest /s, zero failures (max tried {REGISTER_RATES[-1]}) | "
        f"{p['registers_per_second']:.0f} | {k['registers_per_second']:.0f} | "
        f"{p['registers_per_second'] / max(k['registers_per_second'], 1):.2f} |",
        "",
        "peerage commits each registration to SQLite (synchronous=FULL) before the 200 OK; Kamailio runs "
        "usrloc in memory (db_mode 0) and checks a cleartext password (pv_www_authenticate), so (b) is not "
        "like for like.",
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
