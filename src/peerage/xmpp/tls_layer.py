"""TLS over an asyncio Protocol with memory BIOs, plus channel-binding data for SASL -PLUS.

This module is in charge of running TLS for XMPP connections without asyncio's SSL transport:
ciphertext in, plaintext out, and the reverse. Doing it here keeps the per-connection memory small
(asyncio's and uvloop's SSL protocols each keep a large read buffer per connection) and gives direct
access to the SSL object for channel binding:

- ``tls-server-end-point`` (RFC 5929 section 4): a hash of our certificate;
- ``tls-exporter`` (RFC 9266), computed by ``peerage.net.tls.channel_bindings``.
"""

from __future__ import annotations

import contextlib
import logging
import ssl

from peerage.net.tls import channel_bindings

log = logging.getLogger(__name__)

#: Plaintext read per SSL_read call: one TLS record carries at most 16 KiB (RFC 8446 section 5.1).
#: The buffer is temporary (no per-connection read buffer is kept).
TLS_READ_CHUNK = 16384


class TlsLayer:
    """One TLS session driven by memory BIOs."""

    __slots__ = ("_incoming", "_outgoing", "handshake_done", "peer_closed", "sslobj")

    def __init__(self, context: ssl.SSLContext, *, server_side: bool = True,
                 server_hostname: str | None = None) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.sslobj = context.wrap_bio(self._incoming, self._outgoing, server_side=server_side,
                                       server_hostname=server_hostname)
        self.handshake_done = False
        self.peer_closed = False  # the peer sent close_notify

    def receive(self, data: bytes) -> bytes:
        """Feed ciphertext; return any plaintext now available. Raises ``ssl.SSLError``."""
        self._incoming.write(data)
        if not self.handshake_done:
            try:
                self.sslobj.do_handshake()
            except ssl.SSLWantReadError:
                return b""
            self.handshake_done = True
        chunks = []
        while True:
            try:
                chunk = self.sslobj.read(TLS_READ_CHUNK)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.peer_closed = True
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks) if len(chunks) != 1 else chunks[0]

    def start(self) -> None:
        """Client side: produce the ClientHello."""
        with contextlib.suppress(ssl.SSLWantReadError):
            self.sslobj.do_handshake()

    def send(self, plaintext: bytes) -> None:
        self.sslobj.write(plaintext)

    def close(self) -> None:
        with contextlib.suppress(ssl.SSLError, ValueError):
            self.sslobj.unwrap()

    def take_output(self) -> bytes:
        """Ciphertext to write to the socket."""
        return self._outgoing.read() if self._outgoing.pending else b""

    @property
    def version(self) -> str | None:
        return self.sslobj.version()

    def channel_bindings(self, server_certificate_der: bytes | None) -> dict[str, bytes]:
        """The channel bindings this connection supports, preferred first.

        ``server_certificate_der`` is the certificate this side presented (server side), used for
        tls-server-end-point.
        """
        return channel_bindings(self.sslobj, server_certificate_der)
