"""ACME (RFC 8555) certificates for every hosted domain, renewed before expiry, reloaded in place.

This module is in charge of the account (its key in `<data_dir>/acme/account.pem`), of ordering a
certificate for each hosted domain and the names below it that `[acme] names` lists, of answering
HTTP-01 challenges (RFC 8555 §8.3) through the web service's port-80 challenge registry or TLS-ALPN-01
(RFC 8737) through the TLS layer's SNI callback on every TLS port, and of
writing the result where `[[domain]] cert`/`key` point, then reloading the server so new connections
get it. The domain's existing key is reused for the request, so DANE (TLSA 3 1 1) records stay valid.
A certificate is ordered when it is self-signed, does not cover every name, or expires within
`[acme] renew_days`. The `acme` and `josepy` libraries speak the protocol; their blocking calls run in
a worker thread.

In cluster mode (`peerage.cluster.acme`) one node orders a domain at a time (a lease), with HTTP-01
only: the key authorisations are rows every node's port 80 answers, so the CA may validate at any
node. The account key is one row for the cluster, and the issued key and chain are one row per domain
that every node writes into its own `[[domain]] cert`/`key` files and reloads: at every check, every
`[acme] cluster_load_interval`, after a NATS reconnection, and at once when the ordering node announces
it. A domain another node was ordering and that is still not stored at that pass is ordered then (the
node may have died; its lease lapsed).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from peerage.config import Config

log = logging.getLogger("peerage.ops.acme")

# How long one order may take, from creation to the issued certificate.
ORDER_TIMEOUT = datetime.timedelta(minutes=3)


def wanted_names(config: Config, domain: str) -> list[str]:
    return [domain, *(f"{prefix}.{domain}" for prefix in config.acme.names)]


def needs_certificate(config: Config, domain: str, now: datetime.datetime | None = None) -> str | None:
    """Why `domain` needs a new certificate, or None when the one it has will do."""
    entry = config.domain(domain)
    if entry is None or entry.cert is None or entry.key is None:
        return "no certificate configured"
    try:
        chain = entry.cert.read_bytes()
    except OSError:
        return "the certificate file does not load"
    return chain_problem(config, domain, chain, now)


def chain_problem(config: Config, domain: str, chain: bytes, now: datetime.datetime | None = None) -> str | None:
    """Why the certificate chain `chain` (PEM) will not do for `domain`, or None when it will."""
    try:
        cert = x509.load_pem_x509_certificates(chain)[0]
    except (ValueError, IndexError):
        return "the certificate file does not load"
    if cert.issuer == cert.subject:
        return "self-signed"
    try:
        sans = set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                   .get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        sans = set()
    missing = [n for n in wanted_names(config, domain) if n not in sans]
    if missing:
        return f"does not cover {', '.join(missing)}"
    left = cert.not_valid_after_utc - (now or datetime.datetime.now(datetime.UTC))
    if left < datetime.timedelta(days=config.acme.renew_days):
        return f"expires in {left.days} days"
    return None


def new_account_key() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _account_key(config: Config, pem: bytes | None = None) -> Any:
    import josepy

    path = config.data_dir / "acme" / "account.pem"
    if pem is not None:
        # A cluster's one account (peerage.cluster.acme).
        key = serialization.load_pem_private_key(pem, password=None)
    elif path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    else:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        path.chmod(0o600)
    return josepy.JWKRSA(key=key)


def order_certificate(config: Config, domain: str, challenges_registry: Any, account_pem: bytes | None = None,
                      kind: str | None = None) -> tuple[bytes, bytes]:
    """Run one ACME order for `domain` (blocking); return (fullchain PEM, key PEM).

    `account_pem` is the account key to use instead of `<data_dir>/acme/account.pem`, and `kind` the
    challenge type instead of `[acme] challenge` (a cluster's).
    """
    from acme import challenges, client, crypto_util, messages

    account_key = _account_key(config, account_pem)
    verify: bool | str = str(config.acme.ca_file) if config.acme.ca_file else True
    network = client.ClientNetwork(account_key, user_agent="peerage", verify_ssl=verify)  # type: ignore[arg-type]
    directory = client.ClientV2.get_directory(config.acme.directory, network)
    acme_client = client.ClientV2(directory, net=network)
    registration = messages.NewRegistration.from_data(
        email=config.acme.email or None, terms_of_service_agreed=True)
    try:
        network.account = acme_client.new_account(registration)
    except Exception as exc:  # an account for this key exists already: look it up
        from acme import errors

        if not isinstance(exc, errors.ConflictError):
            raise
        network.account = acme_client.query_registration(messages.RegistrationResource(uri=exc.location,
                                                                                       body=messages.Registration()))
    entry = config.domain(domain)
    key_pem = entry.key.read_bytes() if entry is not None and entry.key is not None and entry.key.exists() else None
    if key_pem is None:
        from cryptography.hazmat.primitives.asymmetric import ec

        key_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    csr = crypto_util.make_csr(key_pem, wanted_names(config, domain))
    order = acme_client.new_order(csr)
    tokens: list[str] = []
    alpn_names: list[str] = []
    kind = kind or config.acme.challenge
    try:
        for authorization in order.authorizations:
            name = authorization.body.identifier.value
            if kind == "http-01":
                challenge = next((c for c in authorization.body.challenges if isinstance(c.chall, challenges.HTTP01)),
                                 None)
            else:
                # acme no longer models tls-alpn-01: it arrives as an UnrecognizedChallenge holding the JSON.
                challenge = next((c for c in authorization.body.challenges
                                  if getattr(c.chall, "jobj", {}).get("type") == "tls-alpn-01"), None)
            if challenge is None:
                raise RuntimeError(f"the ACME server offers no {kind} challenge for {name}")
            if kind == "http-01":
                response, validation = challenge.response_and_validation(account_key)
                token = challenge.chall.encode("token")
                challenges_registry.set(token, validation)
                tokens.append(token)
            else:
                from peerage.net.tls import set_alpn_challenge

                token = challenge.chall.jobj["token"]
                set_alpn_challenge(name, *tls_alpn_certificate(name, _key_authorization(token, account_key)))
                alpn_names.append(name)
                # Every challenge is answered with an empty object (RFC 8555 §7.5.1).
                response = challenges.HTTP01Response()
            acme_client.answer_challenge(challenge, response)
        finished = acme_client.poll_and_finalize(order, datetime.datetime.now() + ORDER_TIMEOUT)
    finally:
        for token in tokens:
            challenges_registry.remove(token)
        if alpn_names:
            from peerage.net.tls import clear_alpn_challenge

            for name in alpn_names:
                clear_alpn_challenge(name)
    return finished.fullchain_pem.encode(), key_pem


def _key_authorization(token: str, account_key: Any) -> str:
    """RFC 8555 §8.1: token "." base64url(JWK thumbprint, RFC 7638)."""
    import josepy

    thumbprint = account_key.public_key().thumbprint(hash_function=hashes.SHA256)
    return f"{token}.{josepy.b64encode(thumbprint).decode()}"


# RFC 8737 §3: id-pe-acmeIdentifier, an OCTET STRING holding SHA-256 of the key authorization.
ACME_IDENTIFIER = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")


def tls_alpn_certificate(name: str, key_authorization: str) -> tuple[bytes, bytes]:
    """The self-signed validation certificate for `name` (RFC 8737 §3), as (cert PEM, key PEM)."""
    import hashlib

    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(key_authorization.encode()).digest()
    subject = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        # DER OCTET STRING (tag 4, length 32) around the digest.
        .add_extension(x509.UnrecognizedExtension(ACME_IDENTIFIER, b"\x04\x20" + digest), critical=True)
        .sign(key, hashes.SHA256())
    )
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.new")
    tmp.write_bytes(data)
    tmp.chmod(mode)
    os.replace(tmp, path)


class AcmeService:
    """Keeps every hosted domain's certificate issued and fresh while the server runs."""

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None
        self.host: Any = None
        self.cluster: Any = None
        # One writer of a domain's files at a time (a check and a NATS announcement).
        self._lock = asyncio.Lock()
        self._loading: set[asyncio.Task[None]] = set()
        # Domains another node was ordering at the last check (cluster mode).
        self._deferred: set[str] = set()

    async def start(self, host: Any) -> None:
        self.host = host
        self.cluster = getattr(host, "cluster", None)
        if self.cluster is not None:
            from peerage.cluster.acme import ACME_SUBJECT

            if host.config.acme.challenge != "http-01":
                # The TLS-ALPN-01 validation certificate lives in one node's TLS layer; the
                # HTTP-01 answers are rows every node serves (docs/scaling.md).
                log.warning("acme: a cluster orders with http-01 only; [acme] challenge = %r is not used",
                            host.config.acme.challenge)
            self.cluster.node.subscribe(ACME_SUBJECT, self._announced)
            # Announcements made while this node was cut off from NATS are missed: read the rows.
            self.cluster.node.on_reconnect(self._reconnected)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def check(self) -> list[str]:
        """Order what is needed now; return the domains that got a new certificate."""
        config = self.host.config
        renewed = []
        for domain in list(config.domains):
            if self.cluster is not None:
                try:
                    if await self._load_stored(domain) or await self._order_once(domain):
                        renewed.append(domain)
                except Exception:
                    # The database or its lease: the other domains are checked all the same.
                    log.exception("acme: checking %s failed", domain)
                continue
            reason = needs_certificate(config, domain)
            if reason is None:
                continue
            if await self._order(domain, reason):
                renewed.append(domain)
        if renewed:
            await self.host.reload()
        return renewed

    async def _order(self, domain: str, reason: str) -> bool:
        """Order `domain`'s certificate and write its files; False (logged) when that failed."""
        from peerage.web import challenges_for

        config = self.host.config
        log.info("acme: ordering a certificate for %s (%s)", domain, reason)
        registry: Any = challenges_for(self.host)
        account: bytes | None = None
        kind: str | None = None
        if self.cluster is not None:
            from peerage.cluster.acme import ACCOUNT_KIND, ACCOUNT_NAME, SharedChallenges

            registry = SharedChallenges(registry, self.host.store.engine, asyncio.get_running_loop())
            account = await self.cluster.keys.get_or_create(ACCOUNT_KIND, ACCOUNT_NAME, self._account_pem)
            kind = "http-01"
        try:
            chain, key = await asyncio.to_thread(order_certificate, config, domain, registry, account, kind)
        except Exception as exc:
            log.error("acme: no certificate for %s: %s", domain, exc)
            return False
        entry = config.domain(domain)
        if entry is None or entry.cert is None or entry.key is None:
            log.error("acme: %s has no cert/key paths in [[domain]]; add them to store the certificate", domain)
            return False
        _write(entry.key, key, 0o600)
        _write(entry.cert, chain, 0o644)
        log.info("acme: new certificate for %s", domain)
        if self.cluster is not None:
            from peerage.cluster.acme import ACME_SUBJECT, CERT_KIND, join_pair

            await self.cluster.keys.put(CERT_KIND, domain, join_pair(key, chain))
            self.cluster.node.publish(ACME_SUBJECT, domain.encode())
        return True

    def _account_pem(self) -> bytes:
        # A node that ordered alone before joining keeps its account: it becomes the cluster's.
        path = self.host.config.data_dir / "acme" / "account.pem"
        return path.read_bytes() if path.exists() else new_account_key()

    async def _order_once(self, domain: str) -> bool:
        """Cluster mode: order `domain` when it needs it, unless another node holds its lease (Let's
        Encrypt limits duplicate certificates to 5 a week); True when this node then has a new one."""
        from peerage.cluster.acme import LEASE_KIND

        self._deferred.discard(domain)
        reason = needs_certificate(self.host.config, domain)
        if reason is None:
            return False
        owner = await self.cluster.leases.owner(LEASE_KIND, domain)
        if owner != self.cluster.name:
            log.info("acme: node %s is ordering the certificate for %s", owner, domain)
            # Asked again at the next load pass, should that node die before storing it.
            self._deferred.add(domain)
            return False
        try:
            # The lease's last holder may have stored it since this check read the row.
            if await self._load_stored(domain):
                return True
            return await self._order(domain, reason)
        finally:
            await self.cluster.leases.release(LEASE_KIND, domain)

    async def _load_stored(self, domain: str) -> bool:
        """Cluster mode: write the stored certificate of `domain` into this node's files when it is
        good and newer than theirs; True when it did (a reload is then due)."""
        from peerage.cluster.acme import CERT_KIND, split_pair

        config = self.host.config
        entry = config.domain(domain)
        if entry is None or entry.cert is None or entry.key is None:
            return False
        async with self._lock:
            stored = await self.cluster.keys.get(CERT_KIND, domain)
            if stored is None:
                return False
            try:
                key, chain = split_pair(stored)
            except ValueError:
                log.error("acme: the stored certificate of %s has no key; ordering a new one", domain)
                return False
            try:
                current: bytes | None = entry.cert.read_bytes()
            except OSError:
                current = None
            if current == chain or chain_problem(config, domain, chain) is not None:
                return False
            if current is not None and needs_certificate(config, domain) is None and \
                    _not_after(current) >= _not_after(chain):
                return False
            _write(entry.key, key, 0o600)
            _write(entry.cert, chain, 0o644)
        log.info("acme: certificate for %s loaded from the cluster", domain)
        return True

    async def _announced(self, msg: Any) -> None:
        """Another node stored a new certificate: load it and reload now."""
        domain = bytes(msg.data).decode("utf-8", "replace")
        if domain not in self.host.config.domains:
            return
        try:
            if await self._load_stored(domain):
                await self.host.reload()
        except Exception:
            log.exception("acme: loading the certificate of %s failed", domain)

    def _reconnected(self) -> None:
        task = asyncio.ensure_future(self._load_all())
        self._loading.add(task)
        task.add_done_callback(self._loading.discard)

    async def _load_all(self, deferred: bool = False) -> None:
        """Cluster mode: load every stored certificate newer than this node's files, then reload.

        With `deferred`, a domain another node was ordering and that is still not stored is ordered
        here (that node may have died; its lease is free then), once: an order that fails waits for
        the next check, not for the next pass (Let's Encrypt allows 5 failed validations an hour)."""
        try:
            loaded = [domain for domain in list(self.host.config.domains) if await self._load_stored(domain)]
            if deferred:
                for domain in sorted(self._deferred - set(loaded)):
                    if domain in self.host.config.domains and await self._order_once(domain):
                        loaded.append(domain)
            if loaded:
                await self.host.reload()
        except Exception:
            log.exception("acme: loading the stored certificates failed")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                await self.check()
            except Exception:
                log.exception("acme: certificate check failed")
            if self.cluster is None:
                await asyncio.sleep(self.host.config.acme.check_interval)
                continue
            next_check = loop.time() + self.host.config.acme.check_interval
            while (left := next_check - loop.time()) > 0:
                await asyncio.sleep(min(left, self.host.config.acme.cluster_load_interval))
                await self._load_all(deferred=True)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for task in list(self._loading):
            task.cancel()


def _not_after(chain: bytes) -> datetime.datetime:
    try:
        return x509.load_pem_x509_certificates(chain)[0].not_valid_after_utc
    except (ValueError, IndexError):
        return datetime.datetime.min.replace(tzinfo=datetime.UTC)
