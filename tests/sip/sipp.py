"""Running SIPp (Debian's sip-tester) from tests: one bounded process per user agent."""

from __future__ import annotations

import errno
import socket
import subprocess
from pathlib import Path

from tests.harness import require_binary, wait_for

SCENARIOS = Path(__file__).parent / "scenarios"
# Processes started by start_sipp() and not yet reaped; tests/sip/conftest.py kills leftovers.
STARTED: list[subprocess.Popen[str]] = []
# Every SIPp run ends by itself well before this (its own -timeout is smaller).
SIPP_TIMEOUT = 30


def sipp_command(scenario: str, *, local_ip: str, port: int, server: str | None,
                 keys: dict[str, str] | None = None, service: str | None = None,
                 calls: int = 1, extra: list[str] | None = None) -> list[str]:
    binary = require_binary("sipp")
    command = [binary, "-sf", str(SCENARIOS / scenario), "-i", local_ip, "-p", str(port),
               "-m", str(calls), "-nostdin", "-timeout", "20s", "-timeout_error",
               "-trace_err", "-trace_msg"]
    if service:
        command += ["-s", service]
    for key, value in (keys or {}).items():
        command += ["-key", key, value]
    command += extra or []
    if server:
        command.append(server)
    return command


def run_sipp(workdir: Path, scenario: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    command = sipp_command(scenario, **kwargs)  # type: ignore[arg-type]
    return subprocess.run(command, capture_output=True, text=True, timeout=SIPP_TIMEOUT, cwd=workdir)


def start_sipp(workdir: Path, scenario: str, **kwargs: object) -> subprocess.Popen[str]:
    command = sipp_command(scenario, **kwargs)  # type: ignore[arg-type]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=workdir)
    STARTED.append(process)
    if kwargs.get("server") is None:  # a UAS: ready once its socket is bound
        wait_until_listening(str(kwargs["local_ip"]), int(kwargs["port"]))  # type: ignore[call-overload]
    return process


def wait_until_listening(ip: str, port: int, timeout: float = 10.0) -> None:
    """Wait (bounded) until a SIPp instance has bound its UDP socket on ip:port."""

    def bound() -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind((ip, port))
            except OSError as error:
                return error.errno == errno.EADDRINUSE
            return False

    wait_for(bound, timeout=timeout, message=f"SIPp listening on {ip}:{port}")


def kill_leftovers() -> None:
    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:
            process.kill()
            process.communicate()


def finish(process: subprocess.Popen[str], timeout: float = SIPP_TIMEOUT) -> tuple[int, str]:
    try:
        _, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
        return -9, err
    return process.returncode, err


def message_log(workdir: Path, scenario: str, pid: int) -> str:
    path = workdir / f"{Path(scenario).stem}_{pid}_messages.log"
    return path.read_text(errors="replace") if path.exists() else ""


def failure_report(workdir: Path, result: subprocess.CompletedProcess[str] | tuple[int, str]) -> str:
    errors = "\n".join(p.read_text(errors="replace")[-2000:] for p in workdir.glob("*_errors.log"))
    text = result.stderr if isinstance(result, subprocess.CompletedProcess) else result[1]
    return f"{text[-2000:]}\n{errors}"
