"""XEP-0398 avatar conversion between vcard-temp and PEP (XEP-0084), and XEP-0153 hashes in presence.

This module is in charge of keeping an account's two avatars the same, whichever a client sets, as
Prosody's mod_vcard_legacy does:

- a XEP-0084 metadata publish (the ``pep-item-published`` event of ``peerage.xmpp.features.pep``)
  copies the matching ``urn:xmpp:avatar:data`` item into the vcard-temp ``PHOTO`` (TYPE and BINVAL);
  empty metadata (the avatar removed) removes ``PHOTO``;
- a vcard-temp set with a ``PHOTO`` (the ``vcard-set`` event of ``peerage.xmpp.features.vcard``)
  publishes the picture as XEP-0084 data and metadata (item id = SHA-1 of the bytes, open access);
- the account's available presence from its clients carries ``<x xmlns='vcard-temp:x:update'><photo/>``
  with that SHA-1 (XEP-0153 section 3.1) when the client did not put one in itself, so that contacts
  on older clients learn of a new avatar. When the hash is not known yet (the account's first
  presence since the server started), the presence waits for it to be read from the PEP metadata node
  and then goes on through the rest of its handlers, so it is never sent without it;
- when the avatar changes (either way), each available resource's presence is broadcast again with
  the new hash (XEP-0153 section 4.1 wants contacts told; as Prosody's mod_vcard_legacy does), without
  waiting for the client to send one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
from typing import Any

from peerage.xmpp.events import HANDLED
from peerage.xmpp.features import Feature
from peerage.xmpp.features.pep import Pep, PubsubError
from peerage.xmpp.stanzas import StanzaEvent
from peerage.xmpp.stream import Element, parse_stored, serialize

log = logging.getLogger(__name__)

AVATAR_DATA_NS = "urn:xmpp:avatar:data"
AVATAR_METADATA_NS = "urn:xmpp:avatar:metadata"
CONVERSION_NS = "urn:xmpp:pep-vcard-conversion:0"
VCARD_NS = "vcard-temp"
VCARD_UPDATE_NS = "vcard-temp:x:update"
#: Accounts whose avatar hash is remembered for presence (oldest forgotten first; reloaded on bind).
MAX_CACHED_HASHES = 100_000
#: Distinct ``<x xmlns='vcard-temp:x:update'/>`` elements kept for sharing (oldest forgotten first).
MAX_CACHED_UPDATES = 10_000


class AvatarConversion(Feature):
    account_features = (CONVERSION_NS,)

    def setup(self) -> None:
        #: account -> SHA-1 (hex) of its avatar, "" for none; absent when not known yet
        self.hashes: dict[str, str] = {}
        #: accounts whose conversion is running (a conversion's own write must not convert back)
        self.converting: set[str] = set()
        #: SHA-1 -> the <x><photo>SHA-1</photo></x> that presence carries. One element per hash,
        #: shared by every presence with it: each available session keeps its last presence for
        #: the whole session (RFC 6121 section 4.4.2, to answer probes), and a copy of its own would
        #: be two elements, two lists and two dicts per idle connection. A presence's children are
        #: shared already and never mutated (presence.with_to).
        self.updates: dict[str, Element] = {}
        events = self.ctx.events
        events.hook("pep-item-published", self._published)
        events.hook("vcard-set", self._vcard_set)
        events.hook("pre-presence/bare", self._presence, 30)
        events.hook("resource-bind", self._bound)

    def _update(self, sha1: str) -> Element:
        """The XEP-0153 section 3.1 update element for ``sha1`` ("" for no avatar: an empty photo)."""
        update = self.updates.get(sha1)
        if update is None:
            update = Element("x", VCARD_UPDATE_NS)
            update.add("photo", text=sha1)
            self.updates[sha1] = update
            while len(self.updates) > MAX_CACHED_UPDATES:
                del self.updates[next(iter(self.updates))]
        return update

    @property
    def pep(self) -> Pep:
        pep = self.ctx.feature(Pep)
        assert pep is not None
        return pep

    def _remember(self, owner: str, sha1: str, changed: bool = False) -> None:
        """Note ``owner``'s avatar hash; ``changed``: it was just set by a client, tell the contacts."""
        previous = self.hashes.pop(owner, None)
        self.hashes[owner] = sha1
        while len(self.hashes) > MAX_CACHED_HASHES:
            del self.hashes[next(iter(self.hashes))]
        if changed and previous != sha1:
            self._spawn(self._rebroadcast(owner, sha1))

    async def _rebroadcast(self, owner: str, sha1: str) -> None:
        from peerage.xmpp.features.presence import Presence

        presence = self.ctx.feature(Presence)
        if presence is None:
            return
        for session in list(self.ctx.router.resources(owner).values()):
            if getattr(session, "node", None) is not None:
                continue  # a stand-in for a session on another cluster node: that node's to tell
            last = session.last_presence
            if not session.available or last is None:
                continue
            current = last.find("x", VCARD_UPDATE_NS)
            if current is not None and current.find_text("photo", VCARD_UPDATE_NS) == sha1:
                continue
            stanza = Element(last.name, last.xmlns, dict(last.attrs), [
                child for child in last.children
                if not (isinstance(child, Element) and child.name == "x" and child.xmlns == VCARD_UPDATE_NS)])
            stanza.children.append(self._update(sha1))
            try:
                await presence.broadcast(session, stanza)
            except Exception:
                log.exception("presence with the new avatar of %s not sent", owner)

    def _spawn(self, coroutine: Any) -> None:
        if self.ctx.spawn is not None:
            self.ctx.spawn(coroutine)
        else:
            coroutine.close()

    # --- PEP -> vcard-temp ----------------------------------------------------------------------
    def _published(self, published: tuple[str, str, str, Element]) -> None:
        owner, node, _item_id, payload = published
        if node == AVATAR_METADATA_NS and owner not in self.converting:
            self._spawn(self._pep_to_vcard(owner, payload))
        return None

    async def _pep_to_vcard(self, owner: str, metadata: Element) -> None:
        try:
            info = metadata.find("info", AVATAR_METADATA_NS)
            photo: Element | None = None
            sha1 = ""
            if info is not None and info.attrs.get("id"):
                sha1 = info.attrs["id"]
                data = await self.pep.get_item(owner, AVATAR_DATA_NS, sha1)
                if data is None:
                    return  # data first, then metadata (XEP-0084 section 4.1): nothing to copy
                photo = Element("PHOTO", VCARD_NS)
                photo.add("TYPE", VCARD_NS, text=info.attrs.get("type", "image/png"))
                photo.add("BINVAL", VCARD_NS, text=data[1].text.strip())
            xml = await self.ctx.storage.get_vcard(owner)
            vcard = parse_stored(xml) if xml else Element("vCard", VCARD_NS)
            for old in vcard.find_all("PHOTO", VCARD_NS):
                vcard.remove(old)
            if photo is not None:
                vcard.children.append(photo)
            await self.ctx.storage.set_vcard(owner, serialize(vcard))
            self._remember(owner, sha1, changed=True)
        except Exception:
            log.exception("avatar conversion to vcard-temp failed for %s", owner)

    # --- vcard-temp -> PEP ----------------------------------------------------------------------
    def _vcard_set(self, change: tuple[str, Element]) -> None:
        owner, vcard = change
        if owner not in self.converting:
            self._spawn(self._vcard_to_pep(owner, vcard))
        return None

    async def _vcard_to_pep(self, owner: str, vcard: Element) -> None:
        photo = vcard.find("PHOTO", VCARD_NS)
        binval = photo.find_text("BINVAL", VCARD_NS) if photo is not None else None
        if not binval:
            return
        try:
            picture = base64.b64decode("".join(binval.split()), validate=True)
        except (binascii.Error, ValueError):
            return
        sha1 = hashlib.sha1(picture).hexdigest()
        if self.hashes.get(owner) == sha1:
            return
        mime = (photo.find_text("TYPE", VCARD_NS) if photo is not None else None) or "image/png"
        options = {"pubsub#access_model": "open"}
        self.converting.add(owner)
        try:
            data = Element("data", AVATAR_DATA_NS, {}, [base64.b64encode(picture).decode()])
            await self.pep.store_item(owner, AVATAR_DATA_NS, sha1, data, options)
            metadata = Element("metadata", AVATAR_METADATA_NS)
            metadata.add("info", attrs={"bytes": str(len(picture)), "id": sha1, "type": mime})
            await self.pep.store_item(owner, AVATAR_METADATA_NS, sha1, metadata, options)
            self._remember(owner, sha1, changed=True)
        except PubsubError as exc:
            # The account's avatar nodes have another configuration: leave them as they are.
            log.info("avatar of %s not converted to PEP: %s", owner, exc.condition)
        finally:
            self.converting.discard(owner)

    # --- XEP-0153 -------------------------------------------------------------------------------
    def _bound(self, session: Any) -> None:
        if session.bare_jid not in self.hashes:
            self._spawn(self._load(session.bare_jid))
        return None

    async def _load(self, owner: str) -> str | None:
        try:
            item = await self.pep.get_item(owner, AVATAR_METADATA_NS)
        except Exception:
            log.exception("loading the avatar hash of %s failed", owner)
            return None
        info = item[1].find("info", AVATAR_METADATA_NS) if item is not None else None
        if owner not in self.hashes:
            self._remember(owner, info.attrs.get("id", "") if info is not None else "")
        return self.hashes.get(owner)

    def _presence(self, event: StanzaEvent) -> Any:
        stanza = event.stanza
        if stanza.attrs.get("type") or stanza.attrs.get("to") or event.origin is None:
            return None
        if stanza.find("x", VCARD_UPDATE_NS) is not None:
            return None
        owner = getattr(event.origin, "bare_jid", "")
        sha1 = self.hashes.get(owner)
        if sha1 is None:
            return self._with_loaded_hash(event, owner)
        stanza.children.append(self._update(sha1))
        return None

    async def _with_loaded_hash(self, event: StanzaEvent, owner: str) -> None:
        """Read the hash, add it, then let the presence go on through the handlers after this one
        (the ``x`` now present makes this handler pass), and on its way if none takes it, as the
        stanza dispatcher does with a broadcast no ``pre-`` handler took."""
        sha1 = await self._load(owner)
        stanza = event.stanza
        if sha1 is not None and stanza.find("x", VCARD_UPDATE_NS) is None:
            stanza.children.append(self._update(sha1))
        if sha1 is None:  # unreadable: the presence goes on without it rather than not at all
            self._remember(owner, "")
        result = self.ctx.events.fire("pre-presence/bare", event)
        if result is None:
            result = self.ctx.router.route(stanza)
        elif result is HANDLED:
            result = None
        if result is not None:
            await result
