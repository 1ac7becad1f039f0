"""Helpers of the group-chat tests: slixmpp clients with the MUC plugins, and Prosody with mod_muc."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path
from typing import Any

import slixmpp

from tests.s2s.prosody import ProsodyServer

PASSWORD = "group chat test password"
#: Bounded wait for anything that crosses federation on loopback.
TIMEOUT = 20.0


class MucProsody(ProsodyServer):
    """Debian's Prosody with a ``conference.DOMAIN`` mod_muc component (and its MAM)."""

    def __init__(self, workdir: Path, domain: str, address: str, dns_address: str, **kwargs: Any) -> None:
        super().__init__(workdir, domain, address, dns_address, **kwargs)
        cert, key = kwargs["cert"], kwargs["key"]
        with open(self.config_path, "a") as config:
            config.write(f"""
Component "conference.{domain}" "muc"
    ssl = {{ certificate = "{cert}"; key = "{key}"; }}
    restrict_room_creation = false
    muc_room_locking = false
""")


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid: str, password: str = PASSWORD) -> None:
        super().__init__(jid, password)
        self.messages: asyncio.Queue[slixmpp.Message] = asyncio.Queue()
        self.groupchat: asyncio.Queue[slixmpp.Message] = asyncio.Queue()
        self.invites: asyncio.Queue[slixmpp.Message] = asyncio.Queue()
        self.direct_invites: asyncio.Queue[slixmpp.Message] = asyncio.Queue()
        self.muc_presences: asyncio.Queue[slixmpp.Presence] = asyncio.Queue()
        self.started = asyncio.Event()
        self.enable_plaintext = False
        self.ssl_context.check_hostname = False
        self.ssl_context.verify_mode = ssl.CERT_NONE
        for plugin in ("xep_0030", "xep_0004", "xep_0045", "xep_0059", "xep_0199", "xep_0249", "xep_0297",
                       "xep_0313", "xep_0359", "xep_0421"):
            with contextlib.suppress(Exception):
                self.register_plugin(plugin)
        self.add_event_handler("session_start", self._on_start)
        self.add_event_handler("message", self._message)
        self.add_event_handler("groupchat_message", self.groupchat.put_nowait)
        self.add_event_handler("groupchat_invite", self.invites.put_nowait)
        self.add_event_handler("groupchat_direct_invite", self.direct_invites.put_nowait)
        self.add_event_handler("groupchat_presence", self.muc_presences.put_nowait)

    def _message(self, message: slixmpp.Message) -> None:
        if message["type"] != "groupchat":
            self.messages.put_nowait(message)

    async def _on_start(self, _event: object) -> None:
        self.send_presence()
        self.started.set()

    async def login(self, address: str) -> Client:
        self.connect(host=address, port=5222)
        await asyncio.wait_for(self.started.wait(), TIMEOUT)
        return self

    async def close(self) -> None:
        if self.transport is not None:
            self.disconnect()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.disconnected, 5)

    async def next_groupchat(self, body: str | None = None) -> slixmpp.Message:
        while True:
            message = await asyncio.wait_for(self.groupchat.get(), TIMEOUT)
            if message["body"] and (body is None or message["body"] == body):
                return message

    async def presence_with(self, code: int, nick: str | None = None) -> slixmpp.Presence:
        while True:
            presence = await asyncio.wait_for(self.muc_presences.get(), TIMEOUT)
            if code in presence["muc"]["status_codes"] and (nick is None or presence["from"].resource == nick):
                return presence

    async def presence_of(self, nick: str, ptype: str) -> slixmpp.Presence:
        while True:
            presence = await asyncio.wait_for(self.muc_presences.get(), TIMEOUT)
            if presence["from"].resource == nick and presence["type"] == ptype:
                return presence

    async def create_room(self, room: str, nick: str, **fields: Any) -> slixmpp.Presence:
        """Join (creating ``room``), then submit its configuration with ``fields`` set."""
        muc = self.plugin["xep_0045"]
        presence, *_ = await muc.join_muc_wait(slixmpp.JID(room), nick, maxstanzas=0, timeout=TIMEOUT)
        await self.configure(room, **fields)
        return presence

    async def configure(self, room: str, **fields: Any) -> None:
        muc = self.plugin["xep_0045"]
        current = await muc.get_room_config(slixmpp.JID(room), timeout=TIMEOUT)
        assert "muc#roomconfig_roomname" in current.get_fields()
        form = self.plugin["xep_0004"].make_form(ftype="submit")
        form.add_field(var="FORM_TYPE", ftype="hidden", value="http://jabber.org/protocol/muc#roomconfig")
        for name, value in fields.items():
            ftype = "boolean" if isinstance(value, bool) else "text-single"
            form.add_field(var=f"muc#roomconfig_{name}", ftype=ftype, value=value)
        await muc.set_room_config(slixmpp.JID(room), form, timeout=TIMEOUT)


async def logged_in(jid: str, address: str) -> Client:
    return await Client(jid).login(address)
