"""A three-node cluster on one PostgreSQL and one nats-server: XMPP between nodes, the shared mail
queue, IMAP IDLE across nodes, what a single node keeps under its data directory shared through
PostgreSQL (large mail bodies, uploads, media, DKIM and account keys, the dialback secret), NATS
restarted under load, and a node killed under load.

The tests run in file order on one module-scoped cluster; the last one kills a node.
"""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import re
import secrets
import smtplib
import ssl
import threading
import time
import xml.etree.ElementTree as ET
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from peerage.xmpp.stream import serialize
from tests.cluster.conftest import (
    DOMAIN,
    NODES,
    PASSWORD,
    REGISTRY_BOUND,
    REMOTE2_DOMAIN,
    REMOTE_DOMAIN,
    REMOTE_XMPP_ADDRESS,
    SINK_ADDRESS,
    ClusterUnderTest,
)
from tests.cluster.sipua import FlowUA
from tests.cluster.xmppclient import ClusterClient, srv_targets
from tests.sip.sipp import failure_report, finish, message_log, run_sipp, start_sipp
from tests.xmpp.conftest import Client as XmppClient
from tests.xmpp.rawclient import RawClient

DISCO_INFO = "http://jabber.org/protocol/disco#info"
DISCO_ITEMS = "http://jabber.org/protocol/disco#items"


def _has_session(node: str, jid: str, flag: str = "") -> Any:
    """A status predicate: every live node other than ``node`` has ``jid`` as a session of ``node``."""
    def check(status: dict[str, dict[str, Any]]) -> bool:
        if jid not in status.get(node, {}).get("sessions", []):
            return False
        for name, answer in status.items():
            if name == node:
                continue
            entry = answer.get("registry", {}).get(jid)
            if entry is None or entry["node"] != node or (flag and not entry.get(flag)):
                return False
        return True
    return check


async def test_srv_records_name_the_three_nodes(cluster: ClusterUnderTest) -> None:
    targets = await srv_targets()
    assert sorted(targets) == [("127.0.16.1", 5222), ("127.0.16.2", 5222), ("127.0.16.3", 5222)]


async def test_chat_subscription_and_presence_across_nodes(cluster: ClusterUnderTest) -> None:
    alice = await ClusterClient("alice", "a1").connect(cluster.address("n1"))
    bob = await ClusterClient("bob", "b1").connect(cluster.address("n2"))
    try:
        await cluster.wait_registry(_has_session("n1", alice.jid, "available"), what="alice in the registry")
        await cluster.wait_registry(_has_session("n2", bob.jid, "available"), what="bob in the registry")
        # RFC 6121 section 3: alice (node 1) subscribes to bob (node 2), bob approves and subscribes back.
        await alice.send(f"<presence to='{bob.bare}' type='subscribe'/>")
        await bob.wait_for("presence", r"type='subscribe'(?!d).*from='alice@|from='alice@[^']*'.*type='subscribe'(?!d)")
        await bob.send(f"<presence to='{alice.bare}' type='subscribed'/>")
        await alice.wait_for("presence", r"from='bob@cluster.test/b1'(?!.*type=)")
        await bob.send(f"<presence to='{alice.bare}' type='subscribe'/>")
        # type='subscribe' exactly: alice already holds bob's 'subscribed', and answering before bob's
        # request reached her server would be ignored (RFC 6121 section 3.1.4 without a pending request).
        await alice.wait_for("presence", r"type='subscribe'(?!d)")
        await alice.send(f"<presence to='{bob.bare}' type='subscribed'/>")
        await bob.wait_for("presence", r"from='alice@cluster.test/a1'(?!.*type=)")
        # A presence change on node 2 reaches node 1 through the roster node 1 re-read from PostgreSQL.
        await bob.send("<presence><show>away</show></presence>")
        await alice.wait_for("presence", r"from='bob@cluster.test/b1'.*<show>away</show>")
        # Messages both ways, to the bare JID (delivery rules on the sender's node) and the full JID.
        await alice.send(f"<message to='{bob.bare}' type='chat' id='m1'><body>hello bob</body></message>")
        await bob.wait(lambda: "hello bob" in bob.bodies(), what="alice's message")
        await bob.send(f"<message to='{alice.jid}' type='chat' id='m2'><body>hello alice</body></message>")
        await alice.wait(lambda: "hello alice" in alice.bodies(), what="bob's message")
        # Delivered once each.
        assert bob.bodies().count("hello bob") == 1 and alice.bodies().count("hello alice") == 1
        # When bob leaves, alice on the other node sees him go.
        await bob.close()
        await alice.wait_for("presence", r"from='bob@cluster.test/b1'.*type='unavailable'|type='unavailable'.*from='bob@")
    finally:
        await alice.close()
        await bob.close()


async def test_carbons_across_nodes(cluster: ClusterUnderTest) -> None:
    carol1 = await ClusterClient("carol", "phone").connect(cluster.address("n1"))
    carol3 = await ClusterClient("carol", "laptop").connect(cluster.address("n3"))
    dave = await ClusterClient("dave", "d").connect(cluster.address("n2"))
    try:
        await carol3.send("<iq type='set' id='c1'><enable xmlns='urn:xmpp:carbons:2'/></iq>")
        await carol3.wait_for("iq", r"id='c1'.*type='result'|type='result'.*id='c1'")
        await cluster.wait_registry(_has_session("n3", carol3.jid, "carbons"), what="carbons flag replicated")
        await cluster.wait_registry(_has_session("n2", dave.jid), what="dave in the registry")
        # XEP-0280: what carol sends from node 1 is copied to her laptop on node 3 ...
        await carol1.send(f"<message to='{dave.jid}' type='chat' id='s1'><body>sent from phone</body></message>")
        await dave.wait(lambda: "sent from phone" in dave.bodies(), what="carol's message")
        sent = await carol3.wait_for("message", r"urn:xmpp:carbons:2.*sent from phone")
        assert sent.find("sent", "urn:xmpp:carbons:2") is not None
        # ... and what dave (node 2) sends to her phone (node 1) too.
        await dave.send(f"<message to='{carol1.jid}' type='chat' id='r1'><body>to the phone</body></message>")
        await carol1.wait(lambda: "to the phone" in carol1.bodies(), what="dave's message")
        received = await carol3.wait_for("message", r"<received.*to the phone")
        assert received.find("received", "urn:xmpp:carbons:2") is not None
    finally:
        for client in (carol1, carol3, dave):
            await client.close()


async def test_status_command_lists_nodes_and_sessions(cluster: ClusterUnderTest) -> None:
    erin = await ClusterClient("erin", "e").connect(cluster.address("n3"))
    try:
        await cluster.wait_registry(_has_session("n3", erin.jid), what="erin in the registry")
        result = await asyncio.to_thread(cluster.nodes["n1"].cli, "cluster", "status", "--sessions")
        out = result.stdout
        assert "3 node(s) answering" in out, out
        for node in ("n1", "n2", "n3"):
            assert f"node {node}:" in out, out
        assert erin.jid in out, out
    finally:
        await erin.close()


async def test_room_with_occupants_on_all_three_nodes(cluster: ClusterUnderTest) -> None:
    room = f"lobby@conference.{DOMAIN}"
    muc = "http://jabber.org/protocol/muc"
    people = [await ClusterClient(user, "r").connect(cluster.address(node))
              for user, node in (("heidi", "n1"), ("ivan", "n2"), ("judy", "n3"))]
    try:
        for person in people:
            node = next(name for name, address in NODES.items() if address == person.address)
            await cluster.wait_registry(_has_session(node, person.jid), what="occupant registered")
        owner = people[0]
        await owner.send(f"<presence to='{room}/heidi'><x xmlns='{muc}'/></presence>")
        await owner.wait_for("presence", r"from='lobby@conference[^']*/heidi'.*status code='110'")
        # XEP-0045 section 10.1.2: an instant room, so the others may enter.
        await owner.send(f"<iq type='set' to='{room}' id='cfg'><query xmlns='{muc}#owner'>"
                         "<x xmlns='jabber:x:data' type='submit'/></query></iq>")
        await owner.wait_for("iq", r"id='cfg'")
        for person in people[1:]:
            nick = person.user
            await person.send(f"<presence to='{room}/{nick}'><x xmlns='{muc}'/></presence>")
            await person.wait_for("presence", rf"from='lobby@conference[^']*/{nick}'.*status code='110'")
        await owner.wait_for("presence", r"from='lobby@conference[^']*/judy'")
        await people[2].send(f"<message to='{room}' type='groupchat' id='g1'><body>hello room</body></message>")
        for person in people:
            await person.wait(lambda p=person: "hello room" in p.bodies(), what="the groupchat message")
        assert all(person.bodies().count("hello room") == 1 for person in people)
    finally:
        for person in people:
            await person.close()


