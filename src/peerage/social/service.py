"""SocialService: the social side of a peerage host (WebFinger, ActivityPub, delivery).

This module is in charge of the pieces the routes share: which accounts are discoverable, the actor
URLs of an account, its signing key (``peerage.social.keys``), resolving and caching remote actors and
their keys, the blocked-domain set, and the delivery queue's life cycle. It starts before the web
service and registers the routes of ``webfinger`` and ``activitypub`` through ``routes_for(host)``.

URLs: the actor of ``alice@example.org`` is ``https://example.org/users/alice`` (a port is added when
``[web] https_listen`` is not on 443), her key ``…/users/alice#main-key``; the instance actor, which
signs fetches made for no account in particular (key refreshes in secure mode), is
``https://example.org/actor``, as Mastodon's is.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from peerage.config import parse_listen
from peerage.identity.address import AddressError, parse_address
from peerage.social import keys, state
from peerage.social.core import domain_blocked, host_of, id_of
from peerage.social.fetch import Fetcher, FetchError
from peerage.social.signatures import sign_cavage

log = logging.getLogger(__name__)

INSTANCE_LOCAL = "_instance"
# Expired replay records and dedup ids are swept this often.
SWEEP_SECONDS = 600.0
# How often the blocked domains and current keys are re-read, so `peerage social block` and
# `peerage social rotate-key` from another process take effect on a running server.
REFRESH_SECONDS = 5.0


class RemoteActor:
    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.id = id_of(document)
        self.inbox = id_of(document.get("inbox"))
        endpoints = document.get("endpoints")
        self.shared_inbox = id_of(endpoints.get("sharedInbox")) if isinstance(endpoints, dict) else ""
        key = document.get("publicKey")
        if isinstance(key, list):
            key = key[0] if key else None
        self.key_id = id_of(key) if isinstance(key, dict) else ""
        self.key_pem = key.get("publicKeyPem", "") if isinstance(key, dict) else ""
        self.key_owner = id_of(key.get("owner")) if isinstance(key, dict) else ""
        self.username = str(document.get("preferredUsername") or "")


class SocialService:
    def __init__(self) -> None:
        self.host: Any = None
        self.fetcher: Fetcher
        self.queue: Any = None
        self.blocked: set[str] = set()
        self._keys: dict[str, keys.AccountKey] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._key_names: dict[str, str] = {}
        #: address -> the key this process last signed with or served (never cleared), so a rotation
        #: is noticed even when the account's row is newer than the last sweep's snapshot
        self._served: dict[str, str] = {}
        self.activitypub: Any = None
        self.media: Any = None
        #: the XMPP side (peerage.social.xmpp_bridge), when [xmpp] runs in this process too
        self.bridge: Any = None

    async def start(self, host: Any) -> None:
        from peerage.social.delivery import DeliveryQueue
        from peerage.web import routes_for

        self.host = host
        self.fetcher = Fetcher(host)
        if not host.config.web.enabled:
            log.info("social: [web] is off, so WebFinger and ActivityPub are not served")
            return
        self.blocked = {d.lower() for d in host.config.social.blocked_domains}
        self.blocked |= set(await state.blocked_domains(host.store))
        self.queue = DeliveryQueue(self)
        self.queue.start()
        self._key_names = await state.key_names(host.store)
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        from peerage.social.activitypub import ActivityPubRoutes
        from peerage.social.webfinger import WebFingerRoutes

        routes = routes_for(host)
        self.activitypub = ActivityPubRoutes(self)
        from peerage.social.media import MediaStore

        self.media = MediaStore(self)
        routes.add("social-media", self.media.setup)
        routes.add("social-webfinger", WebFingerRoutes(self).setup)
        routes.add("social-activitypub", self.activitypub.setup)
        from peerage.social.pages import SocialPages

        routes.add("social-pages", SocialPages(self).setup)
        xmpp = next((s for s in host.services if type(s).__name__ == "XmppService"), None)
        if xmpp is not None and host.config.social.xmpp_bridge:
            from peerage.social.xmpp_bridge import XmppBridge

            self.bridge = XmppBridge(self, xmpp)
            self.bridge.start()
        lrdd = ("lrdd", "https://{authority}/.well-known/webfinger?resource={uri}")
        if lrdd not in routes.host_meta_links:
            routes.add_host_meta_link(*lrdd)

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self.bridge is not None:
            await self.bridge.stop()
        if self.queue is not None:
            await self.queue.stop()
        if self.host is not None:
            await self.fetcher.close()

    async def _sweep(self) -> None:
        last_expiry = time.monotonic()
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            try:
                self.blocked = {d.lower() for d in self.host.config.social.blocked_domains}
                self.blocked |= set(await state.blocked_domains(self.host.store))
                self._keys.clear()
                await self._announce_rotations()
                if time.monotonic() - last_expiry > SWEEP_SECONDS:
                    last_expiry = time.monotonic()
                    # Replay records must outlive the signature window, activity ids a week
                    # (redeliveries from a queue retrying for days mostly come back within that).
                    await state.expire_seen(self.host.store, time.time() - max(
                        7 * 86400, 3 * self.host.config.social.signature_max_skew))
            except Exception:
                log.exception("social refresh failed")

    async def _announce_rotations(self) -> None:
        """A key rotated since the last look (`peerage social rotate-key` in another process, or
        here): the account's followers get an Update of its actor, which carries the new key, so
        they need not wait for a failed verification to refetch it (Mastodon sends the same)."""
        names = await state.key_names(self.host.store)
        previous, self._key_names = self._key_names, names
        for address, name in names.items():
            old = previous.get(address) or self._served.get(address)
            if name:
                self._served[address] = name
            if old and name and old != name and self.activitypub is not None and await self.discoverable(address):
                log.info("social: %s rotated its key to %s; sending an Update to its followers", address, name)
                await self.activitypub.send_actor_update(address)

    # --- local accounts ------------------------------------------------------------------------

    def base(self, domain: str) -> str:
        port = 443
        listen = self.host.config.web.https_listen
        if listen:
            port = parse_listen(listen[0])[1]
        return f"https://{domain}" + ("" if port == 443 else f":{port}")

    def actor_url(self, address: str) -> str:
        local, _, domain = address.partition("@")
        if local == INSTANCE_LOCAL:
            return f"{self.base(domain)}/actor"
        return f"{self.base(domain)}/users/{local}"

    def key_id(self, address: str, name: str) -> str:
        return f"{self.actor_url(address)}#{name}"

    def local_address(self, url: str) -> str | None:
        """The account whose actor (or object under it) `url` is, when it is ours."""
        parts = urlsplit(url)
        domain = (parts.hostname or "").lower()
        if domain not in self.host.config.domains or not url.startswith(self.base(domain) + "/"):
            return None
        segments = parts.path.split("/")
        if len(segments) >= 3 and segments[1] == "users" and segments[2]:
            return f"{segments[2]}@{domain}"
        if parts.path == "/actor":
            return f"{INSTANCE_LOCAL}@{domain}"
        return None

    async def discoverable(self, address: str) -> bool:
        """The account exists and opted in (or the default says so and it never opted out)."""
        try:
            parsed = parse_address(address)
        except AddressError:
            return False
        address = str(parsed)
        if parsed.domain not in self.host.config.domains or not await self.host.accounts.exists(address):
            return False
        row = await state.account_row(self.host.store, address)
        if row is None:
            return bool(self.host.config.social.discoverable_default)
        return bool(row.discoverable)

    async def signing_key(self, address: str) -> keys.AccountKey:
        cached = self._keys.get(address)
        if cached is not None:
            return cached
        data_dir = self.host.config.data_dir
        default = self.host.config.social.discoverable_default
        row = await state.ensure_account(self.host.store, address, default) if not address.startswith(
            INSTANCE_LOCAL + "@") else None
        name = row.key_id if row is not None else "main-key"
        cluster = getattr(self.host, "cluster", None)
        if cluster is not None:
            # Every node signs with the one key its actor shows, whichever node made it first.
            shared = await keys.shared(cluster.keys, address, name or "main-key", data_dir)
            if row is not None and not name:
                await state.set_account(self.host.store, address, default, key_id=shared.name)
            self._keys[address] = shared
            self._served.setdefault(address, shared.name)
            return shared
        key = keys.load(data_dir, address, name) if name else None
        if key is None:
            key = await asyncio.to_thread(keys.generate, data_dir, address, name or None)
            if row is not None:
                await state.set_account(self.host.store, address, default, key_id=key.name)
        self._keys[address] = key
        self._served.setdefault(address, key.name)
        return key

    async def rotate_key(self, address: str) -> keys.AccountKey:
        cluster = getattr(self.host, "cluster", None)
        if cluster is not None:
            key = await keys.shared(cluster.keys, address, keys.new_name())
        else:
            key = await asyncio.to_thread(keys.generate, self.host.config.data_dir, address)
        await state.set_account(self.host.store, address, self.host.config.social.discoverable_default,
                                key_id=key.name)
        self._keys[address] = key
        return key

    def is_blocked(self, url_or_host: str) -> bool:
        host = host_of(url_or_host) if "/" in url_or_host else url_or_host
        return domain_blocked(host, self.blocked)

    # --- remote actors -------------------------------------------------------------------------

    async def signed_get(self, url: str, account: str | None = None) -> dict[str, Any]:
        """GET a remote document, signed by `account` or the instance actor (secure-mode servers)."""
        if self.is_blocked(url):
            raise FetchError(f"{host_of(url)} is blocked")
        domain = account.partition("@")[2] if account else next(iter(self.host.config.domains))
        signer = account or f"{INSTANCE_LOCAL}@{domain}"
        key = await self.signing_key(signer)
        headers = sign_cavage("GET", url, key.private_key, self.key_id(signer, key.name),
                              accept=None)
        headers.pop("Host", None)
        return await self.fetcher.get_json(url, headers)

    async def actor(self, url: str, account: str | None = None) -> RemoteActor:
        document = await self.signed_get(url.split("#", 1)[0], account)
        actor = RemoteActor(document)
        if not actor.id or host_of(actor.id) != host_of(url) or not actor.inbox:
            raise FetchError(f"{url}: not an actor served by its own host")
        if actor.key_id and actor.key_pem:
            await state.cache_key(self.host.store, actor.key_id, actor.id, actor.key_pem, actor.inbox,
                                  actor.shared_inbox)
        return actor

    async def public_key(self, key_id: str, *, refresh: bool = False) -> tuple[str, rsa.RSAPublicKey]:
        """(owner actor id, key) for a remote key id, from the cache unless stale or `refresh`."""
        row = await state.cached_key(self.host.store, key_id)
        ttl = self.host.config.social.key_cache_ttl
        if row is None or refresh or time.time() - row.fetched_at > ttl:
            document = await self.signed_get(key_id.split("#", 1)[0])
            actor_id, pem = self._key_from(document, key_id)
            if actor_id != id_of(document):
                # A standalone key document (bovine, GoToSocial): its owner must list the same key.
                owner = await self.actor(actor_id)
                if owner.key_id != key_id:
                    raise FetchError(f"{key_id}: its owner {actor_id} does not list it")
            else:
                actor = RemoteActor(document)
                await state.cache_key(self.host.store, key_id, actor_id, pem, actor.inbox, actor.shared_inbox)
            row = await state.cached_key(self.host.store, key_id)
            if row is None:
                raise FetchError(f"{key_id}: no key")
        key = serialization.load_pem_public_key(row.public_key_pem.encode())
        if not isinstance(key, rsa.RSAPublicKey):
            raise FetchError(f"{key_id}: not an RSA key")
        return row.actor, key

    @staticmethod
    def _key_from(document: dict[str, Any], key_id: str) -> tuple[str, str]:
        candidates: list[Any] = []
        if document.get("publicKeyPem"):
            candidates.append(document)
        key = document.get("publicKey")
        candidates += key if isinstance(key, list) else [key]
        for candidate in candidates:
            if isinstance(candidate, dict) and id_of(candidate) == key_id and candidate.get("publicKeyPem"):
                owner = id_of(candidate.get("owner")) or id_of(document)
                if host_of(owner) != host_of(key_id):
                    raise FetchError(f"{key_id}: owned by another host")
                return owner, str(candidate["publicKeyPem"])
        raise FetchError(f"{key_id}: the document does not carry that key")

    async def resolve_handle(self, handle: str, account: str | None = None) -> RemoteActor:
        """user@domain (or acct:user@domain, or an actor URL) to its actor, through WebFinger."""
        handle = handle.strip()
        if handle.startswith("https://"):
            return await self.actor(handle, account)
        handle = handle.removeprefix("acct:").lstrip("@")
        user, _, domain = handle.rpartition("@")
        if not user or not domain:
            raise FetchError(f"{handle!r} is not user@domain")
        if self.is_blocked(domain):
            raise FetchError(f"{domain} is blocked")
        jrd = await self.fetcher.get_json(
            f"https://{domain}/.well-known/webfinger?resource=acct:{user}@{domain}",
            accept="application/jrd+json, application/json")
        for link in jrd.get("links", []) if isinstance(jrd.get("links"), list) else []:
            if isinstance(link, dict) and link.get("rel") == "self" and str(link.get("type", "")).startswith(
                    ("application/activity+json", "application/ld+json")) and isinstance(link.get("href"), str):
                return await self.actor(link["href"], account)
        raise FetchError(f"{handle}: WebFinger names no ActivityPub actor")
