"""TLS over an asyncio Protocol with memory BIOs, plus channel-binding data for SASL -PLUS.

This module is in charge of running TLS for XMPP connections without asyncio's SSL transport:
ciphertext in, plaintext out, and the reverse. Doing it here keeps the per-connection memory small
(asyncio's and uvloop's SSL protocols each keep a large read buffer per connection) and gives direct
access to the SSL object for channel binding:

- ``tls-server-end-point`` (RFC 5929 section 4): a hash of our certificate;
- ``tls-exporter`` (RFC 9266), computed by ``peerage.net.tls.channel_bindings``.

Memory: an OpenSSL memory BIO never shrinks; it keeps the largest buffer it ever needed (the
handshake flights, or a burst of stanzas: after a 60 KB burst each way, a connection holds about
60 KiB more for the rest of its life). ``release_buffers()`` gives both buffers back once a connection is quiet. Python's
``ssl.MemoryBIO`` offers no way to do it, so it is done with OpenSSL's own ``BIO_set_mem_buf``
through the ``BIO*`` that ``_ssl`` keeps right after the object header (Modules/_ssl.c,
PySSLMemoryBIO), after checking at first use that the pointer answers like the BIO it should be.
With ``SSL_MODE_RELEASE_BUFFERS`` (which CPython's contexts have set) OpenSSL already frees its own
record buffers between records; together an idle connection holds no I/O buffer at all.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import ssl
from typing import Any

from peerage.net.tls import channel_bindings

log = logging.getLogger(__name__)

#: Plaintext read per SSL_read call: one TLS record carries at most 16 KiB (RFC 8446 section 5.1).
#: The buffer is temporary (no per-connection read buffer is kept).
TLS_READ_CHUNK = 16384


#: openssl/bio.h: BIO_ctrl commands and the flag that lets the BIO free the buffer it is given.
BIO_CTRL_PENDING = 10
BIO_C_SET_BUF_MEM = 114
BIO_CLOSE = 1
#: Offset of ``BIO *bio`` in CPython's PySSLMemoryBIO: right after PyObject_HEAD.
_BIO_POINTER_OFFSET = ctypes.sizeof(ctypes.c_ssize_t) + ctypes.sizeof(ctypes.c_void_p)
_PROBE = b"peerage-bio-probe"

_libssl: Any = None


def _bio_library() -> Any:
    """libssl/libcrypto functions for releasing BIO buffers, or False where that cannot be done safely."""
    global _libssl
    if _libssl is not None:
        return _libssl
    _libssl = False
    try:
        import _ssl

        lib = ctypes.CDLL(_ssl.__file__)  # resolves libcrypto's symbols through _ssl's dependencies
        lib.BIO_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        lib.BIO_ctrl.restype = ctypes.c_long
        lib.BUF_MEM_new.argtypes = []
        lib.BUF_MEM_new.restype = ctypes.c_void_p
        # The pointer must lead to the BIO: it reports exactly the bytes just written, before and
        # after its buffer is replaced.
        probe = ssl.MemoryBIO()
        probe.write(_PROBE)
        pointer = _bio_pointer(probe)
        if not pointer or lib.BIO_ctrl(pointer, BIO_CTRL_PENDING, 0, None) != len(_PROBE):
            return _libssl
        probe.read()
        if not _replace_buffer(lib, pointer):
            return _libssl
        probe.write(_PROBE)
        if probe.pending != len(_PROBE) or probe.read() != _PROBE:
            return _libssl
        _libssl = lib
    except (OSError, AttributeError, ImportError, ValueError):
        log.info("TLS buffers of idle connections cannot be released on this platform")
    return _libssl


def _bio_pointer(bio: ssl.MemoryBIO) -> int | None:
    return ctypes.c_void_p.from_address(id(bio) + _BIO_POINTER_OFFSET).value


def _replace_buffer(lib: Any, pointer: int) -> bool:
    """Give an empty memory BIO a fresh, unallocated buffer; the BIO frees the old one."""
    fresh = lib.BUF_MEM_new()
    if not fresh:
        return False
    lib.BIO_ctrl(pointer, BIO_C_SET_BUF_MEM, BIO_CLOSE, fresh)
    return True


class TlsLayer:
    """One TLS session driven by memory BIOs."""

    __slots__ = ("_buffers_used", "_incoming", "_outgoing", "handshake_done", "peer_closed", "sslobj")

    def __init__(self, context: ssl.SSLContext, *, server_side: bool = True,
                 server_hostname: str | None = None) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.sslobj = context.wrap_bio(self._incoming, self._outgoing, server_side=server_side,
                                       server_hostname=server_hostname)
        self.handshake_done = False
        self.peer_closed = False  # the peer sent close_notify
        self._buffers_used = True  # data went through the BIOs since release_buffers()

    def receive(self, data: bytes) -> bytes:
        """Feed ciphertext; return any plaintext now available. Raises ``ssl.SSLError``."""
        self._buffers_used = True
        self._incoming.write(data)
        if not self.handshake_done:
            try:
                self.sslobj.do_handshake()
            except ssl.SSLWantReadError:
                return b""
            self.handshake_done = True
        chunks = []
        sslobj = self.sslobj
        incoming = self._incoming
        while True:
            try:
                chunk = sslobj.read(TLS_READ_CHUNK)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.peer_closed = True
                break
            if not chunk:
                break
            chunks.append(chunk)
            # Without read-ahead OpenSSL takes one record at a time from the BIO: with no ciphertext
            # left there and no plaintext left in the record, another read can only fail with
            # SSLWantReadError. Stopping here spares building that exception (a few microseconds,
            # on every read of every connection).
            if not incoming.pending and not sslobj.pending():
                break
        return b"".join(chunks) if len(chunks) != 1 else chunks[0]

    def start(self) -> None:
        """Client side: produce the ClientHello."""
        with contextlib.suppress(ssl.SSLWantReadError):
            self.sslobj.do_handshake()

    def send(self, plaintext: bytes) -> None:
        self._buffers_used = True
        self.sslobj.write(plaintext)

    def release_buffers(self) -> bool:
        """Free both BIO buffers if they are empty (a quiet connection); return whether it did."""
        if not self._buffers_used or self._incoming.pending or self._outgoing.pending:
            return False
        lib = _bio_library()
        if not lib:
            return False
        for bio in (self._incoming, self._outgoing):
            pointer = _bio_pointer(bio)
            if not pointer or not _replace_buffer(lib, pointer):
                return False
        self._buffers_used = False
        return True

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
