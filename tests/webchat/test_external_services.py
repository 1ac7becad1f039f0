"""XEP-0215 external services with a real coturn: a slixmpp client on example.org asks its server for
STUN/TURN services, gets time-limited credentials (coturn's use-auth-secret scheme), allocates a relay
on coturn with them, gets fresh credentials pushed before the first expire, and the expired ones are
refused by coturn (401) while the pushed ones still allocate."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator
from datetime import datetime

import pytest
import slixmpp
from slixmpp.xmlstream import ET
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from tests.harness import PeerageServer
from tests.webchat.conftest import (
    ALICE,
    CLIENT_ADDRESS,
    CREDENTIAL_LIFETIME,
    DAVE,
    DAVE_PASSWORD,
    DOMAIN,
    OTHER_ADDRESS,
    PASSWORD,
    PEERAGE_ADDRESS,
    TURN_ADDRESS,
    TURN_PORT,
)
from tests.webchat.coturn import Coturn
from tests.webchat.turnclient import allocate

NS = "urn:xmpp:extdisco:2"
CONNECT_TIMEOUT = 15.0


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid: str, password: str) -> None:
        super().__init__(jid, password)
        self.started = asyncio.Event()
        self.pushes: asyncio.Queue[ET.Element] = asyncio.Queue()
        self.ssl_context.check_hostname = False
        self.ssl_context.verify_mode = ssl.CERT_NONE
        self.register_plugin("xep_0030")
        self.add_event_handler("session_start", lambda _: self.started.set())
        self.register_handler(Callback("extdisco push", MatchXPath(f"{{jabber:client}}iq/{{{NS}}}services"),
                                       self._push))

    def _push(self, iq: slixmpp.Iq) -> None:
        if iq["type"] == "set":
            self.pushes.put_nowait(iq.xml)
            iq.reply().send()

    async def login(self) -> Client:
        self.connect(host=PEERAGE_ADDRESS, port=5222)
        await asyncio.wait_for(self.started.wait(), CONNECT_TIMEOUT)
        return self

    async def ask(self, payload: str, to: str = DOMAIN) -> ET.Element:
        iq = self.make_iq_get(ito=to)
        iq.append(ET.fromstring(payload))
        answer = await iq.send(timeout=10)
        return answer.xml

    async def close(self) -> None:
        self.disconnect()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.disconnected, 5)


def services_of(element: ET.Element) -> list[dict[str, str]]:
    return [dict(s.attrib) for s in element.iter(f"{{{NS}}}service")]


async def allocate_async(username: str, password: str) -> int:
    answer = await asyncio.to_thread(allocate, (TURN_ADDRESS, TURN_PORT), username, password, source=CLIENT_ADDRESS)
    return answer.code


@pytest.fixture
async def alice(peerage: PeerageServer) -> AsyncIterator[Client]:
    client = await Client(ALICE, PASSWORD).login()
    yield client
    await client.close()


async def test_disco_lists_extdisco_and_services_carry_credentials(alice: Client, coturn: Coturn) -> None:
    info = await alice.plugin["xep_0030"].get_info(jid=DOMAIN)
    assert NS in info["disco_info"]["features"]
    services = services_of(await alice.ask(f"<services xmlns='{NS}'/>"))
    kinds = sorted((s["type"], s["transport"]) for s in services)
    assert kinds == [("stun", "udp"), ("turn", "tcp"), ("turn", "udp")]
    stun = next(s for s in services if s["type"] == "stun")
    assert "username" not in stun and "restricted" not in stun
    turn = next(s for s in services if s["type"] == "turn" and s["transport"] == "udp")
    assert turn["host"] == TURN_ADDRESS and turn["port"] == str(TURN_PORT) and turn["restricted"] == "1"
    expiry, _, account = turn["username"].partition(":")
    assert account == ALICE
    expires = datetime.fromisoformat(turn["expires"].replace("Z", "+00:00")).timestamp()
    assert int(expiry) == int(expires) and 0 < expires - time.time() <= CREDENTIAL_LIFETIME + 1
    # coturn, knowing only the shared secret, accepts what peerage minted.
    assert await allocate_async(turn["username"], turn["password"]) == 0
    # ... and refuses a tampered password.
    assert await allocate_async(turn["username"], turn["password"][:-4] + "AAA=") == 401

    only_stun = services_of(await alice.ask(f"<services xmlns='{NS}' type='stun'/>"))
    assert [s["type"] for s in only_stun] == ["stun"]


async def test_credentials_request_and_its_errors(alice: Client) -> None:
    asked = services_of(await alice.ask(
        f"<credentials xmlns='{NS}'><service type='turn' host='{TURN_ADDRESS}' port='{TURN_PORT}'/></credentials>"))
    assert {s["transport"] for s in asked} == {"udp", "tcp"} and all(s["password"] for s in asked)
    assert await allocate_async(asked[0]["username"], asked[0]["password"]) == 0
    with pytest.raises(slixmpp.exceptions.IqError) as error:
        await alice.ask(f"<credentials xmlns='{NS}'><service type='turn' host='turn.elsewhere.test'/></credentials>")
    assert error.value.condition == "item-not-found"
    with pytest.raises(slixmpp.exceptions.IqError) as error:
        await alice.ask(f"<credentials xmlns='{NS}'/>")
    assert error.value.condition == "bad-request"
    with pytest.raises(slixmpp.exceptions.IqError) as error:
        await alice.ask(f"<services xmlns='{NS}' type='carrier-pigeon'/>")
    assert error.value.condition == "bad-request"
    iq = alice.make_iq_set(ito=DOMAIN)
    iq.append(ET.fromstring(f"<services xmlns='{NS}'/>"))
    with pytest.raises(slixmpp.exceptions.IqError) as error:
        await iq.send(timeout=10)
    assert error.value.condition == "bad-request"


async def test_credentials_are_pushed_before_expiry_and_the_old_ones_then_fail(alice: Client, coturn: Coturn) -> None:
    first = next(s for s in services_of(await alice.ask(f"<services xmlns='{NS}' type='turn'/>"))
                 if s["transport"] == "udp")
    old_expiry = int(first["username"].partition(":")[0])
    push = await asyncio.wait_for(alice.pushes.get(), CREDENTIAL_LIFETIME + 5)
    assert time.time() < old_expiry, "the push came after the credentials had expired"
    pushed = [s for s in services_of(push) if s["transport"] == "udp"]
    assert pushed and pushed[0]["action"] == "modify"
    new = pushed[0]
    assert int(new["username"].partition(":")[0]) > old_expiry
    # Wait for the first credential to expire (a bounded wait on the clock, not on an event: the
    # expiry is the event), then coturn must refuse it and take the pushed one.
    await asyncio.sleep(max(0.0, old_expiry + 1.5 - time.time()))
    assert await allocate_async(first["username"], first["password"]) == 401
    assert await allocate_async(new["username"], new["password"]) == 0


async def test_a_user_of_another_server_gets_no_credentials(other_peerage: PeerageServer, peerage: PeerageServer) -> None:
    """The relay is example.org's: dave@example.net asking it over s2s is refused (forbidden)."""
    client = Client(DAVE, DAVE_PASSWORD)
    client.connect(host=OTHER_ADDRESS, port=5222)
    await asyncio.wait_for(client.started.wait(), CONNECT_TIMEOUT)
    try:
        with pytest.raises(slixmpp.exceptions.IqError) as error:
            await client.ask(f"<services xmlns='{NS}'/>", to=DOMAIN)
        assert error.value.condition == "forbidden"
    finally:
        await client.close()
