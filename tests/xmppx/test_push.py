"""XEP-0357 push with a real XMPP client as the app server: a slixmpp account on the other peerage server,
reached over s2s, gets the summary notification of each offline message and answers it."""

from __future__ import annotations

import asyncio
import sqlite3
import xml.etree.ElementTree as ET

import slixmpp
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from tests.harness import PeerageServer
from tests.xmppx.conftest import ONE_ADDRESS, PUSH_MAX_ERRORS, TIMEOUT, TWO_ADDRESS, Client, until
from tests.xmppx.test_pep_access import raw_iq

PUSH = "urn:xmpp:push:0"
PUBSUB = "http://jabber.org/protocol/pubsub"
DATA = "jabber:x:data"


class AppServer(Client):
    """Answers pubsub publishes to it as an app server does: result, or an error when told to fail."""

    def __init__(self, jid: str) -> None:
        super().__init__(jid)
        self.notifications: asyncio.Queue[slixmpp.Iq] = asyncio.Queue()
        self.fail = False
        self.register_handler(Callback("push", MatchXPath(f"{{jabber:client}}iq/{{{PUBSUB}}}pubsub"), self._publish))

    def _publish(self, iq: slixmpp.Iq) -> None:
        if iq["type"] != "set":
            return
        self.notifications.put_nowait(iq)
        if self.fail:
            reply = iq.reply()
            reply["type"] = "error"
            reply["error"]["type"] = "wait"
            reply["error"]["condition"] = "internal-server-error"
            reply.send()
        else:
            iq.reply().send()


def summary(iq: slixmpp.Iq) -> dict[str, str]:
    form = iq.xml.find(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}publish/{{{PUBSUB}}}item/{{{PUSH}}}notification/{{{DATA}}}x")
    assert form is not None, iq
    return {field.get("var", ""): field.findtext(f"{{{DATA}}}value", "") for field in form.iter(f"{{{DATA}}}field")}


def registrations(server: PeerageServer, owner: str) -> int:
    with sqlite3.connect(server.data_dir / "peerage.db") as db:
        return db.execute("SELECT count(*) FROM push_registrations WHERE owner = ?", (owner,)).fetchone()[0]


async def enable(client: Client, jid: str, node: str, secret: str | None = None) -> None:
    iq = client.make_iq_set()
    element = ET.SubElement(iq.xml, f"{{{PUSH}}}enable", {"jid": jid, "node": node})
    if secret is not None:
        form = ET.SubElement(element, f"{{{DATA}}}x", {"type": "submit"})
        for var, value in (("FORM_TYPE", PUBSUB + "#publish-options"), ("secret", secret)):
            ET.SubElement(ET.SubElement(form, f"{{{DATA}}}field", {"var": var}), f"{{{DATA}}}value").text = value
    await iq.send(timeout=TIMEOUT)


async def presence_from(client: Client, bare: str, kind: str) -> None:
    """Wait (bounded) for a presence of ``kind`` from ``bare`` at ``client``."""
    while True:
        presence = await asyncio.wait_for(client.presences.get(), TIMEOUT)
        if presence["from"].bare == bare and presence["type"] == kind:
            return


async def test_offline_messages_are_pushed_to_the_app_server(one: PeerageServer, two: PeerageServer,
                                                             clients: list[Client]) -> None:
    app = await AppServer("yoko@y.test/app-server").login(TWO_ADDRESS)
    clients.append(app)
    walt = await Client("walt@x1.test").login(ONE_ADDRESS)
    sender = await Client("tom@x1.test").login(ONE_ADDRESS)
    clients.append(sender)
    await enable(walt, "yoko@y.test/app-server", "device-token-1", secret="s3cr3t")
    assert registrations(one, "walt@x1.test") == 1
    # A directed presence to tom: when the server ends walt's session it tells tom (RFC 6121
    # section 4.6.3), which is how the test knows walt is offline there, not only on the client.
    walt.send_presence(pto="tom@x1.test")
    await presence_from(sender, "walt@x1.test", "available")
    await walt.close()  # now offline: messages go to offline storage, and a push goes out
    await presence_from(sender, "walt@x1.test", "unavailable")

    sender.send_message(mto="walt@x1.test", mbody="are you there?", mtype="chat")
    notification = await asyncio.wait_for(app.notifications.get(), TIMEOUT)
    assert notification["from"] == "walt@x1.test"  # from the account's bare JID (section 7)
    publish = notification.xml.find(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}publish")
    assert publish is not None and publish.get("node") == "device-token-1"
    fields = summary(notification)
    assert fields["FORM_TYPE"] == "urn:xmpp:push:summary"
    assert fields["message-count"] == "1"
    assert fields["last-message-sender"].startswith("tom@x1.test")
    assert "last-message-body" not in fields  # [xmpp.push] include_body is off by default
    options = notification.xml.find(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}publish-options/{{{DATA}}}x")
    assert options is not None and "s3cr3t" in ET.tostring(options).decode()
    sender.send_message(mto="walt@x1.test", mbody="hello?", mtype="chat")
    assert summary(await asyncio.wait_for(app.notifications.get(), TIMEOUT))["message-count"] == "2"

    # The app server fails: after max_errors failures in a row the registration is disabled.
    app.fail = True
    for index in range(PUSH_MAX_ERRORS):
        sender.send_message(mto="walt@x1.test", mbody=f"failing {index}", mtype="chat")
        await asyncio.wait_for(app.notifications.get(), TIMEOUT)
    await until(lambda: registrations(one, "walt@x1.test") == 0)


