"""TLS contexts: TLS 1.2 minimum, SNI choosing the hosted domain's certificate, tls-exporter binding."""

import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509

from peerage.config import config_from_dict
from peerage.net.tls import TLSContexts, generate_self_signed, tls_exporter
from tests.harness import wait_for


@pytest.fixture
def contexts(tmp_path: Path) -> TLSContexts:
    domains = []
    for name in ("a.test", "b.test"):
        generate_self_signed(name, tmp_path / f"{name}.crt", tmp_path / f"{name}.key")
        domains.append({"name": name, "cert": f"{name}.crt", "key": f"{name}.key"})
    return TLSContexts(config_from_dict({"domain": domains}, tmp_path / "peerage.toml"))


def _serve_once(ctx: ssl.SSLContext, result: dict[str, object]) -> tuple[str, int]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def run() -> None:
        conn, _ = listener.accept()
        try:
            with ctx.wrap_socket(conn, server_side=True) as tls:
                result["exporter"] = tls_exporter(tls)
                tls.recv(1)
        except (ssl.SSLError, OSError) as exc:
            result["error"] = exc
        finally:
            listener.close()

    threading.Thread(target=run, daemon=True).start()
    return listener.getsockname()


def _client(address: tuple[str, int], server_name: str, **versions: ssl.TLSVersion) -> ssl.SSLSocket:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    for attr, value in versions.items():
        setattr(ctx, attr, value)
    return ctx.wrap_socket(socket.create_connection(address, timeout=5), server_hostname=server_name)


@pytest.mark.parametrize("name", ["a.test", "b.test"])
def test_sni_selects_domain_certificate(contexts: TLSContexts, name: str) -> None:
    result: dict[str, object] = {}
    address = _serve_once(contexts.server_context(), result)
    with _client(address, name) as tls:
        cert = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert name in sans.get_values_for_type(x509.DNSName)
        tls.send(b"x")


def test_refuses_tls_1_1(contexts: TLSContexts) -> None:
    result: dict[str, object] = {}
    address = _serve_once(contexts.server_context(), result)
    with pytest.raises((ssl.SSLError, OSError)):
        _client(address, "a.test", minimum_version=ssl.TLSVersion.TLSv1, maximum_version=ssl.TLSVersion.TLSv1_1)


def test_tls_exporter_agrees_on_both_ends(contexts: TLSContexts) -> None:
    result: dict[str, object] = {}
    address = _serve_once(contexts.server_context(), result)
    with _client(address, "a.test") as tls:
        client_value = tls_exporter(tls)
        tls.send(b"x")
    wait_for(lambda: "exporter" in result, 20, "the server's exporter value")
    assert client_value is not None and len(client_value) == 32
    assert result["exporter"] == client_value
