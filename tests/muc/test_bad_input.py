"""Bad input to the group-chat service from a raw client: each gets its protocol answer (XEP-0045 or
RFC 6120 section 8.3), and the service keeps serving."""

from __future__ import annotations

from tests.muc.helpers import PASSWORD, TIMEOUT
from tests.xmpp.rawclient import RawClient

SERVICE = "conference.one.muc.test"
ROOM = f"raw@{SERVICE}"
MUC = "http://jabber.org/protocol/muc"


async def _answer(client: RawClient, send: str, id_: str) -> str:
    await client.send(send)
    return await client.read_until(rf"<(iq|message|presence)\b[^>]*id='{id_}'[^>]*?(/>|>.*?</\1>)", TIMEOUT)


async def test_bad_input_gets_clean_errors(peerage_pair) -> None:
    one, _ = peerage_pair
    client = RawClient(one.address, "one.muc.test")
    await client.login("bob", PASSWORD, "raw")
    try:
        # Two payloads in one IQ (RFC 6120 section 8.2.3): bad-request.
        answer = await _answer(client, f"<iq type='get' to='{SERVICE}' id='b1'><a xmlns='urn:a'/><b xmlns='urn:b'/>"
                                       "</iq>", "b1")
        assert "<bad-request" in answer
        # A namespace nobody serves: service-unavailable.
        answer = await _answer(client, f"<iq type='get' to='{SERVICE}' id='b2'><q xmlns='urn:nothing'/></iq>", "b2")
        assert "<service-unavailable" in answer
        # No such room: item-not-found, for queries and messages alike.
        answer = await _answer(client, f"<iq type='get' to='nosuch@{SERVICE}' id='b3'>"
                                       "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>", "b3")
        assert "<item-not-found" in answer
        answer = await _answer(client, f"<message to='nosuch@{SERVICE}' type='groupchat' id='b4'><body>x</body>"
                                       "</message>", "b4")
        assert "<item-not-found" in answer
        # Entering without a nickname, and with one that is too long.
        answer = await _answer(client, f"<presence to='{ROOM}' id='b5'><x xmlns='{MUC}'/></presence>", "b5")
        assert "<jid-malformed" in answer
        answer = await _answer(client, f"<presence to='{ROOM}/{'n' * 40}' id='b6'><x xmlns='{MUC}'/></presence>",
                               "b6")
        assert "<not-acceptable" in answer
        # A real room, then a huge message and a broken configuration form.
        await client.send(f"<presence to='{ROOM}/Bob' id='j1'><x xmlns='{MUC}'/></presence>")
        await client.read_until(r"code='201'", TIMEOUT)
        answer = await _answer(client, f"<iq type='set' to='{ROOM}' id='b7'><query xmlns='{MUC}#owner'>"
                                       "<x xmlns='jabber:x:data' type='submit'><field var='muc#roomconfig_maxusers'>"
                                       "<value>-5</value></field></x></query></iq>", "b7")
        assert "<not-acceptable" in answer
        await _answer(client, f"<iq type='set' to='{ROOM}' id='c1'><query xmlns='{MUC}#owner'>"
                              "<x xmlns='jabber:x:data' type='submit'/></query></iq>", "c1")
        answer = await _answer(client, f"<message to='{ROOM}' type='groupchat' id='b8'><body>{'y' * 6000}</body>"
                                       "</message>", "b8")
        assert "<policy-violation" in answer
        # A private message to an unknown occupant: item-not-found.
        answer = await _answer(client, f"<message to='{ROOM}/Nobody' type='chat' id='b9'><body>x</body></message>",
                               "b9")
        assert "<item-not-found" in answer
        # Still serving: a ping to the service.
        answer = await _answer(client, f"<iq type='get' to='{SERVICE}' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>",
                               "p1")
        assert "type='result'" in answer
    finally:
        await client.close()
