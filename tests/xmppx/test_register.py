"""XEP-0077 in-band registration (open on y.test, off by default on x1.test) and XEP-0401 invitations from
`peerage invite create`, with slixmpp's xep_0077 client."""

from __future__ import annotations

import asyncio
import re
import xml.etree.ElementTree as ET
from typing import Any

from slixmpp.exceptions import IqError

from tests.harness import PeerageServer
from tests.xmppx.conftest import ONE_ADDRESS, REGISTRATIONS_PER_IP, TIMEOUT, TWO_ADDRESS, Client, until

PARS = "urn:xmpp:pars:0"


class Registrar(Client):
    """Registers ``jid`` in band when the server offers it, after a XEP-0401 preauth when given a token."""

    def __init__(self, jid: str, password: str, token: str | None = None) -> None:
        super().__init__(jid, password, plugins=("xep_0077",))
        self.outcome: asyncio.Future[str] = asyncio.get_event_loop().create_future()
        self.token = token
        self.add_event_handler("register", self._register)
        plugin = self.plugin["xep_0077"]
        original = plugin.get_registration

        async def get_registration(*args: Any, **kwargs: Any) -> Any:
            try:
                if self.token is not None:
                    iq = self.make_iq_set()
                    iq.append(ET.Element(f"{{{PARS}}}preauth", {"token": self.token}))
                    # slixmpp holds back stanzas before the session but registration ones; it has
                    # no XEP-0401 plugin, so this one goes out the same way.
                    self._always_send_everything = True
                    try:
                        await iq.send(timeout=TIMEOUT)
                    finally:
                        self._always_send_everything = False
                return await original(*args, **kwargs)
            except IqError as exc:
                self._finish(exc.iq["error"]["condition"])
                raise

        plugin.get_registration = get_registration

    def _finish(self, outcome: str) -> None:
        if not self.outcome.done():
            self.outcome.set_result(outcome)
        if outcome != "registered":
            self.disconnect()

    async def _register(self, _form: object) -> None:
        iq = self.make_iq_set()
        iq["register"]["username"] = self.boundjid.user
        iq["register"]["password"] = self.password
        try:
            await iq.send(timeout=TIMEOUT)
        except IqError as exc:
            self._finish(exc.iq["error"]["condition"])
            return
        self._finish("registered")

    async def attempt(self, address: str) -> str:
        self.connect(host=address, port=5222)
        outcome = await asyncio.wait_for(self.outcome, TIMEOUT)
        if outcome == "registered":
            await asyncio.wait_for(self.started.wait(), TIMEOUT)  # and then it logs in with it
        return outcome


async def test_open_registration_and_its_limits(two: PeerageServer, clients: list[Client]) -> None:
    newbie = Registrar("newbie@y.test", "a fresh passphrase for newbie")
    clients.append(newbie)
    assert await newbie.attempt(TWO_ADDRESS) == "registered"
    assert newbie.boundjid.bare == "newbie@y.test"
    # The identity layer's password policy applies; a taken name is a conflict.
    weak = Registrar("weakling@y.test", "short")
    clients.append(weak)
    assert await weak.attempt(TWO_ADDRESS) == "not-acceptable"
    taken = Registrar("yara@y.test", "another long passphrase")
    clients.append(taken)
    assert await taken.attempt(TWO_ADDRESS) == "conflict"
    # Registrations per IP address per hour are bounded ([xmpp.registration] per_ip_per_hour).
    outcomes = []
    for index in range(REGISTRATIONS_PER_IP):
        client = Registrar(f"flood{index}@y.test", "a long enough passphrase")
        clients.append(client)
        outcomes.append(await client.attempt(TWO_ADDRESS))
    assert outcomes[: REGISTRATIONS_PER_IP - 1] == ["registered"] * (REGISTRATIONS_PER_IP - 1)
    assert outcomes[-1] == "resource-constraint"
    # The new account changes its password in band (XEP-0077 section 3.3) and logs in with it.
    await newbie.plugin["xep_0077"].change_password("the newer passphrase of newbie", timeout=TIMEOUT)
    again = await Client("newbie@y.test", "the newer passphrase of newbie").login(TWO_ADDRESS)
    clients.append(again)


async def test_registration_is_by_invitation_by_default(one: PeerageServer, clients: list[Client]) -> None:
    stranger = Registrar("stranger@x1.test", "a long enough passphrase")
    clients.append(stranger)
    assert await stranger.attempt(ONE_ADDRESS) == "not-allowed"
    bogus = Registrar("stranger@x1.test", "a long enough passphrase", token="not-a-token")
    clients.append(bogus)
    assert await bogus.attempt(ONE_ADDRESS) == "item-not-found"


