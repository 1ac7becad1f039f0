"""What runs on ended credentials ends with them, in the running server, whoever ended them:

- a web session's logout (or its revocation from another browser) ends the XMPP streams opened with the
  login tokens it gave (SCRAM and PLAIN alike: <not-authorized/>), and drops the SIP registrations made
  with its SIP tokens, before the logout is answered; the other session's streams and bindings stay;
- ``peerage user passwd`` run as another process ends the account's live streams (<reset/>, and they
  may not be resumed, XEP-0198) and drops the bindings made with the old password or a web token, but
  not one made with an app password (app passwords survive a password change);
- ``peerage user del`` run as another process ends the streams with <not-authorized/> and drops every
  binding.

The server learns of the other process's change from the store (identity.credential_events); each
wait below is for what the server does (a stream error, a row gone), bounded."""

from __future__ import annotations

import asyncio
import re
import ssl
from typing import Any

import slixmpp
from sqlalchemy import create_engine, text

from tests.harness import PeerageServer
from tests.harness.waiting import async_wait_for
from tests.sip.ua import UdpUA
from tests.webchat.conftest import CLIENT_ADDRESS, DOMAIN, ORIGIN, PEERAGE_ADDRESS
from tests.webchat.test_chat_page import Web
from tests.webchat.test_credential_lifecycle import xmpp_token
from tests.xmpp.rawclient import RawClient

HEIDI = "heidi@example.org"  # logs out of one of two web sessions
JUDY = "judy@example.org"  # her password is changed from the command line
KEN = "ken@example.org"  # deleted from the command line
FIRST = "heidi, judy and ken's long password 1"
SECOND = "judy's second password, long enough 2"
WAIT = 20.0  # any one step on a loaded machine; the server's poll of the store is 1 s


class Client:
    """slixmpp (SCRAM, XEP-0198 on) recording the stream error it gets."""

    def __init__(self, account: str, password: str, resource: str) -> None:
        self.xmpp = slixmpp.ClientXMPP(f"{account}/{resource}", password)
        self.xmpp.ssl_context.check_hostname = False
        self.xmpp.ssl_context.verify_mode = ssl.CERT_NONE
        for plugin in ("xep_0030", "xep_0198", "xep_0199"):
            self.xmpp.register_plugin(plugin)
        self.xmpp.auto_reconnect = False
        loop = self.xmpp.loop
        self.started: asyncio.Future[bool] = loop.create_future()
        self.enabled: asyncio.Future[None] = loop.create_future()
        self.error: asyncio.Future[str] = loop.create_future()
        self.gone: asyncio.Future[None] = loop.create_future()
        self.xmpp.add_event_handler("failed_auth", lambda _: self.started.done() or self.started.set_result(False))
        self.xmpp.add_event_handler("session_start", lambda _: self.started.done() or self.started.set_result(True))
        self.xmpp.add_event_handler("sm_enabled", lambda _: self.enabled.done() or self.enabled.set_result(None))
        self.xmpp.add_event_handler("stream_error", self._stream_error)
        self.xmpp.add_event_handler("disconnected", lambda _: self.gone.done() or self.gone.set_result(None))

    def _stream_error(self, error: Any) -> None:
        if not self.error.done():
            self.error.set_result(str(error["condition"]))

    async def start(self) -> bool:
        self.xmpp.connect(host=PEERAGE_ADDRESS, port=5222)
        ok = await asyncio.wait_for(self.started, WAIT)
        if ok:
            await asyncio.wait_for(self.enabled, WAIT)
        return ok

    async def alive(self) -> bool:
        """Does the server still answer this stream (XEP-0199)?"""
        try:
            await asyncio.wait_for(self.xmpp.plugin["xep_0199"].send_ping(DOMAIN, timeout=WAIT), WAIT)
            return True
        except Exception:
            return False

    async def stop(self) -> None:
        if not self.gone.done():
            self.xmpp.disconnect()
            await asyncio.wait_for(self.gone, WAIT)


async def plain_stream(account: str, token: str) -> RawClient:
    """A stream logged in with PLAIN (as converse.js may), bound."""
    client = RawClient(PEERAGE_ADDRESS, DOMAIN)
    await client.login(account, token, mechanism="PLAIN")
    return client


def register(user: str, password: str) -> UdpUA:
    """A UA registered for five minutes; its contact names its own port."""
    ua = UdpUA(CLIENT_ADDRESS, (PEERAGE_ADDRESS, 5060), user, DOMAIN, password)
    response = ua.request_with_auth("REGISTER", f"sip:{DOMAIN}", extra=[("Expires", "300")])
    assert response is not None and response.status == 200, response
    return ua


def bindings(peerage: PeerageServer, account: str) -> set[int]:
    """The ports of the account's registered contacts, as the location service stored them."""
    engine = create_engine(f"sqlite:///{peerage.data_dir / 'peerage.db'}")
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT contact FROM sip_registrations WHERE aor = :a"),
                                {"a": f"sip:{account}"}).scalars().all()
    finally:
        engine.dispose()
    return {int(m.group(1)) for c in rows if (m := re.search(r":(\d+)$", c))}


def fresh_user(peerage: PeerageServer, account: str) -> None:
    if account in peerage.cli("user", "list", DOMAIN).stdout.split():
        peerage.cli("user", "del", account)
    peerage.add_user(account, FIRST)


