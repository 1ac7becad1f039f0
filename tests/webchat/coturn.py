"""coturn (Debian's `turnserver`) on a loopback address, with the TURN REST shared secret.

Started by the tests in a temp dir, no configuration file (-n), every option on the command line:
use-auth-secret with static-auth-secret (draft-uberti-behave-turn-rest), the realm peerage's domain,
UDP and TCP on one port, no TLS/DTLS listeners, loopback peers allowed (every test address is one)
and no others but the ``allowed_peers`` a test names, relay ports in a small private range.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from tests.harness import require_binary, wait_for
from tests.webchat.turnclient import allocate

START_TIMEOUT = 60.0  # a loaded 2-core CI machine; a server that answers sooner is used sooner


class Coturn:
    def __init__(self, workdir: Path, address: str, secret: str, realm: str, *, port: int = 3478,
                 relay_ports: tuple[int, int] = (49160, 49260), allowed_peers: tuple[str, ...] = ()) -> None:
        self.binary = require_binary("turnserver", "/usr/bin/turnserver")
        self.workdir = workdir
        self.address = address
        self.port = port
        self.secret = secret
        self.realm = realm
        self.relay_ports = relay_ports
        self.allowed_peers = allowed_peers
        self.log_path = workdir / "turnserver.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Coturn:
        self.workdir.mkdir(parents=True, exist_ok=True)
        command = [
            self.binary, "-n", "--no-cli", "--no-tls", "--no-dtls", "--no-stdout-log", "--simple-log",
            "--log-file", str(self.log_path), "--pidfile", str(self.workdir / "turnserver.pid"),
            "--listening-ip", self.address, "--relay-ip", self.address, "--listening-port", str(self.port),
            "--min-port", str(self.relay_ports[0]), "--max-port", str(self.relay_ports[1]),
            "--use-auth-secret", "--static-auth-secret", self.secret, "--realm", self.realm,
            "--allow-loopback-peers", "--no-multicast-peers", "--fingerprint", "-v",
            # Relay to loopback peers only: a peer's ICE may list the machine's other addresses.
            "--denied-peer-ip", "0.0.0.0-126.255.255.255", "--denied-peer-ip", "128.0.0.0-255.255.255.255",
            # allowed-peer-ip wins over denied-peer-ip (coturn's README.turnserver).
            *(option for peer in self.allowed_peers for option in ("--allowed-peer-ip", peer)),
        ]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=open(self.workdir / "stderr", "wb"),  # noqa: SIM115
                                        cwd=self.workdir)
        deadline = time.monotonic() + START_TIMEOUT

        def answers() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"turnserver exited: {self.log_text()[-2000:]}")
            try:
                return allocate((self.address, self.port), "0:probe", "x", timeout=0.5).code == 401
            except (TimeoutError, OSError):
                return False

        wait_for(answers, max(1.0, deadline - time.monotonic()), "turnserver to answer")
        return self

    def log_text(self) -> str:
        files = [self.log_path, *self.workdir.glob("turnserver*.log")]
        return "\n".join(f.read_text(errors="replace") for f in files if f.exists())

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

