"""XEP-0357 Push Notifications: the app servers an account enables, notified of its offline messages.

This module is in charge of:

- ``<enable/>`` and ``<disable/>`` (XEP-0357 sections 5 and 6) from the account's own resources: an
  app server JID, a node, and the publish-options form (the app server's secret) kept in
  ``push_registrations``, at most ``[xmpp.push] max_registrations`` per account (``resource-constraint``
  beyond);
- a notification for each message committed to offline storage (the ``message/offline/stored``
  event the offline module fires, with the queue's length): a pubsub publish from the account's bare JID to the app
  server's node, with the ``urn:xmpp:push:summary`` form (section 7: ``message-count``, and
  ``last-message-sender`` / ``last-message-body`` only when ``[xmpp.push] include_sender`` /
  ``include_body`` say so) and the registration's publish-options;
- the same for a session that lost its connection and waits for XEP-0198 resumption (a phone whose
  app the system put to sleep, the case push exists for, as Prosody's mod_cloud_notify handles
  "hibernated" sessions): when it starts waiting with messages it never acknowledged (the
  ``session-hibernating`` event), and for each message that reaches it while it waits (hooked on
  ``message/full`` and ``message/bare`` ahead of delivery, which then queues it for the resumption);
  ``message-count`` is then the messages waiting in its queue. Only messages worth waking a phone
  for count: a body or an OMEMO payload, not chat states or receipts alone (nor a room's subject);
- group chats, as Prosody's mod_cloud_notify and mod_muc_offline_delivery together do:
  - a room message with a body that reaches a session waiting for resumption (the phone is still
    an occupant) is pushed like a chat message. Every such message, not only those that mention
    the user: mod_cloud_notify does not look for mentions either, and the app decides what to show
    once woken (Conversations notifies for mentions by default, others for all);
  - a room message to the account's bare JID is a room's offline delivery to an absent member
    (``peerage.xmpp.muc`` sends those to members who asked for them): with push enabled the app
    server is told (``message-count`` 1), without it the message is refused (service-unavailable);
- the app server's answers: a result resets the registration's error count; an error or no answer
  within ``NOTIFY_TIMEOUT`` counts, and ``[xmpp.push] max_errors`` in a row disable the registration
  (section 8 lets the server stop; an error of type ``cancel`` or ``auth`` disables at once, as
  Prosody's mod_cloud_notify does for those).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from typing import Any

from sqlalchemy import and_, delete, func, insert, select

from peerage.config import PushConfig
from peerage.xmpp.extables import push_registrations
from peerage.xmpp.features import Feature, IqContext, hook_iq, result
from peerage.xmpp.features.offline import OfflineStored
from peerage.xmpp.jid import JidError, split_jid
from peerage.xmpp.stanzas import StanzaEvent
from peerage.xmpp.stream import Element, error_reply, parse_stored, serialize

log = logging.getLogger(__name__)

PUSH_NS = "urn:xmpp:push:0"
SUMMARY_NS = "urn:xmpp:push:summary"
PUBSUB_NS = "http://jabber.org/protocol/pubsub"
DATA_NS = "jabber:x:data"
#: Seconds an app server has to answer a notification (Prosody's mod_cloud_notify waits for the
#: IQ's default stanza timeout; 30 s is ejabberd's iq timeout).
NOTIFY_TIMEOUT = 30.0
#: Longest node name and publish-options form accepted, in bytes (app servers use short tokens).
MAX_NODE_BYTES = 1024
MAX_OPTIONS_BYTES = 8192
#: Body characters put in a notification when include_body is on (a preview, not the message).
MAX_BODY_PREVIEW = 256
#: Notifications waiting for their answer, over all accounts: beyond, the oldest is counted as failed.
MAX_PENDING = 10_000


#: The settings without a host (in-process tests): the defaults.
_DEFAULT_CONFIG = PushConfig()

#: Payloads that make a message worth a notification besides a body: OMEMO (both versions).
ENCRYPTED = (("encrypted", "eu.siacs.conversations.axolotl"), ("encrypted", "urn:xmpp:omemo:2"))


def worth_waking(stanza: Element) -> bool:
    """A message with something for the user to read (not only a chat state, receipt or marker)."""
    if stanza.name != "message":
        return False
    return stanza.find("body") is not None or any(stanza.find(name, ns) is not None for name, ns in ENCRYPTED)


def queued_worth_waking(session: Any) -> list[Element]:
    """The messages in ``session``'s XEP-0198 queue worth a notification (entries: data, stanza, ...)."""
    return [entry[1] for entry in session.sm.unacked if entry[1] is not None and worth_waking(entry[1])]


