"""TlsLayer: TLS over memory BIOs, and the release of their buffers when a connection is quiet."""

from __future__ import annotations

import ctypes
import ssl
from pathlib import Path

import pytest

from peerage.net.tls import generate_self_signed
from peerage.xmpp import tls_layer
from peerage.xmpp.tls_layer import TlsLayer

#: openssl/bio.h: returns the BUF_MEM behind a memory BIO.
BIO_C_GET_BUF_MEM_PTR = 115
#: A burst bigger than one TLS record (16 KiB), like a large stanza or a queue flushed at once.
BURST = 60_000


class BufMem(ctypes.Structure):
    """openssl/buffer.h: struct buf_mem_st."""

    _fields_ = [("length", ctypes.c_size_t), ("data", ctypes.c_void_p), ("max", ctypes.c_size_t),
                ("flags", ctypes.c_ulong)]


def capacity(bio: ssl.MemoryBIO) -> int:
    """Bytes the BIO's buffer holds allocated (its BUF_MEM max)."""
    lib = tls_layer._bio_library()
    pointer = tls_layer._bio_pointer(bio)
    out = ctypes.c_void_p()
    lib.BIO_ctrl(pointer, BIO_C_GET_BUF_MEM_PTR, 0, ctypes.byref(out))
    return int(BufMem.from_address(out.value).max)  # type: ignore[arg-type]


def pump(source: TlsLayer, target: TlsLayer) -> bytes:
    return target.receive(source.take_output())


@pytest.fixture
def pair(tmp_path: Path) -> tuple[TlsLayer, TlsLayer]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    generate_self_signed("a.test", cert, key)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.minimum_version = ssl.TLSVersion.TLSv1_2
    server_context.load_cert_chain(cert, key)
    client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_context.check_hostname = False
    client_context.verify_mode = ssl.CERT_NONE
    server = TlsLayer(server_context)
    client = TlsLayer(client_context, server_side=False, server_hostname="a.test")
    client.start()
    for _ in range(10):  # a TLS 1.3 handshake takes two flights each way at most
        pump(client, server)
        pump(server, client)
        if server.handshake_done and client.handshake_done:
            break
    assert server.handshake_done and client.handshake_done
    return server, client


def test_quiet_connection_releases_bio_buffers_and_keeps_working(pair: tuple[TlsLayer, TlsLayer]) -> None:
    if not tls_layer._bio_library():
        pytest.skip("this platform's _ssl layout is not the one checked for")
    server, client = pair
    client.send(b"x" * BURST)
    received = b"".join(pump(client, server) for _ in range(2))
    assert received == b"x" * BURST
    server.send(b"y" * BURST)
    assert capacity(server._incoming) >= BURST and capacity(server._outgoing) >= BURST
    echoed = b"".join(pump(server, client) for _ in range(2))  # it leaves; its buffer stays allocated
    assert echoed == b"y" * BURST
    assert server.release_buffers()
    assert capacity(server._incoming) == 0 and capacity(server._outgoing) == 0
    assert not server.release_buffers()  # nothing used since
    # The session goes on as before, both ways.
    client.send(b"<presence/>")
    assert pump(client, server) == b"<presence/>"
    server.send(b"<message/>")
    assert pump(server, client) == b"<message/>"
    assert server.release_buffers()


def test_buffers_with_data_waiting_are_kept(pair: tuple[TlsLayer, TlsLayer]) -> None:
    server, _ = pair
    server.send(b"not yet written to the socket")
    assert not server.release_buffers()
    assert server.take_output()
