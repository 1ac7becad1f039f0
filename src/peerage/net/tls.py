"""TLS contexts built from the configuration: SNI per hosted domain, TLS 1.2 or later only.

This module is in charge of the server context (one certificate per hosted domain, chosen by SNI, the
first domain's when the client sends no SNI), client contexts (verifying against the configured CA file
or the system store, or not verifying for opportunistic TLS), self-signed certificates for `peerage
init`, and channel-binding data (RFC 5929 tls-server-end-point, RFC 9266 tls-exporter).
"""

from __future__ import annotations

import ctypes
import datetime
import logging
import ssl
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from peerage.config import Config

log = logging.getLogger(__name__)

# RFC 8996 deprecates TLS 1.0 and 1.1; RFC 9325 §3.1.1 requires 1.2 or later.
MINIMUM_TLS_VERSION = ssl.TLSVersion.TLSv1_2
# Mozilla's "intermediate" profile for TLS 1.2: forward secrecy and AEAD ciphers only.
TLS12_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)


def harden(ctx: ssl.SSLContext) -> ssl.SSLContext:
    """TLS 1.2 or later, AEAD ciphers with forward secrecy, no compression or renegotiation."""
    ctx.minimum_version = MINIMUM_TLS_VERSION
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return ctx


class SniServerContexts:
    """One server context per hosted domain, chosen by SNI; the first domain's when the client sends none.

    `configure` adjusts every context once (a protocol's ALPN, or its request for client certificates),
    so each protocol that needs its own variant builds one of these from the same certificates.

    `reload` builds fresh contexts from new certificate files (renewed, or for domains added since) and
    swaps them in: listeners keep the context they were given, whose SNI callback hands every new
    handshake the current one, so new connections get the new certificate and open ones are untouched.
    `reload_all` does that for every set in the process (each protocol's, built from the same files).
    """

    def __init__(
        self,
        certificates: Mapping[str, tuple[Path, Path]],
        configure: Callable[[ssl.SSLContext], object] | None = None,
    ) -> None:
        self._configure = configure
        self._alpn: list[str] | None = None
        self.by_domain: dict[str, ssl.SSLContext] = {}
        self.default: ssl.SSLContext | None = None
        self._install(certificates)
        _ALL_SNI_SETS.add(self)

    def _install(self, certificates: Mapping[str, tuple[Path, Path]]) -> None:
        by_domain: dict[str, ssl.SSLContext] = {}
        for name, (cert, key) in certificates.items():
            ctx = harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
            ctx.load_cert_chain(str(cert), str(key))
            if self._configure is not None:
                self._configure(ctx)
            if self._alpn:
                ctx.set_alpn_protocols(self._alpn)
            by_domain[name.lower()] = ctx
        default = next(iter(by_domain.values()), None)
        if default is not None:
            default.sni_callback = self._select
        self.by_domain = by_domain
        if self.default is None:
            self.default = default
        self._current_default = default

    def set_alpn(self, alpn: list[str]) -> None:
        self._alpn = list(alpn)
        for ctx in self.by_domain.values():
            ctx.set_alpn_protocols(self._alpn)

    def reload(self, certificates: Mapping[str, tuple[Path, Path]]) -> None:
        """Serve `certificates` to new handshakes from now on (raises, changing nothing, on a bad file)."""
        self._install(certificates)

    @staticmethod
    def reload_all(certificates: Mapping[str, tuple[Path, Path]]) -> int:
        """Reload every SNI set in this process; returns how many there were."""
        sets = list(_ALL_SNI_SETS)
        for contexts in sets:
            contexts.reload(certificates)
        return len(sets)

    def _select(self, sslobj: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        if _ALPN_CHALLENGES and server_name:
            challenge = _ALPN_CHALLENGES.get(server_name.lower().rstrip("."))
            if challenge is not None:
                sslobj.context = challenge
                return
        ctx = None
        if server_name:
            name = server_name.lower().rstrip(".")
            # A name under a hosted domain (conference., upload., autoconfig., mta-sts.) is served
            # with that domain's certificate, which covers them ([acme] names).
            ctx = self.by_domain.get(name) or self.by_domain.get(name.partition(".")[2])
        if ctx is None:
            ctx = self._current_default
        if ctx is not None and sslobj.context is not ctx:
            sslobj.context = ctx


# ACME TLS-ALPN-01 (RFC 8737): while a name is being validated, handshakes for it get the validation
# certificate, which offers only the "acme-tls/1" protocol (a normal client's handshake then fails for
# those few seconds, as with every TLS-ALPN-01 responder that cannot see ALPN before choosing).
_ALPN_CHALLENGES: dict[str, ssl.SSLContext] = {}
ACME_TLS_ALPN = "acme-tls/1"


def set_alpn_challenge(name: str, cert_pem: bytes, key_pem: bytes) -> None:
    import tempfile

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 8737 §4
    with tempfile.TemporaryDirectory() as folder:
        cert, key = Path(folder) / "c.pem", Path(folder) / "k.pem"
        cert.write_bytes(cert_pem)
        key.write_bytes(key_pem)
        ctx.load_cert_chain(str(cert), str(key))
    ctx.set_alpn_protocols([ACME_TLS_ALPN])
    _ALPN_CHALLENGES[name.lower()] = ctx


def clear_alpn_challenge(name: str) -> None:
    _ALPN_CHALLENGES.pop(name.lower(), None)


# Every SNI set alive in the process, so a reload reaches each protocol's without it registering.
_ALL_SNI_SETS: weakref.WeakSet[SniServerContexts] = weakref.WeakSet()


class TLSContexts:
    """Server and client SSL contexts for all hosted domains."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.certificates = {
            name: (domain.cert, domain.key)
            for name, domain in config.domains.items()
            if domain.cert is not None and domain.key is not None
        }
        self._server = SniServerContexts(self.certificates)
        self._cert_der = self._ders(self.certificates)

    @staticmethod
    def _ders(certificates: Mapping[str, tuple[Path, Path]]) -> dict[str, bytes]:
        return {
            name: x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(serialization.Encoding.DER)
            for name, (cert, _key) in certificates.items()
        }

    def reload(self, config: Config) -> None:
        """Take certificates from `config` for new handshakes in every protocol; open connections keep theirs."""
        certificates = {
            name: (domain.cert, domain.key)
            for name, domain in config.domains.items()
            if domain.cert is not None and domain.key is not None
        }
        ders = self._ders(certificates)
        SniServerContexts.reload_all(certificates)
        self.config, self.certificates, self._cert_der = config, certificates, ders

    @property
    def available(self) -> bool:
        return self._server.default is not None

    def server_context(self, alpn: list[str] | None = None) -> ssl.SSLContext:
        if self._server.default is None:
            raise RuntimeError("no hosted domain has a certificate; TLS cannot be offered")
        if alpn:
            self._server.set_alpn(alpn)
        return self._server.default

    def has_certificate(self, domain: str) -> bool:
        return domain.lower() in self._server.by_domain

    def certificate_der(self, domain: str) -> bytes | None:
        return self._cert_der.get(domain.lower())

    def client_context(self, verify: bool = True, cafile: Path | None = None, *, domain: str | None = None) -> ssl.SSLContext:
        """A client context. `domain` presents that hosted domain's certificate (s2s, SASL EXTERNAL)."""
        ctx = harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
        if verify:
            ca = cafile or self.config.tls.ca_file
            if ca is not None:
                ctx.load_verify_locations(cafile=str(ca))
            else:
                ctx.load_default_certs()
            # Name checks are done by the protocol (RFC 6125 DNS-ID/SRV-ID/xmppAddr), not by OpenSSL.
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_REQUIRED
        else:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if domain is not None:
            conf = self.config.domain(domain)
            if conf is not None and conf.cert is not None and conf.key is not None:
                ctx.load_cert_chain(str(conf.cert), str(conf.key))
        return ctx


def generate_self_signed(domain: str, cert_path: Path, key_path: Path, *, days: int = 825) -> None:
    """Write a self-signed P-256 certificate for `domain` (and `*.domain`) with an xmppAddr-free DNS-ID."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
    now = datetime.datetime.now(datetime.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName(domain), x509.DNSName(f"*.{domain}")]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))  # CA/B forum's old 825-day cap
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path.parent.mkdir(parents=True, exist_ok=True)
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


# --- channel binding -----------------------------------------------------------------------------
# CPython's ssl module exposes only tls-unique, which RFC 9266 retires for TLS 1.3. tls-exporter needs
# SSL_export_keying_material, which we reach through the SSL* pointer that _ssl._SSLSocket holds right
# after its PyObject header and Socket pointer (Modules/_ssl.c, PySSLSocket). If that ever fails, the
# exporter binding is simply not offered.
_libssl: ctypes.CDLL | None = None


def _load_libssl() -> ctypes.CDLL | None:
    global _libssl
    if _libssl is None:
        import _ssl

        try:
            lib = ctypes.CDLL(_ssl.__file__)
            fn = lib.SSL_export_keying_material
        except (OSError, AttributeError):
            try:
                lib = ctypes.CDLL("libssl.so.3")
                fn = lib.SSL_export_keying_material
            except (OSError, AttributeError):
                return None
        fn.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t,
                       ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int]
        fn.restype = ctypes.c_int
        _libssl = lib
    return _libssl


def tls_exporter(sslobj: ssl.SSLObject | ssl.SSLSocket) -> bytes | None:
    """RFC 9266: 32 bytes of keying material with label "EXPORTER-Channel-Binding" and empty context."""
    lib = _load_libssl()
    if lib is None:
        return None
    inner = getattr(sslobj, "_sslobj", None)
    if inner is None:
        return None
    try:
        pointer = ctypes.c_void_p.from_address(id(inner) + _SSL_POINTER_OFFSET).value
    except (ValueError, OSError):
        return None
    if not pointer:
        return None
    out = ctypes.create_string_buffer(32)
    label = b"EXPORTER-Channel-Binding"
    ok = lib.SSL_export_keying_material(pointer, out, 32, label, len(label), b"", 0, 1)
    return out.raw if ok == 1 else None


def _ssl_pointer(sslobj: ssl.SSLObject | ssl.SSLSocket) -> int | None:
    inner = getattr(sslobj, "_sslobj", None)
    if inner is None:
        return None
    try:
        pointer = ctypes.c_void_p.from_address(id(inner) + _SSL_POINTER_OFFSET).value
    except (ValueError, OSError):
        return None
    return pointer or None


def local_certificate_der(sslobj: ssl.SSLObject | ssl.SSLSocket) -> bytes | None:
    """The DER certificate this side presented on this connection (SSL_get_certificate): after SNI,
    the chosen domain's, so tls-server-end-point (RFC 5929 §4) matches what the client saw."""
    lib = _load_libssl()
    pointer = _ssl_pointer(sslobj)
    if lib is None or pointer is None:
        return None
    try:
        get_certificate = lib.SSL_get_certificate
        i2d = lib.i2d_X509
    except AttributeError:
        return None
    get_certificate.argtypes = [ctypes.c_void_p]
    get_certificate.restype = ctypes.c_void_p
    i2d.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_char_p)]
    i2d.restype = ctypes.c_int
    x509_pointer = get_certificate(pointer)
    if not x509_pointer:
        return None
    length = i2d(x509_pointer, None)
    if length <= 0:
        return None
    out = ctypes.create_string_buffer(length)
    cursor = ctypes.c_char_p(ctypes.addressof(out))  # i2d_X509 advances the pointer it is given
    if i2d(x509_pointer, ctypes.byref(cursor)) != length:
        return None
    return out.raw


# PyObject_HEAD (refcount + type pointer) then `PyObject *Socket`.
_SSL_POINTER_OFFSET = ctypes.sizeof(ctypes.c_ssize_t) + 2 * ctypes.sizeof(ctypes.c_void_p)


def channel_bindings(sslobj: ssl.SSLObject | ssl.SSLSocket | None, certificate_der: bytes | None) -> dict[str, bytes]:
    """The channel-binding types this connection can offer, with their data."""
    from peerage.identity.scram import tls_server_end_point

    bindings: dict[str, bytes] = {}
    if sslobj is None:
        return bindings
    if sslobj.version() == "TLSv1.3" or sslobj.version() == "TLSv1.2":
        exporter = tls_exporter(sslobj)
        if exporter is not None and sslobj.version() == "TLSv1.3":
            # RFC 9266 §3: tls-exporter is only safe on TLS 1.2 with extended master secret; we offer it
            # on TLS 1.3 only, where it always is.
            bindings["tls-exporter"] = exporter
    if certificate_der is not None:
        bindings["tls-server-end-point"] = tls_server_end_point(certificate_der)
    return bindings