async def test_enable_disable_and_limits(one: PeerageServer, clients: list[Client]) -> None:
    judy = await Client("judy@x1.test").login(ONE_ADDRESS)
    clients.append(judy)
    await enable(judy, "push.example.net", "a")
    await enable(judy, "push.example.net", "b")
    await enable(judy, "push.example.net", "a")  # the same registration again replaces it
    assert registrations(one, "judy@x1.test") == 2
    disable = judy.make_iq_set()
    ET.SubElement(disable.xml, f"{{{PUSH}}}disable", {"jid": "push.example.net", "node": "a"})
    await disable.send(timeout=TIMEOUT)
    assert registrations(one, "judy@x1.test") == 1
    disable = judy.make_iq_set()
    ET.SubElement(disable.xml, f"{{{PUSH}}}disable", {"jid": "push.example.net"})  # every node
    await disable.send(timeout=TIMEOUT)
    assert registrations(one, "judy@x1.test") == 0
    # The account shows the feature; bad input is refused.
    info = await judy.plugin["xep_0030"].get_info(jid="judy@x1.test", timeout=TIMEOUT)
    assert PUSH in info["disco_info"]["features"]
    bad = judy.make_iq_set()
    ET.SubElement(bad.xml, f"{{{PUSH}}}enable", {"jid": "push.example.net"})
    try:
        await bad.send(timeout=TIMEOUT)
        raise AssertionError("an enable without node was accepted")
    except slixmpp.exceptions.IqError as exc:
        assert exc.iq["error"]["condition"] == "bad-request"
    for index in range(5):
        await enable(judy, f"push{index}.example.net", "n")
    try:
        await enable(judy, "push-one-more.example.net", "n")
        raise AssertionError("a sixth registration was accepted")
    except slixmpp.exceptions.IqError as exc:
        assert exc.iq["error"]["condition"] == "resource-constraint"


async def test_messages_to_a_session_waiting_for_resumption_are_pushed(
        one: PeerageServer, two: PeerageServer, clients: list[Client]) -> None:
    """A phone's connection dies (no </stream:stream>): its session waits for XEP-0198 resumption, and
    each message queued for it is pushed, as the app must be woken to resume; then it resumes and gets
    the messages."""
    app = await AppServer("yasmin@y.test/app-server").login(TWO_ADDRESS)
    phone = Client("nora@x1.test/phone", plugins=("xep_0198",))
    sender = Client("ned@x1.test", plugins=("xep_0085",))
    clients.extend((app, phone, sender))
    await asyncio.gather(phone.login(ONE_ADDRESS), sender.login(ONE_ADDRESS))
    sm = phone.plugin["xep_0198"]
    await until(lambda: bool(sm.sm_id))
    await enable(phone, "yasmin@y.test/app-server", "phone-token")
    # The network drops: no </stream:stream>, the TCP connection just dies.
    assert phone.transport is not None
    phone.transport.abort()
    await asyncio.wait_for(phone.disconnected, TIMEOUT)
    # Whether the server notices the drop before this message arrives (it is queued for the
    # resumption and pushed) or after (it was written to the dead connection, never acknowledged, and
    # the session starts waiting with it), the app server is told.
    sender.send_message(mto="nora@x1.test/phone", mbody="while you sleep", mtype="chat")
    notification = await asyncio.wait_for(app.notifications.get(), TIMEOUT)
    assert notification["from"] == "nora@x1.test"
    publish = notification.xml.find(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}publish")
    assert publish is not None and publish.get("node") == "phone-token"
    fields = summary(notification)
    assert fields["last-message-sender"].startswith("ned@x1.test")
    assert fields["message-count"] == "1"
    # A chat state alone wakes nobody: the next notification is for the next message.
    state = sender.make_message(mto="nora@x1.test/phone", mtype="chat")
    state["chat_state"] = "composing"
    state.send()
    sender.send_message(mto="nora@x1.test/phone", mbody="and this", mtype="chat")
    notification = await asyncio.wait_for(app.notifications.get(), TIMEOUT)
    assert summary(notification)["message-count"] == "2"  # both wait in the session's queue
    # Woken, the app resumes: the session and its queue are there.
    phone.connect(host=ONE_ADDRESS, port=5222)
    await asyncio.wait_for(phone.resumed.wait(), TIMEOUT)
    bodies = set()
    while "and this" not in bodies:
        bodies.add((await phone.next_message(timeout=TIMEOUT))["body"])


