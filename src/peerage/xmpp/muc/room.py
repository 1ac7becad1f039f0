"""One XEP-0045 room: occupants, roles, affiliations, history, subject, moderation.

This module is in charge of what a room does with the stanzas addressed to it once the service
(``peerage.xmpp.muc.service``) has found it: entering and leaving (section 7.2, 7.14), nickname
changes (7.6), messages to all occupants and private messages (7.4, 7.5), invitations (7.8, and
declines 7.8.2), voice requests (8.6), subject (8.1), moderation through ``muc#admin`` (8, 9),
configuration through ``muc#owner`` (10), and destruction (10.9). Every stanza it emits goes through
``service.send``. Occupant ids (XEP-0421) are stable per room and real bare JID.

Occupants are keyed by nickname; one occupant may be joined from several sessions of the same
account (each full JID gets every stanza), as Prosody allows.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import logging
import time
from typing import TYPE_CHECKING, Any

from peerage.xmpp.jid import JidError, bare_of, split_jid
from peerage.xmpp.muc import forms, limits
from peerage.xmpp.muc.forms import FormError, RoomConfig
from peerage.xmpp.stream import Element, error_reply, iq_result

if TYPE_CHECKING:
    from peerage.xmpp.muc.service import MucService

log = logging.getLogger(__name__)

MUC_NS = "http://jabber.org/protocol/muc"
MUC_USER = MUC_NS + "#user"
MUC_ADMIN = MUC_NS + "#admin"
MUC_OWNER = MUC_NS + "#owner"
DELAY_NS = "urn:xmpp:delay"
SID_NS = "urn:xmpp:sid:0"
OCCUPANT_ID_NS = "urn:xmpp:occupant-id:0"
STANZAS_NS = "urn:ietf:params:xml:ns:xmpp-stanzas"
PING_NS = "urn:xmpp:ping"
VCARD_NS = "vcard-temp"
DISCO_INFO_NS = "http://jabber.org/protocol/disco#info"
REGISTER_NS = "jabber:iq:register"
MUC_REGISTER = MUC_NS + "#register"
#: Prosody's mod_muc_offline_delivery registration field (Tigase's protocol, used by Siskin and Snikket).
OFFLINE_FIELD = "{http://tigase.org/protocol/muc}offline"
#: XEP-0425 message moderation with XEP-0424 retraction: version 1 (0.3.0 of the XEPs) and the earlier
#: version 0 that wrapped the request in XEP-0422 <apply-to/> (still sent by some clients; Prosody's
#: mod_muc_moderation speaks both too).
MODERATE_NS = "urn:xmpp:message-moderate:1"
RETRACT_NS = "urn:xmpp:message-retract:1"
MODERATE_NS_0 = "urn:xmpp:message-moderate:0"
RETRACT_NS_0 = "urn:xmpp:message-retract:0"
FASTEN_NS = "urn:xmpp:fasten:0"

AFFILIATIONS = ("owner", "admin", "member", "none", "outcast")
RANK = {"owner": 4, "admin": 3, "member": 2, "none": 1, "outcast": 0}
ROLES = ("moderator", "participant", "visitor", "none")
#: Conditions of an error from an occupant that mean it is gone (Prosody's mod_muc list): the room
#: removes it with status 333 (XEP-0045 section 7.14, "removed because of an error").
GONE_CONDITIONS = frozenset({"gone", "item-not-found", "recipient-unavailable", "redirect",
                             "remote-server-not-found", "remote-server-timeout", "service-unavailable"})


def stamp_text(stamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(stamp)) + f".{int(stamp % 1 * 1000):03d}Z"


def parse_stamp(text: str) -> float:
    import datetime

    value = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.UTC)
    return value.timestamp()


def error(stanza: Element, condition: str, text: str = "", etype: str | None = None) -> Element:
    reply = error_reply(stanza, condition, text)
    if etype is not None:
        err = reply.find("error")
        if err is not None:
            err.attrs["type"] = etype
    return reply


class Occupant:
    __slots__ = ("bare", "nick", "occupant_id", "payload", "role", "sessions", "stamp", "tokens")

    def __init__(self, nick: str, bare: str, role: str, occupant_id: str, burst: float) -> None:
        self.nick = nick
        self.bare = bare
        self.role = role
        self.occupant_id = occupant_id
        #: full JID -> join order; the most recent session's presence is the occupant's
        self.sessions: dict[str, None] = {}
        #: the children of the occupant's last presence, without MUC elements (show, status, caps)
        self.payload: list[Element | str] = []
        self.tokens = burst
        self.stamp = time.monotonic()

    @property
    def jid(self) -> str:
        return next(reversed(self.sessions)) if self.sessions else self.bare


class HistoryEntry:
    __slots__ = ("chars", "message", "stamp")

    def __init__(self, message: Element, stamp: float, chars: int) -> None:
        self.message = message
        self.stamp = stamp
        self.chars = chars


class Room:
    def __init__(self, service: MucService, jid: str, config: RoomConfig, salt: str, created: float) -> None:
        self.service = service
        self.jid = jid
        self.config = config
        self.salt = salt
        self.created = created
        self.subject = ""
        self.subject_by = ""
        #: bare JID -> owner | admin | member | outcast ('none' is not stored)
        self.affiliations: dict[str, str] = {}
        #: bare JID -> reserved nickname (section 7.12)
        self.reserved: dict[str, str] = {}
        self.reasons: dict[str, str] = {}
        #: bare JID -> whether the member gets room messages while absent (offline delivery); a
        #: member missing here has not chosen and the service's default applies
        self.offline: dict[str, bool] = {}
        self.occupants: dict[str, Occupant] = {}
        self.by_full: dict[str, Occupant] = {}
        self.history: collections.deque[HistoryEntry] = collections.deque(maxlen=max(1, config.history_length))
        self.locked = False
        self.lock_timer: Any = None
        #: the id we gave a proxied IQ -> (requester's full JID, its id, the target nick)
        self.proxied: collections.OrderedDict[str, tuple[str, str, str]] = collections.OrderedDict()
        self.destroyed = False

    # ============================================================================================
    # Helpers
    # ============================================================================================
    @property
    def local(self) -> str:
        return self.jid.partition("@")[0]

    def affiliation(self, bare: str) -> str:
        return self.affiliations.get(bare, "none")

    def owners(self) -> list[str]:
        return sorted(j for j, a in self.affiliations.items() if a == "owner")

    def _default_role(self, affiliation: str) -> str:
        if affiliation in ("owner", "admin"):
            return "moderator"
        if affiliation == "outcast":
            return "none"
        if affiliation == "member" or not self.config.moderated:
            return "participant"
        return "visitor"

    def occupant_id(self, bare: str) -> str:
        digest = hmac.new(self.salt.encode(), bare.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:18]).decode()

    def send(self, stanza: Element) -> None:
        self.service.send(stanza)

    def _status(self, x: Element, codes: tuple[str, ...] | list[str]) -> None:
        for code in codes:
            x.add("status", attrs={"code": code})

    def _presence(self, occupant: Occupant, to: str, *, with_jid: bool, codes: list[str] | tuple[str, ...] = (),
                  unavailable: bool = False, affiliation: str | None = None, role: str | None = None,
                  item_extra: list[Element] | None = None, nick: str | None = None,
                  x_extra: list[Element] | None = None) -> Element:
        presence = Element("presence", "", {"from": f"{self.jid}/{occupant.nick}", "to": to})
        if unavailable:
            presence.attrs["type"] = "unavailable"
        else:
            presence.children.extend(occupant.payload)
        x = presence.add("x", MUC_USER)
        item = x.add("item", attrs={"affiliation": affiliation or self.affiliation(occupant.bare),
                                    "role": role or occupant.role})
        if with_jid:
            item.attrs["jid"] = occupant.jid
        if nick:
            item.attrs["nick"] = nick
        if item_extra:
            item.children.extend(item_extra)
        if x_extra:
            x.children.extend(x_extra)
        self._status(x, codes)
        presence.add("occupant-id", OCCUPANT_ID_NS, {"id": occupant.occupant_id})
        return presence

    def _broadcast_presence(self, occupant: Occupant, *, codes: tuple[str, ...] = (),
                            self_codes: tuple[str, ...] = (), gone_sessions: tuple[str, ...] = (),
                            **kwargs: Any) -> None:
        """``occupant``'s presence to every occupant; its own sessions (and ``gone_sessions``, those
        just removed) get status 110 and ``self_codes`` too."""
        anyone = self.config.whois == "anyone"
        for other in list(self.occupants.values()):
            if other is occupant:
                continue
            with_jid = anyone or other.role == "moderator"
            for full in other.sessions:
                self.send(self._presence(occupant, full, with_jid=with_jid, codes=codes, **kwargs))
        own = list(occupant.sessions) if occupant.nick in self.occupants and \
            self.occupants[occupant.nick] is occupant else []
        for full in [*own, *gone_sessions]:
            self.send(self._presence(occupant, full, with_jid=True,
                                     codes=("110", *codes, *self_codes), **kwargs))

    def _take_token(self, occupant: Occupant) -> bool:
        """The per-occupant message bucket (``[muc] message_rate``, ``message_burst``)."""
        rate, burst = self.service.message_rate, self.service.message_burst
        now = time.monotonic()
        occupant.tokens = min(burst, occupant.tokens + (now - occupant.stamp) * rate)
        occupant.stamp = now
        if occupant.tokens < 1.0:
            return False
        occupant.tokens -= 1.0
        return True

    # ============================================================================================
    # Entering, presence updates, nickname changes, leaving (XEP-0045 sections 7.2, 7.6, 7.14)
    # ============================================================================================
    def presence(self, stanza: Element, full: str, nick: str) -> None:
        ptype = stanza.attrs.get("type")
        occupant = self.by_full.get(full)
        if ptype == "error":
            if occupant is not None:
                self._remove_session(occupant, full, ("333",))
            return
        if ptype == "unavailable":
            if occupant is not None:
                occupant.payload = _payload(stanza)
                self._remove_session(occupant, full, ())
            return
        if ptype is not None:
            return  # subscriptions and probes to a room are ignored (section 7.2.1 says nothing else)
        if occupant is None:
            self.join(stanza, full, nick)
        elif not self._take_token(occupant):
            # Each update is sent to every occupant: it shares the message bucket (mod_muc_limits
            # counts presence alike).
            self.send(error(stanza, "policy-violation", "too many presence updates, please slow down", "wait"))
        elif occupant.nick != nick:
            self._change_nick(stanza, occupant, full, nick)
        else:
            occupant.payload = _payload(stanza)
            self._broadcast_presence(occupant)

    def join(self, stanza: Element, full: str, nick: str, created: bool = False) -> None:
        bare = bare_of(full)
        affiliation = self.affiliation(bare)
        muc_x = stanza.find("x", MUC_NS)

        def refuse(condition: str, text: str, etype: str | None = None) -> None:
            reply = error(stanza, condition, text, etype)
            if muc_x is not None and reply.find("x", MUC_NS) is None:
                reply.children.insert(0, Element("x", MUC_NS))
            self.send(reply)

        if self.locked and affiliation != "owner":
            # XEP-0045 section 10.1.1: a room is locked until its owner configures it.
            return refuse("item-not-found", "this room is not configured yet")
        if affiliation == "outcast":
            return refuse("forbidden", "you are banned from this room")  # section 7.2.7
        if self.config.members_only and RANK[affiliation] < RANK["member"]:
            return refuse("registration-required", "this room is members-only")  # section 7.2.6
        if self.config.password and affiliation not in ("owner", "admin"):
            given = muc_x.find_text("password", MUC_NS) if muc_x is not None else None
            if given != self.config.password:
                return refuse("not-authorized", "a password is required")  # section 7.2.5
        holder = self.occupants.get(nick)
        if holder is not None and holder.bare != bare:
            return refuse("conflict", "that nickname is in use")  # section 7.2.9
        reserved_by = next((j for j, n in self.reserved.items() if n == nick and j != bare), None)
        if reserved_by is not None:
            return refuse("conflict", "that nickname is reserved by a member")  # section 7.12
        if holder is None and len(self.occupants) >= min(self.config.max_users, self.service.max_occupants) \
                and affiliation not in ("owner", "admin"):
            return refuse("service-unavailable", "the room is full")  # section 7.2.10
        joined = self.service.joined.setdefault(bare, set())
        if self.jid not in joined:
            service = self.service
            count = len(joined)
            if service.elsewhere is not None:
                count += service.elsewhere.joined(bare)  # the rooms of the other nodes (peerage.cluster.muc)
            if count >= service.max_rooms_joined:
                if not joined:
                    del service.joined[bare]
                return refuse("resource-constraint", f"you are in {service.max_rooms_joined} rooms already", "wait")
            joined.add(self.jid)
            if service.elsewhere is not None:
                service.joined_changed(bare)
        if holder is not None:
            occupant = holder
        else:
            occupant = Occupant(nick, bare, self._default_role(affiliation), self.occupant_id(bare),
                                self.service.message_burst)
            self.occupants[nick] = occupant
        occupant.sessions[full] = None
        occupant.payload = _payload(stanza)
        self.by_full[full] = occupant
        anyone = self.config.whois == "anyone"
        # Section 7.2.3: the occupants' presence first, then the new occupant's own presence.
        for other in list(self.occupants.values()):
            if other is not occupant:
                self.send(self._presence(other, full, with_jid=anyone or occupant.role == "moderator"))
        self_codes: list[str] = []
        if anyone:
            self_codes.append("100")  # section 7.2.4: the room is non-anonymous
        if self.config.archiving:
            self_codes.append("170")  # section 7.2.13: the room is logged
        if created:
            self_codes.append("201")
        if holder is None:
            self._broadcast_presence(occupant, self_codes=tuple(self_codes))
        else:
            self.send(self._presence(occupant, full, with_jid=True, codes=("110", *self_codes)))
        self._send_history(full, muc_x)
        # Section 7.2.15: the subject, always (empty when none was set).
        subject = Element("message", "", {"from": f"{self.jid}/{self.subject_by}" if self.subject_by else self.jid,
                                          "to": full, "type": "groupchat"})
        subject.add("subject", text=self.subject)
        self.send(subject)

    def _send_history(self, full: str, muc_x: Element | None) -> None:
        """Section 7.2.14: the discussion history, limited as the new occupant asked."""
        entries = list(self.history)
        if self.config.history_length == 0:
            return
        entries = entries[-self.config.history_length:]
        spec = muc_x.find("history", MUC_NS) if muc_x is not None else None
        if spec is not None:
            try:
                if "seconds" in spec.attrs:
                    since = time.time() - int(spec.attrs["seconds"])
                    entries = [e for e in entries if e.stamp >= since]
                if "since" in spec.attrs:
                    since = parse_stamp(spec.attrs["since"])
                    entries = [e for e in entries if e.stamp > since]
                if "maxstanzas" in spec.attrs:
                    count = max(0, int(spec.attrs["maxstanzas"]))
                    entries = entries[len(entries) - count:] if count else []
                if "maxchars" in spec.attrs:
                    budget = max(0, int(spec.attrs["maxchars"]))
                    kept: list[HistoryEntry] = []
                    for entry in reversed(entries):
                        if entry.chars > budget:
                            break
                        budget -= entry.chars
                        kept.append(entry)
                    entries = kept[::-1]
            except ValueError:
                pass  # a malformed limit is ignored, as if the client had not asked
        for entry in entries:
            message = Element("message", "", {**entry.message.attrs, "to": full}, list(entry.message.children))
            message.add("delay", DELAY_NS, {"from": self.jid, "stamp": stamp_text(entry.stamp)})
            self.send(message)

    def _change_nick(self, stanza: Element, occupant: Occupant, full: str, nick: str) -> None:
        """Section 7.6: unavailable with 303 under the old nick, then available under the new one."""
        holder = self.occupants.get(nick)
        reserved_by = next((j for j, n in self.reserved.items() if n == nick and j != occupant.bare), None)
        if (holder is not None and holder.bare != occupant.bare) or reserved_by is not None:
            self.send(error(stanza, "conflict", "that nickname is in use"))
            return
        if holder is not None or len(occupant.sessions) > 1:
            # Merging into the same account's other occupant, or splitting sessions: not supported.
            self.send(error(stanza, "not-acceptable", "change the nickname from every session at once"))
            return
        self._broadcast_presence(occupant, unavailable=True, codes=("303",), nick=nick)
        del self.occupants[occupant.nick]
        occupant.nick = nick
        occupant.payload = _payload(stanza)
        self.occupants[nick] = occupant
        self._broadcast_presence(occupant)

    def _remove_session(self, occupant: Occupant, full: str, codes: tuple[str, ...], *,
                        item_extra: list[Element] | None = None, affiliation: str | None = None) -> None:
        occupant.sessions.pop(full, None)
        self.by_full.pop(full, None)
        if occupant.sessions:
            self.send(self._presence(occupant, full, with_jid=True, codes=("110", *codes), unavailable=True))
            return
        self._drop_occupant(occupant, codes, gone=(full,), item_extra=item_extra, affiliation=affiliation)

    def _drop_occupant(self, occupant: Occupant, codes: tuple[str, ...], *, gone: tuple[str, ...] = (),
                       item_extra: list[Element] | None = None, affiliation: str | None = None) -> None:
        sessions = tuple(occupant.sessions) + gone
        for full in occupant.sessions:
            self.by_full.pop(full, None)
        occupant.sessions = {}
        if self.occupants.get(occupant.nick) is occupant:
            del self.occupants[occupant.nick]
        joined = self.service.joined.get(occupant.bare)
        if joined is not None and self.jid in joined:
            joined.discard(self.jid)
            if not joined:
                del self.service.joined[occupant.bare]
            if self.service.elsewhere is not None:
                self.service.joined_changed(occupant.bare)
        self._broadcast_presence(occupant, codes=codes, unavailable=True, role="none", gone_sessions=sessions,
                                 item_extra=item_extra, affiliation=affiliation)
        if not self.occupants:
            self.service.room_empty(self)

    # ============================================================================================
    # Messages (sections 7.4, 7.5, 7.8, 8.1, 8.6)
    # ============================================================================================
    def groupchat(self, stanza: Element, full: str) -> None:
        occupant = self.by_full.get(full)
        if occupant is None:
            self.send(error(stanza, "not-acceptable", "only occupants may send messages to the room"))
            return
        if not self._take_token(occupant):
            self.send(error(stanza, "policy-violation", "the room is overactive, please slow down", "wait"))
            return
        body = stanza.find("body")
        subject = stanza.find("subject")
        if subject is not None and body is None:
            self._set_subject(stanza, occupant, subject.text)
            return
        if occupant.role == "visitor":
            self.send(error(stanza, "forbidden", "you need voice to speak in this moderated room"))
            return
        text = body.text if body is not None else ""
        if len(text) > limits.MAX_BODY_CHARS or text.count("\n") >= limits.MAX_BODY_LINES:
            self.send(error(stanza, "policy-violation",
                            f"messages are limited to {limits.MAX_BODY_CHARS} characters and "
                            f"{limits.MAX_BODY_LINES} lines here"))
            return
        self.broadcast_message(stanza, occupant, len(text), body is not None)

    def broadcast_message(self, stanza: Element, occupant: Occupant, chars: int, archived: bool) -> None:
        attrs = {"from": f"{self.jid}/{occupant.nick}", "type": "groupchat"}
        if "id" in stanza.attrs:
            attrs["id"] = stanza.attrs["id"]
        # XEP-0421 section 4 and XEP-0359 section 4: remove what claims to be ours, then add ours.
        children: list[Element | str] = [
            c for c in stanza.children
            if not (c.__class__ is Element and (c.xmlns == OCCUPANT_ID_NS
                                               or (c.xmlns == SID_NS and c.attrs.get("by") == self.jid)))]
        children.append(Element("occupant-id", OCCUPANT_ID_NS, {"id": occupant.occupant_id}))
        template = Element("message", "", attrs, children)
        now = time.time()
        if archived and self.config.archiving and stanza.find("no-store", "urn:xmpp:hints") is None:
            archive_id = self.service.archive.add(self.jid, f"{self.jid}/{occupant.nick}", template, now)
            children.append(Element("stanza-id", SID_NS, {"by": self.jid, "id": archive_id}))
        if archived and self.config.history_length:
            self.history.append(HistoryEntry(template, now, chars))
        send = self.service.send
        for other in self.occupants.values():
            for session in other.sessions:
                send(Element("message", "", {**attrs, "to": session}, children))
        if archived:
            for member in self.absent_members_for_delivery():
                send(Element("message", "", {**attrs, "to": member}, children))

    def absent_members_for_delivery(self) -> list[str]:
        """Members (with a reserved nickname, as Prosody's mod_muc_offline_delivery asks) who are not in
        the room and get its messages at their bare JID, for their server to push to their phone."""
        default = self.service.offline_delivery_default
        present = {occupant.bare for occupant in self.occupants.values()}
        return [jid for jid, affiliation in self.affiliations.items()
                if RANK[affiliation] >= RANK["member"] and jid in self.reserved and jid not in present
                and self.offline.get(jid, default)][: limits.MAX_OFFLINE_DELIVERIES]

    async def moderate(self, iq: Element, sender: str, archive_id: str, reason: str) -> Element:
        """XEP-0425: a moderator retracts a message (by its stanza-id); everyone is told, the archive
        keeps a tombstone in its place, and the history given to newcomers drops it."""
        actor = self.by_full.get(sender)
        if actor is None or actor.role != "moderator":
            return error(iq, "forbidden", "only moderators may retract messages")
        if len(reason) > limits.MAX_REASON_CHARS:
            return error(iq, "not-acceptable", f"a reason is at most {limits.MAX_REASON_CHARS} characters")
        stored = await self.service.archive.find(self.jid, archive_id) if archive_id else None
        if stored is None:
            return error(iq, "item-not-found", "no message with that id in this room's archive")
        from peerage.xmpp.stream import parse_stored

        try:
            original = parse_stored(stored)
        except ValueError:
            return error(iq, "item-not-found", "no message with that id in this room's archive")
        if original.find("retracted", RETRACT_NS) is not None:
            return iq_result(iq)  # retracted already: nothing more to do
        by = f"{self.jid}/{actor.nick}"
        now = time.time()
        # Section 6: the tombstone keeps who wrote it (from, occupant-id), not what was written.
        tombstone = Element("message", "", {k: v for k, v in original.attrs.items() if k in ("from", "type", "id")})
        retracted = tombstone.add("retracted", RETRACT_NS, {"stamp": stamp_text(now)})
        retracted.add("moderated", MODERATE_NS, {"by": by}).add(
            "occupant-id", OCCUPANT_ID_NS, {"id": actor.occupant_id})
        if reason:
            retracted.add("reason", RETRACT_NS, text=reason)
        for child in original.children:
            if child.__class__ is Element and child.xmlns in (OCCUPANT_ID_NS, SID_NS):
                tombstone.children.append(child)
        await self.service.archive.replace(self.jid, archive_id, tombstone)
        self.history = collections.deque(
            (entry for entry in self.history if not _has_stanza_id(entry.message, self.jid, archive_id)),
            maxlen=self.history.maxlen)
        # Section 5, in both versions, in one message (clients read the one they know).
        announcement: list[Element | str] = []
        retract = Element("retract", RETRACT_NS, {"id": archive_id})
        retract.add("moderated", MODERATE_NS, {"by": by}).add("occupant-id", OCCUPANT_ID_NS, {"id": actor.occupant_id})
        if reason:
            retract.add("reason", RETRACT_NS, text=reason)
        announcement.append(retract)
        legacy = Element("apply-to", FASTEN_NS, {"id": archive_id})
        moderated = legacy.add("moderated", MODERATE_NS_0, {"by": by})
        moderated.add("retract", RETRACT_NS_0)
        if reason:
            moderated.add("reason", MODERATE_NS_0, text=reason)
        announcement.append(legacy)
        # XEP-0424 section 4's fallback for clients without retraction, marked as such (XEP-0428).
        announcement.append(Element("fallback", "urn:xmpp:fallback:0", {"for": RETRACT_NS}))
        announcement.append(Element("body", "", {}, [f"A moderator removed a message{': ' + reason if reason else '.'}"]))
        announcement.append(Element("store", "urn:xmpp:hints"))
        send = self.service.send
        for other in self.occupants.values():
            for session in other.sessions:
                send(Element("message", "", {"from": self.jid, "to": session, "type": "groupchat",
                                             "id": f"retract-{archive_id}"}, list(announcement)))
        log.info("room %s: message %s retracted by %s", self.jid, archive_id, by)
        return iq_result(iq)

    def _set_subject(self, stanza: Element, occupant: Occupant, text: str) -> None:
        if not (occupant.role == "moderator" or (self.config.change_subject and occupant.role == "participant")):
            self.send(error(stanza, "forbidden", "you may not change the subject"))  # section 8.1
            return
        if len(text) > limits.MAX_SUBJECT_CHARS:
            self.send(error(stanza, "not-acceptable", f"subjects are limited to {limits.MAX_SUBJECT_CHARS} characters"))
            return
        self.subject, self.subject_by = text, occupant.nick
        for other in self.occupants.values():
            for session in other.sessions:
                message = Element("message", "", {"from": f"{self.jid}/{occupant.nick}", "to": session,
                                                  "type": "groupchat"})
                message.add("subject", text=text)
                self.send(message)
        self.service.save(self)

    def private(self, stanza: Element, full: str, nick: str) -> None:
        """A message to ``room/nick`` (section 7.5), or an error from an occupant."""
        mtype = stanza.attrs.get("type", "normal")
        sender = self.by_full.get(full)
        if mtype == "error":
            if sender is not None:
                err = stanza.find("error")
                condition = next((c.name for c in err.elements() if c.xmlns == STANZAS_NS), "") if err else ""
                if condition in GONE_CONDITIONS:
                    self._remove_session(sender, full, ("333",))
            return
        if sender is None:
            self.send(error(stanza, "not-acceptable", "only occupants may send private messages"))
            return
        if mtype == "groupchat":
            self.send(error(stanza, "bad-request", "groupchat messages go to the room's bare address"))
            return
        allow = self.config.allow_pm
        if allow == "none" or (allow == "moderators" and sender.role != "moderator") or \
                (allow == "participants" and sender.role not in ("moderator", "participant")):
            self.send(error(stanza, "forbidden", "private messages are not allowed here"))
            return
        target = self.occupants.get(nick)
        if target is None:
            self.send(error(stanza, "item-not-found", "no occupant has that nickname"))
            return
        if not self._take_token(sender):
            self.send(error(stanza, "policy-violation", "the room is overactive, please slow down", "wait"))
            return
        children = [c for c in stanza.children if not (c.__class__ is Element and c.xmlns == MUC_USER)]
        children.append(Element("x", MUC_USER))
        for session in target.sessions:
            self.send(Element("message", "", {**stanza.attrs, "from": f"{self.jid}/{sender.nick}", "to": session},
                              list(children)))

    def message_to_room(self, stanza: Element, full: str) -> None:
        """A non-groupchat message to the room: invitations, declines, voice requests and answers."""
        if stanza.attrs.get("type") == "error":
            occupant = self.by_full.get(full)
            if occupant is not None:
                self._remove_session(occupant, full, ("333",))
            return
        x = stanza.find("x", MUC_USER)
        if x is not None:
            invites = x.find_all("invite", MUC_USER)
            decline = x.find("decline", MUC_USER)
            if invites:
                return self._invite(stanza, full, invites)
            if decline is not None:
                return self._decline(stanza, full, decline)
        form = stanza.find("x", forms.DATA_NS)
        if form is not None:
            values = forms.submitted_values(form)
            if values.get("FORM_TYPE") == [forms.REQUEST]:
                return self._voice_form(stanza, full, form, values)
        self.send(error(stanza, "bad-request", "messages to a room are of type groupchat"))

    def _invite(self, stanza: Element, full: str, invites: list[Element]) -> None:
        """Section 7.8.2: a mediated invitation, sent on by the room."""
        occupant = self.by_full.get(full)
        if occupant is None:
            self.send(error(stanza, "not-acceptable", "only occupants may invite"))
            return
        affiliation = self.affiliation(occupant.bare)
        if self.config.members_only and affiliation not in ("owner", "admin") and \
                not (self.config.allow_invites and affiliation == "member"):
            self.send(error(stanza, "forbidden", "only admins may invite to this members-only room"))
            return
        if not self._take_token(occupant):
            self.send(error(stanza, "policy-violation", "the room is overactive, please slow down", "wait"))
            return
        for invite in invites[:5]:  # a handful per message: an invitation is not a mailing list
            try:
                invitee = bare_of(invite.attrs.get("to", ""))
            except JidError:
                self.send(error(stanza, "jid-malformed", "the invitee's address is malformed"))
                return
            if self.config.members_only and self.affiliation(invitee) == "none":
                self.affiliations[invitee] = "member"  # section 7.8.2: the invitee joins the member list
                self.service.save(self)
            message = Element("message", "", {"from": self.jid, "to": invitee})
            if "id" in stanza.attrs:
                message.attrs["id"] = stanza.attrs["id"]
            out = message.add("x", MUC_USER)
            forwarded = out.add("invite", MUC_USER, {"from": full})
            reason = invite.find_text("reason", MUC_USER)
            if reason:
                forwarded.add("reason", MUC_USER, text=reason[:1024])
            if self.config.password:
                out.add("password", MUC_USER, text=self.config.password)
            message.add("body", text=f"{occupant.nick} invites you to the room {self.jid}"
                        + (f": {reason[:1024]}" if reason else ""))
            self.send(message)

    def _decline(self, stanza: Element, full: str, decline: Element) -> None:
        try:
            to = split_jid(decline.attrs.get("to", ""))
        except JidError:
            self.send(error(stanza, "jid-malformed", "the inviter's address is malformed"))
            return
        if not to[1]:
            self.send(error(stanza, "bad-request", "a decline names the inviter"))
            return
        message = Element("message", "", {"from": self.jid, "to": decline.attrs["to"]})
        out = message.add("x", MUC_USER).add("decline", MUC_USER, {"from": bare_of(full)})
        reason = decline.find_text("reason", MUC_USER)
        if reason:
            out.add("reason", MUC_USER, text=reason[:1024])
        self.send(message)

    def _voice_form(self, stanza: Element, full: str, form: Element, values: dict[str, list[str]]) -> None:
        occupant = self.by_full.get(full)
        if occupant is None:
            self.send(error(stanza, "not-acceptable", "only occupants may ask for voice"))
            return
        if form.attrs.get("type") == "submit" and "muc#request_allow" in values:
            # A moderator's answer to a voice request (section 8.6).
            if occupant.role != "moderator":
                self.send(error(stanza, "forbidden", "only moderators answer voice requests"))
                return
            if (values.get("muc#request_allow") or [""])[0] in ("1", "true"):
                nick = (values.get("muc#roomnick") or [""])[0]
                target = self.occupants.get(nick)
                if target is not None and target.role == "visitor":
                    target.role = "participant"
                    self._broadcast_presence(target)
            return
        if occupant.role != "visitor":
            return  # has voice already
        if not self._take_token(occupant):
            self.send(error(stanza, "policy-violation", "too many requests, please wait", "wait"))
            return
        for moderator in self.occupants.values():
            if moderator.role != "moderator":
                continue
            for session in moderator.sessions:
                message = Element("message", "", {"from": self.jid, "to": session})
                message.children.append(forms.voice_request_form(occupant.nick, occupant.jid))
                self.send(message)

    # ============================================================================================
    # IQs to an occupant (room/nick): self-ping (XEP-0410) and proxied queries (section 7.? , 17.3)
    # ============================================================================================
    def occupant_iq(self, stanza: Element, full: str, nick: str) -> None:
        itype = stanza.attrs.get("type")
        if itype in ("result", "error"):
            entry = self.proxied.pop(stanza.attrs.get("id", ""), None)
            if entry is None:
                return
            requester, request_id, target_nick = entry
            source = self.occupants.get(target_nick)
            if source is None or (full not in source.sessions and bare_of(full) != source.bare):
                return
            reply = Element("iq", "", {"type": itype, "id": request_id, "to": requester,
                                       "from": f"{self.jid}/{target_nick}"}, list(stanza.children))
            self.send(reply)
            return
        sender = self.by_full.get(full)
        payload = next(stanza.elements(), None)
        if sender is None:
            # XEP-0410 section 4: not joined (under this nick or at all) is not-acceptable.
            self.send(error(stanza, "not-acceptable", "you are not an occupant of this room"))
            return
        target = self.occupants.get(nick)
        if payload is not None and payload.name == "ping" and payload.xmlns == PING_NS and target is sender:
            self.send(iq_result(stanza))  # XEP-0410 section 3: the room answers a self-ping
            return
        if target is None:
            self.send(error(stanza, "item-not-found", "no occupant has that nickname"))
            return
        if itype not in ("get", "set") or payload is None:
            self.send(error(stanza, "bad-request"))
            return
        while len(self.proxied) >= limits.MAX_PROXIED_IQS:
            self.proxied.popitem(last=False)
        proxy_id = self.service.new_id()
        self.proxied[proxy_id] = (full, stanza.attrs.get("id", ""), nick)
        # Section 17.3: vCard queries go to the occupant's bare JID; others to its session.
        to = target.bare if payload.xmlns == VCARD_NS else target.jid
        self.send(Element("iq", "", {"type": itype, "id": proxy_id, "to": to, "from": f"{self.jid}/{sender.nick}"},
                          list(stanza.children)))

    # ============================================================================================
    # Moderation and affiliations: muc#admin (sections 8, 9)
    # ============================================================================================
    def admin_get(self, iq: Element, query: Element, sender: str) -> Element:
        bare = bare_of(sender)
        affiliation = self.affiliation(bare)
        item = query.find("item", MUC_ADMIN)
        if item is None:
            return error(iq, "bad-request", "name an affiliation or a role")
        result = Element("query", MUC_ADMIN)
        if "affiliation" in item.attrs:
            wanted = item.attrs["affiliation"]
            if wanted not in AFFILIATIONS or wanted == "none":
                return error(iq, "bad-request", "unknown affiliation")
            allowed = RANK[affiliation] >= RANK["admin"] or (wanted == "member" and affiliation == "member"
                                                             and self.config.members_only)
            if not allowed:
                return error(iq, "forbidden", "only admins and owners see affiliation lists")
            for jid, aff in sorted(self.affiliations.items()):
                if aff == wanted:
                    entry = result.add("item", attrs={"affiliation": aff, "jid": jid})
                    if jid in self.reserved:
                        entry.attrs["nick"] = self.reserved[jid]
                    if self.reasons.get(jid):
                        entry.add("reason", MUC_ADMIN, text=self.reasons[jid])
            return iq_result(iq, result)
        wanted = item.attrs.get("role", "")
        if wanted not in ("moderator", "participant", "visitor"):
            return error(iq, "bad-request", "unknown role")
        requester = self.by_full.get(sender)
        if requester is None or requester.role != "moderator":
            return error(iq, "forbidden", "only moderators see role lists")
        for occupant in self.occupants.values():
            if occupant.role == wanted:
                result.add("item", attrs={"role": occupant.role, "nick": occupant.nick, "jid": occupant.jid,
                                          "affiliation": self.affiliation(occupant.bare)})
        return iq_result(iq, result)

    def admin_set(self, iq: Element, query: Element, sender: str) -> Element:
        actor_bare = bare_of(sender)
        actor_affiliation = self.affiliation(actor_bare)
        actor = self.by_full.get(sender)
        items = query.find_all("item", MUC_ADMIN)
        if not items:
            return error(iq, "bad-request", "no item to change")
        changes: list[tuple[str, Element]] = []
        for item in items:  # section 9.1: all or nothing, so check every item first
            reason = item.find_text("reason", MUC_ADMIN) or ""
            if "role" in item.attrs:
                problem = self._check_role(item, actor, actor_affiliation)
                kind = "role"
            elif "affiliation" in item.attrs:
                problem = self._check_affiliation(item, actor_affiliation)
                kind = "affiliation"
            else:
                problem = ("bad-request", "an item changes a role or an affiliation")
                kind = ""
            if problem is not None:
                return error(iq, *problem)
            if len(reason) > 1024:
                return error(iq, "not-acceptable", "the reason is too long")
            changes.append((kind, item))
        owners_after = set(self.owners())
        for kind, item in changes:
            if kind == "affiliation":
                jid = bare_of(item.attrs["jid"])
                (owners_after.add if item.attrs["affiliation"] == "owner" else owners_after.discard)(jid)
        if not owners_after:
            return error(iq, "conflict", "a room keeps at least one owner")  # section 10.9
        actor_nick = actor.nick if actor is not None else ""
        for kind, item in changes:
            reason = item.find_text("reason", MUC_ADMIN) or ""
            if kind == "role":
                self._set_role(self.occupants[item.attrs["nick"]], item.attrs["role"], actor_nick, reason)
            else:
                self.set_affiliation(bare_of(item.attrs["jid"]), item.attrs["affiliation"], actor_nick, reason,
                                     item.attrs.get("nick"))
        self.service.save(self)
        return iq_result(iq)

    def _check_role(self, item: Element, actor: Occupant | None, actor_affiliation: str) -> tuple[str, str] | None:
        role = item.attrs["role"]
        if role not in ROLES:
            return ("bad-request", "unknown role")
        target = self.occupants.get(item.attrs.get("nick", ""))
        if target is None:
            return ("item-not-found", "no occupant has that nickname")
        if actor is None or actor.role != "moderator":
            return ("forbidden", "only moderators change roles")
        target_affiliation = self.affiliation(target.bare)
        # Sections 9.6, 9.7: granting or revoking moderator is for admins and owners, and an admin's or
        # owner's moderator role is theirs by affiliation.
        if role == "moderator" and RANK[actor_affiliation] < RANK["admin"]:
            return ("not-allowed", "only admins and owners grant moderator")
        if target.role == "moderator" and role != "moderator" and (
                RANK[actor_affiliation] < RANK["admin"] or RANK[target_affiliation] >= RANK["admin"]):
            return ("not-allowed", "you may not change this moderator's role")
        if role in ("none", "visitor") and RANK[target_affiliation] >= RANK["admin"]:
            return ("not-allowed", "admins and owners cannot be kicked or silenced")  # section 8.2
        if role in ("none", "visitor") and RANK[target_affiliation] > RANK[actor_affiliation]:
            return ("not-allowed", "you may not do that to someone with a higher affiliation")
        return None

    def _check_affiliation(self, item: Element, actor_affiliation: str) -> tuple[str, str] | None:
        affiliation = item.attrs["affiliation"]
        if affiliation not in AFFILIATIONS:
            return ("bad-request", "unknown affiliation")
        try:
            jid = bare_of(item.attrs.get("jid", ""))
        except JidError:
            return ("jid-malformed", "the item's jid is malformed")
        if not jid:
            if "nick" in item.attrs and item.attrs["nick"] in self.occupants:
                item.attrs["jid"] = jid = self.occupants[item.attrs["nick"]].bare
            else:
                return ("bad-request", "an affiliation change names a jid")
        current = self.affiliation(jid)
        if actor_affiliation == "owner":
            pass
        elif actor_affiliation == "admin":
            # Section 9: admins manage members and outcasts, never admins or owners.
            if RANK[current] >= RANK["admin"] or affiliation in ("owner", "admin"):
                return ("not-allowed", "admins may only change members, outcasts and none")
        else:
            return ("forbidden", "only admins and owners change affiliations")
        if current == "none" and affiliation != "none" and len(self.affiliations) >= limits.MAX_AFFILIATIONS:
            return ("resource-constraint", "this room has too many affiliations")
        return None

    def _set_role(self, target: Occupant, role: str, actor_nick: str, reason: str) -> None:
        extra = _actor_reason(actor_nick, reason)
        if role == "none":
            self._drop_occupant(target, ("307",), item_extra=extra)  # section 8.2: kicked
            return
        target.role = role
        self._broadcast_presence(target, item_extra=extra)

    def set_affiliation(self, jid: str, affiliation: str, actor_nick: str = "", reason: str = "",
                        nick: str | None = None) -> None:
        if affiliation == "none":
            self.affiliations.pop(jid, None)
            self.reserved.pop(jid, None)
            self.reasons.pop(jid, None)
            self.offline.pop(jid, None)
        else:
            self.affiliations[jid] = affiliation
            if reason:
                self.reasons[jid] = reason[:1024]
            if nick and affiliation in ("member", "admin", "owner"):
                self.reserved[jid] = nick[: limits.MAX_NICK_LENGTH]
        extra = _actor_reason(actor_nick, reason)
        for occupant in [o for o in self.occupants.values() if o.bare == jid]:
            if affiliation == "outcast":
                self._drop_occupant(occupant, ("301",), item_extra=extra, affiliation="outcast")  # section 9.1
            elif self.config.members_only and affiliation == "none":
                self._drop_occupant(occupant, ("321",), item_extra=extra, affiliation="none")  # section 9.5
            else:
                occupant.role = self._default_role(affiliation) if occupant.role != "visitor" or \
                    RANK[affiliation] >= RANK["member"] else occupant.role
                self._broadcast_presence(occupant, item_extra=extra)

    # ============================================================================================
    # Configuration and destruction: muc#owner (section 10)
    # ============================================================================================
    def owner_get(self, iq: Element, sender: str) -> Element:
        if self.affiliation(bare_of(sender)) != "owner":
            return error(iq, "forbidden", "only owners configure the room")
        query = Element("query", MUC_OWNER)
        query.children.append(forms.config_form(
            self.config, self.owners(), sorted(j for j, a in self.affiliations.items() if a == "admin"),
            self.service.max_occupants))
        return iq_result(iq, query)

    def owner_set(self, iq: Element, query: Element, sender: str, owned: int | None = None) -> Element:
        if self.affiliation(bare_of(sender)) != "owner":
            return error(iq, "forbidden", "only owners configure or destroy the room")
        destroy = query.find("destroy", MUC_OWNER)
        if destroy is not None:
            self.destroy(destroy.attrs.get("jid"), destroy.find_text("reason", MUC_OWNER) or "")
            return iq_result(iq)
        form = query.find("x", forms.DATA_NS)
        if form is None:
            return error(iq, "bad-request", "send a form or a destroy request")
        if form.attrs.get("type") == "cancel":
            if self.locked:
                self.destroy(None, "the owner cancelled the room's creation")  # section 10.1.3
            return iq_result(iq)
        if form.attrs.get("type") != "submit":
            return error(iq, "bad-request", "the form's type is submit or cancel")
        try:
            config, owners, admins = forms.apply_config(self.config, form, self.service.max_occupants)
            new_owners = {bare_of(j) for j in owners or [] if j}
            new_admins = {bare_of(j) for j in admins or [] if j}
        except FormError as problem:
            return error(iq, "not-acceptable", str(problem))
        except JidError:
            return error(iq, "jid-malformed", "an owner or admin address is malformed")
        if owners is not None and not new_owners:
            return error(iq, "conflict", "a room keeps at least one owner")
        if config.persistent and not self.config.persistent and not self.service.may_own(bare_of(sender), self, owned):
            return error(iq, "not-allowed", f"you own {self.service.max_rooms_owned} rooms already")
        old = self.config
        self.config = config
        if config.history_length != old.history_length:
            self.history = collections.deque(list(self.history)[-max(1, config.history_length):],
                                             maxlen=max(1, config.history_length))
        if owners is not None:
            for jid in [j for j, a in self.affiliations.items() if a == "owner" and j not in new_owners]:
                self.set_affiliation(jid, "admin" if jid in new_admins else "none")
            for jid in new_owners:
                if self.affiliation(jid) != "owner":
                    self.set_affiliation(jid, "owner")
        if admins is not None:
            for jid in [j for j, a in self.affiliations.items() if a == "admin" and j not in new_admins]:
                self.set_affiliation(jid, "none")
            for jid in new_admins:
                if self.affiliation(jid) not in ("owner", "admin"):
                    self.set_affiliation(jid, "admin")
        was_locked = self.locked
        self.locked = False
        if self.lock_timer is not None:
            self.lock_timer.cancel()
            self.lock_timer = None
        if not was_locked:
            codes = ["104"]  # section 10.2.1: a change other than privacy
            if config.whois != old.whois:
                codes.append("172" if config.whois == "anyone" else "173")
            if config.archiving != old.archiving:
                codes.append("170" if config.archiving else "171")
            self._notify(codes)
        if config.members_only and not old.members_only:
            for occupant in list(self.occupants.values()):
                if RANK[self.affiliation(occupant.bare)] < RANK["member"]:
                    self._drop_occupant(occupant, ("322",))  # section 9.? : members-only now
        if config.moderated != old.moderated:
            for occupant in list(self.occupants.values()):
                role = self._default_role(self.affiliation(occupant.bare))
                if role != occupant.role and occupant.role != "moderator":
                    occupant.role = role
                    self._broadcast_presence(occupant)
        self.service.save(self)
        if not config.persistent and old.persistent and not self.occupants:
            self.service.room_empty(self)
        return iq_result(iq)

    def _notify(self, codes: list[str]) -> None:
        for occupant in self.occupants.values():
            for session in occupant.sessions:
                message = Element("message", "", {"from": self.jid, "to": session, "type": "groupchat"})
                self._status(message.add("x", MUC_USER), codes)
                self.send(message)

    def destroy(self, alternate: str | None, reason: str) -> None:
        """Section 10.9: every occupant leaves with the destroy notice; the room is gone."""
        destroy = Element("destroy", MUC_USER)
        if alternate:
            destroy.attrs["jid"] = alternate
        if reason:
            destroy.add("reason", MUC_USER, text=reason[:1024])
        for occupant in list(self.occupants.values()):
            for full in occupant.sessions:
                self.by_full.pop(full, None)
                self.send(self._presence(occupant, full, with_jid=True, unavailable=True, affiliation="none",
                                         role="none", x_extra=[destroy], codes=("110",)))
            joined = self.service.joined.get(occupant.bare)
            if joined is not None and self.jid in joined:
                joined.discard(self.jid)
                if not joined:
                    del self.service.joined[occupant.bare]
                if self.service.elsewhere is not None:
                    self.service.joined_changed(occupant.bare)
        self.occupants.clear()
        self.service.destroyed(self)

    # ============================================================================================
    # Registration with the room (section 7.10) and the reserved nickname (7.12)
    # ============================================================================================
    def register_get(self, iq: Element, sender: str) -> Element:
        bare = bare_of(sender)
        query = Element("query", REGISTER_NS)
        registered = RANK[self.affiliation(bare)] >= RANK["member"]
        if registered:
            query.add("registered")
            query.add("username", text=self.reserved.get(bare, ""))
        elif self.affiliation(bare) == "outcast":
            return error(iq, "forbidden", "you are banned from this room")
        else:
            query.add("instructions", text="Choose the nickname you will be known by in this room.")
        # A registered member gets the form too, with its current values (as Prosody's
        # muc_registration_include_form): apps read whether offline delivery is on from it.
        form = query.add("x", forms.DATA_NS, {"type": "form"})
        form.add("field", attrs={"var": "FORM_TYPE", "type": "hidden"}).add("value", text=MUC_REGISTER)
        nick = form.add("field", attrs={"var": "muc#register_roomnick", "type": "text-single", "label": "Nickname"})
        nick.add("required")
        if registered and self.reserved.get(bare):
            nick.add("value", text=self.reserved[bare])
        offline = self.offline.get(bare, self.service.offline_delivery_default)
        form.add("field", attrs={"var": OFFLINE_FIELD, "type": "boolean",
                                 "label": "Receive messages while not connected to the room"}
                 ).add("value", text="1" if offline else "0")
        return iq_result(iq, query)

    def register_set(self, iq: Element, query: Element, sender: str) -> Element:
        bare = bare_of(sender)
        affiliation = self.affiliation(bare)
        if query.find("remove", REGISTER_NS) is not None:
            if affiliation == "member":
                self.set_affiliation(bare, "none")
                self.service.save(self)
            return iq_result(iq)
        if affiliation == "outcast":
            return error(iq, "forbidden", "you are banned from this room")
        if self.config.members_only and affiliation == "none":
            return error(iq, "not-allowed", "membership of this room is by invitation")
        form = query.find("x", forms.DATA_NS)
        values = forms.submitted_values(form) if form is not None else {}
        nick = (values.get("muc#register_roomnick") or [""])[0].strip()
        if not nick:
            return error(iq, "not-acceptable", "a nickname is required")
        if len(nick) > limits.MAX_NICK_LENGTH:
            return error(iq, "not-acceptable", f"nicknames are limited to {limits.MAX_NICK_LENGTH} characters")
        taken = any(n == nick and j != bare for j, n in self.reserved.items()) or \
            (nick in self.occupants and self.occupants[nick].bare != bare)
        if taken:
            return error(iq, "conflict", "that nickname is reserved or in use")
        if affiliation == "none":
            if len(self.affiliations) >= limits.MAX_AFFILIATIONS:
                return error(iq, "resource-constraint", "this room has too many members")
            self.set_affiliation(bare, "member", nick=nick)
        else:
            self.reserved[bare] = nick
        offline = values.get(OFFLINE_FIELD)
        if offline:
            self.offline[bare] = offline[0] in ("1", "true")
        self.service.save(self)
        return iq_result(iq)

    def reserved_nick_info(self, iq: Element, sender: str) -> Element:
        """Section 7.12: disco#info with node x-roomuser-item names the sender's reserved nickname."""
        query = Element("query", DISCO_INFO_NS, {"node": "x-roomuser-item"})
        nick = self.reserved.get(bare_of(sender))
        if nick:
            query.add("identity", attrs={"category": "conference", "type": "text", "name": nick})
        return iq_result(iq, query)

    # ============================================================================================
    # Disco (section 6.4)
    # ============================================================================================
    def disco_info(self) -> Element:
        query = Element("query", DISCO_INFO_NS)
        query.add("identity", attrs={"category": "conference", "type": "text", "name": self.config.name or self.local})
        config = self.config
        features = [MUC_NS, "http://jabber.org/protocol/disco#info", "http://jabber.org/protocol/disco#items",
                    "muc_persistent" if config.persistent else "muc_temporary",
                    "muc_public" if config.public else "muc_hidden",
                    "muc_membersonly" if config.members_only else "muc_open",
                    "muc_moderated" if config.moderated else "muc_unmoderated",
                    "muc_passwordprotected" if config.password else "muc_unsecured",
                    "muc_nonanonymous" if config.whois == "anyone" else "muc_semianonymous",
                    OCCUPANT_ID_NS, SID_NS, PING_NS,
                    "http://jabber.org/protocol/muc#request", "http://jabber.org/protocol/muc#self-ping-optimization",
                    MUC_REGISTER, REGISTER_NS, MODERATE_NS, MODERATE_NS_0]
        if config.archiving:
            features += ["urn:xmpp:mam:2", "urn:xmpp:mam:2#extended"]
        for feature in sorted(set(features)):
            query.add("feature", attrs={"var": feature})
        query.children.append(forms.room_info_form(config, self.subject, len(self.occupants)))
        return query


def _has_stanza_id(message: Element, room: str, archive_id: str) -> bool:
    return any(child.__class__ is Element and child.name == "stanza-id" and child.xmlns == SID_NS
               and child.attrs.get("by") == room and child.attrs.get("id") == archive_id
               for child in message.children)


def _payload(stanza: Element) -> list[Element | str]:
    """What of a presence other occupants see: everything but MUC elements and ids we set."""
    return [c for c in stanza.children
            if c.__class__ is Element and c.xmlns not in (MUC_NS, MUC_USER, OCCUPANT_ID_NS)]


def _actor_reason(actor_nick: str, reason: str) -> list[Element]:
    extra: list[Element] = []
    if actor_nick:
        extra.append(Element("actor", MUC_USER, {"nick": actor_nick}))
    if reason:
        extra.append(Element("reason", MUC_USER, children=[reason[:1024]]))
    return extra