async def test_rooms_of_one_service_owned_by_different_nodes(cluster: ClusterUnderTest) -> None:
    """Each room has its own owner node, the node its creation reached: two rooms of one service
    created through nodes 1 and 2 are owned there; a user on node 3 finds both in the service's
    disco#items (answered on node 3, from what nodes 1 and 2 serve) and talks in both."""
    service = f"conference.{DOMAIN}"
    muc = "http://jabber.org/protocol/muc"
    rooms = {"n1": f"east@{service}", "n2": f"west@{service}"}
    creators = {"n1": await ClusterClient("rowan", "c").connect(cluster.address("n1")),
                "n2": await ClusterClient("sasha", "c").connect(cluster.address("n2"))}
    visitor = await ClusterClient("tina", "v").connect(cluster.address("n3"))
    try:
        await cluster.wait_registry(_has_session("n3", visitor.jid), what="the visitor registered")
        for node, creator in creators.items():
            room, nick = rooms[node], creator.user
            await creator.send(f"<presence to='{room}/{nick}'><x xmlns='{muc}'/></presence>")
            await creator.wait_for("presence", rf"from='{room}/{nick}'.*status code='201'")
            # XEP-0045 section 10.1.2: an instant room, so others may enter and it is listed
            await creator.send(f"<iq type='set' to='{room}' id='cfg'><query xmlns='{muc}#owner'>"
                               "<x xmlns='jabber:x:data' type='submit'/></query></iq>")
            await creator.wait_for("iq", r"id='cfg'.*type='result'|type='result'.*id='cfg'")
        status = await cluster.status_of(("n1", "n2", "n3"))
        for node, room in rooms.items():
            holders = [name for name, answer in status.items() if room in answer.get("room_leases", [])]
            assert holders == [node], (room, holders)
        # The service JID is answered on node 3, listing the rooms other nodes serve.
        await visitor.send(f"<iq type='get' to='{service}' id='items'><query xmlns='{DISCO_ITEMS}'/></iq>")
        items = serialize(await visitor.wait_for("iq", r"id='items'"))
        assert f"jid='{rooms['n1']}'" in items and f"jid='{rooms['n2']}'" in items, items
        await visitor.send(f"<iq type='get' to='{service}' id='info'><query xmlns='{DISCO_INFO}'/></iq>")
        info = serialize(await visitor.wait_for("iq", r"id='info'"))
        assert "category='conference'" in info, info
        # Node 3 forwards to each room's owner; the occupants on the owner hear the visitor.
        for node, room in rooms.items():
            await visitor.send(f"<presence to='{room}/tina'><x xmlns='{muc}'/></presence>")
            await visitor.wait_for("presence", rf"from='{room}/tina'.*status code='110'")
            await visitor.send(f"<message to='{room}' type='groupchat' id='say-{node}'><body>hi {node}</body></message>")
            await creators[node].wait(lambda c=creators[node], n=node: f"hi {n}" in c.bodies(), what="the visitor's message")
        assert all(creator.bodies().count(f"hi {node}") == 1 for node, creator in creators.items())
        assert all(f"hi {node}" not in creators["n2" if node == "n1" else "n1"].bodies() for node in rooms)
        # Node 3 served neither: no room lease there.
        status = await cluster.status_of(("n3",))
        assert not set(rooms.values()) & set(status["n3"].get("room_leases", [])), status["n3"]
    finally:
        for person in (*creators.values(), visitor):
            await person.close()
    # Emptied and not persistent: the rooms are gone and their leases released.
    await cluster.wait_registry(lambda status: not any(set(rooms.values()) & set(answer.get("room_leases", []))
                                                       for answer in status.values()),
                                what="the leases of the emptied rooms released")


async def _room_answer(client: ClusterClient, room: str, nick: str, after: int) -> tuple[str, str]:
    """The answer to a join of ``room`` as ``nick`` received after ``after`` stanzas: ("", "") for the
    self-presence (XEP-0045 status 110), else the error's condition and text."""
    def answered() -> Any:
        for element in client.received[after:]:
            if element.name == "presence" and element.attrs.get("from") == f"{room}/{nick}":
                if element.attrs.get("type") == "error":
                    return element
                x = element.find("x", "http://jabber.org/protocol/muc#user")
                if x is not None and any(s.attrs.get("code") == "110" for s in x.find_all("status")):
                    return element
        return None

    presence = await client.wait(answered, what=f"the answer to joining {room}")
    error = presence.find("error")
    if error is None:
        return "", ""
    condition = next(c.name for c in error.elements() if c.name != "text")
    return condition, error.find_text("text") or ""


async def test_per_user_room_limits_count_every_node(cluster: ClusterUnderTest) -> None:
    """[muc] max_rooms_owned, max_room_creations_per_hour and max_rooms_joined (lowered to 2, 3 and
    2 for the module) count the rooms of every node: a user whose rooms are owned by different
    nodes is refused at the limit with the single server's conditions (not-allowed,
    resource-constraint) and allowed again once it left or destroyed rooms."""
    service = f"conference.{DOMAIN}"
    muc = "http://jabber.org/protocol/muc"
    on1 = await ClusterClient("lena", "one").connect(cluster.address("n1"))
    on2 = await ClusterClient("lena", "two").connect(cluster.address("n2"))
    leo = await ClusterClient("leo", "three").connect(cluster.address("n3"))

    async def join(client: ClusterClient, room: str) -> tuple[str, str]:
        after = len(client.received)
        await client.send(f"<presence to='{room}/{client.user}'><x xmlns='{muc}'/></presence>")
        return await _room_answer(client, room, client.user, after)

    async def create(client: ClusterClient, room: str) -> tuple[str, str]:
        answer = await join(client, room)
        if not answer[0]:  # XEP-0045 section 10.1.2: an instant room, so others may enter
            await client.send(f"<iq type='set' to='{room}' id='cfg-{room}'><query xmlns='{muc}#owner'>"
                              "<x xmlns='jabber:x:data' type='submit'/></query></iq>")
            await client.wait_for("iq", rf"id='cfg-{room}'.*type='result'|type='result'.*id='cfg-{room}'")
        return answer

    def replica_of_lena(node: str, rooms: int) -> Any:
        return lambda status: sum(table.get(on1.bare, 0) for table in
                                  status.get(node, {}).get("rooms_joined_elsewhere", {}).values()) == rooms

    try:
        for client, node in ((on1, "n1"), (on2, "n2"), (leo, "n3")):
            await cluster.wait_registry(_has_session(node, client.jid), what="session registered")
        # Owned: one room through node 1, one through node 2; a third through node 1 is refused
        # although node 1 owns only one of them.
        assert await create(on1, f"lim-a@{service}") == ("", "")
        assert await create(on2, f"lim-b@{service}") == ("", "")
        status = await cluster.status_of(("n1", "n2"))
        assert f"lim-a@{service}" in status["n1"]["room_leases"] and f"lim-b@{service}" in status["n2"]["room_leases"]
        condition, text = await join(on1, f"lim-c@{service}")
        assert (condition, "own 2 rooms" in text) == ("not-allowed", True), (condition, text)
        # Joined: in lim-a (node 1) and lim-b (node 2), so leo's room on node 3 refuses lena.
        assert await create(leo, f"lim-leo@{service}") == ("", "")
        await cluster.wait_registry(replica_of_lena("n3", 2), what="node 3 counting lena's two rooms")
        condition, text = await join(on1, f"lim-leo@{service}")
        assert (condition, "in 2 rooms" in text) == ("resource-constraint", True), (condition, text)
        # lim-b destroyed by its owner: lena is in one room and owns one, and may join leo's room.
        await on2.send(f"<iq type='set' to='lim-b@{service}' id='destroy-b'><query xmlns='{muc}#owner'>"
                       "<destroy/></query></iq>")
        await on2.wait_for("iq", r"id='destroy-b'.*type='result'|type='result'.*id='destroy-b'")
        await cluster.wait_registry(replica_of_lena("n3", 1), what="node 3 counting lena's one room")
        assert await join(on1, f"lim-leo@{service}") == ("", "")
        # Having left leo's room, lena may create a room again (one owned, two created).
        await on1.send(f"<presence to='lim-leo@{service}/lena' type='unavailable'/>")
        await cluster.wait_registry(replica_of_lena("n1", 0), what="node 1 hearing that lena left node 3's room")
        assert await create(on1, f"lim-c@{service}") == ("", "")
        # Created within the hour: lim-a and lim-c through node 1, lim-b through node 2; node 2
        # refuses a fourth although it saw one creation only (lim-a left and gone: one owned).
        after = len(on1.received)
        await on1.send(f"<presence to='lim-a@{service}/lena' type='unavailable'/>")
        await _room_answer(on1, f"lim-a@{service}", "lena", after)
        condition, text = await join(on2, f"lim-d@{service}")
        assert (condition, "create 3 rooms an hour" in text) == ("not-allowed", True), (condition, text)
    finally:
        for client in (on1, on2, leo):
            await client.close()