ROOM = "standup@conference.x1.test"
OFFLINE_FIELD = "{http://tigase.org/protocol/muc}offline"


async def notification_for(app: AppServer, owner: str) -> slixmpp.Iq:
    """The next notification ``app`` gets on behalf of ``owner`` (others' are skipped), bounded."""
    while True:
        notification = await asyncio.wait_for(app.notifications.get(), TIMEOUT)
        if notification["from"] == owner:
            return notification


async def test_room_messages_are_pushed_for_absent_members_and_sleeping_occupants(
        one: PeerageServer, two: PeerageServer, clients: list[Client]) -> None:
    """Group chats and push, as Prosody's mod_muc_offline_delivery and mod_cloud_notify do: a member who
    asked for offline delivery (the room's registration form) and is not in the room has the room's
    messages pushed; an occupant whose phone dropped its connection (a session waiting for XEP-0198
    resumption, still in the room) has them pushed too."""
    app = await AppServer("yusuf@y.test/app-server").login(TWO_ADDRESS)
    host = Client("max@x1.test", plugins=("xep_0045",))
    mona = Client("mona@x1.test")
    phone = Client("nico@x1.test/phone", plugins=("xep_0198", "xep_0045"))
    clients.extend((app, host, mona, phone))
    await asyncio.gather(host.login(ONE_ADDRESS), mona.login(ONE_ADDRESS), phone.login(ONE_ADDRESS))
    await host.plugin["xep_0045"].join_muc_wait(slixmpp.JID(ROOM), "Max", maxstanzas=0, timeout=TIMEOUT)
    reply = await raw_iq(host, "<query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' "
                               "type='submit'/></query>", to=ROOM)  # an instant room
    assert "type=\"result\"" in reply, reply

    # mona registers with the room and asks for its messages while she is away (off by default).
    form = await raw_iq(mona, "<query xmlns='jabber:iq:register'/>", to=ROOM, itype="get")
    assert OFFLINE_FIELD in form, form
    reply = await raw_iq(mona, "<query xmlns='jabber:iq:register'><x xmlns='jabber:x:data' type='submit'>"
                               "<field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#register</value></field>"
                               "<field var='muc#register_roomnick'><value>Mona</value></field>"
                               f"<field var='{OFFLINE_FIELD}'><value>1</value></field></x></query>", to=ROOM)
    assert "type=\"result\"" in reply, reply
    registered = await raw_iq(mona, "<query xmlns='jabber:iq:register'/>", to=ROOM, itype="get")
    assert "<registered" in registered and "<value>1</value>" in registered, registered
    await enable(mona, "yusuf@y.test/app-server", "mona-token")
    # Offline for the server, not only for the client (as in the offline-message test).
    mona.send_presence(pto="max@x1.test")
    await presence_from(host, "mona@x1.test", "available")
    await mona.close()
    await presence_from(host, "mona@x1.test", "unavailable")
    host.send_message(mto=ROOM, mbody="stand-up at ten", mtype="groupchat")
    notification = await notification_for(app, "mona@x1.test")
    publish = notification.xml.find(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}publish")
    assert publish is not None and publish.get("node") == "mona-token"
    fields = summary(notification)
    assert fields["message-count"] == "1" and fields["last-message-sender"] == f"{ROOM}/Max", fields

    # nico's phone is in the room when its connection dies: the room still counts it as an occupant,
    # its server holds the session for resumption, and the room's next message is pushed.
    sm = phone.plugin["xep_0198"]
    await until(lambda: bool(sm.sm_id))
    await phone.plugin["xep_0045"].join_muc_wait(slixmpp.JID(ROOM), "Nico", maxstanzas=0, timeout=TIMEOUT)
    await enable(phone, "yusuf@y.test/app-server", "nico-token")
    assert phone.transport is not None
    phone.transport.abort()
    await asyncio.wait_for(phone.disconnected, TIMEOUT)
    host.send_message(mto=ROOM, mbody="nico, your turn", mtype="groupchat")
    notification = await notification_for(app, "nico@x1.test")
    publish = notification.xml.find(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}publish")
    assert publish is not None and publish.get("node") == "nico-token"
    assert summary(notification)["last-message-sender"] == f"{ROOM}/Max"