async def test_invitation_registers_with_mutual_subscription(one: PeerageServer, clients: list[Client]) -> None:
    vic = await Client("vic@x1.test").login(ONE_ADDRESS)
    clients.append(vic)
    made = one.cli("invite", "create", "--inviter", "vic@x1.test")
    uri = made.stdout.strip()
    match = re.fullmatch(r"xmpp:vic@x1\.test\?roster;preauth=([\w-]+);ibr=y", uri)
    assert match, uri
    token = match.group(1)
    friend = Registrar("vicsfriend@x1.test", "the invitee's passphrase", token=token)
    clients.append(friend)
    assert await friend.attempt(ONE_ADDRESS) == "registered"
    # In the roster it fetched at login, or in a roster push if the approval came after that read.
    await until(lambda: friend.client_roster["vic@x1.test"]["subscription"] == "both")
    await until(lambda: vic.client_roster["vicsfriend@x1.test"]["subscription"] == "both")  # a roster push
    # They see each other's presence straight away.
    friend.send_presence(pstatus="hello vic")
    while True:
        presence = await asyncio.wait_for(vic.presences.get(), TIMEOUT)
        if presence["from"].bare == "vicsfriend@x1.test" and presence["status"] == "hello vic":
            break
    # An invitation is used once.
    again = Registrar("secondfriend@x1.test", "another passphrase here", token=token)
    clients.append(again)
    assert await again.attempt(ONE_ADDRESS) == "item-not-found"
    # A plain invitation (no inviter) is a registration URI for the domain.
    plain = one.cli("invite", "create", "--domain", "x2.test").stdout.strip()
    assert re.fullmatch(r"xmpp:x2\.test\?register;preauth=[\w-]+", plain), plain
    refused = one.cli("invite", "create", "--inviter", "nobody@x1.test", check=False)
    assert refused.returncode != 0 and "not an account here" in refused.stderr


def subscribe_with_token(client: Client, to: str, token: str) -> None:
    """A XEP-0379 subscription request carrying an invitation (section 3)."""
    presence = client.make_presence(pto=to, ptype="subscribe")
    presence.append(ET.Element(f"{{{PARS}}}preauth", {"token": token}))
    presence.send()


async def test_invitation_on_a_subscription_from_an_existing_account(
        one: PeerageServer, clients: list[Client]) -> None:
    """XEP-0379: an account of another server (over s2s) subscribes with the invitation's token and is
    approved at once, and the inviter subscribes back; the token is used once; a stranger with it, or
    with no valid token, is an ordinary request the inviter answers."""
    rita, yuri, rolf = Client("rita@x1.test"), Client("yuri@y.test"), Client("rolf@x1.test")
    clients.extend((rita, yuri, rolf))
    await asyncio.gather(rita.login(ONE_ADDRESS), yuri.login(TWO_ADDRESS), rolf.login(ONE_ADDRESS))
    rita.auto_authorize = None  # rita answers requests herself (slixmpp would approve them all)
    rita.auto_subscribe = False
    requests: list[str] = []
    carried: list[bool] = []

    def request(presence: Any) -> None:
        requests.append(presence["from"].bare)
        carried.append(presence.xml.find(f"{{{PARS}}}preauth") is not None)

    rita.add_event_handler("presence_subscribe", request)
    uri = one.cli("invite", "create", "--inviter", "rita@x1.test").stdout.strip()
    token = re.fullmatch(r"xmpp:rita@x1\.test\?roster;preauth=([\w-]+);ibr=y", uri).group(1)  # type: ignore[union-attr]

    subscribe_with_token(yuri, "rita@x1.test", token)
    # yuri (slixmpp approves rita's request back) and rita end with a mutual subscription; rita's
    # client saw no request to answer, only roster pushes.
    await until(lambda: yuri.client_roster["rita@x1.test"]["subscription"] == "both"
                and rita.client_roster["yuri@y.test"]["subscription"] == "both", timeout=30)
    assert "yuri@y.test" not in requests
    while True:  # rita's presence reached yuri with the approval
        presence = await asyncio.wait_for(yuri.presences.get(), TIMEOUT)
        if presence["from"].bare == "rita@x1.test" and presence["type"] in ("available", ""):
            break

    # Used up: rolf's request with the same token is an ordinary one, waiting for rita.
    subscribe_with_token(rolf, "rita@x1.test", token)
    await until(lambda: "rolf@x1.test" in requests)
    await until(lambda: rolf.client_roster["rita@x1.test"]["pending_out"])
    assert rolf.client_roster["rita@x1.test"]["subscription"] == "none"
    assert rita.client_roster["rolf@x1.test"]["subscription"] == "none"
    assert carried == [False]  # the request reaches rita's client without the token
    # And a token from somebody else's invitation approves nothing either.
    other = re.search(r"preauth=([\w-]+)", one.cli("invite", "create", "--inviter", "vic@x1.test").stdout).group(1)  # type: ignore[union-attr]
    rosa = await Client("rosa@x1.test").login(ONE_ADDRESS)
    clients.append(rosa)
    subscribe_with_token(rosa, "rita@x1.test", other)
    await until(lambda: "rosa@x1.test" in requests)
    assert rita.client_roster["rosa@x1.test"]["subscription"] == "none"