async def test_logout_ends_the_streams_and_registrations_its_tokens_opened(peerage: PeerageServer) -> None:
    await asyncio.to_thread(fresh_user, peerage, HEIDI)
    first, second, third = [await Web().login(HEIDI, FIRST) for _ in range(3)]
    uas: list[UdpUA] = []
    clients: list[Client] = []
    raw: RawClient | None = None
    try:
        uas = [await asyncio.to_thread(register, "heidi", str((await web.sip_credentials())["password"]))
               for web in (first, second)]
        clients = [Client(HEIDI, await xmpp_token(first), "first")]
        assert await clients[0].start()
        raw = await plain_stream(HEIDI, await xmpp_token(second))
        assert bindings(peerage, HEIDI) == {uas[0].port, uas[1].port}

        async with first.client.post(ORIGIN + "/logout", headers={"Origin": ORIGIN, "X-CSRF-Token": first.csrf}) as r:
            assert r.status == 204
        # Answered after the registrar dropped the binding: no wait needed.
        assert bindings(peerage, HEIDI) == {uas[1].port}
        assert await asyncio.wait_for(clients[0].error, WAIT) == "not-authorized"
        await asyncio.wait_for(clients[0].gone, WAIT)
        # The second session's PLAIN stream lives on.
        await raw.send("<iq type='get' id='p1' to='example.org'><ping xmlns='urn:xmpp:ping'/></iq>")
        assert "result" in await raw.read_until(r"<iq[^>]*id='p1'[^>]*/?>")

        async with third.client.get(ORIGIN + "/auth/sessions") as r:
            others = [s["id"] for s in (await r.json())["sessions"] if not s["current"]]
        assert len(others) == 1
        async with third.client.delete(ORIGIN + f"/auth/sessions/{others[0]}",
                                       headers={"Origin": ORIGIN, "X-CSRF-Token": third.csrf}) as r:
            assert r.status == 204
        assert bindings(peerage, HEIDI) == set()
        assert "not-authorized" in await raw.read_until(r"not-authorized", timeout=WAIT)
    finally:
        for ua in uas:
            ua.close()
        for client in clients:
            await client.stop()
        if raw is not None:
            await raw.close()
        for web in (first, second, third):
            await web.client.close()


async def test_a_password_changed_by_another_process_ends_streams_and_bindings(peerage: PeerageServer) -> None:
    await asyncio.to_thread(fresh_user, peerage, JUDY)
    web = await Web().login(JUDY, FIRST)
    app = (await asyncio.to_thread(peerage.cli, "user", "app-password", "add", JUDY, "desk phone")).stdout
    app_password = app.strip().splitlines()[-1]
    uas: list[UdpUA] = []
    phone, laptop = Client(JUDY, FIRST, "phone"), Client(JUDY, await xmpp_token(web), "laptop")
    try:
        token_ua = await asyncio.to_thread(register, "judy", str((await web.sip_credentials())["password"]))
        password_ua = await asyncio.to_thread(register, "judy", FIRST)
        app_ua = await asyncio.to_thread(register, "judy", app_password)
        uas = [token_ua, password_ua, app_ua]
        assert [await phone.start(), await laptop.start()] == [True, True]
        previd = phone.xmpp.plugin["xep_0198"].sm_id
        assert previd

        await asyncio.to_thread(peerage.cli, "user", "passwd", JUDY, "--password-file", "-", input=SECOND + "\n")

        for client in (phone, laptop):
            assert await asyncio.wait_for(client.error, WAIT) == "reset"
            await asyncio.wait_for(client.gone, WAIT)
        await async_wait_for(lambda: bindings(peerage, JUDY) == {app_ua.port}, WAIT,
                             "the password's and the token's bindings to go, the app password's to stay")
        # Not resumable (XEP-0198): even logged in again, the old session is gone.
        again = RawClient(PEERAGE_ADDRESS, DOMAIN)
        try:
            await again.connect()
            await again.open_stream()
            await again.starttls()
            await again.open_stream()
            assert "<success" in await again.authenticate(JUDY, SECOND)
            await again.open_stream()
            await again.send(f"<resume xmlns='urn:xmpp:sm:3' previd='{previd}' h='0'/>")
            assert "<failed" in await again.read_until(r"<failed.*?</failed>|<failed[^>]*/>|<resumed[^>]*/>")
        finally:
            await again.close()
    finally:
        for ua in uas:
            ua.close()
        for client in (phone, laptop):
            await client.stop()
        await web.client.close()


async def test_an_account_deleted_by_another_process_loses_streams_and_bindings(peerage: PeerageServer) -> None:
    await asyncio.to_thread(fresh_user, peerage, KEN)
    client = Client(KEN, FIRST, "desk")
    ua = await asyncio.to_thread(register, "ken", FIRST)
    try:
        assert await client.start()
        assert bindings(peerage, KEN) == {ua.port}

        await asyncio.to_thread(peerage.cli, "user", "del", KEN)

        assert await asyncio.wait_for(client.error, WAIT) == "not-authorized"
        await asyncio.wait_for(client.gone, WAIT)
        await async_wait_for(lambda: not bindings(peerage, KEN), WAIT, "ken's binding to go")
    finally:
        ua.close()
        await client.stop()
