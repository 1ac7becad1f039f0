"""Well-known documents: security.txt, host-meta."""

from __future__ import annotations

from peerage.web import routes_for
from tests.web.conftest import WebHost, start_host, stop_host


async def test_security_txt(webhost: WebHost) -> None:
    async with webhost.client().get(webhost.base + "/.well-known/security.txt",
                                    headers={"Host": "example.org"}) as response:
        assert response.status == 200
        text = await response.text()
    assert "Contact: mailto:security@example.org" in text
    assert "Expires: " in text


async def test_host_meta_lists_registered_links(tmp_path) -> None:
    def register(host: object) -> None:
        routes_for(host).add_host_meta_link("urn:xmpp:alt-connections:websocket", "wss://{domain}/xmpp-websocket")

    server = await start_host(tmp_path, before_web=register)
    try:
        client = server.client()
        async with client.get(server.base + "/.well-known/host-meta", headers={"Host": "example.org"}) as response:
            xml = await response.text()
            assert response.content_type == "application/xrd+xml"
        assert "wss://example.org/xmpp-websocket" in xml and "<XRD" in xml
        async with client.get(server.base + "/.well-known/host-meta.json") as response:
            data = await response.json(content_type=None)
        assert data["links"][0]["rel"] == "urn:xmpp:alt-connections:websocket"
    finally:
        await stop_host(server)
