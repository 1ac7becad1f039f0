"""TLS contexts for server-to-server streams.

This module is in charge of the SSL contexts s2s uses: a server context per hosted domain (chosen by
SNI) that *asks* every peer for a certificate but never fails the handshake over it, and client
contexts that present our certificate when the policy says so. Certificates are never judged by
OpenSSL here: ``peerage.xmpp.x509`` checks chains and names after the handshake, so that the policy
can tell "no certificate", "self-signed" and "CA-issued" apart (XEP-0238 needs all three), which a
failed handshake would hide.

OpenSSL only requests a client certificate when the context verifies peers, and then aborts on any
verification error. CPython cannot install a verify callback, so we set one through ctypes on the
``SSL_CTX`` (``SSL_CTX_set_verify``) that accepts every chain; the same approach as Prosody's
LuaSec "verify = { 'peer', 'client_once' }" plus its own later chain check in ``mod_s2s``.
"""

from __future__ import annotations

import ctypes
import logging
import ssl
from collections.abc import Callable
from pathlib import Path

from peerage.net.tls import SniServerContexts, harden

log = logging.getLogger(__name__)

#: ALPN protocol of XEP-0368 Direct TLS for servers.
ALPN_XMPP_SERVER = "xmpp-server"
_SSL_VERIFY_PEER = 0x01

_VERIFY_CALLBACK_TYPE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)


def _accept_any(preverify_ok: int, store: int | None) -> int:
    return 1


_ACCEPT_ANY = _VERIFY_CALLBACK_TYPE(_accept_any)
# PySSLContext starts with PyObject_HEAD then ``SSL_CTX *ctx`` (Modules/_ssl.c).
_CTX_POINTER_OFFSET = ctypes.sizeof(ctypes.c_ssize_t) + ctypes.sizeof(ctypes.c_void_p)
_set_verify: object | None = None


def _load_set_verify() -> object | None:
    global _set_verify
    if _set_verify is None:
        import _ssl

        for library in (_ssl.__file__, "libssl.so.3", "libssl.so"):
            try:
                function = ctypes.CDLL(library).SSL_CTX_set_verify
            except (OSError, AttributeError):
                continue
            function.argtypes = [ctypes.c_void_p, ctypes.c_int, _VERIFY_CALLBACK_TYPE]
            function.restype = None
            _set_verify = function
            break
    return _set_verify


def request_any_client_certificate(context: ssl.SSLContext, fallback_ca: Path | None) -> bool:
    """Ask peers for a certificate without failing on it. False if only the fallback could be set
    (then OpenSSL verifies against ``fallback_ca`` and a self-signed client certificate fails)."""
    function = _load_set_verify()
    if function is not None:
        pointer = ctypes.c_void_p.from_address(id(context) + _CTX_POINTER_OFFSET).value
        if pointer:
            function(pointer, _SSL_VERIFY_PEER, _ACCEPT_ANY)  # type: ignore[operator]
            return True
    log.warning("cannot install a permissive certificate callback; self-signed peer certificates "
                "will fail the TLS handshake")
    if fallback_ca is not None:
        context.load_verify_locations(cafile=str(fallback_ca))
    context.verify_mode = ssl.CERT_OPTIONAL
    return False


class S2STlsContexts:
    """Server contexts by SNI and client contexts by (local domain, present certificate, ALPN)."""

    def __init__(self, certificates: dict[str, tuple[Path, Path]], ca_file: Path | None,
                 certificate_domain: Callable[[str], str] | None = None) -> None:
        self.certificates = certificates
        self.ca_file = ca_file
        #: Which hosted domain's certificate a local name presents (a service JID: its parent's).
        self.certificate_domain = certificate_domain or (lambda name: name)
        self._clients: dict[tuple[str, bool, bool], ssl.SSLContext] = {}

        def configure(context: ssl.SSLContext) -> None:
            request_any_client_certificate(context, ca_file)
            context.set_alpn_protocols([ALPN_XMPP_SERVER])

        self._server = SniServerContexts(certificates, configure)

    @property
    def available(self) -> bool:
        return self._server.default is not None

    def server(self) -> ssl.SSLContext:
        if self._server.default is None:
            raise RuntimeError("no hosted domain has a certificate")
        return self._server.default

    def client(self, local: str, present_certificate: bool, direct_tls: bool = False) -> ssl.SSLContext:
        key = (local, present_certificate, direct_tls)
        context = self._clients.get(key)
        if context is None:
            context = harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE  # judged afterwards by peerage.xmpp.x509
            owner = self.certificate_domain(local)
            if present_certificate and owner in self.certificates:
                cert, private_key = self.certificates[owner]
                context.load_cert_chain(str(cert), str(private_key))
            if direct_tls:
                context.set_alpn_protocols([ALPN_XMPP_SERVER])
            self._clients[key] = context
        return context
