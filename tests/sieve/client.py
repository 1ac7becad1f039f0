"""A bare ManageSieve client for the tests that need what stock clients will not send (oversized
literals, malformed commands, a byte at a time), and a few helpers."""

from __future__ import annotations

import base64
import socket
import ssl
from pathlib import Path

from tests.sieve.conftest import ADDRESS

TIMEOUT = 15.0


class RawSieve:
    def __init__(self, source: str = "127.0.17.100", ca: Path | None = None) -> None:
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection((ADDRESS, 4190), TIMEOUT,
                                                                            source_address=(source, 0))
        self.ca = ca
        self.buffer = b""
        self.greeting = self.response()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def response(self) -> list[bytes]:
        """Lines up to and including the OK/NO/BYE line."""
        lines = []
        while True:
            line = self._line()
            lines.append(line)
            if line.startswith((b"OK", b"NO", b"BYE")):
                return lines

    def closed(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except (ConnectionError, ssl.SSLError):
            return True

    def starttls(self) -> list[bytes]:
        self.send(b"STARTTLS\r\n")
        assert self.response()[-1].startswith(b"OK")
        context = ssl.create_default_context(cafile=str(self.ca)) if self.ca else ssl.create_default_context()
        self.sock = context.wrap_socket(self.sock, server_hostname="example.org")
        return self.response()

    def login(self, user: str, password: str) -> list[bytes]:
        blob = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode())
        self.send(b'AUTHENTICATE "PLAIN" "' + blob + b'"\r\n')
        return self.response()

    def close(self) -> None:
        self.sock.close()
