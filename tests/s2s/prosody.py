"""Debian's Prosody as a federation peer in the harness: its own config folder, data and log, and a
private /etc/resolv.conf pointing at the harness's LocalDNS.

Prosody 0.12 without lua-unbound resolves through ``net.dns`` (``net/adns.lua`` logs "Using legacy
DNS API"), which reads /etc/resolv.conf and always queries port 53; hence LocalDNS on port 53 and
``private_resolv_conf``.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.harness import private_resolv_conf, require_binary

START_TIMEOUT = 60.0  # a loaded 2-core CI machine; a server that listens sooner is used sooner
STOP_TIMEOUT = 30.0


def _encode(name: str) -> str:
    """Prosody's data path encoding of a host or user name (util.datamanager)."""
    return "".join(c if c.isalnum() else f"%{ord(c):02x}" for c in name)


class ProsodyServer:
    def __init__(self, workdir: Path, domain: str, address: str, dns_address: str, *, cert: Path,
                 key: Path, cafile: Path | None = None, secure_auth: bool = False,
                 users: dict[str, str] | None = None) -> None:
        self.binary = require_binary("prosody")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.domain = domain
        self.address = address
        self.dns_address = dns_address
        self.log_path = self.workdir / "prosody.log"
        self.process: subprocess.Popen[bytes] | None = None
        data = self.workdir / "data"
        for user, password in (users or {}).items():
            accounts = data / _encode(domain) / "accounts"
            accounts.mkdir(parents=True, exist_ok=True)
            (accounts / f"{_encode(user)}.dat").write_text(f'return {{ ["password"] = "{password}"; }};\n')
        ssl_options = f'certificate = "{cert}"; key = "{key}";'
        if cafile is not None:
            ssl_options += f' cafile = "{cafile}";'
        self.config_path = self.workdir / "prosody.cfg.lua"
        self.config_path.write_text(f"""
run_as_root = true
daemonize = false
pidfile = "{self.workdir / 'prosody.pid'}"
data_path = "{data}"
plugin_paths = {{}}
log = {{ {{ levels = {{ min = "debug" }}, to = "file", filename = "{self.log_path}" }} }}
interfaces = {{ "{address}" }}
local_interfaces = {{ "{address}" }}
c2s_ports = {{ 5222 }}
c2s_direct_tls_ports = {{ }}
s2s_ports = {{ 5269 }}
s2s_direct_tls_ports = {{ 5270 }}
http_ports = {{ }}
https_ports = {{ }}
component_ports = {{ }}
modules_enabled = {{ "roster"; "saslauth"; "tls"; "dialback"; "disco"; "ping"; "posix"; "s2s_bidi" }}
modules_disabled = {{ "offline"; "c2s_limits" }}
authentication = "internal_plain"
storage = "internal"
c2s_require_encryption = true
s2s_require_encryption = true
s2s_secure_auth = {"true" if secure_auth else "false"}
s2s_timeout = 20
ssl = {{ {ssl_options} }}
VirtualHost "{domain}"
    ssl = {{ {ssl_options} }}
""")

    def start(self) -> ProsodyServer:
        command = private_resolv_conf([self.binary, "--config", str(self.config_path), "-F"],
                                      self.dns_address, self.workdir)
        log = open(self.workdir / "stdout.log", "ab")  # noqa: SIM115 - the child owns it
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"prosody exited: {self.log_text()[-3000:]}")
            try:
                with socket.create_connection((self.address, 5269), timeout=0.5):
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"prosody did not listen in {START_TIMEOUT}s: {self.log_text()[-3000:]}")
            time.sleep(0.05)

    def log_text(self) -> str:
        text = ""
        for path in (self.log_path, self.workdir / "stdout.log"):
            if path.exists():
                text += path.read_text(errors="replace")
        return text

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        self.process = None