class PepClient(XmppClient):
    """slixmpp with XEP-0115 caps and XEP-0163 interest in one node (``+notify``)."""

    def __init__(self, jid: str, interest: str | None = None) -> None:
        super().__init__(jid, PASSWORD, plugins=("xep_0115", "xep_0060", "xep_0163"))
        self.interest = interest
        self.send_initial_presence = False
        self.events: asyncio.Queue[Any] = asyncio.Queue()
        self.add_event_handler("pubsub_publish", self.events.put_nowait)

    async def _on_start(self, _event: object) -> None:
        await self.get_roster()
        if self.interest:
            self.plugin["xep_0163"].add_interest(self.interest)
        await self.plugin["xep_0115"].update_caps(broadcast=True)
        self.started.set()

    async def event_from(self, bare: str, node: str, item: str) -> None:
        """Wait (bounded) for the notification of ``item`` published on ``bare``'s ``node``."""
        while True:
            try:
                published = await asyncio.wait_for(self.events.get(), 15)
            except TimeoutError:
                raise AssertionError(f"no notification of {node} item {item} from {bare}") from None
            if published["from"].bare == bare and published["pubsub_event"]["items"]["node"] == node \
                    and published["pubsub_event"]["items"]["item"]["id"] == item:
                return


async def _wait_subscription(client: XmppClient, contact: str, states: tuple[str, ...], timeout: float = 30) -> None:
    """Until ``client``'s roster (as its server pushed it) shows ``contact`` in one of ``states``."""
    deadline = time.monotonic() + timeout
    while client.client_roster[contact]["subscription"] not in states:
        assert time.monotonic() < deadline, (
            f"{client.boundjid.bare}'s subscription to {contact}: "
            f"{client.client_roster[contact]['subscription']}, wanted {states} (after {timeout} s)")
        await asyncio.sleep(0.1)


async def test_pep_notification_reaches_a_contact_on_another_node(cluster: ClusterUnderTest) -> None:
    """XEP-0163 across nodes (slixmpp both sides): pedro on node 2 shows +notify for a node in his
    caps; peppa on node 1 publishes; the notification reaches pedro, once."""
    node = "urn:example:cluster:mood"
    peppa = PepClient(f"peppa@{DOMAIN}")
    pedro = PepClient(f"pedro@{DOMAIN}", interest=node)
    try:
        await peppa.login(cluster.address("n1"))
        await pedro.login(cluster.address("n2"))
        # each available in the other's node's registry: a request routed before that would be
        # stored, not shown (it is shown at the next initial presence, RFC 6121 section 3.1.3)
        await cluster.wait_registry(_has_session("n1", peppa.boundjid.full, "available"), what="peppa in the registry")
        await cluster.wait_registry(_has_session("n2", pedro.boundjid.full, "available"), what="pedro in the registry")
        # Mutual subscription. Only pedro asks: slixmpp's defaults (auto_authorize, auto_subscribe)
        # make peppa's client answer 'subscribed' and ask back by itself, and pedro's approve that,
        # so both directions are in flight on both nodes at once (the race
        # test_mutual_subscription_requests_at_once_across_nodes presses harder).
        pedro.send_presence(pto=peppa.boundjid.bare, ptype="subscribe")
        await _wait_subscription(pedro, peppa.boundjid.bare, ("both",))
        await _wait_subscription(peppa, pedro.boundjid.bare, ("both",))
        # The first item reaches pedro once his caps are known on node 2 (either as the
        # notification or as the last item sent when his caps are learnt) ...
        pubsub = peppa.plugin["xep_0060"]
        await pubsub.publish(None, node, id="m1", payload=ET.fromstring(f"<mood xmlns='{node}'>happy 1</mood>"))
        await pedro.event_from(peppa.boundjid.bare, node, "m1")
        # ... after that, new items can only reach him as notifications from node 1's publish
        for number in (2, 3):
            await pubsub.publish(None, node, id=f"m{number}",
                                 payload=ET.fromstring(f"<mood xmlns='{node}'>happy {number}</mood>"))
            await pedro.event_from(peppa.boundjid.bare, node, f"m{number}")
        assert pedro.events.empty(), "a notification came twice"
    finally:
        await peppa.close()
        await pedro.close()


async def _roster_rows(database_url: str, owner: str) -> dict[str, tuple[str, bool, bool]]:
    """``owner``'s stored roster: contact -> (subscription, ask, pending_in)."""
    from sqlalchemy import select

    from peerage.store import Store
    from peerage.xmpp.tables import xmpp_roster

    store = Store(database_url)
    try:
        async with store.begin() as conn:
            rows = (await conn.execute(select(xmpp_roster).where(xmpp_roster.c.owner == owner))).all()
    finally:
        await store.close()
    return {row.contact: (row.subscription, bool(row.ask), bool(row.pending_in)) for row in rows}


async def test_mutual_subscription_requests_at_once_across_nodes(cluster: ClusterUnderTest) -> None:
    """Pairs with one side on node 1 and the other on node 2 or 3 ask each other at the same moment,
    with slixmpp's default auto-approval: every request is answered 'subscribed' and asked back, so
    each roster item is changed by stanzas handled on two nodes at once (the account's own node
    decides its outbound requests and answers, the contact's node the inbound ones). Every pair must
    end 'both' both ways, as each client was told and as PostgreSQL stores it, with nothing pending.
    A change decided on a node's stale copy of the roster (RFC 6121 section 3.1.5 ignores an answer
    to a request it has not seen), or saved over a newer one, leaves a pair at 'from'/'to' forever.
    Several rounds, six pairs each, over the same twelve sessions (round r pairs a_i with b_i+r)."""
    rounds, count = 4, 6
    left: list[XmppClient] = []
    right: list[XmppClient] = []
    try:
        placed: list[tuple[XmppClient, str]] = []
        for number in range(count):
            a = XmppClient(f"mutual{number + 1}a@{DOMAIN}", PASSWORD)
            b = XmppClient(f"mutual{number + 1}b@{DOMAIN}", PASSWORD)
            left.append(a)
            right.append(b)
            placed += [(a, "n1"), (b, "n2" if number % 2 else "n3")]
        await asyncio.gather(*(client.login(cluster.address(node)) for client, node in placed))
        # all available in every node's registry, so each request reaches a client
        await cluster.wait_registry(lambda status: all(_has_session(node, client.boundjid.full, "available")(status)
                                                       for client, node in placed),
                                    timeout=20, what="the twelve sessions in the registry")
        for shift in range(rounds):
            pairs = [(left[i], right[(i + shift) % count]) for i in range(count)]
            for a, b in pairs:  # all in one turn of the loop: the requests cross on the wire
                a.send_presence(pto=b.boundjid.bare, ptype="subscribe")
                b.send_presence(pto=a.boundjid.bare, ptype="subscribe")
            for a, b in pairs:
                await _wait_subscription(a, b.boundjid.bare, ("both",), timeout=20)
                await _wait_subscription(b, a.boundjid.bare, ("both",), timeout=20)
            for a, b in pairs:
                for owner, contact in ((a, b), (b, a)):
                    rows = await _roster_rows(cluster.database_url, owner.boundjid.bare)
                    assert rows.get(contact.boundjid.bare) == ("both", False, False), (shift, owner.boundjid.bare, rows)
    finally:
        for client in left + right:
            await client.close()


async def test_federation_one_outbound_owner_per_remote_domain(cluster: ClusterUnderTest) -> None:
    """Users on two nodes write to a user of a remote XMPP server: one node holds the s2s lease for
    the remote domain and the other forwards to it (one outbound stream, not two); the remote
    user's answers come in on whichever node the remote server connects to and reach both."""
    fiona = await ClusterClient("fiona", "f").connect(cluster.address("n1"))
    gus = await ClusterClient("gus", "g").connect(cluster.address("n2"))
    zoe = await ClusterClient("zoe", "z", domain=REMOTE_DOMAIN).connect(REMOTE_XMPP_ADDRESS)
    try:
        for person, node in ((fiona, "n1"), (gus, "n2")):
            await cluster.wait_registry(_has_session(node, person.jid), what="sender registered")
        await fiona.send(f"<message to='{zoe.jid}' type='chat' id='f1'><body>from fiona</body></message>")
        await zoe.wait(lambda: "from fiona" in zoe.bodies(), timeout=30, what="fiona's message over s2s")
        await gus.send(f"<message to='{zoe.jid}' type='chat' id='g1'><body>from gus</body></message>")
        await zoe.wait(lambda: "from gus" in zoe.bodies(), timeout=30, what="gus's message over s2s")
        status = await cluster.status_of(("n1", "n2", "n3"))
        owners = [name for name, answer in status.items() if REMOTE_DOMAIN in answer.get("s2s_leases", [])]
        assert len(owners) == 1, status
        # replies: the remote server's stream lands on one node; the registry routes to both
        await zoe.send(f"<message to='{fiona.jid}' type='chat' id='z1'><body>to fiona</body></message>")
        await zoe.send(f"<message to='{gus.jid}' type='chat' id='z2'><body>to gus</body></message>")
        await fiona.wait(lambda: "to fiona" in fiona.bodies(), timeout=30, what="zoe's reply to fiona")
        await gus.wait(lambda: "to gus" in gus.bodies(), timeout=30, what="zoe's reply to gus")
        assert zoe.bodies().count("from fiona") == 1 and zoe.bodies().count("from gus") == 1
        # one outbound stream: the remote server authenticated one inbound stream from the cluster
        log = cluster.remote.log_text(0)
        assert log.count(f"s2s in {REMOTE_DOMAIN} <- {DOMAIN}:") == 1, log[-3000:]
    finally:
        for person in (fiona, gus, zoe):
            await person.close()