def waiting_for_resumption(session: Any) -> bool:
    """The session lost its connection and is kept for XEP-0198 resumption."""
    # getattr: sessions held by another cluster node are stand-ins without these.
    return (getattr(session, "hibernation", None) is not None and getattr(session, "connection", True) is None
            and not getattr(session, "ended", True) and getattr(session, "sm", None) is not None)


class Push(Feature):
    account_features = (PUSH_NS,)

    def setup(self) -> None:
        hook_iq(self.ctx, "enable", PUSH_NS, self._enable, types=("set",))
        hook_iq(self.ctx, "disable", PUSH_NS, self._disable, types=("set",))
        self.ctx.events.hook("message/offline/stored", self._offline)
        # Ahead of the im feature (which delivers, and so queues for a detached session).
        self.ctx.events.hook("message/full", self._to_waiting_session, 60)
        self.ctx.events.hook("message/bare", self._to_waiting_session, 60)
        self.ctx.events.hook("session-hibernating", self._hibernating)
        self.ctx.events.hook("iq/bare", self._answer, 25)
        #: notification id -> (owner, app server JID, node, timer)
        self.pending: dict[str, tuple[str, str, str, asyncio.TimerHandle | None]] = {}
        #: (owner, jid, node) -> failures in a row
        self.errors: dict[tuple[str, str, str], int] = {}
        self._ids = itertools.count(1)

    @property
    def config(self) -> PushConfig:
        host = self.ctx.host
        return host.config.xmpp.push if host is not None else _DEFAULT_CONFIG

    @property
    def engine(self) -> Any:
        return self.ctx.storage.engine

    # --- enable / disable -----------------------------------------------------------------------
    async def _enable(self, ctx: IqContext) -> Element:
        if not ctx.is_owner or not self.config.enabled:
            return error_reply(ctx.iq, "not-allowed" if self.config.enabled else "service-unavailable")
        owner = ctx.owner or ""
        jid = ctx.payload.attrs.get("jid", "")
        node = ctx.payload.attrs.get("node", "")
        try:
            split_jid(jid)
        except JidError:
            return error_reply(ctx.iq, "jid-malformed", "jid must be the app server's address")
        if not node or len(node.encode()) > MAX_NODE_BYTES:
            return error_reply(ctx.iq, "bad-request", "node is required (at most 1024 bytes)")
        form = ctx.payload.find("x", DATA_NS)
        options = serialize(form) if form is not None else None
        if options is not None and len(options.encode()) > MAX_OPTIONS_BYTES:
            return error_reply(ctx.iq, "not-acceptable", f"publish-options are at most {MAX_OPTIONS_BYTES} bytes")
        async with self.engine.begin() as conn:
            await conn.execute(delete(push_registrations).where(and_(
                push_registrations.c.owner == owner, push_registrations.c.jid == jid,
                push_registrations.c.node == node)))
            count = (await conn.execute(select(func.count()).select_from(push_registrations).where(
                push_registrations.c.owner == owner))).scalar() or 0
            if count >= self.config.max_registrations:
                return error_reply(ctx.iq, "resource-constraint",
                                   f"at most {self.config.max_registrations} push registrations per account")
            await conn.execute(insert(push_registrations).values(owner=owner, jid=jid, node=node, options=options,
                                                                 created=time.time()))
        self.errors.pop((owner, jid, node), None)
        return result(ctx)

    async def _disable(self, ctx: IqContext) -> Element:
        if not ctx.is_owner:
            return error_reply(ctx.iq, "not-allowed")
        owner = ctx.owner or ""
        jid = ctx.payload.attrs.get("jid", "")
        if not jid:
            return error_reply(ctx.iq, "bad-request", "jid is required")
        node = ctx.payload.attrs.get("node")
        condition = and_(push_registrations.c.owner == owner, push_registrations.c.jid == jid)
        if node:  # section 6: without a node, every registration with that app server goes
            condition = and_(condition, push_registrations.c.node == node)
        async with self.engine.begin() as conn:
            await conn.execute(delete(push_registrations).where(condition))
        return result(ctx)

    # --- notifications --------------------------------------------------------------------------
    def _offline(self, event: OfflineStored) -> None:
        stanza = event.stanza
        if self.config.enabled and stanza.attrs.get("type") != "groupchat":  # never stored offline anyway
            spawn = self.ctx.spawn
            if spawn is not None:
                spawn(self._notify(event.bare, stanza, event.count))
        return None

    def _to_waiting_session(self, event: StanzaEvent) -> Any:
        # On every message to an online account, and almost always nothing to do: what decides
        # that cheaply comes first (no session of the destination waits for resumption).
        resource = event.resource
        if resource:
            session = event.resources.get(resource)
            if session is None or getattr(session, "hibernation", None) is None:
                return None
        else:
            stanza = event.stanza
            if (stanza.attrs.get("type") == "groupchat" and event.user is not None
                    and self.config.enabled and worth_waking(stanza)):
                # A room's message for an absent member (offline delivery): decided here, not
                # bounced by the im feature, when the account has an app server to wake.
                return self._room_message_for_absent(event.bare, stanza)
            if not any(getattr(s, "hibernation", None) is not None for s in event.resources.values()):
                return None
        try:
            self._push_if_waiting(event)
        except Exception:  # on the message path: a push problem must never stop the delivery
            log.exception("push check for %s failed", event.bare)
        return None

    async def _room_message_for_absent(self, owner: str, stanza: Element) -> None:
        """A groupchat message to the bare JID: a room's offline delivery (Prosody's
        mod_muc_offline_delivery) to a member who is not in it. With push enabled, the app server is
        told (the message itself is not stored: the app reads it from the room when it rejoins, by
        MUC history or the room's archive, as XEP-0160 keeps groupchat out of offline storage);
        without, the message is refused as RFC 6121 section 8.5.2 asks for groupchat to a bare JID."""
        try:
            async with self.engine.connect() as conn:
                registered = (await conn.execute(select(func.count()).select_from(push_registrations).where(
                    push_registrations.c.owner == owner))).scalar() or 0
        except Exception:
            log.exception("push check for %s failed", owner)
            registered = 0
        if not registered:
            await self.ctx.router.bounce(stanza, "service-unavailable")
            return
        await self._notify(owner, stanza, 1)

    def _push_if_waiting(self, event: StanzaEvent) -> None:
        stanza = event.stanza
        if not self.config.enabled or event.user is None or stanza.attrs.get("type") == "error":
            return None
        if not worth_waking(stanza):
            return None
        if event.resource:
            session = event.resources.get(event.resource)
            targets = [session] if session is not None else []
        else:  # delivery by bare-JID rules goes to the available resources of non-negative priority
            targets = [s for s in event.resources.values() if s.available and s.priority >= 0]
        for session in targets:
            if waiting_for_resumption(session):
                count = 1 + len(queued_worth_waking(session))
                spawn = self.ctx.spawn
                if spawn is not None:
                    spawn(self._notify(event.bare, stanza, count))
                break
        return None

    def _hibernating(self, session: Any) -> None:
        if not self.config.enabled or session.sm is None:
            return None
        waiting = queued_worth_waking(session)
        spawn = self.ctx.spawn
        if waiting and spawn is not None:
            spawn(self._notify(session.bare_jid, waiting[-1], len(waiting)))
        return None

    async def _notify(self, owner: str, stanza: Element, count: int) -> None:
        try:
            async with self.engine.connect() as conn:
                rows = (await conn.execute(select(push_registrations).where(
                    push_registrations.c.owner == owner))).all()
            if not rows:
                return
            config = self.config
            fields = [("FORM_TYPE", SUMMARY_NS), ("message-count", str(count))]
            if config.include_sender:
                fields.append(("last-message-sender", stanza.attrs.get("from", "")))
            body = stanza.find_text("body")
            if config.include_body and body:
                fields.append(("last-message-body", body[:MAX_BODY_PREVIEW]))
            for row in rows:
                self._send(owner, row, fields)
        except Exception:
            log.exception("push notification for %s failed", owner)

    def _send(self, owner: str, row: Any, fields: list[tuple[str, str]]) -> None:
        notification_id = f"push-{next(self._ids)}"
        iq = Element("iq", "", {"type": "set", "from": owner, "to": row.jid, "id": notification_id})
        pubsub = iq.add("pubsub", PUBSUB_NS)
        form = pubsub.add("publish", attrs={"node": row.node}).add("item").add(
            "notification", PUSH_NS).add("x", DATA_NS, {"type": "submit"})
        for var, value in fields:
            field = form.add("field", attrs={"var": var})
            field.add("value", text=value)
        if row.options:
            pubsub.add("publish-options").children.append(parse_stored(row.options))
        while len(self.pending) >= MAX_PENDING:
            oldest = next(iter(self.pending))
            self._failed(oldest, "wait")
        loop = asyncio.get_running_loop()
        timer = loop.call_later(NOTIFY_TIMEOUT, self._failed, notification_id, "timeout")
        self.pending[notification_id] = (owner, row.jid, row.node, timer)
        pending = self.ctx.router.route(iq)
        if pending is not None and self.ctx.spawn is not None:
            self.ctx.spawn(self._deliver(pending))

    @staticmethod
    async def _deliver(pending: Any) -> None:
        try:
            await pending
        except Exception:
            log.exception("push notification delivery failed")

    def _answer(self, event: StanzaEvent) -> Any:
        stanza = event.stanza
        itype = stanza.attrs.get("type")
        if itype not in ("result", "error"):
            return None
        pending = self.pending.get(stanza.attrs.get("id", ""))
        if pending is None:
            return None
        owner, jid, _node, _timer = pending
        if event.bare != owner or stanza.attrs.get("from") != jid:
            return None
        if itype == "result":
            _, _, _, timer = self.pending.pop(stanza.attrs["id"])
            if timer is not None:
                timer.cancel()
            self.errors.pop((owner, jid, _node), None)
        else:
            error = stanza.find("error")
            self._failed(stanza.attrs["id"], error.attrs.get("type", "cancel") if error is not None else "cancel")
        return True

    def _failed(self, notification_id: str, kind: str) -> None:
        pending = self.pending.pop(notification_id, None)
        if pending is None:
            return
        owner, jid, node, timer = pending
        if timer is not None:
            timer.cancel()
        key = (owner, jid, node)
        failures = self.errors.get(key, 0) + 1
        self.errors[key] = failures
        if kind in ("cancel", "auth") or failures >= self.config.max_errors:
            self.errors.pop(key, None)
            log.info("push: disabling %s's registration at %s (%s, %d failures in a row)", owner, jid, kind, failures)
            spawn = self.ctx.spawn
            if spawn is not None:
                spawn(self._remove(owner, jid, node))

    async def _remove(self, owner: str, jid: str, node: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(delete(push_registrations).where(and_(
                push_registrations.c.owner == owner, push_registrations.c.jid == jid,
                push_registrations.c.node == node)))
