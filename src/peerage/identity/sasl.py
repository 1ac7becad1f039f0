"""One SASL server for every protocol (RFC 4422), sans-I/O.

This module is in charge of which mechanisms a connection offers and of stepping one exchange on raw
bytes: PLAIN (RFC 4616), LOGIN (draft-murchison-sasl-login, SMTP only, for old clients), SCRAM-SHA-1
and SCRAM-SHA-256 with their -PLUS forms (RFC 5802, RFC 7677; channel bindings ``tls-exporter``
RFC 9266 and ``tls-server-end-point`` RFC 5929) through ``peerage.identity.scram``, and EXTERNAL
(RFC 4422 appendix A) as a hook the protocol answers. It also holds the one rule that maps a login
name to an account (`login_account`). XMPP, IMAP and SMTP wrap this engine in their framing (XML
elements, ``+`` continuations, ``334`` replies); none of them parses SASL itself.

Each call returns a step: what the caller must do next (look a SCRAM credential up, check a password,
check a client certificate, send a challenge, succeed, or fail). It never touches sockets, the clock
or the database.

Shared API (used by every protocol; see docs/architecture.md, "Identity"):

    server = SaslServer(mechanisms=offered_mechanisms(...), login=LoginNames(default, domains),
                        channel_bindings=channel_bindings_for(sslobj), advertised_plus=...)
    step = server.start("SCRAM-SHA-256", initial_or_None)
    while True:
        Challenge       -> send step.data, then step = server.respond(client_bytes) (or abort())
        NeedCredential  -> step = server.credential_found(await accounts.scram(step.account, step.hash_name))
        NeedPassword    -> step = server.password_checked(await accounts.verify_password(...))
        NeedExternal    -> step = server.external_checked(account_or_None)
        Success/Failure -> done (Success.data, when set, is SCRAM's server-final message)
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from peerage.identity.address import AddressError, normalize_domain, parse_address
from peerage.identity.scram import ScramCredential, ScramError, ScramServer

SCRAM_MECHANISMS = {
    "SCRAM-SHA-256-PLUS": ("SHA-256", True),
    "SCRAM-SHA-1-PLUS": ("SHA-1", True),
    "SCRAM-SHA-256": ("SHA-256", False),
    "SCRAM-SHA-1": ("SHA-1", False),
}
#: Every mechanism this engine can step, strongest first (RFC 8600 §6: -PLUS before plain SCRAM,
#: SHA-256 before SHA-1).
ALL_MECHANISMS = ("SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS", "SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN",
                  "LOGIN", "EXTERNAL")
#: Largest decoded client message. SCRAM messages are < 4 KiB (peerage.identity.scram.MAX_SCRAM_MESSAGE);
#: PLAIN carries two names of at most 320 octets and a password of at most 1024 (MAX_PASSWORD_BYTES).
#: Cyrus SASL caps a client step at 8 KiB (SASL_MAXRECVBUF is 64 KiB for the whole layer).
MAX_CLIENT_MESSAGE = 8192
#: Failed exchanges on one connection before the protocol closes it. RFC 6120 §6.4.5 asks for at
#: least 2 retries; Dovecot closes an IMAP connection after 3 failed logins (the
#: "mail_max_userip_connections" family aside), ejabberd after 5.
MAX_FAILURES_PER_CONNECTION = 3


# --- the one login-name rule ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoginNames:
    """How this connection maps login names to accounts.

    ``default_domain`` is the domain the client reached: the XMPP stream's ``to``, the SNI name of the
    TLS connection, the SIP realm, or the first hosted domain. ``domains`` are the hosted domains a
    name with ``@`` may name (XMPP restricts it to the stream's domain).
    """

    default_domain: str | None
    domains: Collection[str]

    def account(self, name: str) -> str | None:
        return login_account(name, default_domain=self.default_domain, domains=self.domains)


def login_account(name: str, *, default_domain: str | None, domains: Collection[str]) -> str | None:
    """The canonical account for a login name, or None if it names none we host.

    ``alice`` means ``alice@<default_domain>``; ``alice@example.org`` means itself when
    ``example.org`` is hosted. Case and width are folded as addresses are (RFC 8265
    UsernameCaseMapped), so ``Alice`` and ``alice`` are one account in every protocol.
    """
    text = name.strip()
    if not text or len(text) > 320:
        return None
    try:
        if "@" in text:
            address = parse_address(text)
            hosted = {normalize_domain(d) for d in domains}
            return str(address) if address.domain in hosted else None
        if not default_domain:
            return None
        return str(parse_address(f"{text}@{default_domain}"))
    except AddressError:
        return None


# --- steps --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Challenge:
    """Send ``data`` to the client and call `respond` with its answer."""

    data: bytes


@dataclass(slots=True)
class NeedCredential:
    """Look the SCRAM credential of ``account`` up (None if no account: pass None on) and call
    `credential_found`."""

    account: str | None
    username: str
    hash_name: str


@dataclass(slots=True)
class NeedPassword:
    """Check ``password`` for ``account`` and call `password_checked` (``account`` None: call it with
    False, after spending comparable time)."""

    account: str | None
    username: str
    password: str


@dataclass(slots=True)
class NeedExternal:
    """Decide from the connection's client certificate which account it proves, for ``authzid`` (may
    be empty), and call `external_checked`."""

    authzid: str


@dataclass(slots=True)
class Success:
    """Authenticated as ``account``. ``data`` is additional data for the client (SCRAM server-final)."""

    account: str
    mechanism: str
    data: bytes | None = None


@dataclass(slots=True)
class Failure:
    """The exchange failed. ``condition`` uses RFC 6120 §6.5's names (every protocol maps them);
    ``account`` is set when the client named one (for the throttle and the failure log)."""

    condition: str
    text: str
    username: str | None = None
    account: str | None = None


Step = Challenge | NeedCredential | NeedPassword | NeedExternal | Success | Failure


def offered_mechanisms(
    *,
    secure: bool,
    channel_bindings: Mapping[str, bytes],
    advertise_plus: bool = True,
    login: bool = False,
    external: bool = False,
) -> list[str]:
    """Mechanisms to advertise, strongest first.

    PLAIN and LOGIN only on a protected connection (RFC 4616 §6, RFC 4954 §4). -PLUS only when this
    connection has a channel binding and ``advertise_plus``: IMAP and SMTP leave it out by default
    because clients such as neomutt (gsasl) pick it without being able to bind (see
    docs/architecture.md, "Channel binding"); an unadvertised -PLUS is still accepted.
    """
    names: list[str] = []
    if secure and channel_bindings and advertise_plus:
        names += ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS"]
    names += ["SCRAM-SHA-256", "SCRAM-SHA-1"]
    if secure:
        names.append("PLAIN")
        if login:
            names.append("LOGIN")
    if external:
        names.append("EXTERNAL")
    return names


def acceptable_mechanisms(offered: Sequence[str], *, secure: bool, channel_bindings: Mapping[str, bytes]) -> set[str]:
    """What a client may start: the offered ones, plus -PLUS when a binding exists even if unadvertised
    (RFC 4422 §3.1 lets a client try a mechanism the server did not list)."""
    names = set(offered)
    if secure and channel_bindings:
        names |= {"SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS"}
    return names


class SaslServer:
    """One SASL exchange at a time on one connection; reusable after a failure."""

    def __init__(
        self,
        *,
        mechanisms: Sequence[str],
        login: LoginNames,
        channel_bindings: Mapping[str, bytes],
        secure: bool,
        advertised_plus: bool | None = None,
    ) -> None:
        self.offered = list(mechanisms)
        self.login = login
        self.channel_bindings = dict(channel_bindings)
        self.secure = secure
        # RFC 5802 §6 downgrade check: a client that answers "y" (it could bind, and thinks we cannot)
        # is only a downgrade if we really advertised -PLUS.
        self.advertised_plus = (any(m.endswith("-PLUS") for m in self.offered) if advertised_plus is None
                                else advertised_plus)
        self._acceptable = acceptable_mechanisms(self.offered, secure=secure, channel_bindings=self.channel_bindings)
        self.mechanism: str | None = None
        self.username: str | None = None
        self.account: str | None = None
        self._scram: ScramServer | None = None
        self._stage = "idle"

    @property
    def matched_alternate(self) -> bytes | None:
        """After a SCRAM success: the stored key of the app password or login token the proof matched
        (None: the account's own password, or not SCRAM)."""
        return self._scram.matched_alternate if self._scram is not None else None

    # --- client input ---------------------------------------------------------------------------
    def start(self, mechanism: str, initial: bytes | None) -> Step:
        """Begin ``mechanism``; ``initial`` is the initial response (None when the client sent none,
        b"" when it sent an empty one)."""
        mechanism = mechanism.upper()
        if self._stage != "idle":
            return self._fail("malformed-request", "an exchange is already in progress")
        self.mechanism = None
        self.username = self.account = None
        if mechanism not in self._acceptable:
            return self._fail("invalid-mechanism", f"{mechanism or 'no mechanism'} is not offered")
        if initial is not None and len(initial) > MAX_CLIENT_MESSAGE:
            return self._fail("malformed-request", "the message is too long")
        self.mechanism = mechanism
        if mechanism in ("PLAIN", "LOGIN") and not self.secure:
            return self._fail("encryption-required", f"{mechanism} needs a TLS-protected connection")
        if mechanism == "PLAIN":
            if initial is None:
                self._stage = "plain"
                return Challenge(b"")
            return self._plain(initial)
        if mechanism == "LOGIN":
            if initial:
                return self._login_user(initial)
            self._stage = "login-user"
            return Challenge(b"Username:")
        if mechanism == "EXTERNAL":
            if initial is None:
                self._stage = "external"
                return Challenge(b"")
            return self._external(initial)
        hash_name, plus = SCRAM_MECHANISMS[mechanism]
        self._scram = ScramServer(hash_name, plus=plus, channel_bindings=self.channel_bindings,
                                  offered_plus=self.advertised_plus)
        if not initial:
            self._stage = "scram-first"
            return Challenge(b"")
        return self._scram_first(initial)

    def respond(self, data: bytes) -> Step:
        """The client's answer to the last Challenge."""
        if len(data) > MAX_CLIENT_MESSAGE:
            return self._fail("malformed-request", "the message is too long")
        stage = self._stage
        if stage == "plain":
            return self._plain(data)
        if stage == "login-user":
            return self._login_user(data)
        if stage == "login-password":
            return self._login_password(data)
        if stage == "external":
            return self._external(data)
        if stage == "scram-first":
            return self._scram_first(data)
        if stage == "scram-final" and self._scram is not None:
            try:
                server_final = self._scram.client_final(data)
            except ScramError as error:
                return self._fail(error.condition, str(error))
            if self._scram.authzid and self.login.account(self._scram.authzid) != self.account:
                return self._fail("invalid-authzid", "authorization identity differs from the account")
            return self._succeed(server_final)
        return self._fail("malformed-request", "unexpected response")

    def abort(self) -> Step:
        self._stage = "idle"
        self._scram = None
        return Failure("aborted", "the client aborted the exchange", self.username, self.account)

    # --- results of the caller's lookups ----------------------------------------------------------
    def credential_found(self, credential: ScramCredential | None) -> Step:
        assert self._scram is not None and self._stage == "scram-lookup"
        server_first = self._scram.server_first(credential)
        self._stage = "scram-final"
        return Challenge(server_first)

    def password_checked(self, ok: bool) -> Step:
        assert self._stage == "password-check"
        if not ok or self.account is None:
            return self._fail("not-authorized", "invalid username or password")
        return self._succeed(None)

    def external_checked(self, account: str | None) -> Step:
        assert self._stage == "external-check"
        if account is None:
            return self._fail("not-authorized", "the client certificate proves no account")
        self.account = account
        return self._succeed(None)

    # --- internals ----------------------------------------------------------------------------------
    def _succeed(self, data: bytes | None) -> Step:
        self._stage = "done"
        assert self.account is not None and self.mechanism is not None
        return Success(self.account, self.mechanism, data)

    def _plain(self, payload: bytes) -> Step:
        parts = payload.split(b"\0")
        if len(parts) != 3:
            return self._fail("malformed-request", "PLAIN message must be authzid NUL authcid NUL passwd")
        try:
            authzid, authcid, password = (p.decode("utf-8") for p in parts)
        except UnicodeDecodeError:
            return self._fail("malformed-request", "PLAIN message is not UTF-8")
        if not authcid or not password:
            return self._fail("malformed-request", "empty username or password")
        return self._password(authcid, password, authzid)

    def _login_user(self, data: bytes) -> Step:
        try:
            self.username = data.decode("utf-8")
        except UnicodeDecodeError:
            return self._fail("malformed-request", "the user name is not UTF-8")
        self._stage = "login-password"
        return Challenge(b"Password:")

    def _login_password(self, data: bytes) -> Step:
        try:
            password = data.decode("utf-8")
        except UnicodeDecodeError:
            return self._fail("malformed-request", "the password is not UTF-8")
        assert self.username is not None
        if not self.username or not password:
            return self._fail("malformed-request", "empty username or password")
        return self._password(self.username, password, "")

    def _password(self, username: str, password: str, authzid: str) -> Step:
        self.username = username
        self.account = self.login.account(username)
        if authzid and self.login.account(authzid) != self.account:
            return self._fail("invalid-authzid", "authorization identity differs from the account")
        self._stage = "password-check"
        return NeedPassword(self.account, username, password)

    def _external(self, data: bytes) -> Step:
        try:
            authzid = data.decode("utf-8")
        except UnicodeDecodeError:
            return self._fail("malformed-request", "the authorization identity is not UTF-8")
        self._stage = "external-check"
        return NeedExternal(authzid)

    def _scram_first(self, payload: bytes) -> Step:
        assert self._scram is not None and self.mechanism is not None
        try:
            username = self._scram.client_first(payload)
        except ScramError as error:
            return self._fail(error.condition, str(error))
        self.username = username
        self.account = self.login.account(username)
        self._stage = "scram-lookup"
        return NeedCredential(self.account, username, SCRAM_MECHANISMS[self.mechanism][0])

    def _fail(self, condition: str, text: str) -> Failure:
        self._stage = "idle"
        self._scram = None
        return Failure(condition, text, self.username, self.account)


def channel_bindings_for(sslobj: object | None) -> dict[str, bytes]:
    """The channel bindings of the TLS connection actually used: tls-exporter (TLS 1.3) and
    tls-server-end-point from the certificate this connection presented (the one SNI chose)."""
    from peerage.net.tls import channel_bindings, local_certificate_der

    if sslobj is None:
        return {}
    return channel_bindings(sslobj, local_certificate_der(sslobj))  # type: ignore[arg-type]
