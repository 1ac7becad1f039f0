"""The one SASL server (peerage.identity.sasl), sans-I/O: mechanisms, the login-name rule, channel
binding and its downgrade check, EXTERNAL's hook; and the throttle's policy on a fake clock."""

from __future__ import annotations

import base64
import os

import pytest

from peerage.config import LimitsConfig
from peerage.identity import sasl
from peerage.identity.address import parse_address
from peerage.identity.credentials import derive_credentials
from peerage.identity.scram import scram_client_proof
from peerage.net.limits import AUTH_FAILURE_DELAY, AUTH_FAILURE_MAX_DELAY, AuthThrottle

PASSWORD = "correct horse battery staple"
CREDS = derive_credentials(parse_address("alice@example.org"), PASSWORD)
LOGIN = sasl.LoginNames("example.org", ["example.org", "example.net"])
BINDINGS = {"tls-exporter": b"E" * 32, "tls-server-end-point": b"S" * 32}


def server(*, secure: bool = True, bindings: dict[str, bytes] | None = None, advertise_plus: bool = True,
           login: bool = False, external: bool = False) -> sasl.SaslServer:
    bindings = BINDINGS if bindings is None else bindings
    offered = sasl.offered_mechanisms(secure=secure, channel_bindings=bindings, advertise_plus=advertise_plus,
                                      login=login, external=external)
    return sasl.SaslServer(mechanisms=offered, login=LOGIN, channel_bindings=bindings, secure=secure)


def scram(srv: sasl.SaslServer, mechanism: str, user: str, password: str, gs2: str = "n,,",
          cb_data: bytes = b"") -> sasl.Step:
    hash_name = "SHA-256" if "SHA-256" in mechanism else "SHA-1"
    nonce = base64.b64encode(os.urandom(18)).decode()
    bare = f"n={user},r={nonce}"
    step = srv.start(mechanism, (gs2 + bare).encode())
    if not isinstance(step, sasl.NeedCredential):
        return step
    assert step.hash_name == hash_name
    step = srv.credential_found(CREDS.scram[hash_name] if step.account == "alice@example.org" else None)
    assert isinstance(step, sasl.Challenge)
    server_first = step.data.decode()
    attrs = dict(part.split("=", 1) for part in server_first.split(","))
    without_proof = f"c={base64.b64encode(gs2.encode() + cb_data).decode()},r={attrs['r']}"
    auth_message = f"{bare},{server_first},{without_proof}".encode()
    proof, signature = scram_client_proof(hash_name, password, base64.b64decode(attrs["s"]), int(attrs["i"]),
                                          auth_message)
    final = srv.respond(f"{without_proof},p={base64.b64encode(proof).decode()}".encode())
    if isinstance(final, sasl.Success):
        assert final.data == b"v=" + base64.b64encode(signature)
    return final


@pytest.mark.parametrize("name, account", [
    ("alice", "alice@example.org"), ("Alice", "alice@example.org"), ("alice@example.org", "alice@example.org"),
    ("ALICE@Example.ORG", "alice@example.org"), ("bob@example.net", "bob@example.net"),
    ("alice@elsewhere.example", None), ("", None), ("a b", None),
])
def test_one_login_name_rule(name: str, account: str | None) -> None:
    assert LOGIN.account(name) == account


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-1", "SCRAM-SHA-256"])
@pytest.mark.parametrize("user", ["alice", "alice@example.org"])
def test_scram_both_hashes_both_name_forms(mechanism: str, user: str) -> None:
    ok = scram(server(), mechanism, user, PASSWORD)
    assert isinstance(ok, sasl.Success) and ok.account == "alice@example.org" and ok.mechanism == mechanism
    bad = scram(server(), mechanism, user, "wrong")
    assert isinstance(bad, sasl.Failure) and bad.condition == "not-authorized" and bad.account == "alice@example.org"


@pytest.mark.parametrize("binding", ["tls-exporter", "tls-server-end-point"])
def test_scram_plus_binds_to_the_connection(binding: str) -> None:
    ok = scram(server(), "SCRAM-SHA-256-PLUS", "alice", PASSWORD, f"p={binding},,", BINDINGS[binding])
    assert isinstance(ok, sasl.Success)
    mitm = scram(server(), "SCRAM-SHA-256-PLUS", "alice", PASSWORD, f"p={binding},,", b"X" * 32)
    assert isinstance(mitm, sasl.Failure) and mitm.condition == "not-authorized"


def test_unadvertised_plus_is_accepted_and_y_is_no_downgrade() -> None:
    # IMAP/SMTP by default: -PLUS not listed (neomutt), still usable; "y" is then honest, not a downgrade.
    srv = server(advertise_plus=False)
    assert not any(m.endswith("-PLUS") for m in srv.offered)
    assert isinstance(scram(srv, "SCRAM-SHA-256-PLUS", "alice", PASSWORD, "p=tls-exporter,,", BINDINGS["tls-exporter"]),
                      sasl.Success)
    assert isinstance(scram(server(advertise_plus=False), "SCRAM-SHA-256", "alice", PASSWORD, "y,,"), sasl.Success)
    # Where -PLUS was listed, "y" means someone removed it on the way: refused (RFC 5802 §6).
    downgrade = scram(server(), "SCRAM-SHA-256", "alice", PASSWORD, "y,,")
    assert isinstance(downgrade, sasl.Failure)


