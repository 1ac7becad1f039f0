"""What an account's public profile shows: its name (vCard4) and avatar (XEP-0084), read from PEP.

This module is in charge of reading the account's own published XMPP data for the actor document and
the profile page. Only nodes whose access model is ``open`` are used: an avatar or vCard the user
shares with their contacts only (``presence``) stays private even when the account is discoverable.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any
from xml.etree import ElementTree

from sqlalchemy import select

VCARD4_NODE = "urn:xmpp:vcard4"
AVATAR_DATA_NODE = "urn:xmpp:avatar:data"
AVATAR_METADATA_NODE = "urn:xmpp:avatar:metadata"
# Largest avatar served from PEP (XEP-0084 §7 advises small images; Mastodon caps avatars at 2 MB).
MAX_AVATAR_BYTES = 2 * 1024 * 1024
_IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})


@dataclass(frozen=True)
class Profile:
    name: str = ""
    avatar_type: str = ""
    avatar_id: str = ""


async def _open_items(store: Any, owner: str, node: str) -> list[str]:
    try:
        from peerage.xmpp.tables import xmpp_pep_items, xmpp_pep_nodes
    except ImportError:  # pragma: no cover - a build without XMPP
        return []
    async with store.begin() as conn:
        model = (await conn.execute(select(xmpp_pep_nodes.c.access_model).where(
            xmpp_pep_nodes.c.owner == owner, xmpp_pep_nodes.c.node == node))).scalar()
        if model != "open":
            return []
        rows = (await conn.execute(select(xmpp_pep_items.c.xml).where(
            xmpp_pep_items.c.owner == owner, xmpp_pep_items.c.node == node).order_by(
            xmpp_pep_items.c.id.desc()).limit(1))).all()
    return [r.xml for r in rows]


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


async def load(store: Any, address: str) -> Profile:
    name = avatar_type = avatar_id = ""
    for xml in await _open_items(store, address, VCARD4_NODE):
        try:
            root = ElementTree.fromstring(xml)
        except ElementTree.ParseError:
            continue
        for element in root.iter():
            if _local(element.tag) == "fn":
                texts = [e.text for e in element.iter() if _local(e.tag) == "text" and e.text]
                if texts:
                    name = texts[0].strip()[:200]
                    break
    for xml in await _open_items(store, address, AVATAR_METADATA_NODE):
        try:
            root = ElementTree.fromstring(xml)
        except ElementTree.ParseError:
            continue
        for element in root.iter():
            if _local(element.tag) == "info" and element.get("type") in _IMAGE_TYPES and not element.get("url"):
                avatar_type, avatar_id = element.get("type", ""), element.get("id", "")
                break
    return Profile(name, avatar_type, avatar_id if re.fullmatch(r"[0-9a-fA-F]{40}", avatar_id or "") else "")


async def avatar_bytes(store: Any, address: str) -> bytes | None:
    for xml in await _open_items(store, address, AVATAR_DATA_NODE):
        try:
            root = ElementTree.fromstring(xml)
        except ElementTree.ParseError:
            return None
        for element in root.iter():
            if _local(element.tag) == "data" and element.text:
                try:
                    data = base64.b64decode(element.text.strip())
                except (binascii.Error, ValueError):
                    return None
                return data if len(data) <= MAX_AVATAR_BYTES else None
    return None
