"""Debian's ejabberd 23.01 as a federation peer in the harness: its own configuration, Mnesia spool and
log in a work folder, listeners on one loopback address, and a private /etc/resolv.conf pointing at the
harness's LocalDNS (Erlang's native lookups and ``inet_res`` both read /etc/resolv.conf).

The node runs ``erl -s ejabberd`` directly, as ``ejabberdctl foreground`` does, but without Erlang
distribution (no node name, so no epmd and nothing shared between runs). Users are created through
ejabberd's own HTTP API (``mod_http_api``, ``register`` allowed from loopback only).

Each federation level is configured the way an ejabberd operator would:

- ``verified``: ``s2s_use_starttls: false`` and ``mod_s2s_dialback`` (dialback on clear streams);
- ``encrypted``: a self-signed certificate, ``s2s_use_starttls: required`` and ``mod_s2s_dialback``;
- ``trusted``: a CA-issued certificate, ``s2s_cafile`` naming the CA, ``s2s_use_starttls: required``
  and no ``mod_s2s_dialback``, so that SASL EXTERNAL (XEP-0178) is the only way in or out.

ejabberd's XMPP library (p1_xmpp) fails on a peer certificate whose only names are xmppAddr
otherNames, so every certificate used against it carries DNS-IDs (``TestCA.issue`` does by default).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from tests.harness import private_resolv_conf, require_binary

START_TIMEOUT = 60.0  # a loaded 2-core CI machine; a server that listens sooner is used sooner
STOP_TIMEOUT = 30.0
ERL_LIBS = "/usr/lib/x86_64-linux-gnu"
API_PORT = 5280


def _yaml(value: object) -> str:
    """JSON is YAML: every value below is written as a JSON scalar or list."""
    return json.dumps(value)


class EjabberdServer:
    def __init__(self, workdir: Path, domain: str, address: str, dns_address: str, *, level: str,
                 cert: Path | None = None, key: Path | None = None, cafile: Path | None = None,
                 users: dict[str, str] | None = None, negotiation_timeout: int = 20,
                 loglevel: str = "debug") -> None:
        require_binary("ejabberdctl", "/usr/sbin/ejabberdctl")
        self.erl = require_binary("erl")
        if level not in ("verified", "encrypted", "trusted"):
            raise ValueError(f"unknown level {level!r}")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.domain = domain
        self.address = address
        self.dns_address = dns_address
        self.level = level
        self.users = dict(users or {})
        self.log_path = self.workdir / "ejabberd.log"
        self.process: subprocess.Popen[bytes] | None = None
        lines = [
            f"hosts: [{_yaml(domain)}]",
            f"loglevel: {loglevel}",
            "log_rotate_count: 0",
            "auth_method: internal",
            "auth_password_format: plain",
            f"negotiation_timeout: {negotiation_timeout}",
            "s2s_timeout: 60",
            "s2s_dns_timeout: 5",
            "s2s_dns_retries: 1",
            "s2s_max_retry_delay: 2",
            "s2s_access: all",
        ]
        certfiles = [str(p) for p in (cert, key) if p is not None]  # c2s STARTTLS needs one at every level
        if certfiles:
            lines.append(f"certfiles: {_yaml(certfiles)}")
        if level == "verified":
            lines.append("s2s_use_starttls: false")
        else:
            lines.append("s2s_use_starttls: required")
        if cafile is not None:
            lines.append(f"s2s_cafile: {_yaml(str(cafile))}")
            lines.append(f"ca_file: {_yaml(str(cafile))}")
        lines += [
            "listen:",
            f"  - {{port: 5222, ip: {_yaml(address)}, module: ejabberd_c2s, "
            f"starttls: {'true' if certfiles else 'false'}}}",
            f"  - {{port: 5269, ip: {_yaml(address)}, module: ejabberd_s2s_in}}",
            f"  - {{port: {API_PORT}, ip: {_yaml(address)}, module: ejabberd_http, "
            "request_handlers: {/api: mod_http_api}}",
            "api_permissions:",
            "  \"register from loopback\":",
            "    who: {ip: 127.0.0.0/8}",
            "    what: [\"register\"]",
            "modules:",
            "  mod_roster: {}",
            "  mod_disco: {}",
            "  mod_ping: {}",
        ]
        if level != "trusted":
            lines.append("  mod_s2s_dialback: {}")
        self.config_path = self.workdir / "ejabberd.yml"
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self) -> EjabberdServer:
        env = dict(os.environ, EJABBERD_CONFIG_PATH=str(self.config_path),
                   EJABBERD_LOG_PATH=str(self.log_path), ERL_LIBS=ERL_LIBS,
                   ERL_CRASH_DUMP=str(self.workdir / "erl_crash.dump"))
        spool = self.workdir / "spool"
        command = private_resolv_conf([self.erl, "-noinput", "+K", "true", "-mnesia", "dir", f'"{spool}"',
                                       "-s", "ejabberd"], self.dns_address, self.workdir)
        log = open(self.workdir / "stdout.log", "ab")  # noqa: SIM115 - the child owns it
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                        cwd=self.workdir, start_new_session=True)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"ejabberd exited: {self.log_text()[-3000:]}")
            try:
                with socket.create_connection((self.address, API_PORT), timeout=0.5), \
                        socket.create_connection((self.address, 5269), timeout=0.5):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"ejabberd did not listen in {START_TIMEOUT}s: {self.log_text()[-3000:]}")
            time.sleep(0.05)
        for user, password in self.users.items():
            self.register(user, password)
        return self

    def register(self, user: str, password: str) -> None:
        body = json.dumps({"user": user, "host": self.domain, "password": password}).encode()
        request = urllib.request.Request(f"http://{self.address}:{API_PORT}/api/register", data=body,
                                         headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = response.read().decode()
        if "successfully registered" not in answer:
            raise RuntimeError(f"ejabberd did not register {user}@{self.domain}: {answer}")

    def log_text(self) -> str:
        text = ""
        for path in (self.log_path, self.workdir / "stdout.log"):
            if path.exists():
                text += path.read_text(errors="replace")
        return text

    def _signal_group(self, sig: int) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.process.wait(5)
        self.process = None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self._signal_group(signal.SIGKILL)
            self.process.wait(5)
        self.process = None
