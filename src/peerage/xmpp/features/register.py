"""XEP-0077 In-Band Registration and XEP-0401 invitations (with XEP-0379 roster pre-approval).

This module is in charge of creating accounts from a client stream before it authenticates, and of
the invitations ``peerage invite create`` makes:

- the ``<register/>`` stream feature is offered before authentication on every stream (registration
  by invitation works even when open registration is off, as on Snikket);
- ``jabber:iq:register`` get/set before authentication (the ``c2s-pre-auth-iq`` event) creates the
  account with the identity layer's password policy (``peerage.identity.policy``, ``[auth]
  password_min_length``), when ``[xmpp.registration] enabled`` is on or the stream presented a valid
  invitation token first (XEP-0401 section 4, ``<preauth xmlns='urn:xmpp:pars:0' token=.../>``);
- an invitation is single-use, expires, and is stored as the SHA-256 of its token only; an invitation
  from an account (``--inviter``) gives the inviter and the new account a mutual presence subscription
  (XEP-0379's pre-approval, done at registration), pushed to the inviter's online resources;
- the same invitation presented by an existing account, here or on another server, on its subscription
  request to the inviter (XEP-0379 section 3, ``<presence type='subscribe'><preauth token=.../>``):
  the token is used up, the request approved (RFC 6121 section 3.4 pre-approval, so the presence
  feature answers ``subscribed`` and sends the inviter's presence) and the inviter subscribes back,
  so both end with a mutual subscription; an unknown, used or expired token leaves the request an
  ordinary one for the inviter to answer;
- accounts registered per IP address per hour are bounded (``[xmpp.registration] per_ip_per_hour``);
- after authentication, ``jabber:iq:register`` with a username and password changes the password
  (XEP-0077 section 3.3); account removal from a client is not offered.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, delete, insert, select

from peerage.xmpp.extables import invite_tokens
from peerage.xmpp.features import Feature, IqContext, hook_iq, result
from peerage.xmpp.features.roster import save_item
from peerage.xmpp.jid import JidError, split_jid
from peerage.xmpp.storage import RosterItem
from peerage.xmpp.stream import Element, error_reply

log = logging.getLogger(__name__)

REGISTER_NS = "jabber:iq:register"
REGISTER_FEATURE_NS = "http://jabber.org/features/iq-register"
PARS_NS = "urn:xmpp:pars:0"
#: Invitation tokens: 128 bits, URL-safe (XEP-0401 section 6 wants them unguessable).
TOKEN_BYTES = 16
#: IP addresses whose registrations are remembered for the hourly limit (oldest forgotten first).
MAX_TRACKED_IPS = 10_000


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def create_invitation(engine: Any, domain: str, inviter: str | None, lifetime: float) -> str:
    """Store a new invitation and return its token (shown once, never stored)."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    now = time.time()
    async with engine.begin() as conn:
        await conn.execute(delete(invite_tokens).where(invite_tokens.c.expires <= now))
        await conn.execute(insert(invite_tokens).values(token_hash=token_hash(token), domain=domain, inviter=inviter,
                                                        created=now, expires=now + lifetime))
    return token


def invitation_uri(domain: str, inviter: str | None, token: str) -> str:
    """The XEP-0401 section 5 URI: a roster invitation from ``inviter``, or a plain registration one."""
    if inviter:
        return f"xmpp:{inviter}?roster;preauth={token};ibr=y"
    return f"xmpp:{domain}?register;preauth={token}"


@dataclass(frozen=True)
class Refusal:
    """Why an account was not created: an RFC 6120 stanza error condition and a text for the user."""

    condition: str
    text: str