# ==================================================================================================
# Mail
# ==================================================================================================


class Sink:
    """The MX of remote.test: answers 451 until opened, then records each message and its client."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.open = False
        self.received: list[tuple[str, str]] = []  # (Message-ID, client address)
        self.contents: dict[str, bytes] = {}  # Message-ID -> the message as received
        self.lock = threading.Lock()
        sink = self

        class Handler:
            async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                                  options: Any) -> str:
                if not sink.open:
                    return "451 4.3.2 try again later"
                envelope.rcpt_tos.append(address)
                return "250 OK"

            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                import email

                message = email.message_from_bytes(envelope.content)
                with sink.lock:
                    sink.received.append((str(message["Message-ID"]), session.peer[0]))
                    sink.contents[str(message["Message-ID"])] = bytes(envelope.original_content or envelope.content)
                return "250 OK"

        self.controller = Controller(Handler(), hostname=SINK_ADDRESS, port=25)

    def __enter__(self) -> Sink:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


def _submit(address: str, count: int, tag: str) -> list[str]:
    ids = []
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP(address, 587, timeout=20) as smtp:
        smtp.starttls(context=context)
        smtp.login(f"frank@{DOMAIN}", PASSWORD)
        for number in range(count):
            message = EmailMessage()
            message["From"] = f"frank@{DOMAIN}"
            message["To"] = f"someone{number % 3}@{REMOTE_DOMAIN}"
            message["Subject"] = f"{tag} {number}"
            message["Message-ID"] = f"<{tag}.{number}@{DOMAIN}>"
            message.set_content("queued on one node, delivered by any\n")
            smtp.send_message(message)
            ids.append(str(message["Message-ID"]))
    return ids


async def test_queue_delivers_each_message_once_with_workers_on_all_nodes(cluster: ClusterUnderTest) -> None:
    with Sink() as sink:
        ids = await asyncio.to_thread(_submit, cluster.address("n1"), 30, f"q{int(time.time())}")
        # Every node's worker now races for the rows as they come due again (first retry: 1 s).
        await asyncio.sleep(1.5)
        sink.open = True
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            with sink.lock:
                if len({m for m, _ in sink.received} & set(ids)) == len(ids):
                    break
            await asyncio.sleep(0.2)
        await asyncio.sleep(2)  # a duplicate, if any, would arrive now
        with sink.lock:
            received = [(m, peer) for m, peer in sink.received if m in set(ids)]
    by_id: dict[str, int] = {}
    for message_id, _ in received:
        by_id[message_id] = by_id.get(message_id, 0) + 1
    assert sorted(by_id) == sorted(ids), f"missing: {set(ids) - set(by_id)}"
    assert all(count == 1 for count in by_id.values()), {m: c for m, c in by_id.items() if c > 1}
    senders = {peer for _, peer in received}
    print(f"deliveries per node address: { {p: sum(1 for _, q in received if q == p) for p in senders} }")
    assert senders <= {"127.0.16.1", "127.0.16.2", "127.0.16.3"}


class _PrintedRecords:
    """The TXT records ``peerage dns`` printed, as the DKIM verifier asks for them."""

    def __init__(self, printed: str) -> None:
        self.records: dict[str, bytes] = {}
        for line in printed.splitlines():
            if "._domainkey." in line and " TXT " in line:
                self.records[line.split()[0].rstrip(".")] = "".join(re.findall(r'"([^"]*)"', line)).encode()

    def dkim_txt(self, name: bytes, timeout: float = 5.0) -> bytes | None:
        return self.records.get(name.decode().rstrip("."))


async def test_every_node_signs_with_the_one_dkim_key_dns_publishes(cluster: ClusterUnderTest) -> None:
    import asyncpg

    from peerage.mail.auth import dkim

    # The three nodes started at once, each wanting the domain's keys: one row per selector.
    conn = await asyncpg.connect(cluster.database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        rows = await conn.fetch("SELECT name FROM cluster_keys WHERE kind = 'dkim' ORDER BY name")
    finally:
        await conn.close()
    assert [row["name"] for row in rows] == [f"{DOMAIN}/{dkim.ED25519_SELECTOR}", f"{DOMAIN}/{dkim.RSA_SELECTOR}"]
    for server in cluster.nodes.values():
        assert not (server.data_dir / "dkim").exists(), f"DKIM key files under {server.data_dir}"
    printed = await asyncio.to_thread(cluster.nodes["n3"].cli, "dns", DOMAIN)
    records = _PrintedRecords(printed.stdout)
    assert len(records.records) == 2, printed.stdout
    with Sink() as sink:
        sink.open = True
        tag = f"dkim{int(time.time())}"
        ids = {name: (await asyncio.to_thread(_submit, cluster.address(name), 1, f"{tag}{name}"))[0]
               for name in ("n1", "n2")}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with sink.lock:
                if set(ids.values()) <= set(sink.contents):
                    break
            await asyncio.sleep(0.1)
        with sink.lock:
            contents = dict(sink.contents)
    for name, message_id in ids.items():
        assert message_id in contents, f"the message submitted on {name} did not arrive"
        results = dkim.verify(contents[message_id], records)  # type: ignore[arg-type]
        assert sorted((r.result, r.algorithm) for r in results) == [
            ("pass", "ed25519-sha256"), ("pass", "rsa-sha256")], f"signed on {name}: {results}"


def _imap_idle(address: str, user: str, ready: threading.Event, result: list[float], timeout: float) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    imap = imaplib.IMAP4_SSL(address, 993, ssl_context=context, timeout=timeout + 10)
    try:
        imap.login(user, PASSWORD)
        imap.select("INBOX")
        tag = imap._new_tag().decode()  # type: ignore[attr-defined]
        imap.send(f"{tag} IDLE\r\n".encode())
        line = imap.readline()
        assert line.startswith(b"+"), line
        ready.set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = imap.readline()
            if b"EXISTS" in line:
                result.append(time.monotonic())
                break
        imap.send(b"DONE\r\n")
        imap.readline()
        imap.logout()
    finally:
        with contextlib.suppress(Exception):
            imap.shutdown()


async def test_imap_idle_on_one_node_wakes_for_delivery_on_another(cluster: ClusterUnderTest) -> None:
    ready = threading.Event()
    woke: list[float] = []
    # IDLE's own poll is 30 s (mail/imap/server.py IDLE_POLL_SECONDS): a wake within 15 s is the
    # cluster's (the bound leaves room for a busy machine's SMTP session and delivery).
    thread = threading.Thread(target=_imap_idle, args=(cluster.address("n1"), f"grace@{DOMAIN}", ready, woke, 20.0))
    thread.start()
    assert await asyncio.to_thread(ready.wait, 20)
    sent_at = time.monotonic()
    message = EmailMessage()
    message["From"] = f"frank@{DOMAIN}"
    message["To"] = f"grace@{DOMAIN}"
    message["Subject"] = "delivered on node 2"
    message.set_content("hello\n")

    def send() -> None:
        with smtplib.SMTP(cluster.address("n2"), 25, timeout=20) as smtp:
            smtp.send_message(message)

    await asyncio.to_thread(send)
    await asyncio.to_thread(thread.join, 40)
    assert woke, "IDLE on node 1 did not report the delivery on node 2"
    assert woke[0] - sent_at < 15.0


def _imap_fetch_whole(address: str, user: str, subject: str, timeout: float) -> bytes:
    """BODY[] of the message of INBOX with ``subject``, asked until it is there (bounded)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    imap = imaplib.IMAP4_SSL(address, 993, ssl_context=context, timeout=timeout)
    try:
        imap.login(user, PASSWORD)
        deadline = time.monotonic() + timeout
        while True:
            imap.select("INBOX")
            _, found = imap.uid("SEARCH", "SUBJECT", f'"{subject}"')
            uids = found[0].split()
            if uids:
                _, data = imap.uid("FETCH", uids[-1], "(BODY.PEEK[])")
                whole = data[0]
                assert isinstance(whole, tuple), data
                return bytes(whole[1])
            if time.monotonic() > deadline:
                raise AssertionError(f"no message {subject!r} for {user} on {address} within {timeout} s")
            time.sleep(0.1)
    finally:
        with contextlib.suppress(Exception):
            imap.logout()


