"""profanity (Debian's 0.13.1), driven as a user drives it: commands typed into its terminal.

profanity runs in a pseudo-terminal with a HOME of its own (its account file names the account and its
password, as ``/account set`` writes it), in a private mount namespace whose /etc/resolv.conf names the
tests' LocalDNS and whose system CA bundle has the test CA added, so libstrophe (XMPP) and libcurl (the
HTTP upload) find and verify the servers exactly as they would on a user's machine, with no "trust this
certificate" shortcut. What profanity did is read from the two places it records it: its debug log
(every stanza sent and received, and its own warnings and errors) and its message database
(``chatlog.db``: each message it sent or received and shown, with the encryption it used).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import pty
import re
import signal
import sqlite3
import struct
import subprocess
import termios
import threading
import time
from pathlib import Path
from typing import Any

from tests.harness.peers import require_binary

SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
#: profanity's own log lines that say something went wrong (its levels are DBG, INF, WRN, ERR).
PROBLEM = re.compile(r": (prof|xmpp|conn): (WRN|ERR): (.*)$")
#: Problems that are about profanity's own fresh, empty profile, not about the server: no OMEMO trust
#: file yet, and the OMEMO identity not generated yet (before ``/omemo gen``).
LOCAL_NOISE = (
    re.compile(r"\[OMEMO\] no such file: .*"),
    re.compile(r"\[OMEMO\] cannot publish crypto materials before they are generated"),
    re.compile(r"\[OMEMO\]\[STORE\] No device \(\d+\) store for \S+ found"),
)


class Profanity:
    """One profanity process logged in to ``jid``."""

    def __init__(self, workdir: Path, jid: str, password: str, dns_address: str, ca_path: Path) -> None:
        self.binary = require_binary("profanity")
        require_binary("unshare")
        self.jid = jid
        self.home = workdir / f"profanity-{jid}"
        self.log_path = self.home / "profanity.log"
        self.account_file = self.home / "data/profanity/accounts"
        (self.home / "config/profanity").mkdir(parents=True, exist_ok=True)
        self.account_file.parent.mkdir(parents=True, exist_ok=True)
        self.account_file.write_text(
            f"[{jid}]\nenabled=true\njid={jid}\nresource=profanity\npassword={password}\ntls.policy=force\n")
        self.account_file.chmod(0o600)
        # No splash screen, no periodic pings (their answers would only fill the log).
        (self.home / "config/profanity/profrc").write_text("[ui]\nsplash=false\n[connection]\nautoping=0\n")
        bundle = self.home / "ca-certificates.crt"
        bundle.write_text(SYSTEM_BUNDLE.read_text() + Path(ca_path).read_text())
        resolv = self.home / "resolv.conf"
        resolv.write_text(f"nameserver {dns_address}\noptions timeout:1 attempts:2\n")
        self.script = (f'mount --bind {resolv} /etc/resolv.conf && mount --bind {bundle} {SYSTEM_BUNDLE} '
                       '&& exec "$@"')
        self.process: subprocess.Popen[bytes] | None = None
        self.master = -1
        self.screen = bytearray()
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", self.script, "sh",
                   self.binary, "-a", self.jid, "-l", "DEBUG", "-f", str(self.log_path)]
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.home), "TERM": "xterm",
               "LANG": "C.UTF-8", "XDG_CONFIG_HOME": str(self.home / "config"),
               "XDG_DATA_HOME": str(self.home / "data")}
        self.process = subprocess.Popen(command, stdin=slave, stdout=slave, stderr=slave, env=env,
                                        start_new_session=True)
        os.close(slave)
        self.master = master
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        """Keep reading the terminal, so profanity never blocks on a full pseudo-terminal."""
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            if not data:
                return
            self.screen.extend(data)

    def type(self, line: str) -> None:
        """Type one line and press Enter."""
        os.write(self.master, line.encode() + b"\r")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    async def wait_log(self, pattern: str, timeout: float = 30.0, after: int = 0) -> re.Match[str]:
        """The first match of ``pattern`` in the log (from offset ``after``), waiting up to ``timeout``."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            found = regex.search(self.log()[after:])
            if found:
                return found
            assert self.process is not None and self.process.poll() is None, "profanity exited"
            assert time.monotonic() < deadline, f"profanity's log never showed {pattern!r}"
            await asyncio.sleep(0.1)

    async def do(self, line: str, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        """Type ``line``, then wait for ``pattern`` in what the log records after it."""
        mark = len(self.log())
        self.type(line)
        await self.wait_log(re.escape(f"Input received: {line}"), timeout, after=mark)
        return await self.wait_log(pattern, timeout, after=mark)

    def messages(self) -> list[dict[str, Any]]:
        """The messages profanity recorded (sent and received), oldest first."""
        path = self.home / "data/profanity/database" / self.jid.replace("@", "_at_") / "chatlog.db"
        if not path.exists():
            return []
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            conn.row_factory = sqlite3.Row
            try:
                return [dict(row) for row in conn.execute("SELECT * FROM ChatLogs ORDER BY id")]
            except sqlite3.OperationalError:  # being created
                return []

    async def wait_message(self, timeout: float = 30.0, **match: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for row in self.messages():
                if all(row.get(key) == value for key, value in match.items()):
                    return row
            assert time.monotonic() < deadline, f"profanity never recorded a message with {match}: {self.messages()}"
            await asyncio.sleep(0.1)

    def problems(self) -> list[str]:
        """profanity's warnings and errors, but those about its own fresh profile, and stderr lines.

        A fresh account has no OMEMO device list yet: profanity's read of its own list gets
        item-not-found (XEP-0060 section 6.5.9.11, the node does not exist), which it logs as an error
        before it publishes the list. That one answer, to that one request, is not a problem."""
        found = []
        log = self.log()
        own_list_reads = set(re.findall(
            r"SENT: <iq id=\"([^\"]+)\" to=\"" + re.escape(self.jid) + r"\" type=\"get\"><pubsub "
            r"xmlns=\"http://jabber.org/protocol/pubsub\"><items node=\"eu.siacs.conversations.axolotl.devicelist\"/>", log))
        expected_missing = False
        for line in log.splitlines():
            error = re.search(r"prof: ERR: IQ error received, id: (\S+), error: item-not-found$", line)
            if error and error.group(1) in own_list_reads:
                expected_missing = True
                continue
            if expected_missing and line.endswith("prof: ERR: [OMEMO] can't get OMEMO device list"):
                expected_missing = False
                continue
            if ": stderr: ERR:" in line:
                text = line.split(": stderr: ERR:", 1)[1].strip()
                # profanity 0.13.1 stores a NULL status message at each presence change
                # (accounts_set_last_status), which GLib reports: its own bug, not the server's.
                if text and "g_key_file_set_string: assertion 'string != NULL'" not in text:
                    found.append(line)
                continue
            problem = PROBLEM.search(line)
            if problem and not any(noise.fullmatch(problem.group(3).strip()) for noise in LOCAL_NOISE):
                found.append(line)
        return found

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                self.type("/quit")
                self.process.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        os.close(self.master)
        self.process = None
