"""The sans-I/O SCRAM server against the RFC 7677 example exchange and a real client computation."""

import base64

import pytest

from peerage.identity.credentials import scram_credential
from peerage.identity.scram import ScramError, ScramServer, scram_client_proof

SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")


def _exchange(server: ScramServer, password: str, gs2: str = "n,,", cb_data: bytes = b"",
              user: str = "user") -> bytes:
    client_first_bare = f"n={user},r=rOprNGfwEbeRWgbNEkqO"
    server.client_first(f"{gs2}{client_first_bare}".encode())
    server_first = server.server_first(scram_credential("SHA-256", "pencil", SALT, 4096))
    attrs = dict(item.split("=", 1) for item in server_first.decode().split(","))
    cbind = base64.b64encode(gs2.encode() + cb_data).decode()
    without_proof = f"c={cbind},r={attrs['r']}"
    auth_message = f"{client_first_bare},{server_first.decode()},{without_proof}".encode()
    proof, expected = scram_client_proof("SHA-256", password, base64.b64decode(attrs["s"]), int(attrs["i"]),
                                         auth_message)
    final = server.client_final(f"{without_proof},p={base64.b64encode(proof).decode()}".encode())
    assert final == b"v=" + base64.b64encode(expected)
    return final


def test_successful_exchange() -> None:
    server = ScramServer("SHA-256", plus=False, channel_bindings={}, offered_plus=False)
    _exchange(server, "pencil")
    assert server.username == "user"


def test_wrong_password() -> None:
    server = ScramServer("SHA-256", plus=False, channel_bindings={}, offered_plus=False)
    with pytest.raises(ScramError) as err:
        _exchange(server, "pen")
    assert err.value.condition == "not-authorized"


def test_channel_binding_plus() -> None:
    binding = b"\x01" * 32
    server = ScramServer("SHA-256", plus=True, channel_bindings={"tls-exporter": binding}, offered_plus=True)
    _exchange(server, "pencil", gs2="p=tls-exporter,,", cb_data=binding)
    assert server.channel_binding == "tls-exporter"


def test_channel_binding_mismatch() -> None:
    server = ScramServer("SHA-256", plus=True, channel_bindings={"tls-exporter": b"\x01" * 32}, offered_plus=True)
    with pytest.raises(ScramError, match="channel bindings"):
        _exchange(server, "pencil", gs2="p=tls-exporter,,", cb_data=b"\x02" * 32)


def test_downgrade_detected() -> None:
    server = ScramServer("SHA-256", plus=False, channel_bindings={"tls-exporter": b"x"}, offered_plus=True)
    with pytest.raises(ScramError) as err:
        server.client_first(b"y,,n=user,r=abc")
    assert err.value.server_error == "server-does-support-channel-binding"


def test_unknown_user_fails_like_wrong_password() -> None:
    server = ScramServer("SHA-256", plus=False, channel_bindings={}, offered_plus=False)
    server.client_first(b"n,,n=ghost,r=abc")
    first = server.server_first(None)
    assert b"s=" in first and b"i=" in first
    with pytest.raises(ScramError) as err:
        server.client_final(b"c=biws,r=" + first.split(b",")[0][2:] + b",p=" + base64.b64encode(b"x" * 32))
    assert err.value.condition == "not-authorized"


@pytest.mark.parametrize("message", [b"", b"garbage", b"q,,n=u,r=x", b"n,,r=x", b"n,,n=a=ZZb,r=x", b"n,x,n=u,r=x",
                                     b"n,,m=ext,n=u,r=x", b"\xff\xfe"])
def test_malformed_client_first(message: bytes) -> None:
    server = ScramServer("SHA-256", plus=False, channel_bindings={}, offered_plus=False)
    with pytest.raises(ScramError):
        server.client_first(message)
