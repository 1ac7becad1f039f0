"""A private Postfix instance for the mail tests: its own config dir (`master -c DIR`), its own queue,
listening on one loopback address, resolving through the harness's LocalDNS via a private resolv.conf
(a mount namespace, see `tests.harness.private_resolv_conf`), delivering to Maildirs of virtual users.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.harness import private_resolv_conf, require_binary, wait_for

MASTER_CF = """\
{address}:25 inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class Postfix:
    """One Postfix serving `domain` on `address`:25 with Maildir users under `workdir/mail`."""

    def __init__(self, workdir: Path, *, domain: str, hostname: str, address: str, dns_address: str,
                 users: list[str], cert: tuple[Path, Path], mynetworks: str = "127.0.0.0/8",
                 extra: dict[str, str] | None = None, other_domains: dict[str, list[str]] | None = None) -> None:
        self.postfix_bin = require_binary("postfix", "/usr/sbin/postfix")
        self.master_bin = require_binary("master", "/usr/lib/postfix/sbin/master")
        self.workdir = Path(workdir)
        self.config_dir = self.workdir / "etc"
        self.queue_dir = self.workdir / "spool"
        self.data_dir = self.workdir / "lib"
        self.mail_dir = self.workdir / "mail"
        self.address = address
        self.domain = domain
        self.dns_address = dns_address
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "postfix.log"
        for folder in (self.config_dir, self.queue_dir, self.data_dir, self.mail_dir):
            folder.mkdir(parents=True, exist_ok=True)
        owner = pwd.getpwnam("postfix")
        os.chown(self.data_dir, owner.pw_uid, owner.pw_gid)
        os.chown(self.mail_dir, owner.pw_uid, owner.pw_gid)
        # The folders above this instance must be reachable by the postfix user.
        for parent in list(self.workdir.parents)[:-1]:
            if str(parent).startswith("/tmp/"):
                os.chmod(parent, os.stat(parent).st_mode | 0o711)
        os.chmod(self.workdir, 0o755)
        cert_copy, key_copy = self.config_dir / "server.crt", self.config_dir / "server.key"
        shutil.copy(cert[0], cert_copy)
        shutil.copy(cert[1], key_copy)
        os.chmod(key_copy, 0o600)
        # Users of other virtual domains share the Maildirs of the users with the same name.
        mailboxes = [f"{u}@{domain} {u}/" for u in users]
        for other, other_users in (other_domains or {}).items():
            mailboxes += [f"{u}@{other} {u}/" for u in other_users]
        (self.config_dir / "vmailbox").write_text("".join(line + "\n" for line in mailboxes))
        settings = {
            "compatibility_level": "3.6",
            "config_directory": str(self.config_dir),
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": hostname,
            "mydomain": domain,
            "myorigin": domain,
            "mydestination": "",
            "inet_interfaces": "all",
            "inet_protocols": "ipv4",
            "smtp_bind_address": address,
            "mynetworks": mynetworks,
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "virtual_mailbox_domains": ", ".join([domain, *(other_domains or {})]),
            "virtual_mailbox_base": str(self.mail_dir),
            "virtual_mailbox_maps": f"texthash:{self.config_dir / 'vmailbox'}",
            "virtual_uid_maps": f"static:{owner.pw_uid}",
            "virtual_gid_maps": f"static:{owner.pw_gid}",
            "virtual_minimum_uid": "100",
            "smtpd_tls_cert_file": str(cert_copy),
            "smtpd_tls_key_file": str(key_copy),
            "smtpd_tls_security_level": "may",
            "smtpd_tls_received_header": "yes",
            "smtp_tls_security_level": "may",
            "smtp_tls_loglevel": "1",
            "smtpd_tls_loglevel": "1",
            "smtpd_peername_lookup": "no",
            "smtp_host_lookup": "dns",
            "disable_dns_lookups": "no",
            "smtp_dns_support_level": "enabled",
            "maillog_file": str(self.log_path),
            "maillog_file_prefixes": str(self.workdir),
            "maillog_file_permissions": "0644",
            "biff": "no",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "append_dot_mydomain": "no",
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "smtp_connect_timeout": "5s",
            "shlib_directory": "/usr/lib/postfix",
            "meta_directory": "/etc/postfix",
            "smtputf8_enable": "yes",
        }
        settings.update(extra or {})
        (self.config_dir / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
        (self.config_dir / "master.cf").write_text(MASTER_CF.replace("{address}", address))
        subprocess.run([self.postfix_bin, "-c", str(self.config_dir), "check"],
                       check=True, capture_output=True, timeout=60)

    def start(self, timeout: float = 20.0) -> Postfix:
        # A stale master.pid from a killed instance would make master refuse to start.
        (self.queue_dir / "pid" / "master.pid").unlink(missing_ok=True)
        command = private_resolv_conf([self.master_bin, "-c", str(self.config_dir), "-d"], self.dns_address,
                                      self.workdir)
        log = open(self.workdir / "master.out", "ab")  # noqa: SIM115 - the child owns it
        # Its own process group: on SIGTERM, master signals its group (its children), never ours.
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_for(lambda: self._listening() or self._died(), timeout, "postfix listening")
        if self._died():
            raise RuntimeError(f"postfix exited: {(self.workdir / 'master.out').read_text()[-2000:]}")
        return self

    def _died(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def _listening(self) -> bool:
        try:
            with socket.create_connection((self.address, 25), timeout=1):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None
        deadline = time.monotonic() + 10
        while self._listening() and time.monotonic() < deadline:
            time.sleep(0.05)

    def maildir_messages(self, user: str) -> list[bytes]:
        folder = self.mail_dir / user / "new"
        if not folder.is_dir():
            return []
        return [p.read_bytes() for p in sorted(folder.iterdir())]

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