def _imap_expunge_all(address: str, user: str) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    imap = imaplib.IMAP4_SSL(address, 993, ssl_context=context, timeout=20)
    try:
        imap.login(user, PASSWORD)
        imap.select("INBOX")
        imap.store("1:*", "+FLAGS", "(\\Deleted)")
        imap.expunge()
    finally:
        with contextlib.suppress(Exception):
            imap.logout()


async def _shared_blobs(cluster: ClusterUnderTest, kind: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(cluster.database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        return int(await conn.fetchval("SELECT count(*) FROM cluster_blobs WHERE kind = $1", kind))
    finally:
        await conn.close()


async def test_large_body_delivered_on_one_node_is_read_whole_on_another(cluster: ClusterUnderTest) -> None:
    # 64 KiB and more is past INLINE_BODY_LIMIT: a single node would write it to a file of its own
    # data directory; a cluster keeps it in cluster_blobs, where every node reads it.
    subject = f"large {time.time()}"
    lines = [f"line {number:06d} " + "x" * 90 for number in range(1200)]
    text = "\r\n".join(lines) + "\r\n"
    message = (f"From: frank@{DOMAIN}\r\nTo: bella@{DOMAIN}\r\nSubject: {subject}\r\n"
               f"Message-ID: <{secrets.token_hex(8)}@{DOMAIN}>\r\n\r\n{text}").encode()
    assert len(message) >= 64 * 1024

    def send() -> None:
        with smtplib.SMTP(cluster.address("n1"), 25, timeout=20) as smtp:
            smtp.sendmail(f"frank@{DOMAIN}", [f"bella@{DOMAIN}"], message)

    await asyncio.to_thread(send)
    on_n2 = await asyncio.to_thread(_imap_fetch_whole, cluster.address("n2"), f"bella@{DOMAIN}", subject, 20.0)
    on_n1 = await asyncio.to_thread(_imap_fetch_whole, cluster.address("n1"), f"bella@{DOMAIN}", subject, 20.0)
    assert on_n2 == on_n1
    assert on_n2.endswith(message.split(b"\r\n\r\n", 1)[1]), "the body read on node 2 is not the one sent"
    assert len(on_n2) > len(message)  # with the trace fields the receiving node added
    # Nothing of it under any node's own folder.
    for server in cluster.nodes.values():
        folder = server.data_dir / "mail" / "blobs"
        assert not folder.exists() or not any(folder.rglob("*")), f"a message file under {folder}"
    # `peerage user export` on node 3 reads it from the database too.
    exported = cluster.workdir / f"export-{secrets.token_hex(4)}"
    await asyncio.to_thread(cluster.nodes["n3"].cli, "user", "export", f"bella@{DOMAIN}", str(exported))
    body = message.split(b"\r\n\r\n", 1)[1].replace(b"\r\n", b"\n")
    assert any(body in path.read_bytes() for path in exported.rglob("*") if path.is_file()), "not in the export"
    # Expunged on node 2, its body row goes with it.
    before = await _shared_blobs(cluster, "mail")
    assert before >= 1
    await asyncio.to_thread(_imap_expunge_all, cluster.address("n2"), f"bella@{DOMAIN}")
    assert await _shared_blobs(cluster, "mail") == before - 1


async def test_upload_and_its_media_copy_are_served_by_other_nodes(cluster: ClusterUnderTest) -> None:
    import urllib.parse

    import aiohttp
    import asyncpg

    upton = await ClusterClient("upton", "u1").connect(cluster.address("n1"), presence=False)
    try:
        # A PNG by its first bytes (social media takes images only), 76,808 bytes.
        data = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 300
        # XEP-0363 section 4: a slot from node 1's upload service.
        await upton.send(f"<iq type='get' id='slot1' to='upload.{DOMAIN}'><request xmlns='urn:xmpp:http:upload:0' "
                         f"filename='cat.png' size='{len(data)}' content-type='image/png'/></iq>")
        reply = await upton.wait_for("iq", r"id='slot1'")
        assert reply.attrs.get("type") == "result", serialize(reply)
        slot = next(reply.elements())
        put = next(e for e in slot.elements() if e.name == "put")
        get_url = next(e for e in slot.elements() if e.name == "get").attrs["url"]
        auth = next(h.text for h in put.elements() if h.attrs.get("name") == "Authorization")
    finally:
        await upton.close()
    path = urllib.parse.urlsplit(get_url).path
    assert urllib.parse.urlsplit(put.attrs["url"]).path == path
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as http:
        async with http.put(f"https://{cluster.address('n1')}{path}", data=data,
                            headers={"Authorization": auth, "Content-Type": "image/png"}) as response:
            assert response.status == 201, await response.text()
        async with http.get(f"https://{cluster.address('n2')}{path}") as response:
            assert response.status == 200, await response.text()
            assert await response.read() == data
            assert response.headers["Content-Type"] == "image/png"
            assert "sandbox" in response.headers["Content-Security-Policy"]
        async with http.head(f"https://{cluster.address('n2')}{path}") as response:
            assert response.status == 200 and response.headers["Content-Length"] == str(len(data))
        for server in cluster.nodes.values():
            folder = server.data_dir / "upload" / "blobs"
            assert not folder.exists() or not any(folder.rglob("*")), f"an upload file under {folder}"
        # Attached to a post through node 2, it is copied into the media store; node 3 serves it.
        auth = {"Authorization": aiohttp.encode_basic_auth(f"upton@{DOMAIN}", PASSWORD), "Host": DOMAIN}
        async with http.post(f"https://{cluster.address('n1')}/social/api/settings", json={"discoverable": True},
                             headers=auth) as response:
            assert response.status == 200, await response.text()
        note = {"type": "Note", "content": "the cat", "to": ["https://www.w3.org/ns/activitystreams#Public"],
                "attachment": [{"type": "Document", "url": get_url}]}
        async with http.post(f"https://{cluster.address('n2')}/users/upton/outbox", json=note,
                             headers={**auth, "Content-Type": "application/activity+json"}) as response:
            assert response.status == 201, await response.text()
            posted = await response.text()
        media = re.search(r"https://" + re.escape(DOMAIN) + r"(/media/[^\"]+)", posted)
        assert media, posted
        async with http.get(f"https://{cluster.address('n3')}{media.group(1)}") as response:
            assert response.status == 200, await response.text()
            assert await response.read() == data
            assert response.headers["Content-Type"] == "image/png"
        for server in cluster.nodes.values():
            assert not (server.data_dir / "social" / "media").exists(), f"media files under {server.data_dir}"
        # Expired, the file is removed by the next sweep (here node 3's first GET) with its row.
        before = await _shared_blobs(cluster, "upload")
        conn = await asyncpg.connect(cluster.database_url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            await conn.execute("UPDATE upload_files SET expires = 0 WHERE slot = $1", path.split("/")[2])
        finally:
            await conn.close()
        async with http.get(f"https://{cluster.address('n3')}{path}") as response:
            assert response.status == 404
        assert await _shared_blobs(cluster, "upload") == before - 1


async def test_actor_key_is_the_same_from_every_node(cluster: ClusterUnderTest) -> None:
    import aiohttp
    import asyncpg

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    auth = {"Authorization": aiohttp.encode_basic_auth(f"keyla@{DOMAIN}", PASSWORD), "Host": DOMAIN}
    activity = {"Accept": "application/activity+json", "Host": DOMAIN}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as http:
        async with http.post(f"https://{cluster.address('n1')}/social/api/settings", json={"discoverable": True},
                             headers=auth) as response:
            assert response.status == 200, await response.text()

        async def actor(node: str) -> dict[str, Any]:
            async with http.get(f"https://{cluster.address(node)}/users/keyla", headers=activity) as response:
                assert response.status == 200, await response.text()
                return dict(await response.json(content_type=None))

        # Two nodes asked at once for an actor whose key nobody has made yet.
        documents = await asyncio.gather(actor("n2"), actor("n3"))
        documents.append(await actor("n1"))
    keys = {(d["publicKey"]["id"], d["publicKey"]["publicKeyPem"]) for d in documents}
    assert len(keys) == 1, keys
    conn = await asyncpg.connect(cluster.database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        names = [r["name"] for r in await conn.fetch(
            "SELECT name FROM cluster_keys WHERE kind = 'social' AND name LIKE $1", f"keyla@{DOMAIN}/%")]
    finally:
        await conn.close()
    assert names == [f"keyla@{DOMAIN}/main-key"]
    for server in cluster.nodes.values():
        assert not (server.data_dir / "social" / "keys").exists(), f"account key files under {server.data_dir}"


async def test_nodes_share_the_dialback_secret(cluster: ClusterUnderTest) -> None:
    import asyncpg

    from peerage.xmpp.dialback import CLUSTER_SECRET_NAME, SECRET_FILE_NAME

    # XEP-0220 section 2.3: a remote server may ask any node to verify a key another node sent.
    conn = await asyncpg.connect(cluster.database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        secret = await conn.fetchval("SELECT value FROM server_secrets WHERE name = $1", CLUSTER_SECRET_NAME)
    finally:
        await conn.close()
    assert secret is not None and len(secret) >= 16
    for server in cluster.nodes.values():
        assert not (server.data_dir / SECRET_FILE_NAME).exists(), f"a dialback secret of its own on {server.data_dir}"


async def test_web_login_on_one_node_is_valid_on_another(cluster: ClusterUnderTest) -> None:
    import aiohttp

    from peerage.web.auth import COOKIE_NAME

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    first, second = f"https://{cluster.address('n1')}", f"https://{cluster.address('n2')}"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context),
                                     cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
        async with client.post(first + "/login", json={"account": f"erin@{DOMAIN}", "password": PASSWORD},
                               headers={"Origin": first}) as response:
            assert response.status == 200, await response.text()
        token = next(c.value for c in client.cookie_jar if c.key == COOKIE_NAME)
    # The session is a row in PostgreSQL: node 2 knows it.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as other:
        async with other.get(second + "/auth/session", headers={"Cookie": f"{COOKIE_NAME}={token}"}) as response:
            assert response.status == 200, await response.text()
            assert (await response.json())["account"] == f"erin@{DOMAIN}"
        async with other.get(second + "/auth/session") as response:
            assert response.status in (401, 403)


# ==================================================================================================
# SIP: one location service for the three nodes; calls to a flow another node holds go there
# ==================================================================================================

SIP_DOMAIN_KEYS = {"domain": DOMAIN, "caller_domain": DOMAIN}


def _sip_known(aor: str, holder: str, *, on: tuple[str, ...]) -> Any:
    """A status predicate: the nodes ``on`` route ``aor`` to bindings held by ``holder``."""
    def check(status: dict[str, dict[str, Any]]) -> bool:
        return all(status.get(node, {}).get("sip_registry", {}).get(aor) == [holder] for node in on)
    return check


async def _sipp(workdir: Path, scenario: str, **kwargs: Any) -> Any:
    return await asyncio.to_thread(run_sipp, workdir, scenario, **kwargs)


async def test_password_changed_through_one_node_ends_streams_on_the_others(cluster: ClusterUnderTest) -> None:
    """`peerage user passwd` with node 1's configuration ends the account's streams on nodes 2 and 3
    with <reset/> (RFC 6120 section 4.9.3.19): the change writes a credential event row in the
    database every node polls. Afterwards the old password logs in nowhere and the new one does."""
    on2 = await ClusterClient("pam", "two").connect(cluster.address("n2"))
    on3 = await ClusterClient("pam", "three").connect(cluster.address("n3"))
    new_password = "a new pass phrase for pam 7"
    try:
        await cluster.wait_registry(lambda s: _has_session("n2", on2.jid)(s) and _has_session("n3", on3.jid)(s),
                                    what="both of pam's sessions in the registry")
        result = await asyncio.to_thread(cluster.nodes["n1"].cli, "user", "passwd", f"pam@{DOMAIN}",
                                         "--password-file", "-", input=new_password + "\n")
        assert "Changed the password" in result.stdout, result.stdout + result.stderr
        for client in (on2, on3):
            # the poll is one second; a loaded machine gets more
            await client.wait(lambda c=client: c.stream_error, timeout=20, what="a stream error")
            assert client.stream_error == "reset", client.stream_error
        await cluster.wait_registry(
            lambda s: not any(jid.startswith(f"pam@{DOMAIN}/") for answer in s.values()
                              for jid in [*answer.get("sessions", []), *answer.get("registry", {})]),
            what="pam's sessions gone from every node")
        old = RawClient(cluster.address("n3"), DOMAIN)
        try:
            await old.connect()
            await old.open_stream()
            await old.starttls()
            await old.open_stream()
            answer = await old.authenticate(f"pam@{DOMAIN}", PASSWORD)
            assert "<failure" in answer and "not-authorized" in answer, answer
        finally:
            await old.close()
        again = RawClient(cluster.address("n2"), DOMAIN)
        try:
            await again.login(f"pam@{DOMAIN}", new_password, "again")
        finally:
            await again.close()
    finally:
        await on2.close()
        await on3.close()


async def test_sip_call_and_message_between_nodes_over_udp(cluster: ClusterUnderTest, tmp_path: Path) -> None:
    """A caller registered on node 1 calls a callee registered on node 2 (both SIPp over UDP); a
    MESSAGE taken by node 3 reaches the same callee."""
    auth = ["-au", "sipalice", "-ap", PASSWORD]
    callee = ["-au", "sipbob", "-ap", PASSWORD]
    for user, ip, node, extra in (("sipalice", "127.0.16.30", "n1", auth), ("sipbob", "127.0.16.31", "n2", callee)):
        registered = await _sipp(tmp_path, "register.xml", local_ip=ip, port=5070, server=f"{NODES[node]}:5060",
                                 service=user, keys={"domain": DOMAIN}, extra=extra)
        assert registered.returncode == 0, failure_report(tmp_path, registered)
    # The registration on node 2 is a row in PostgreSQL, announced to the others, which read it.
    await cluster.wait_registry(_sip_known(f"sip:sipbob@{DOMAIN}", "n2", on=("n1", "n2", "n3")),
                                what="sipbob's binding on every node")
    uas = start_sipp(tmp_path, "uas_call.xml", local_ip="127.0.16.31", port=5070, server=None, extra=["-d", "0"])
    uac = await _sipp(tmp_path, "uac_call_auth.xml", local_ip="127.0.16.30", port=5070,
                      server=f"{NODES['n1']}:5060", service="sipbob", keys={**SIP_DOMAIN_KEYS, "caller": "sipalice"},
                      extra=auth)
    assert uac.returncode == 0, failure_report(tmp_path, uac)
    assert finish(uas)[0] == 0, failure_report(tmp_path, finish(uas))
    trace = message_log(tmp_path, "uas_call.xml", uas.pid)
    # node 1 took the call and reached the callee itself (a UDP contact needs no flow)
    block = next(b for b in trace.split("-----") if "\nINVITE sip:" in b)
    assert f"Via: SIP/2.0/UDP {NODES['n1']}:5060" in block, block
    uas = start_sipp(tmp_path, "uas_message.xml", local_ip="127.0.16.31", port=5070, server=None)
    sent = await _sipp(tmp_path, "uac_message_auth.xml", local_ip="127.0.16.30", port=5071,
                       server=f"{NODES['n3']}:5060", service="sipbob", keys={**SIP_DOMAIN_KEYS, "caller": "sipalice"},
                       extra=auth)
    assert sent.returncode == 0, failure_report(tmp_path, sent)
    assert finish(uas)[0] == 0, failure_report(tmp_path, finish(uas))


async def test_sip_call_to_a_flow_held_by_another_node(cluster: ClusterUnderTest, tmp_path: Path) -> None:
    """The callee registered over TCP with RFC 5626 outbound on node 2 (its Contact cannot be
    dialled): a call over TCP taken by node 1 goes to node 2 over NATS and down the callee's
    connection; ACK and BYE follow the Record-Route set through both nodes; a MESSAGE taken by
    node 3 arrives the same way."""
    carol = FlowUA("127.0.16.32", NODES["n2"], "sipcarol", DOMAIN, PASSWORD)
    try:
        carol.register()
        await cluster.wait_registry(_sip_known(f"sip:sipcarol@{DOMAIN}", "n2", on=("n1", "n2", "n3")),
                                    what="sipcarol's binding on every node")
        status = await cluster.status_of(("n2",))
        assert status["n2"]["sip_flows"] >= 1, status["n2"]
        auth = ["-au", "sipdave", "-ap", PASSWORD]
        uac = start_sipp(tmp_path, "uac_call_auth.xml", local_ip="127.0.16.33", port=5070,
                         server=f"{NODES['n1']}:5060", service="sipcarol",
                         keys={**SIP_DOMAIN_KEYS, "caller": "sipdave"}, extra=[*auth, "-t", "t1"])
        invite, ack, bye = await asyncio.to_thread(carol.answer_call)
        code = finish(uac)
        assert code[0] == 0, failure_report(tmp_path, code)
        # each request came down carol's connection from node 2, after node 1 (INVITE, ACK, BYE)
        for vias in (invite, ack, bye):
            assert NODES["n2"] in vias[0] and NODES["n1"] in vias[1], vias
        message = start_sipp(tmp_path, "uac_message_auth.xml", local_ip="127.0.16.33", port=5071,
                             server=f"{NODES['n3']}:5060", service="sipcarol",
                             keys={**SIP_DOMAIN_KEYS, "caller": "sipdave"}, extra=auth)
        received = await asyncio.to_thread(carol.answer_message)
        code = finish(message)
        assert code[0] == 0, failure_report(tmp_path, code)
        vias = received.get_all("via")
        assert NODES["n2"] in vias[0] and NODES["n3"] in vias[1], vias
    finally:
        carol.close()


# ==================================================================================================
# Failures: NATS restarted, then a node killed, both under load
# ==================================================================================================


def _numbers(client: ClusterClient, tag: str) -> list[int]:
    return [int(body.split()[1]) for body in client.bodies() if body.startswith(tag + " ")]


async def test_nats_restart_under_load(cluster: ClusterUnderTest) -> None:
    ivan = await ClusterClient("ivan", "i").connect(cluster.address("n1"), sm=True)
    judy = await ClusterClient("judy", "j").connect(cluster.address("n1"), sm=True)
    heidi = await ClusterClient("heidi", "h").connect(cluster.address("n2"), sm=True)
    try:
        await cluster.wait_registry(_has_session("n2", heidi.jid), what="heidi in the registry")
        await cluster.wait_registry(_has_session("n1", ivan.jid), what="ivan in the registry")
        cluster.nats.stop()
        # While NATS is down: delivery within node 1 goes on ...
        await ivan.send(f"<message to='{judy.jid}' type='chat'><body>local 0</body></message>")
        await judy.wait(lambda: _numbers(judy, "local") == [0], timeout=5, what="local delivery without NATS")
        # ... and what goes to node 2 is acknowledged (held on node 1) and waits.
        for number in range(20):
            await ivan.send(f"<message to='{heidi.jid}' type='chat'><body>outage {number}</body></message>")
        await ivan.request_ack()
        await ivan.wait(lambda: ivan.server_h >= ivan.sent, timeout=10, what="ivan's messages acknowledged")
        await asyncio.sleep(1.0)  # longer than the resend interval's tick: nothing may be lost meanwhile
        cluster.nats.start()
        # No operator action: the nodes reconnect, and what was held reaches heidi, once each.
        await heidi.wait(lambda: sorted(set(_numbers(heidi, "outage"))) == list(range(20)), timeout=20,
                         what="the messages sent while NATS was down")
        await cluster.wait_registry(lambda status: len(status) == 3 and all(
            len(answer.get("peers", [])) == 2 for answer in status.values()), what="the nodes seeing each other again")
        await ivan.send(f"<message to='{heidi.bare}' type='chat'><body>after 0</body></message>")
        await heidi.wait(lambda: _numbers(heidi, "after") == [0], timeout=10, what="routing after the restart")
        await asyncio.sleep(0.5)
        assert sorted(_numbers(heidi, "outage")) == list(range(20)), "a message was delivered twice to an online session"
    finally:
        for client in (ivan, judy, heidi):
            await client.close()


async def _archived(database_url: str, owner: str, tag: str) -> set[int]:
    """The numbers of the messages '<tag> N' in ``owner``'s archive (XEP-0313) in PostgreSQL."""
    import re

    from sqlalchemy import select

    from peerage.store import Store
    from peerage.xmpp.tables import xmpp_archive

    store = Store(database_url)
    try:
        async with store.begin() as conn:
            rows = (await conn.execute(select(xmpp_archive.c.stanza).where(xmpp_archive.c.owner == owner))).all()
    finally:
        await store.close()
    return {int(m) for (stanza,) in rows for m in re.findall(rf"<body>{tag} (\d+)</body>", stanza)}


async def _lease_holder(database_url: str, kind: str, key: str) -> str | None:
    from sqlalchemy import select

    from peerage.cluster.tables import cluster_leases
    from peerage.store import Store

    store = Store(database_url)
    try:
        async with store.begin() as conn:
            return (await conn.execute(select(cluster_leases.c.node).where(
                cluster_leases.c.kind == kind, cluster_leases.c.key == key))).scalar()
    finally:
        await store.close()


async def test_kill_a_node_under_load(cluster: ClusterUnderTest) -> None:
    """Node 3 is killed (SIGKILL) while node 1 sends to its user: every message acknowledged is
    delivered; its sessions and SIP flows leave the registry within the bound; what it acknowledged
    to its own sender is archived (XEP-0313); the remote domain whose outbound stream it owned gets
    a new owner, and mail to it flows again."""
    total, kill_after, archived = 300, 100, 20
    olivia = await ClusterClient("olivia", "o").connect(cluster.address("n1"), sm=True)
    mallory = await ClusterClient("mallory", "m").connect(cluster.address("n3"), sm=True, resume=True)
    assert mallory.previd, "the server offered no XEP-0198 resumption"
    ned = await ClusterClient("ned", "n", domain=REMOTE2_DOMAIN).connect(REMOTE_XMPP_ADDRESS)
    # a SIP phone on a TCP flow held by node 3: its binding must go with the node
    nina = FlowUA("127.0.16.34", NODES["n3"], "sipnina", DOMAIN, PASSWORD)
    nina_aor = f"sip:sipnina@{DOMAIN}"
    try:
        nina.register()
        await cluster.wait_registry(_sip_known(nina_aor, "n3", on=("n1", "n2")), what="sipnina's binding")
        await cluster.wait_registry(_has_session("n3", mallory.jid, "available"), what="mallory in the registry")
        # node 3 is the first to write to remote2.test: it takes the domain's s2s lease
        await mallory.send(f"<message to='{ned.jid}' type='chat'><body>via 3</body></message>")
        await ned.wait(lambda: "via 3" in ned.bodies(), timeout=30, what="mallory's message over s2s")
        assert await _lease_holder(cluster.database_url, "s2s", REMOTE2_DOMAIN) == "n3"
        acked_before_kill = 0
        killed_at = 0.0
        for number in range(total):
            await olivia.send(f"<message to='{mallory.jid}' type='chat'><body>load {number}</body></message>")
            if number % 10 == 9:
                await olivia.request_ack()
            if number == kill_after:
                await olivia.request_ack()
                await olivia.wait(lambda: olivia.server_h >= kill_after, timeout=10, what="the first acks")
                acked_before_kill = olivia.server_h
                # mallory writes to olivia from node 3; node 3 acknowledges, then dies at once
                for sent in range(archived):
                    await mallory.send(f"<message to='{olivia.bare}' type='chat'><body>archived {sent}</body></message>")
                await mallory.request_ack()
                await mallory.wait(lambda: mallory.server_h >= mallory.sent, timeout=10, what="mallory's messages acked")
                cluster.nodes["n3"].kill()  # SIGKILL: nothing of node 3 gets to say goodbye
                killed_at = time.monotonic()
                mallory.drop()
            await asyncio.sleep(0.003)
        # The dead node's sessions and SIP flows leave every survivor's registry within the bound.
        await cluster.wait_registry(
            lambda status: set(status) == {"n1", "n2"} and not any(
                mallory.jid in answer.get("registry", {}) or nina_aor in answer.get("sip_registry", {})
                for answer in status.values()),
            timeout=REGISTRY_BOUND + 5, what="node 3's sessions and flows gone")
        gone_after = time.monotonic() - killed_at
        # What node 3 acknowledged to mallory is in both archives (its last batch was written before
        # the <a/>), and reached olivia.
        for owner in (mallory.bare, olivia.bare):
            assert await _archived(cluster.database_url, owner, "archived") == set(range(archived)), owner
        await olivia.wait(lambda: {b for b in olivia.bodies() if b.startswith("archived ")} ==
                          {f"archived {n}" for n in range(archived)}, timeout=20, what="mallory's acked messages")
        # The s2s lease of the dead node is released by the survivors; the next stanza for
        # remote2.test takes it on a survivor, which opens its own stream.
        deadline = time.monotonic() + 10
        while await _lease_holder(cluster.database_url, "s2s", REMOTE2_DOMAIN) == "n3":
            assert time.monotonic() < deadline, "node 3's s2s lease was not released"
            await asyncio.sleep(0.1)
        await olivia.send(f"<message to='{ned.jid}' type='chat'><body>via 1</body></message>")
        await ned.wait(lambda: "via 1" in ned.bodies(), timeout=30, what="olivia's message over s2s after the kill")
        assert await _lease_holder(cluster.database_url, "s2s", REMOTE2_DOMAIN) == "n1"
        assert ned.bodies().count("via 3") == 1 and ned.bodies().count("via 1") == 1, ned.bodies()
        log = cluster.remote.log_text(0)
        assert log.count(f"s2s in {REMOTE2_DOMAIN} <- {DOMAIN}:") == 2, log[-3000:]
        # the bound, plus this test's polling (each round asks over NATS and waits 0.3 s for answers)
        assert gone_after <= REGISTRY_BOUND + 3.0, gone_after
        # Mallory's client reconnects to the next SRV target. Its session was in node 3's memory:
        # resuming it is refused as for an unknown session (XEP-0198 section 5, <failed/> with
        # item-not-found), and the client binds a new session, which gets the rest (offline storage).
        targets = [address for address, _ in await srv_targets() if address != cluster.address("n3")]
        probe = RawClient(targets[0], DOMAIN)
        try:
            await probe.connect()
            await probe.open_stream()
            await probe.starttls()
            await probe.open_stream()
            assert "<success" in await probe.authenticate(mallory.bare, PASSWORD)
            assert "urn:xmpp:sm:3" in await probe.open_stream()
            await probe.send(f"<resume xmlns='urn:xmpp:sm:3' h='{mallory.handled}' previd='{mallory.previd}'/>")
            refused = await probe.read_until(r"<failed[^>]*(/>|>.*?</failed>)", timeout=10)
            assert "item-not-found" in refused, refused
        finally:
            await probe.close()
        again = await ClusterClient("mallory", "m").connect(targets[0], sm=True)
        try:
            await olivia.request_ack()
            await olivia.wait(lambda: olivia.server_h >= olivia.sent, timeout=20, what="every message acknowledged")
            try:
                await again.wait(lambda: set(_numbers(mallory, "load")) | set(_numbers(again, "load")) >= set(range(total)),
                                 timeout=20, what="every acknowledged message delivered")
            finally:
                old, new = _numbers(mallory, "load"), _numbers(again, "load")
                missing = sorted(set(range(total)) - set(old) - set(new))
                print(f"old: {len(old)} (acked h {mallory.acked_h} of {mallory.handled}), new: {len(new)}, "
                      f"missing: {missing}")
            assert acked_before_kill > kill_after - 10
            assert len(new) == len(set(new)), "a message was delivered twice to the new session"
            # A message seen twice is one the old session never acknowledged (XEP-0198 section 4).
            unacked_old = {int(b.split()[1]) for e in mallory.received[mallory.acked_h:]
                           if e.name == "message" for b in [e.find_text("body") or ""] if b.startswith("load ")}
            assert set(old) & set(new) <= unacked_old, (sorted(set(old) & set(new)), sorted(unacked_old))
            print(f"kill -9 under load: {acked_before_kill} acked before the kill, {len(old)} delivered before it, "
                  f"{len(new)} after reconnecting, {len(set(old) & set(new))} twice (unacknowledged), "
                  f"registry clean after {gone_after:.2f} s")
        finally:
            await again.close()
    finally:
        nina.close()
        await olivia.close()
        await mallory.close()
        await ned.close()


async def _room_stored(database_url: str, room: str, name: str, member: str) -> bool:
    """The room's configuration and the member's affiliation are rows in PostgreSQL."""
    from sqlalchemy import select

    from peerage.store import Store
    from peerage.xmpp.muc.tables import muc_affiliations, muc_rooms

    store = Store(database_url)
    try:
        async with store.begin() as conn:
            config = (await conn.execute(select(muc_rooms.c.config).where(muc_rooms.c.jid == room))).scalar()
            affiliation = (await conn.execute(select(muc_affiliations.c.affiliation).where(
                muc_affiliations.c.room == room, muc_affiliations.c.jid == member))).scalar()
    finally:
        await store.close()
    return config is not None and name in config and affiliation == "member"


async def test_room_owner_node_killed(cluster: ClusterUnderTest) -> None:
    """The node owning a room dies (after node 3 did): the occupant on the other node is told the
    room went away (XEP-0045 status 332) and rejoins; the survivor takes the room's lease and serves
    it with the configuration and affiliations the old owner had stored; the dead node's user
    reconnects to the survivor and rejoins too. A room of the same service owned by the survivor
    goes on untouched."""
    service = f"conference.{DOMAIN}"
    room = f"failover@{service}"
    muc = "http://jabber.org/protocol/muc"
    rita = await ClusterClient("rita", "r").connect(cluster.address("n1"))
    sam = await ClusterClient("sam", "s").connect(cluster.address("n2"))
    again: ClusterClient | None = None
    try:
        for person, node in ((rita, "n1"), (sam, "n2")):
            await cluster.wait_registry(_has_session(node, person.jid), what="occupant registered")
        await rita.send(f"<presence to='{room}/rita'><x xmlns='{muc}'/></presence>")
        await rita.wait_for("presence", r"from='failover@conference[^']*/rita'.*status code='110'")
        # XEP-0045 section 10.1.3: a reserved room, configured persistent with a name; sam a member.
        await rita.send(
            f"<iq type='set' to='{room}' id='cfg'><query xmlns='{muc}#owner'><x xmlns='jabber:x:data' type='submit'>"
            "<field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roomconfig</value></field>"
            "<field var='muc#roomconfig_roomname'><value>Failover room</value></field>"
            "<field var='muc#roomconfig_persistentroom'><value>1</value></field></x></query></iq>")
        await rita.wait_for("iq", r"id='cfg'.*type='result'|type='result'.*id='cfg'")
        await rita.send(f"<iq type='set' to='{room}' id='aff'><query xmlns='{muc}#admin'>"
                        f"<item affiliation='member' jid='{sam.bare}'/></query></iq>")
        await rita.wait_for("iq", r"id='aff'.*type='result'|type='result'.*id='aff'")
        await sam.send(f"<presence to='{room}/sam'><x xmlns='{muc}'/></presence>")
        await sam.wait_for("presence", r"from='failover@conference[^']*/sam'.*status code='110'")
        status = await cluster.status_of(("n1", "n2"))
        owner = next(name for name, answer in status.items() if room in answer.get("room_leases", []))
        assert owner == "n1", status  # the node the creation reached
        survivor = "n2" if owner == "n1" else "n1"
        stays, leaves = (sam, rita) if owner == "n1" else (rita, sam)
        # a second room of the service, created through the survivor, with both in it
        steady = f"steady@{service}"
        await stays.send(f"<presence to='{steady}/{stays.user}'><x xmlns='{muc}'/></presence>")
        await stays.wait_for("presence", rf"from='{steady}/{stays.user}'.*status code='201'")
        await stays.send(f"<iq type='set' to='{steady}' id='scfg'><query xmlns='{muc}#owner'>"
                         "<x xmlns='jabber:x:data' type='submit'/></query></iq>")
        await stays.wait_for("iq", r"id='scfg'.*type='result'|type='result'.*id='scfg'")
        await leaves.send(f"<presence to='{steady}/{leaves.user}'><x xmlns='{muc}'/></presence>")
        await leaves.wait_for("presence", rf"from='{steady}/{leaves.user}'.*status code='110'")
        status = await cluster.status_of(("n1", "n2"))
        assert steady in status[survivor].get("room_leases", []), status
        # a last change answered just before the kill: the answer means it is in the database
        await rita.send(f"<iq type='set' to='{room}' id='aff2'><query xmlns='{muc}#admin'>"
                        f"<item affiliation='member' jid='latecomer@{DOMAIN}'/></query></iq>")
        await rita.wait_for("iq", r"id='aff2'.*type='result'|type='result'.*id='aff2'")
        cluster.nodes[owner].kill()
        assert await _room_stored(cluster.database_url, room, "Failover room", sam.bare)
        assert await _room_stored(cluster.database_url, room, "Failover room", f"latecomer@{DOMAIN}")
        leaves.drop()
        # the occupant on the surviving node is told the room went away, and rejoins
        await stays.wait_for("presence", r"from='failover@conference[^']*/" + stays.user + "'.*status code='332'",
                             timeout=REGISTRY_BOUND + 5)
        affiliation = "owner" if stays is rita else "member"
        await stays.send(f"<presence to='{room}/{stays.user}'><x xmlns='{muc}'/></presence>")
        await stays.wait(lambda: len(stays.find("presence", rf"from='failover@conference[^']*/{stays.user}'"
                                                            rf"(?!.*type='unavailable').*affiliation='{affiliation}'")) >= 2,
                         timeout=10, what="the rejoin with the stored affiliation")
        # the survivor owns the room now; its own room was not touched
        status = await cluster.status_of((survivor,))
        assert room in status[survivor].get("room_leases", []) and steady in status[survivor]["room_leases"], status
        assert not stays.find("presence", rf"from='{steady}/[^']*'.*status code='332'"), "steady was not on the dead node"
        await stays.send(f"<message to='{steady}' type='groupchat' id='st'><body>still here</body></message>")
        await stays.wait(lambda: "still here" in stays.bodies(), what="the survivor's own room answering")
        # the room's stored configuration came with it
        await stays.send(f"<iq type='get' to='{room}' id='info'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        info = await stays.wait_for("iq", r"id='info'")
        text = serialize(info)
        assert "Failover room" in text and "muc_persistent" in text, text
        # the dead node's user comes back through the survivor and rejoins with its affiliation
        again = await ClusterClient(leaves.user, "again").connect(cluster.address(survivor))
        other = "owner" if leaves is rita else "member"
        await again.send(f"<presence to='{room}/{leaves.user}'><x xmlns='{muc}'/></presence>")
        await again.wait_for("presence", rf"from='failover@conference[^']*/{leaves.user}'.*affiliation='{other}'"
                                         r".*status code='110'")
        await stays.wait_for("presence", rf"from='failover@conference[^']*/{leaves.user}'(?!.*type=)")
        await again.send(f"<message to='{room}' type='groupchat' id='back'><body>back again</body></message>")
        await stays.wait(lambda: "back again" in stays.bodies(), what="the groupchat message after failover")
    finally:
        for person in (rita, sam, again):
            if person is not None:
                await person.close()