class Registration(Feature):
    server_features = (REGISTER_NS,)
    invitation_uri = staticmethod(invitation_uri)

    def setup(self) -> None:
        #: peer IP -> times of its registrations in the last hour
        self.registrations: collections.OrderedDict[str, list[float]] = collections.OrderedDict()
        self.ctx.events.hook("c2s-pre-auth-iq", self._pre_auth)
        # Before the presence feature (priority 0) sees the request.
        self.ctx.events.hook("presence/bare", self._subscription_preauth, priority=10)
        host = self.ctx.host
        if host is not None and host.config.web.enabled and host.config.web.https_listen:
            from peerage.web import routes_for
            from peerage.xmpp.features.invite_page import add_routes

            routes_for(host).add("xmpp-invite", lambda web_ctx: add_routes(web_ctx, self))
        hook_iq(self.ctx, "query", REGISTER_NS, self._authenticated, to=("bare", "host"))

    @property
    def config(self) -> Any:
        from peerage.config import RegistrationConfig

        host = self.ctx.host
        return host.config.xmpp.registration if host is not None else RegistrationConfig()

    def pre_auth_features(self, domain: str) -> list[Element]:
        return [Element("register", REGISTER_FEATURE_NS)]

    # --- before authentication ------------------------------------------------------------------
    def _pre_auth(self, event: Any) -> Any:
        iq = event.iq
        payload = next(iq.elements(), None)
        if payload is None:
            return error_reply(iq, "bad-request")
        if payload.xmlns == PARS_NS and payload.name == "preauth" and iq.attrs.get("type") == "set":
            return self._preauth(event, payload.attrs.get("token", ""))
        if payload.xmlns == REGISTER_NS and payload.name == "query":
            return self._register(event, payload)
        return None  # service-unavailable

    async def valid_token(self, token: str, domain: str) -> Any:
        if not token or len(token) > 256:
            return None
        async with self.ctx.storage.engine.connect() as conn:
            row = (await conn.execute(select(invite_tokens).where(invite_tokens.c.token_hash == token_hash(token)))).first()
        if row is None or row.expires <= time.time() or row.domain != domain:
            return None
        return row

    async def _preauth(self, event: Any, token: str) -> Element:
        row = await self.valid_token(token, event.domain)
        if row is None:
            # XEP-0401 section 4: an unknown or expired token is item-not-found.
            return error_reply(event.iq, "item-not-found", "this invitation is not valid (any more)")
        event.connection.pre_auth = token
        return Element("iq", "", {"type": "result", "id": event.iq.attrs.get("id", "")})

    async def _register(self, event: Any, query: Element) -> Element:
        iq = event.iq
        token = getattr(event.connection, "pre_auth", None)
        invitation = await self.valid_token(token, event.domain) if token else None
        if not self.config.enabled and invitation is None:
            return error_reply(iq, "not-allowed", "registration on this server is by invitation only")
        if iq.attrs.get("type") == "get":
            form = Element("query", REGISTER_NS)
            form.add("instructions", text="Choose a username and a password for your new account.")
            form.add("username")
            form.add("password")
            return Element("iq", "", {"type": "result", "id": iq.attrs.get("id", "")}, [form])
        if query.find("remove", REGISTER_NS) is not None:
            return error_reply(iq, "not-authorized", "log in to manage your account")
        username = (query.find_text("username", REGISTER_NS) or "").strip()
        password = query.find_text("password", REGISTER_NS) or ""
        refusal = await self.create_account(event.domain, username, password, event.peer_ip, invitation)
        if isinstance(refusal, Refusal):
            return error_reply(iq, refusal.condition, refusal.text)
        if invitation is not None:
            event.connection.pre_auth = None
        return Element("iq", "", {"type": "result", "id": iq.attrs.get("id", "")})

    async def create_account(self, domain: str, username: str, password: str, peer_ip: str,
                             invitation: Any) -> str | Refusal:
        """Create ``username@domain`` (the new address), using up ``invitation`` if given; or why not.

        The one path for in-band registration and the invitation's web page."""
        if not username or not password:
            return Refusal("not-acceptable", "a username and a password are required")
        from peerage.identity.address import AddressError, parse_address
        from peerage.identity.credentials import PasswordError
        from peerage.identity.policy import check_password

        try:
            address = parse_address(f"{username}@{domain}")
        except AddressError as exc:
            return Refusal("not-acceptable", f"that username cannot be used: {exc}")
        host = self.ctx.host
        min_length = host.config.auth.password_min_length if host is not None else 8
        try:
            check_password(password, address=str(address), min_length=min_length)
        except PasswordError as exc:
            return Refusal("not-acceptable", str(exc))
        if await self.ctx.accounts.exists(str(address)):
            return Refusal("conflict", "that username is taken")
        if not self._allow_ip(peer_ip):
            # resource-constraint (type wait), as other per-account limits here: policy-violation
            # would fit too, but several client libraries (slixmpp 1.17) cannot parse it.
            return Refusal("resource-constraint", f"at most {self.config.per_ip_per_hour} registrations "
                                                  "an hour from one address; try again later")
        if invitation is not None:
            async with self.ctx.storage.engine.begin() as conn:
                claimed = (await conn.execute(delete(invite_tokens).where(and_(
                    invite_tokens.c.token_hash == invitation.token_hash,
                    invite_tokens.c.expires > time.time())))).rowcount
            if not claimed:
                return Refusal("not-allowed", "this invitation has just been used")
        from peerage.identity.accounts import AccountError

        try:
            await self.ctx.accounts.add(address, password)
        except AccountError as exc:
            return Refusal("conflict", str(exc))
        log.info("registered %s from %s%s", address, peer_ip,
                 f" invited by {invitation.inviter}" if invitation is not None and invitation.inviter else "")
        if invitation is not None and invitation.inviter:
            await self._befriend(invitation.inviter, str(address))
        return str(address)

    def _allow_ip(self, ip: str) -> bool:
        now = time.monotonic()
        times = [t for t in self.registrations.pop(ip, []) if t > now - 3600]
        allowed = len(times) < self.config.per_ip_per_hour
        if allowed:
            times.append(now)
        self.registrations[ip] = times
        while len(self.registrations) > MAX_TRACKED_IPS:
            self.registrations.popitem(last=False)
        return allowed

    async def _befriend(self, inviter: str, invitee: str) -> None:
        """Mutual presence subscription between the inviter and the account it invited (XEP-0379)."""
        if not await self.ctx.accounts.exists(inviter):
            return
        for owner, contact in ((inviter, invitee), (invitee, inviter)):
            state = await self.ctx.users.load(owner)
            async with self.ctx.users.modifying(state):
                item = state.roster.get(contact) or RosterItem(contact)
                item.subscription = "both"
                item.ask = False
                item.hidden = False
                item.pending_in = False
                await save_item(self.ctx, state, item)

    # --- XEP-0379: an invitation on a subscription request ------------------------------------
    def _subscription_preauth(self, event: Any) -> Any:
        stanza = event.stanza
        if stanza.attrs.get("type") != "subscribe" or event.user is None:
            return None
        preauth = stanza.find("preauth", PARS_NS)
        if preauth is None:
            return None
        return self._approve_invited(event.bare, stanza, preauth.attrs.get("token", ""))

    async def _approve_invited(self, inviter: str, stanza: Element, token: str) -> None:
        try:
            local, domain, _ = split_jid(stanza.attrs.get("from", ""))
        except JidError:
            return
        contact = f"{local}@{domain}" if local else domain
        if local and contact != inviter and await self._claim_for(token, inviter):
            state = await self.ctx.users.load(inviter)
            async with self.ctx.users.modifying(state):
                item = state.roster.get(contact) or RosterItem(contact)
                subscribe_back = item.subscription not in ("to", "both")
                item.approved = True
                item.hidden = False
                item.ask = item.ask or subscribe_back
                await save_item(self.ctx, state, item)
            log.info("invitation of %s used by %s to subscribe", inviter, contact)
            if subscribe_back:
                sent = self.ctx.router.route(Element("presence", "", {"from": inviter, "to": contact, "type": "subscribe"}))
                if sent is not None:
                    await sent
        # The request goes on without the token: now pre-approved, or an ordinary request.
        plain = Element(stanza.name, stanza.xmlns, dict(stanza.attrs),
                        [child for child in stanza.children if not (isinstance(child, Element) and child.xmlns == PARS_NS)])
        routed = self.ctx.router.route(plain)
        if routed is not None:
            await routed

    async def _claim_for(self, token: str, inviter: str) -> bool:
        """Use up ``token`` if it is an unexpired invitation from ``inviter``."""
        if not token or len(token) > 256:
            return False
        async with self.ctx.storage.engine.begin() as conn:
            claimed = (await conn.execute(delete(invite_tokens).where(and_(
                invite_tokens.c.token_hash == token_hash(token), invite_tokens.c.inviter == inviter,
                invite_tokens.c.expires > time.time())))).rowcount
        return bool(claimed)

    # --- after authentication -------------------------------------------------------------------
    async def _authenticated(self, ctx: IqContext) -> Element:
        if not ctx.is_owner:
            return error_reply(ctx.iq, "service-unavailable")
        owner = ctx.owner or ctx.sender.partition("/")[0]
        if ctx.iq.attrs.get("type") == "get":
            query = Element("query", REGISTER_NS)
            query.add("registered")
            query.add("username", text=owner.partition("@")[0])
            query.add("password")
            return result(ctx, query)
        if ctx.payload.find("remove", REGISTER_NS) is not None:
            return error_reply(ctx.iq, "not-allowed", "accounts are removed by the provider")
        username = ctx.payload.find_text("username", REGISTER_NS)
        password = ctx.payload.find_text("password", REGISTER_NS) or ""
        if username is not None and username.strip().lower() != owner.partition("@")[0]:
            return error_reply(ctx.iq, "bad-request", "the username is the account's own")
        if not password:
            return error_reply(ctx.iq, "not-acceptable", "a new password is required")
        from peerage.identity.accounts import AccountError
        from peerage.identity.credentials import PasswordError
        from peerage.identity.policy import check_password

        host = self.ctx.host
        try:
            check_password(password, address=owner, min_length=host.config.auth.password_min_length if host else 8)
            # The connection that asked keeps its stream; the account's others end (XEP-0077 section 3.3).
            keep = getattr(ctx.session, "connection", None)
            await self.ctx.accounts.passwd(owner, password, keep=keep)
        except (PasswordError, AccountError) as exc:
            return error_reply(ctx.iq, "not-acceptable", str(exc))
        return result(ctx)