def test_no_plus_without_a_binding() -> None:
    srv = server(bindings={})
    assert "SCRAM-SHA-256-PLUS" not in srv.offered
    step = srv.start("SCRAM-SHA-256-PLUS", b"p=tls-exporter,,n=alice,r=abc")
    assert isinstance(step, sasl.Failure) and step.condition == "invalid-mechanism"


def test_plain_and_login_need_tls_and_map_names() -> None:
    assert "PLAIN" not in server(secure=False).offered
    step = server(secure=False).start("PLAIN", b"\0alice\0pw")
    assert isinstance(step, sasl.Failure) and step.condition in ("invalid-mechanism", "encryption-required")
    srv = server()
    step = srv.start("PLAIN", b"\0alice@example.org\0" + PASSWORD.encode())
    assert isinstance(step, sasl.NeedPassword) and step.account == "alice@example.org"
    assert isinstance(srv.password_checked(True), sasl.Success)
    srv = server()
    step = srv.start("PLAIN", b"bob@example.org\0alice\0pw")
    assert isinstance(step, sasl.Failure) and step.condition == "invalid-authzid"
    srv = server(login=True)
    assert "LOGIN" in srv.offered
    step = srv.start("LOGIN", None)
    assert step == sasl.Challenge(b"Username:")
    assert srv.respond(b"alice") == sasl.Challenge(b"Password:")
    step = srv.respond(PASSWORD.encode())
    assert isinstance(step, sasl.NeedPassword) and step.account == "alice@example.org"
    failed = srv.password_checked(False)
    assert isinstance(failed, sasl.Failure) and failed.account == "alice@example.org"


def test_external_is_a_hook() -> None:
    srv = server(external=True)
    step = srv.start("EXTERNAL", b"")
    assert step == sasl.NeedExternal("")
    assert srv.external_checked("alice@example.org") == sasl.Success("alice@example.org", "EXTERNAL", None)
    srv = server(external=True)
    srv.start("EXTERNAL", None)
    assert isinstance(srv.respond(b""), sasl.NeedExternal)
    assert isinstance(srv.external_checked(None), sasl.Failure)


def test_abort_and_oversized_messages() -> None:
    srv = server()
    assert isinstance(srv.start("SCRAM-SHA-256", None), sasl.Challenge)
    aborted = srv.abort()
    assert isinstance(aborted, sasl.Failure) and aborted.condition == "aborted"
    assert isinstance(srv.start("PLAIN", b"x" * (sasl.MAX_CLIENT_MESSAGE + 1)), sasl.Failure)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_throttle_policy() -> None:
    clock = Clock()
    throttle = AuthThrottle(LimitsConfig(auth_failures_per_ip=10, auth_failures_per_account=3,
                                         auth_failure_window=600), clock=clock)
    delays = []
    for _ in range(6):
        delays.append(throttle.check("198.51.100.1", "alice@x"))
        throttle.failure("198.51.100.1", "alice@x")
    # Free, then doubling from AUTH_FAILURE_DELAY, then refused for that pair only.
    assert delays == [0.0, 0.0, 0.0, AUTH_FAILURE_DELAY, 2 * AUTH_FAILURE_DELAY, 4 * AUTH_FAILURE_DELAY]
    assert throttle.check("198.51.100.1", "alice@x") is None
    assert throttle.check("198.51.100.2", "alice@x") == 0.0  # the clean address: no delay
    assert throttle.check("198.51.100.1", "bob@x") == 0.0  # the address, other account: below per-IP
    # The per-address rule across accounts: at per_ip delayed, at twice refused.
    for n in range(14):
        throttle.failure("198.51.100.1", f"user{n}@x")
    assert throttle.check("198.51.100.1", "bob@x") is None
    # Growing delays are capped.
    assert throttle._growing(40, 3) == AUTH_FAILURE_MAX_DELAY
    # A success clears the pair; the window forgets everything.
    throttle.success("198.51.100.1", "alice@x")
    clock.now += 601
    assert throttle.check("198.51.100.1", "alice@x") == 0.0


def test_digest_challenge_order_per_user_agent() -> None:
    from peerage.sip.digest import DigestAuthenticator

    auth = DigestAuthenticator(sha256_first=("Linphone",))

    def order(user_agent: str | None) -> list[str]:
        return [c.split("algorithm=")[1].split(",")[0] for c in auth.challenges("example.org", False, user_agent)]

    assert order(None) == ["MD5", "SHA-256"]
    assert order("sipsak 0.9.8.1") == ["MD5", "SHA-256"]
    assert order("baresip v1.0.0 (x86_64/linux)") == ["MD5"]
    assert order("Linphone/5.2") == ["SHA-256", "MD5"]
