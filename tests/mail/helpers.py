"""Helpers for mail tests: read what a peerage server stored (mailboxes, queue) straight from its data
folder, and speak SMTP where the standard clients cannot (SCRAM, bare line endings)."""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import sqlite3
import ssl
from pathlib import Path

from peerage.identity.scram import scram_client_proof

# Address block of the mail tests (see the brief: SMTP 127.0.4.0/24).
DNS_ADDRESS = "127.0.4.53"
PEERAGE_ADDRESS = "127.0.4.1"
POSTFIX_ADDRESS = "127.0.4.2"
CLIENT_ADDRESS = "127.0.4.100"
SOCKET_TIMEOUT = 15.0


def mailbox_messages(data_dir: Path, address: str, folder: str = "INBOX") -> list[bytes]:
    """Every message stored in `address`'s `folder`, in UID order."""
    database = data_dir / "peerage.db"
    if not database.exists():
        return []
    with sqlite3.connect(database, timeout=10) as conn:
        try:
            rows = conn.execute(
                "SELECT m.blob, d.body FROM mail_messages m JOIN mail_mailboxes b ON b.id = m.mailbox_id "
                "LEFT JOIN mail_bodies d ON d.name = m.blob "
                "WHERE b.owner = ? AND b.name = ? ORDER BY m.uid",
                (address, folder),
            ).fetchall()
        except sqlite3.OperationalError:
            return []
    # Small bodies are rows of mail_bodies; larger ones are files named by `blob`.
    blobs = data_dir / "mail" / "blobs"
    return [(blobs / name[:2] / name).read_bytes() if body is None else bytes(body) for name, body in rows]


def queue_rows(data_dir: Path) -> list[tuple[int, str, str, int, str]]:
    """(id, mail_from, recipient, attempts, last_error) of every queue entry."""
    with sqlite3.connect(data_dir / "peerage.db", timeout=10) as conn:
        try:
            return conn.execute(
                "SELECT id, mail_from, recipient, attempts, last_error FROM mail_queue ORDER BY id"
            ).fetchall()
        except sqlite3.OperationalError:
            return []


def unverified_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class RawSMTP:
    """A line-level SMTP client for exchanges smtplib cannot produce."""

    def __init__(self, host: str, port: int, *, implicit_tls: bool = False, source: str | None = None) -> None:
        sock = socket.create_connection((host, port), timeout=SOCKET_TIMEOUT, source_address=(source, 0) if source else None)
        if implicit_tls:
            sock = unverified_context().wrap_socket(sock)
        self.sock = sock
        self.buffer = b""
        self.greeting = self.reply()

    def send(self, line: bytes) -> None:
        self.sock.sendall(line)

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def reply(self) -> tuple[int, str]:
        lines = []
        while True:
            line = self._line()
            lines.append(line[4:].decode())
            if line[3:4] != b"-":
                return int(line[:3]), "\n".join(lines)

    def command(self, line: str | bytes) -> tuple[int, str]:
        self.send((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return self.reply()

    def starttls(self) -> None:
        code, _ = self.command("STARTTLS")
        assert code == 220
        self.sock = unverified_context().wrap_socket(self.sock)

    def scram_sha256(self, username: str, password: str, *, plus: bool = False) -> tuple[int, str]:
        """SCRAM-SHA-256, or SCRAM-SHA-256-PLUS bound to the TLS session with tls-exporter (RFC 9266)."""
        nonce = base64.b64encode(os.urandom(18)).decode()
        client_first_bare = f"n={username},r={nonce}"
        gs2 = "p=tls-exporter,," if plus else "n,,"
        binding = b""
        if plus:
            from peerage.net.tls import tls_exporter

            assert isinstance(self.sock, ssl.SSLSocket)
            exported = tls_exporter(self.sock)
            assert exported is not None
            binding = exported
        mechanism = "SCRAM-SHA-256-PLUS" if plus else "SCRAM-SHA-256"
        code, text = self.command(f"AUTH {mechanism} " + base64.b64encode(f"{gs2}{client_first_bare}".encode()).decode())
        if code != 334:
            return code, text
        server_first = base64.b64decode(text)
        fields = dict(part.split("=", 1) for part in server_first.decode().split(","))
        without_proof = f"c={base64.b64encode(gs2.encode() + binding).decode()},r={fields['r']}"
        auth_message = f"{client_first_bare},{server_first.decode()},{without_proof}".encode()
        proof, server_signature = scram_client_proof(
            "SHA-256", password, base64.b64decode(fields["s"]), int(fields["i"]), auth_message
        )
        code, text = self.command(base64.b64encode(f"{without_proof},p={base64.b64encode(proof).decode()}".encode()))
        if code != 334:
            return code, text
        assert base64.b64decode(text) == b"v=" + base64.b64encode(server_signature), "server signature mismatch"
        return self.command(b"")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.command("QUIT")
        self.sock.close()


class PolicyServer:
    """An HTTPS server for MTA-STS policies (RFC 8461 §3.3), keyed by the Host header."""

    def __init__(self, address: str, cert: tuple[Path, Path], policies: dict[str, str]) -> None:
        import http.server
        import threading

        served = policies

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = served.get((self.headers.get("Host") or "").split(":")[0].lower())
                if self.path != "/.well-known/mta-sts.txt" or body is None:
                    self.send_error(404)
                    return
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer((address, 443), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert[0]), str(cert[1]))
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)
