"""The XMPP service: builds the event table, the router, the feature modules, and runs the listeners.

This module is in charge of wiring the XMPP pieces to the Host (configuration, store, accounts, TLS,
limits): the ``XmppContext`` every feature gets, the feature modules in ``FEATURES`` (each hooks its
events when built), the stanza router, the session table, federation (``S2SService``, which plugs
into the router through ``Router.set_remote_sender`` and ``Router.deliver_from_remote``), the client
ports (``[xmpp] c2s_listen`` with STARTTLS and ``[xmpp] c2s_direct_tls_listen`` with TLS from the
first byte, XEP-0368), closing idle connections, expiring the archive, and a clean shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from peerage.config import ConfigError
from peerage.identity.credential_events import RESET, WEB_SESSION, CredentialEvent
from peerage.xmpp import websocket
from peerage.xmpp.c2s import C2SConnection
from peerage.xmpp.context import XmppContext
from peerage.xmpp.events import Events
from peerage.xmpp.features.avatar import AvatarConversion
from peerage.xmpp.features.blocking import Blocking
from peerage.xmpp.features.bookmarks import BookmarksConversion
from peerage.xmpp.features.caps import Caps
from peerage.xmpp.features.carbons import Carbons
from peerage.xmpp.features.csi import ClientStateIndication
from peerage.xmpp.features.disco import Disco
from peerage.xmpp.features.entity_time import EntityTime
from peerage.xmpp.features.external_services import ExternalServices
from peerage.xmpp.features.im import Im
from peerage.xmpp.features.last_activity import LastActivity
from peerage.xmpp.features.mam import Mam
from peerage.xmpp.features.offline import Offline
from peerage.xmpp.features.pep import Pep
from peerage.xmpp.features.ping import Ping
from peerage.xmpp.features.presence import Presence
from peerage.xmpp.features.private import PrivateStorage
from peerage.xmpp.features.push import Push
from peerage.xmpp.features.register import Registration
from peerage.xmpp.features.roster import Roster
from peerage.xmpp.features.roster import resync as resync_rosters
from peerage.xmpp.features.sm import StreamManagement
from peerage.xmpp.features.upload import Upload
from peerage.xmpp.features.vcard import VCard
from peerage.xmpp.features.version import Version
from peerage.xmpp.muc.service import MucService
from peerage.xmpp.router import Router
from peerage.xmpp.s2s import S2SService
from peerage.xmpp.session import Sessions
from peerage.xmpp.stanzas import StanzaRouter
from peerage.xmpp.storage import XmppStorage
from peerage.xmpp.stream import Element
from peerage.xmpp.users import Users

log = logging.getLogger(__name__)

#: The feature modules, in load order (which is also the order of their stream features).
FEATURES = (Roster, Presence, Im, Disco, Caps, Ping, Version, VCard, PrivateStorage, Blocking, Carbons,
            Offline, Mam, StreamManagement, ClientStateIndication, Pep,
            EntityTime, LastActivity, ExternalServices, MucService, Upload,
            Registration, Push, AvatarConversion, BookmarksConversion)
#: Seconds between sweeps for idle connections; idle limits are minutes, so this is precise enough.
IDLE_SWEEP_INTERVAL = 5.0
#: A connection quiet for this long releases its XML parser until its next byte (an expat parser
#: and its buffers are about 20 KiB, half of an idle TLS connection's memory) and the buffers of
#: its TLS memory BIOs (which otherwise keep the largest size they ever needed).
PARSER_RELEASE_AFTER = 5.0
#: Parsers released in one sweep before the C allocator is asked to return free pages to the
#: system (glibc malloc_trim); below this, the freed memory is simply reused.
TRIM_AFTER_RELEASES = 256
#: Seconds stop() waits for closed connections to finish their cleanup (unavailable presence,
#: offline storage of unacknowledged messages) before the store closes.
SHUTDOWN_GRACE = 3.0
#: Seconds between archive expiry runs.
ARCHIVE_EXPIRY_INTERVAL = 3600.0


class XmppService:
    def __init__(self) -> None:
        self.host: Any = None
        self.servers: list[asyncio.AbstractServer] = []
        self.connections: set[C2SConnection] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self.s2s: S2SService | None = None

    # --- lifecycle ------------------------------------------------------------------------------
    async def start(self, host: Any) -> None:
        from peerage.net.listen import start_listeners

        self.host = host
        config = host.config.xmpp
        self.limits = host.limits
        self.max_stanza_size = config.max_stanza_size
        if config.max_resources_per_account < 1:
            raise ConfigError("[xmpp] max_resources_per_account must be at least 1 (the default is 32)")
        self.max_resources = config.max_resources_per_account
        self.idle_unauthenticated = host.config.limits.idle_timeout_unauthenticated
        # A stream authenticates within this of connecting, however slowly it sends (the same
        # deadline as IMAP and submission; ejabberd's negotiation_timeout is 30 s).
        self.negotiation_timeout = host.config.limits.auth_deadline
        self.idle_authenticated = host.config.limits.idle_timeout
        self.archive_days = config.archive_expires_days
        self.default_domain = next(iter(host.config.domains), "localhost")
        self.router = Router(host.config.domains)
        self.storage = XmppStorage(host.store.engine)
        router = self.router
        self.ctx = XmppContext(
            events=Events(), router=router, storage=self.storage,
            users=Users(self.storage, host.accounts.exists, lambda bare: bool(router.sessions.get(bare))),
            accounts=host.accounts, archive_enabled=config.archive_enabled,
            max_offline_messages=config.max_offline_messages, spawn=self.spawn, host=host,
        )
        self.ctx.features.extend(feature(self.ctx) for feature in FEATURES)
        self.mam: Mam = self.ctx.feature(Mam)
        self.muc: MucService = self.ctx.feature(MucService)
        await self.muc.load()  # persistent rooms, before any stanza can reach them
        self.stanzas = StanzaRouter(self.ctx)
        self.sessions = Sessions(self.ctx, max_resources=config.max_resources_per_account,
                                 resumption_timeout=config.sm_resumption_timeout)
        #: What a XEP-0198 acknowledgement (<a/>, <resumed/>) of a session waits for, if anything:
        #: ``ack_gate(session)`` -> awaitable or None. None on a single server (answered at once); a
        #: cluster node waits until what was counted is stored (peerage.cluster.xmpp).
        self.ack_gate: Callable[[Any], Awaitable[None] | None] | None = None
        #: What every client stream's state machine is given (``C2SStream``'s ``hosted``,
        #: ``features`` and ``pre_auth``), bound once: a bound method made per connection is three
        #: more objects for each of thousands of idle streams.
        self.stream_callbacks = (router.is_hosted, self.stream_features, self.pre_auth_features)
        self.tls_available = host.tls.available
        self._tls_context = host.tls.server_context() if self.tls_available else None
        self.s2s = S2SService(host, router)
        await self.s2s.start()
        if getattr(host, "cluster", None) is not None:
            # Another node may store offline messages for an account unseen here: every login
            # reads its queue (XmppStorage.empty_offline is a single server's shortcut).
            self.storage.empty_offline = None
            host.cluster.attach_xmpp(self)  # peerage.cluster: sessions on other nodes, failover
        self.servers += await start_listeners(
            "xmpp-client", "[xmpp] c2s_listen", config.c2s_listen,
            protocol_factory=lambda: C2SConnection(self, direct_tls=False))
        if self.tls_available:
            self.servers += await start_listeners(
                "xmpps-client", "[xmpp] c2s_direct_tls_listen", config.c2s_direct_tls_listen,
                protocol_factory=lambda: C2SConnection(self, direct_tls=True))
        # XMPP over WebSocket (RFC 7395) on the web service, the same sessions (xmpp/websocket.py).
        websocket.register(self)
        await host.accounts.credential_events.listen(self._credentials_ended)
        self._sweeper = asyncio.ensure_future(self._sweep())

    async def reload(self, host: Any, old_config: Any) -> None:
        """After `peerage reload`: route the hosted domains as configured now (domains added or removed)."""
        self.router.hosted_domains = {d.lower() for d in host.config.domains}
        if self.s2s is not None:
            self.s2s.hosted_domains = list(host.config.domains)
        # Service packages (peerage.xmpp.hosted) add or drop the service JIDs of each domain.
        self.ctx.events.fire("xmpp-hosted-domains", set(self.router.hosted_domains))
        # Roster changes another process wrote (``peerage user import`` signals this reload): the
        # cached rosters of online accounts are re-read and the changes pushed to their clients.
        refreshed = await resync_rosters(self.ctx)
        if refreshed:
            log.info("re-read the roster of %d accounts changed outside the server", refreshed)

    def _credentials_ended(self, event: CredentialEvent) -> None:
        """The account's password changed (``reason`` "reset") or the account was deleted
        ("not-authorized"), here or in another process (identity.credential_events): its streams, TCP
        and WebSocket, end with that stream error (RFC 6120 section 4.9.3.19/.17; Prosody's mod_c2s
        closes the user's sessions with <reset/> on a password change), except ``keep``, the one that
        changed the password (XEP-0077 section 3.3). They may not be resumed (XEP-0198), and sessions
        waiting for resumption end too. A web session that ended ("web-session": logout, revocation)
        ends the streams opened with the login tokens it was given, with <not-authorized/> (as
        Prosody's mod_c2s on a revoked token)."""
        account, reason = event.account, event.reason
        if reason == WEB_SESSION:
            text, condition = "the web session that gave this login ended", "not-authorized"
        else:
            condition = reason
            text = "the account's password was changed" if reason == RESET else "the account was deleted"
        ended = 0
        for connection in list(self.connections):
            if connection is event.keep or connection.stream.authenticated != account or connection.closing:
                continue
            if reason == WEB_SESSION and connection.web_session != event.web_session:
                continue
            if connection.sm is not None:
                connection.sm.resumable = False
            connection.stream_error(condition, text)
            ended += 1
        if reason != WEB_SESSION:
            for session in self.sessions.all():
                if session.bare_jid == account and session.hibernation is not None:
                    self.sessions.end_detached(session)
                    ended += 1
        if ended:
            log.info("ended %d stream(s) of %s: %s", ended, account, text)

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        host = getattr(self, "host", None)
        if host is not None:
            await host.accounts.credential_events.unlisten(self._credentials_ended)
        for server in self.servers:
            server.close()
        # Group-chat occupants hear that the service stops (status 332), while s2s still carries it.
        muc: MucService | None = getattr(self, "muc", None)  # None when start() failed early
        if muc is not None:
            await muc.shutdown_notice()
        if self.s2s is not None:
            try:
                await self.s2s.stop()
            except Exception:
                log.exception("error stopping federation")
        # RFC 6120 section 4.9.3.20: tell clients why the stream ends.
        for connection in list(self.connections):
            if connection.sm is not None:
                connection.sm.resumable = False
            connection.stream_error("system-shutdown", "the server is shutting down")
        # Sessions waiting for resumption end now: what they never acknowledged goes to offline
        # storage rather than being lost with the process.
        for session in self.sessions.all():
            if session.hibernation is not None:
                self.sessions.end_detached(session)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SHUTDOWN_GRACE
        while self.connections and loop.time() < deadline:
            await asyncio.sleep(0.01)  # connection_lost() of each closed connection schedules its cleanup
        try:
            if muc is not None:
                await asyncio.wait_for(muc.stop(), SHUTDOWN_GRACE)
        except TimeoutError:
            log.error("group-chat rooms and archive could not be written before shutdown")
        try:
            await asyncio.wait_for(self.mam.flush(), SHUTDOWN_GRACE)
        except TimeoutError:
            log.error("%d archive rows could not be written before shutdown", self.mam.buffered)
        for feature in self.ctx.features:
            if isinstance(feature, LastActivity):
                try:
                    await asyncio.wait_for(feature.flush(), SHUTDOWN_GRACE)
                except TimeoutError:
                    log.error("the last activity of %d accounts could not be written before shutdown",
                              feature.unwritten)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        for server in self.servers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 2)
        self.servers.clear()

    # --- helpers used by connections ------------------------------------------------------------
    def stream_features(self) -> list[Element]:
        """What the feature modules offer in <stream:features/> after authentication."""
        return [element for feature in self.ctx.features for element in feature.stream_features(None)]

    def pre_auth_features(self, domain: str) -> list[Element]:
        """What the feature modules offer in <stream:features/> before authentication, for ``domain``."""
        return [element for feature in self.ctx.features for element in feature.pre_auth_features(domain)]

    def tls_context(self) -> ssl.SSLContext:
        assert self._tls_context is not None
        return self._tls_context

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _sweep(self) -> None:
        last_expiry = 0.0
        while True:
            await asyncio.sleep(IDLE_SWEEP_INTERVAL)
            now = time.monotonic()
            released = 0
            for connection in list(self.connections):
                idle = now - connection.last_activity
                limit = self.idle_authenticated if connection.bound else self.idle_unauthenticated
                if idle > limit:
                    connection.stream_error("connection-timeout", "idle for too long")
                elif idle > PARSER_RELEASE_AFTER and connection.release_buffers():
                    released += 1
            if released >= TRIM_AFTER_RELEASES:
                _trim_heap()
            if self.ctx.archive_enabled and now - last_expiry > ARCHIVE_EXPIRY_INTERVAL:
                last_expiry = now
                try:
                    await self.storage.expire_archive(time.time() - self.archive_days * 86400)
                except Exception:
                    log.exception("archive expiry failed")


_libc: Any = None


def _trim_heap() -> None:
    """Return freed heap pages to the system (glibc); a no-op elsewhere."""
    global _libc
    if _libc is None:
        try:
            import ctypes

            _libc = ctypes.CDLL("libc.so.6")
            _libc.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _libc = False
    if _libc:
        _libc.malloc_trim(0)
