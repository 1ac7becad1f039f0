"""The account service: the one place every protocol asks about users.

This module is in charge of creating, changing and deleting accounts, and of answering the questions
protocols ask during authentication and routing: does this address exist, is this domain ours, what is
the SCRAM credential or SIP HA1 for this user, is this PLAIN/web password right. Protocols never store
users of their own.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import (
    Integer,
    LargeBinary,
    bindparam,
    cast,
    delete,
    insert,
    literal,
    null,
    select,
    union_all,
    update,
)

from peerage.identity.address import Address, AddressError, normalize_domain, parse_address
from peerage.identity.credential_events import DELETED, RESET, WEB_SESSION, CredentialEvents
from peerage.identity.credentials import (
    SIP_DIGEST_HASHES,
    Credentials,
    ScramCredential,
    derive_credentials,
    prepare_password,
    sip_ha1,
    verify_argon2,
)
from peerage.identity.sip_tokens import SipTokens
from peerage.identity.tables import app_passwords, login_tokens, sip_web_tokens
from peerage.identity.tokens import LoginTokens, looks_like_token
from peerage.store import Store
from peerage.store.schema import accounts, load_all_tables

log = logging.getLogger(__name__)



class AccountError(Exception):
    """An account operation cannot be done; the message says why."""


class VerificationCache:
    """Successful password verifications, so a client that logs in every few minutes (Thunderbird
    opens several IMAP connections, each logging in) does not pay an argon2id hash every time.

    Dovecot's auth cache (auth_cache_size, auth_cache_ttl) does the same. An entry is an HMAC, under a
    key that lives only in this process's memory, of (address, the stored argon2 hash, the password):
    no password or fast hash of one is kept, and a `user passwd` from any process changes the stored
    hash, so the old entry can no longer match. Bounded to ``size`` entries (least recently used go
    first), each kept ``ttl`` seconds.
    """

    def __init__(self, size: int, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.size = size
        self.ttl = ttl
        self._clock = clock
        self._key = os.urandom(32)
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()

    def _tag(self, address: str, stored: str, password: str) -> bytes:
        message = b"\0".join((address.encode(), stored.encode(), password.encode("utf-8", "surrogatepass")))
        return hmac.digest(self._key, message, hashlib.sha256)

    def hit(self, address: str, stored: str, password: str) -> bool:
        entry = self._entries.get(address)
        if entry is None:
            return False
        tag, expires = entry
        if expires < self._clock():
            del self._entries[address]
            return False
        if not hmac.compare_digest(tag, self._tag(address, stored, password)):
            return False
        self._entries.move_to_end(address)
        return True

    def remember(self, address: str, stored: str, password: str) -> None:
        if self.size <= 0:
            return
        self._entries[address] = (self._tag(address, stored, password), self._clock() + self.ttl)
        self._entries.move_to_end(address)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def forget(self, address: str) -> None:
        self._entries.pop(address, None)


class AccountService:
    def __init__(self, store: Store, domains: Iterable[str], *, cache_size: int = 10000,
                 cache_ttl: float = 3600.0, password_min_length: int | None = None) -> None:
        self.store = store
        self.domains = frozenset(normalize_domain(d) for d in domains)
        self.cache = VerificationCache(cache_size, cache_ttl)
        # SIP digest tokens the web session issued to the browser's phone (peerage.identity.sip_tokens).
        self.sip_tokens = SipTokens(store)
        # When set (the command line sets it from [auth]), new passwords must pass
        # peerage.identity.policy; None leaves them unchecked (tests, migrations, internal callers).
        self.password_min_length = password_min_length
        # Short-lived per-protocol tokens (peerage.identity.tokens): only lookups naming a protocol
        # (`scram(..., protocol="xmpp")`, `verify_password(..., protocol="xmpp")`) accept them.
        self.tokens = LoginTokens(store)
        #: (hash prefix, with tokens) -> the statement of ``scram`` (``_scram_statement``)
        self._scram_statements: dict[tuple[str, bool], Any] = {}
        # Told when an account's password changes, the account is deleted or a web session ends, here
        # or in another process (peerage.identity.credential_events), so the protocols end what is
        # already running on the ended credentials (the XMPP service ends the account's live streams,
        # as Prosody's mod_c2s does on user-password-changed; the registrar drops SIP bindings).
        self.credential_events = CredentialEvents(store)

    def _check_policy(self, addr: Address, password: str) -> None:
        if self.password_min_length is not None:
            from peerage.identity.policy import check_password

            check_password(password, address=str(addr), min_length=self.password_min_length)

    def is_local_domain(self, domain: str) -> bool:
        if domain in self.domains:
            return True  # already in normal form: the common case on every SIP request
        try:
            return normalize_domain(domain) in self.domains
        except AddressError:
            return False

    def _local_address(self, address: str | Address) -> Address:
        addr = parse_address(address) if isinstance(address, str) else address
        if addr.domain not in self.domains:
            raise AccountError(
                f"{addr.domain} is not a domain this server hosts; add a [[domain]] section for it "
                "to the configuration"
            )
        return addr

    async def add(self, address: str | Address, password: str) -> Address:
        addr = self._local_address(address)
        self._check_policy(addr, password)
        creds = await asyncio.to_thread(derive_credentials, addr, password)
        async with self.store.begin() as conn:
            exists = (await conn.execute(select(accounts.c.address).where(accounts.c.address == str(addr)))).first()
            if exists:
                raise AccountError(f"{addr} already exists; use `peerage user passwd {addr}` to change its password")
            await conn.execute(insert(accounts).values(address=str(addr), domain=addr.domain, local=addr.local,
                                                       **_credential_columns(creds)))
        return addr

    async def passwd(self, address: str | Address, password: str, *, keep: object | None = None) -> None:
        """Set a new password. Every web session of the account and every token they were given (XMPP
        login tokens, SIP web tokens) end with the old password, in the same transaction, so a password
        changed because it leaked locks out whoever used it, in this process or another. App passwords
        are kept: they are device secrets the user manages one by one (Fastmail keeps them too).
        Then the live sessions of the account end (``credential_events``, in every process), except
        ``keep``: the connection that asked for the change."""
        addr = self._local_address(address)
        self._check_policy(addr, password)
        self.cache.forget(str(addr))
        row = await self._row(addr)
        salt = bytes(row.scram_salt) if row is not None else None
        creds = await asyncio.to_thread(lambda: derive_credentials(addr, password, salt=salt))
        async with self.store.begin() as conn:
            result = await conn.execute(
                update(accounts).where(accounts.c.address == str(addr)).values(**_credential_columns(creds))
            )
            if result.rowcount == 0:
                raise AccountError(f"{addr} does not exist; create it with `peerage user add {addr}`")
            await self._end_sessions_and_tokens(conn, str(addr))
            event = await self.credential_events.record(conn, str(addr), RESET, keep=keep)
        await self.credential_events.dispatch([event])

    async def _end_sessions_and_tokens(self, conn: Any, account: str) -> None:
        await conn.execute(delete(login_tokens).where(login_tokens.c.account == account))
        await self.sip_tokens.revoke(account, conn)
        # The web layer's sessions table, by name: identity sits below the web layer and does not import it.
        web_sessions = load_all_tables().tables.get("web_sessions")
        if web_sessions is not None:
            await conn.execute(delete(web_sessions).where(web_sessions.c.account == account))

    async def end_web_session_tokens(self, web_session: str, account: str | None = None) -> int:
        """End the XMPP and SIP tokens a web session (its token's hash) was given: it logged out or was
        revoked. How many. What was opened with them (XMPP streams, SIP registrations) ends too
        (``credential_events``): for ``account`` when given, else for the accounts the tokens name."""
        async with self.store.begin() as conn:
            named: set[str] = {account} if account else set()
            for table in (login_tokens, sip_web_tokens):
                named.update((await conn.execute(select(table.c.account).distinct()
                                                 .where(table.c.web_session == web_session))).scalars())
            events = [await self.credential_events.record(conn, name, WEB_SESSION, web_session)
                      for name in sorted(named)]
        ended = (await self.tokens.revoke_web_session(web_session)
                 + await self.sip_tokens.revoke_web_session(web_session))
        await self.credential_events.dispatch(events)
        return ended

    async def delete(self, address: str | Address) -> None:
        addr = self._local_address(address)
        async with self.store.begin() as conn:
            self.cache.forget(str(addr))
            await conn.execute(delete(app_passwords).where(app_passwords.c.account == str(addr)))
            await self._end_sessions_and_tokens(conn, str(addr))
            result = await conn.execute(delete(accounts).where(accounts.c.address == str(addr)))
            if result.rowcount == 0:
                raise AccountError(f"{addr} does not exist")
            event = await self.credential_events.record(conn, str(addr), DELETED)
        await self.credential_events.dispatch([event])

    async def list(self, domain: str | None = None) -> list[str]:
        query = select(accounts.c.address).order_by(accounts.c.domain, accounts.c.local)
        if domain:
            query = query.where(accounts.c.domain == normalize_domain(domain))
        async with self.store.begin() as conn:
            return [row[0] for row in await conn.execute(query)]

    async def exists(self, address: str | Address) -> bool:
        try:
            addr = parse_address(address) if isinstance(address, str) else address
        except AddressError:
            return False
        if addr.domain not in self.domains:
            return False
        async with self.store.begin() as conn:
            row = (await conn.execute(select(accounts.c.address).where(accounts.c.address == str(addr)))).first()
        return row is not None

    async def scram(self, address: str | Address, hash_name: str, *,
                    protocol: str | None = None) -> ScramCredential | None:
        """The account's SCRAM credential; app passwords, and with ``protocol`` that protocol's live login
        tokens, are its alternates.

        One statement (the account's keys, then its app passwords' and live tokens' keys, as a UNION
        ALL): this is every SCRAM login's lookup, and each statement is a round trip to the database
        (a thread hop with SQLite), which a login otherwise paid three times, each in a transaction.
        """
        prefix = {"SHA-1": "scram_sha1", "SHA-256": "scram_sha256"}.get(hash_name)
        if prefix is None:
            return None
        try:
            addr = parse_address(address) if isinstance(address, str) else address
        except AddressError:
            return None
        if addr.domain not in self.domains:
            return None
        account = str(addr)
        key = (prefix, bool(protocol))
        statement = self._scram_statements.get(key)
        if statement is None:
            statement = self._scram_statements[key] = self._scram_statement(prefix, bool(protocol))
        values: dict[str, Any] = {"account": account}
        if protocol:
            values["protocol"] = protocol
            values["now"] = self.tokens.now()
        async with self.store.begin() as conn:
            rows = (await conn.execute(statement, values)).all()
        main = next((row for row in rows if row[0] == 0), None)
        if main is None:
            return None
        # Alternates in the order the separate lookups gave: app passwords, then login tokens.
        alternates = sorted((row for row in rows if row[0] != 0), key=lambda row: row[0])
        return ScramCredential(
            hash_name,
            bytes(main[1]),
            main[2],
            bytes(main[3]),
            bytes(main[4]),
            tuple((bytes(row[3]), bytes(row[4])) for row in alternates),
        )

    def _scram_statement(self, prefix: str, tokens: bool) -> Any:
        """The UNION ALL of ``scram``, with the account, protocol and time as bind parameters: built
        once per hash and kind, as building and keying the statement for each login cost more than
        running it does (SQLAlchemy keeps the compiled form for a statement it has seen)."""
        account: Any = bindparam("account")
        stored, server = f"{prefix}_stored_key", f"{prefix}_server_key"
        parts = [
            select(literal(0).label("kind"), accounts.c.scram_salt.label("salt"),
                   accounts.c.scram_iterations.label("iterations"), accounts.c[stored].label("stored"),
                   accounts.c[server].label("server")).where(accounts.c.address == account),
            select(literal(1), cast(null(), LargeBinary), cast(null(), Integer), app_passwords.c[stored],
                   app_passwords.c[server]).where(app_passwords.c.account == account),
        ]
        if tokens:
            parts.append(self.tokens.scram_keys_query(account, bindparam("protocol"), prefix, kind=2,
                                                      now=bindparam("now")))
        return union_all(*parts)

    async def sip_ha1(self, address: str | Address, algorithm: str) -> str | None:
        column = {"MD5": "sip_ha1_md5", "SHA-256": "sip_ha1_sha256"}.get(algorithm.upper())
        if column is None:
            return None
        row = await self._row(address)
        return None if row is None else str(getattr(row, column))

    async def sip_ha1_all(self, address: str | Address, algorithm: str, *, full: bool = False) -> Sequence[str]:
        """The account's HA1 first, then its app passwords' (a digest response says which matched).
        ``full``: the HA1s for the full address as digest username (none for a password set before
        they were stored)."""
        column = {"MD5": "sip_ha1_md5", "SHA-256": "sip_ha1_sha256"}.get(algorithm.upper())
        if column is None:
            return []
        if full:
            column = column.replace("sip_ha1_", "sip_ha1_full_")
        row = await self._row(address)
        if row is None:
            return []
        async with self.store.begin() as conn:
            devices = (await conn.execute(select(app_passwords.c[column])
                                          .where(app_passwords.c.account == row.address))).scalars().all()
        tokens = await self.sip_tokens.ha1s(row.address, algorithm, full=full)
        return [str(h) for h in (getattr(row, column), *devices, *tokens) if h is not None]

    async def sip_digest_ha1s(self, username: str, realm: str, algorithm: str) -> tuple[str | None, Sequence[str]]:
        """The account a SIP digest username names in ``realm`` and its HA1s. The one login-name rule:
        `alice` is alice@realm, `alice@example.org` that address (its HA1 hashes the full form)."""
        account = digest_account(username, realm)
        if account is None:
            return None, []
        return account, await self.sip_ha1_all(account, algorithm, full="@" in username)

    async def verify_password(self, address: str | Address, password: str, *, protocol: str | None = None) -> bool:
        """Is ``password`` right for the account (or one of its app passwords, or with ``protocol`` one of
        that protocol's live login tokens)?"""
        row = await self._row(address)
        if row is None:
            # Spend comparable time so that timing does not reveal which addresses exist.
            await asyncio.to_thread(verify_argon2, _DUMMY_HASH, password)
            return False
        if protocol and looks_like_token(password):
            return await self.tokens.matches(row.address, protocol, password)
        stored = str(row.argon2)
        if self.cache.hit(row.address, stored, password):
            return True
        if await self._app_password_matches(row.address, password):
            return True
        ok = await asyncio.to_thread(verify_argon2, stored, password)
        if ok:
            self.cache.remember(row.address, stored, password)
            if row.sip_ha1_full_md5 is None or row.sip_ha1_full_sha256 is None:
                await self._add_full_address_ha1s(row, password)
        return ok

    async def _add_full_address_ha1s(self, row: Any, password: str) -> None:
        """A password set before migration 0010 has no HA1s for the full address as SIP digest
        username; they cannot be derived from the stored secrets, so they are added the first time the
        password itself is seen (any login with PLAIN, LOGIN or the web form), as Dovecot rehashes
        on login."""
        addr = parse_address(row.address)
        prepared = prepare_password(password)
        full = {alg: sip_ha1(alg, str(addr), addr.domain, prepared) for alg in SIP_DIGEST_HASHES}
        async with self.store.begin() as conn:
            await conn.execute(update(accounts).where(accounts.c.address == row.address,
                                                      accounts.c.argon2 == row.argon2)
                               .values(sip_ha1_full_md5=full["MD5"], sip_ha1_full_sha256=full["SHA-256"]))

    async def _row(self, address: str | Address) -> Any:
        try:
            addr = parse_address(address) if isinstance(address, str) else address
        except AddressError:
            return None
        if addr.domain not in self.domains:
            return None
        async with self.store.begin() as conn:
            return (await conn.execute(select(accounts).where(accounts.c.address == str(addr)))).first()


    # --- login tokens (peerage.identity.tokens) ----------------------------------------------------

    async def login_token(self, address: str | Address, protocol: str, lifetime: float,
                          web_session: str | None = None) -> tuple[str, float]:
        """A short-lived token for ``protocol`` only; returns it and its expiry (seconds since the epoch)."""
        addr = self._local_address(address)
        row = await self._row(addr)
        if row is None:
            raise AccountError(f"{addr} does not exist")
        return await self.tokens.issue(str(addr), protocol, salt=bytes(row.scram_salt),
                                       iterations=int(row.scram_iterations), lifetime=lifetime,
                                       web_session=web_session)

    # --- app passwords (one revocable secret per device) --------------------------------------------

    async def _app_password_matches(self, account: str, password: str) -> bool:
        if not _looks_generated(password):
            return False
        token = _token_hash(password)
        async with self.store.begin() as conn:
            row = (await conn.execute(select(app_passwords.c.id).where(
                app_passwords.c.account == account, app_passwords.c.token_sha256 == token))).first()
        return row is not None

    async def app_password_add(self, address: str | Address, name: str) -> str:
        """Create a device secret called ``name``; return it (shown once, never stored in clear)."""
        addr = self._local_address(address)
        name = name.strip()
        if not name or len(name) > 64 or not name.isprintable():
            raise AccountError("an app password needs a name of 1 to 64 printable characters, e.g. 'phone'")
        row = await self._row(addr)
        if row is None:
            raise AccountError(f"{addr} does not exist; create it with `peerage user add {addr}`")
        password = generate_app_password()
        salt, iterations = bytes(row.scram_salt), int(row.scram_iterations)
        creds = await asyncio.to_thread(lambda: derive_credentials(addr, password, salt=salt, iterations=iterations))
        async with self.store.begin() as conn:
            taken = (await conn.execute(select(app_passwords.c.id).where(
                app_passwords.c.account == str(addr), app_passwords.c.name == name))).first()
            if taken:
                raise AccountError(f"{addr} already has an app password called '{name}'; revoke it first")
            await conn.execute(insert(app_passwords).values(
                account=str(addr), name=name, token_sha256=_token_hash(password),
                scram_sha1_stored_key=creds.scram["SHA-1"].stored_key,
                scram_sha1_server_key=creds.scram["SHA-1"].server_key,
                scram_sha256_stored_key=creds.scram["SHA-256"].stored_key,
                scram_sha256_server_key=creds.scram["SHA-256"].server_key,
                sip_ha1_md5=creds.sip_ha1["MD5"], sip_ha1_sha256=creds.sip_ha1["SHA-256"],
                sip_ha1_full_md5=creds.sip_ha1_full["MD5"], sip_ha1_full_sha256=creds.sip_ha1_full["SHA-256"],
            ))
        return password

    async def app_password_list(self, address: str | Address) -> Sequence[tuple[str, Any]]:
        addr = self._local_address(address)
        async with self.store.begin() as conn:
            rows = await conn.execute(select(app_passwords.c.name, app_passwords.c.created_at)
                                      .where(app_passwords.c.account == str(addr)).order_by(app_passwords.c.name))
            return [(r[0], r[1]) for r in rows]

    async def app_password_revoke(self, address: str | Address, name: str) -> None:
        addr = self._local_address(address)
        async with self.store.begin() as conn:
            result = await conn.execute(delete(app_passwords).where(
                app_passwords.c.account == str(addr), app_passwords.c.name == name.strip()))
            if result.rowcount == 0:
                raise AccountError(f"{addr} has no app password called '{name}'; see "
                                   f"`peerage user app-password list {addr}`")


def digest_account(username: str, realm: str) -> str | None:
    """The canonical address a SIP digest username names: `alice` in realm example.org and
    `alice@example.org` both give alice@example.org; None if it is no address."""
    try:
        return str(parse_address(username if "@" in username else f"{username}@{realm}"))
    except AddressError:
        return None


def digest_username_in_canonical_case(username: str, realm: str) -> str | None:
    """The form a digest username should have been written in, when it names an account but not in
    the case its stored HA1s hash (`Alice` for `alice`, `alice@Example.org`); None when it is fine or
    names nothing. HA1 = H(username:realm:password) hashes the username as sent (RFC 7616 §3.4.2),
    so only the canonical forms can ever match: the client is told which one to use."""
    account = digest_account(username, realm)
    if account is None:
        return None
    canonical = account if "@" in username else account.partition("@")[0]
    return None if username == canonical else canonical


# Generated app passwords: four groups of five from a 32-letter alphabet without look-alikes, 100 bits.
APP_PASSWORD_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"


def generate_app_password() -> str:
    import secrets

    return "-".join("".join(secrets.choice(APP_PASSWORD_ALPHABET) for _ in range(5)) for _ in range(4))


def _looks_generated(password: str) -> bool:
    parts = password.split("-")
    return len(parts) == 4 and all(len(p) == 5 and all(c in APP_PASSWORD_ALPHABET for c in p) for p in parts)


def _token_hash(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


def _credential_columns(creds: Credentials) -> dict[str, object]:
    sha1, sha256 = creds.scram["SHA-1"], creds.scram["SHA-256"]
    return {
        "scram_salt": sha256.salt,
        "scram_iterations": sha256.iterations,
        "scram_sha1_stored_key": sha1.stored_key,
        "scram_sha1_server_key": sha1.server_key,
        "scram_sha256_stored_key": sha256.stored_key,
        "scram_sha256_server_key": sha256.server_key,
        "sip_ha1_md5": creds.sip_ha1["MD5"],
        "sip_ha1_sha256": creds.sip_ha1["SHA-256"],
        "sip_ha1_full_md5": creds.sip_ha1_full["MD5"],
        "sip_ha1_full_sha256": creds.sip_ha1_full["SHA-256"],
        "argon2": creds.argon2,
    }


# An argon2id hash of a random string, checked against when the account does not exist.
_DUMMY_HASH = "$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHRzb21lc2FsdA$0n5H3tXWm0Yj5b1m0Zk1m8M4nLzq7Yb6b0m7QvQ9f2w"
