"""Hosted service JIDs (``peerage.xmpp.hosted``) in-process: routing to the service's own events."""

from __future__ import annotations

import asyncio
from typing import Any

from peerage.xmpp.hosted import HostedService, hook_service_iq
from peerage.xmpp.router import Router
from peerage.xmpp.stream import Element, iq_result, parse_stored

SERVICE = "conference.a.test"


class Harness:
    def __init__(self) -> None:
        self.router = Router(["a.test"])
        self.local: list[Element] = []
        self.remote: list[tuple[Element, str]] = []
        self.router.set_local_handler(self._local)

        async def remote(stanza: Element, domain: str) -> None:
            self.remote.append((stanza, domain))

        self.router.set_remote_sender(remote)
        self.service = HostedService(self.router, SERVICE, "a.test")
        self.router.add_service(self.service)

    def _local(self, stanza: Element) -> None:
        self.local.append(stanza)


async def _settle(result: Any) -> None:
    if result is not None:
        await result
    await asyncio.sleep(0)


async def test_service_jid_is_hosted_with_its_parent_certificate() -> None:
    h = Harness()
    assert h.router.is_hosted(SERVICE) and h.router.is_hosted("a.test")
    assert not h.router.is_hosted("b.test")
    assert h.router.certificate_domain(SERVICE) == "a.test"
    assert h.router.certificate_domain("a.test") == "a.test"
    h.router.remove_service(SERVICE)
    assert not h.router.is_hosted(SERVICE)


async def test_stanzas_fire_on_the_service_table_by_address_type() -> None:
    h = Harness()
    seen: list[tuple[str, str, str]] = []
    for name in ("message/bare", "presence/full", "message/host"):
        h.service.events.hook(name, lambda e, name=name: seen.append((name, e.bare, e.resource)) or True)
    await _settle(h.router.route(parse_stored(
        "<message from='alice@a.test/x' to='room@conference.a.test' type='groupchat'><body>hi</body></message>")))
    await _settle(h.router.route(parse_stored("<presence from='alice@a.test/x' to='room@conference.a.test/Al'/>")))
    # From a remote server too.
    assert await h.router.deliver_from_remote(parse_stored(
        "<message from='carol@b.test/y' to='conference.a.test'><body>x</body></message>"))
    assert seen == [("message/bare", "room@conference.a.test", ""), ("presence/full", "room@conference.a.test", "Al"),
                    ("message/host", "", "")]
    assert not h.local and not h.remote


async def test_unhandled_stanzas_get_rfc6120_answers() -> None:
    h = Harness()
    await _settle(h.router.route(parse_stored(
        "<message from='alice@a.test/x' to='room@conference.a.test'><body>hi</body></message>")))
    await _settle(h.router.route(parse_stored("<presence from='alice@a.test/x' to='room@conference.a.test/n'/>")))
    await _settle(h.router.route(parse_stored(
        "<iq from='carol@b.test/y' to='conference.a.test' type='get' id='1'><query xmlns='urn:x'/></iq>")))
    await asyncio.sleep(0)
    assert [s.find("error").elements().__next__().name for s in h.local] == ["service-unavailable"]
    assert h.local[0].attrs["from"] == "room@conference.a.test"
    (error, domain), = h.remote
    assert domain == "b.test" and error.attrs["type"] == "error" and error.attrs["id"] == "1"


async def test_iq_dispatch_by_payload_with_replies_routed_back() -> None:
    h = Harness()

    def info(ctx: Any) -> Element:
        assert ctx.owner == "room@conference.a.test" and ctx.domain == SERVICE
        return iq_result(ctx.iq, Element("query", "urn:x"))

    async def later(ctx: Any) -> Element:
        assert ctx.owner is None
        await asyncio.sleep(0)
        return iq_result(ctx.iq)

    hook_service_iq(h.service, "query", "urn:x", info, to=("bare",))
    hook_service_iq(h.service, "query", "urn:y", later)
    await _settle(h.router.route(parse_stored(
        "<iq from='alice@a.test/x' to='room@conference.a.test' type='get' id='1'><query xmlns='urn:x'/></iq>")))
    await _settle(h.router.route(parse_stored(
        "<iq from='alice@a.test/x' to='conference.a.test' type='set' id='2'><query xmlns='urn:y'/></iq>")))
    assert [(s.attrs["type"], s.attrs["id"], s.attrs["from"]) for s in h.local] == [
        ("result", "1", "room@conference.a.test"), ("result", "2", SERVICE)]
