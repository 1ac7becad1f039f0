"""PeerageServer: one real `peerage serve` process, with its own config, data and loopback address.

The harness writes a configuration file (services on standard ports at `address`, DNS pointing at the
harness's LocalDNS), starts `python -m peerage serve` and waits, with a bound, for its "peerage ready"
log line. `stop()` sends SIGTERM (the clean shutdown path); `kill()` sends SIGKILL (the crash path).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.harness.dns import LocalDNS
from tests.harness.waiting import wait_for

READY_LINE = "peerage ready"
# Bounds for a start (imports, migrations) and a clean stop (flushes) on a loaded 2-core CI machine
# running three test areas at once; a server that is ready sooner is used sooner.
START_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0

DEFAULT_PORTS = {
    "xmpp": {"c2s_listen": 5222, "c2s_direct_tls_listen": 5223, "s2s_listen": 5269, "s2s_direct_tls_listen": 5270},
    "sip": {"udp_listen": 5060, "tcp_listen": 5060, "tls_listen": 5061},
    "smtp": {"mx_listen": 25, "submission_listen": 587, "submissions_listen": 465},
    "imap": {"listen": 143, "tls_listen": 993},
    "web": {"https_listen": 443, "http_listen": 80},
    "sieve": {"listen": 4190},
}


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    result = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = _merge(result[key], value)
        else:
            result[key] = value
    return result


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        text = str(value).replace("\\", "\\\\").replace('"', '\\"')
        return f'"{text}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f'"{k}" = {_toml_value(v)}' for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(data: dict[str, Any]) -> str:
    """Write the subset of TOML the configuration uses (tables, arrays of tables, scalars, lists)."""
    lines: list[str] = []

    def table(prefix: str, values: dict[str, Any]) -> None:
        scalars = {k: v for k, v in values.items() if not isinstance(v, dict) and not _is_table_list(v)}
        subtables = {k: v for k, v in values.items() if isinstance(v, dict)}
        table_lists = {k: v for k, v in values.items() if _is_table_list(v)}
        if prefix and (scalars or not subtables):
            lines.append(f"[{prefix}]")
        for key, value in scalars.items():
            lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
        for key, value in subtables.items():
            table(f"{prefix}.{key}" if prefix else key, value)
        for key, items in table_lists.items():
            for item in items:
                lines.append(f"[[{prefix + '.' if prefix else ''}{key}]]")
                for k, v in item.items():
                    lines.append(f"{k} = {_toml_value(v)}")
                lines.append("")

    table("", data)
    return "\n".join(lines)


def _is_table_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


class PeerageServer:
    def __init__(
        self,
        workdir: Path,
        domains: list[str] | str,
        address: str,
        *,
        dns: LocalDNS | None = None,
        services: tuple[str, ...] = ("xmpp",),
        config: dict[str, Any] | None = None,
        certs: dict[str, tuple[Path, Path]] | None = None,
        ca_file: Path | None = None,
    ) -> None:
        from peerage.net.tls import generate_self_signed

        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.domains = [domains] if isinstance(domains, str) else list(domains)
        self.address = address
        self.dns = dns
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "peerage.log"
        certs = dict(certs or {})
        domain_entries = []
        for domain in self.domains:
            if domain not in certs:
                cert, key = self.workdir / f"{domain}.crt", self.workdir / f"{domain}.key"
                if not cert.exists():
                    generate_self_signed(domain, cert, key)
                certs[domain] = (cert, key)
            domain_entries.append({"name": domain, "cert": str(certs[domain][0]), "key": str(certs[domain][1])})
        data: dict[str, Any] = {
            "server": {"data_dir": str(self.workdir / "data"), "log_level": "debug"},
            "limits": {},
        }
        if dns is not None:
            data["dns"] = {"nameservers": [dns.address], "port": dns.port, "timeout": 2.0}
        if ca_file is not None:
            data["tls"] = {"ca_file": str(ca_file)}
        for service, ports in DEFAULT_PORTS.items():
            section: dict[str, Any] = {"enabled": service in services}
            for setting, port in ports.items():
                section[setting] = [f"{address}:{port}"]
            data[service] = section
        data = _merge(data, config or {})
        data["domain"] = domain_entries
        self.config_path = self.workdir / "peerage.toml"
        self.config_path.write_text(to_toml(data))

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    def cli(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "peerage", "--config", str(self.config_path), *args],
            input=input, capture_output=True, text=True, check=check, timeout=60,
        )

    def add_user(self, address: str, password: str) -> None:
        self.cli("user", "add", address, "--password-file", "-", input=password + "\n")

    def start(self, timeout: float = START_TIMEOUT) -> PeerageServer:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it for its lifetime
        self.process = subprocess.Popen(
            [sys.executable, "-m", "peerage", "--config", str(self.config_path), "serve"],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )
        log.close()
        deadline = time.monotonic() + timeout
        try:
            while True:
                text = self.log_text(offset)
                if READY_LINE in text:
                    return self
                if self.process.poll() is not None:
                    raise RuntimeError(f"peerage exited with {self.process.returncode}:\n{text[-4000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"peerage did not become ready in {timeout}s:\n{text[-4000:]}")
                time.sleep(0.05)
        except BaseException:
            # Whatever ends the wait (the deadline, pytest-timeout, ^C) must not leave a server holding
            # the area's addresses: the fixture that started it never reaches its own clean-up.
            self.kill()
            raise

    def log_text(self, offset: int = 0) -> str:
        try:
            with open(self.log_path, "rb") as file:
                file.seek(offset)
                return file.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, text: str, offset: int = 0, timeout: float = 30.0) -> str:
        """The log from `offset` once it contains `text`: a line the server writes after some event."""
        return wait_for(lambda: text in (found := self.log_text(offset)) and found, timeout, f"{text!r} in the log")

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """The rows of one query on the server's SQLite database, which the server may be writing."""
        with contextlib.closing(sqlite3.connect(self.data_dir / "peerage.db", timeout=30)) as db:
            return db.execute(sql, params).fetchall()

    def wait_rows(self, sql: str, params: tuple[Any, ...] = (), count: int = 1,
                  timeout: float = 30.0) -> list[tuple[Any, ...]]:
        """The query's rows once there are at least `count`: the server has committed what it was sent."""
        return wait_for(lambda: len(found := self.rows(sql, params)) >= count and found, timeout,
                        f"{count} row(s) of {sql!r} {params}")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
                raise RuntimeError(f"peerage did not stop within {timeout}s of SIGTERM") from None
        code = self.process.returncode
        self.process = None
        return code

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        self.process = None

    def __enter__(self) -> PeerageServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill() if exc[0] is not None else self.stop()
