"""XEP-0363 HTTP File Upload with a real client: slixmpp finds upload.DOMAIN, gets a slot and PUTs the
file over HTTPS; another party GETs it; CORS; the section 4.1 errors; limits on slot abuse."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import slixmpp
from aiohttp.abc import AbstractResolver, ResolveResult
from slixmpp.exceptions import IqError
from slixmpp.plugins.xep_0363 import http_upload

from tests.harness import PeerageServer
from tests.xmppx.conftest import (
    LONE_ADDRESS,
    LONE_UPLOAD,
    ONE_ADDRESS,
    TWO_ADDRESS,
    UPLOAD_MAX_FILE,
    UPLOAD_QUOTA,
    UPLOAD_SLOTS_PER_MINUTE,
    Client,
)

UPLOAD_NS = "urn:xmpp:http:upload:0"
STANZAS_NS = "urn:ietf:params:xml:ns:xmpp-stanzas"


class LoopbackResolver(AbstractResolver):
    """x1.test and x2.test are the server on 127.0.12.2 (the test machine's DNS knows neither)."""

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[ResolveResult]:
        assert host in ("x1.test", "x2.test"), host
        return [{"hostname": host, "host": ONE_ADDRESS, "port": port, "family": socket.AF_INET, "proto": 0,
                 "flags": socket.AI_NUMERICHOST}]

    async def close(self) -> None:
        return None


@pytest.fixture
async def http(one: PeerageServer, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTPS client that checks the server's certificate against the test CA; slixmpp's uploads use it too."""
    context = ssl.create_default_context(cafile=str(one.ca_path))  # type: ignore[attr-defined]

    def session(**kwargs: Any) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=LoopbackResolver(), ssl=context),
                                     **kwargs)

    monkeypatch.setattr(http_upload, "ClientSession", session)
    async with session() as client:
        yield client


def upload_error(exc: IqError) -> tuple[str, str, Any]:
    error = exc.iq.xml.find("{jabber:client}error")
    assert error is not None
    condition = next(child.tag.partition("}")[2] for child in error if child.tag.startswith("{" + STANZAS_NS)
                     and not child.tag.endswith("}text"))
    return error.get("type", ""), condition, error


async def test_a_client_uploads_and_another_fetches(one: PeerageServer, http: aiohttp.ClientSession,
                                                    clients: list[Client]) -> None:
    alice = await Client("alice@x1.test", plugins=("xep_0363",)).login(ONE_ADDRESS)
    clients.append(alice)
    # The domain lists its upload service; its disco#info carries max-file-size (XEP-0363 section 3).
    items = await alice.plugin["xep_0030"].get_items(jid="x1.test", timeout=10)
    assert ("upload.x1.test", None, "HTTP File Upload") in items["disco_items"]["items"]
    data = bytes(range(256)) * 40
    url = await alice.plugin["xep_0363"].upload_file("photo of the cat.png", size=len(data),
                                                      content_type="image/png", input_file=__import__("io").BytesIO(data),
                                                      timeout=10)
    assert alice.plugin["xep_0363"].max_file_size == UPLOAD_MAX_FILE
    assert url.startswith("https://x1.test/upload/") and url.endswith("/photo%20of%20the%20cat.png")
    # Anyone with the URL reads it (here without any XMPP session), sandboxed, with CORS.
    async with http.get(url, headers={"Origin": "https://elsewhere.example"}) as response:
        assert response.status == 200
        assert await response.read() == data
        assert response.headers["Content-Type"] == "image/png"
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert "sandbox" in response.headers["Content-Security-Policy"]
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Content-Disposition"].startswith("inline")
    async with http.head(url) as response:
        assert response.status == 200 and response.headers["Content-Length"] == str(len(data))
    # A wrong file name under the slot is not the file.
    async with http.get(url.rpartition("/")[0] + "/other.png") as response:
        assert response.status == 404


async def test_cors_preflight(one: PeerageServer, http: aiohttp.ClientSession) -> None:
    headers = {"Origin": "https://webclient.example", "Access-Control-Request-Method": "PUT",
               "Access-Control-Request-Headers": "authorization, content-type"}
    async with http.options("https://x1.test/upload/someslot/file.txt", headers=headers) as response:
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert "PUT" in response.headers["Access-Control-Allow-Methods"]
        allowed = response.headers["Access-Control-Allow-Headers"].lower()
        assert "authorization" in allowed and "content-type" in allowed


async def test_oversized_file_is_refused_with_max_file_size(one: PeerageServer, clients: list[Client]) -> None:
    bob = await Client("bob@x1.test", plugins=("xep_0363",)).login(ONE_ADDRESS)
    clients.append(bob)
    with pytest.raises(IqError) as refused:
        await bob.plugin["xep_0363"].request_slot(slixmpp.JID("upload.x1.test"), "big.bin", UPLOAD_MAX_FILE + 1,
                                                  timeout=10)
    kind, condition, error = upload_error(refused.value)
    assert (kind, condition) == ("modify", "not-acceptable")
    assert error.findtext(f"{{{UPLOAD_NS}}}file-too-large/{{{UPLOAD_NS}}}max-file-size") == str(UPLOAD_MAX_FILE)


async def test_quota_is_resource_constraint_with_retry(one: PeerageServer, clients: list[Client]) -> None:
    carol = await Client("carol@x1.test", plugins=("xep_0363",)).login(ONE_ADDRESS)
    clients.append(carol)
    service = slixmpp.JID("upload.x1.test")
    size = UPLOAD_MAX_FILE
    for index in range(UPLOAD_QUOTA // size):  # open slots count against the quota
        await carol.plugin["xep_0363"].request_slot(service, f"part{index}.bin", size, timeout=10)
    with pytest.raises(IqError) as refused:
        await carol.plugin["xep_0363"].request_slot(service, "one-too-many.bin", size, timeout=10)
    kind, condition, error = upload_error(refused.value)
    assert (kind, condition) == ("wait", "resource-constraint")
    retry = error.find(f"{{{UPLOAD_NS}}}retry")
    assert retry is not None
    when = time.mktime(time.strptime(retry.get("stamp"), "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert time.time() < when < time.time() + 400  # the open slots lapse within their lifetime
    # A small file still fits.
    await carol.plugin["xep_0363"].request_slot(service, "small.txt", UPLOAD_QUOTA % size or 1, timeout=10)


async def test_slot_flood_is_rate_limited(one: PeerageServer, clients: list[Client]) -> None:
    dave = await Client("dave@x1.test", plugins=("xep_0363",)).login(ONE_ADDRESS)
    clients.append(dave)
    service = slixmpp.JID("upload.x1.test")
    for index in range(UPLOAD_SLOTS_PER_MINUTE):
        await dave.plugin["xep_0363"].request_slot(service, f"n{index}.txt", 1, timeout=10)
    with pytest.raises(IqError) as refused:
        await dave.plugin["xep_0363"].request_slot(service, "flood.txt", 1, timeout=10)
    kind, condition, error = upload_error(refused.value)
    assert (kind, condition) == ("wait", "resource-constraint")
    assert error.find(f"{{{UPLOAD_NS}}}retry") is not None
    assert f"at most {UPLOAD_SLOTS_PER_MINUTE} a minute" in (error.findtext(f"{{{STANZAS_NS}}}text") or "")


async def test_put_rules_expiry_and_remote_accounts(one: PeerageServer, two: PeerageServer,
                                                    http: aiohttp.ClientSession, clients: list[Client]) -> None:
    erin = await Client("erin@x1.test", plugins=("xep_0363",)).login(ONE_ADDRESS)
    clients.append(erin)
    slot_iq = await erin.plugin["xep_0363"].request_slot(slixmpp.JID("upload.x1.test"), "notes.txt", 5,
                                                         content_type="text/plain", timeout=10)
    slot = slot_iq["http_upload_slot"]
    put_url = slot["put"]["url"]
    auth = {header["name"]: header["value"] for header in slot["put"]["headers"]}
    assert list(auth) == ["Authorization"]
    async with http.put(put_url, data=b"hello") as response:
        assert response.status == 403  # no token
    async with http.put(put_url, data=b"hello", headers={"Authorization": "Bearer wrong"}) as response:
        assert response.status == 403
    async with http.put(put_url, data=b"hello, world", headers=auth) as response:
        assert response.status == 413  # more than the slot's size
    async with http.put(put_url, data=b"hell", headers=auth) as response:
        assert response.status == 400
    async with http.get(slot["get"]["url"]) as response:
        assert response.status == 404  # nothing uploaded yet
    async with http.put(put_url, data=b"hello", headers={**auth, "Content-Type": "text/plain"}) as response:
        assert response.status == 201
        assert response.headers["Access-Control-Allow-Origin"] == "*"
    async with http.put(put_url, data=b"hello", headers=auth) as response:
        assert response.status == 409  # a slot is used once
    async with http.get(slot["get"]["url"]) as response:
        assert response.status == 200 and await response.read() == b"hello"
    # Once expired, the file is not served.
    slot_id = put_url.split("/")[-2]
    with sqlite3.connect(one.data_dir / "peerage.db") as db:
        db.execute("UPDATE upload_files SET expires = ? WHERE slot = ?", (time.time() - 1, slot_id))
    async with http.get(slot["get"]["url"]) as response:
        assert response.status == 404
    # An account of another server may not upload here (over s2s).
    yara = await Client("yara@y.test", plugins=("xep_0363",)).login(TWO_ADDRESS)
    clients.append(yara)
    with pytest.raises(IqError) as refused:
        await yara.plugin["xep_0363"].request_slot(slixmpp.JID("upload.x1.test"), "x.txt", 1, timeout=20)
    assert upload_error(refused.value)[:2] == ("cancel", "not-allowed")


async def test_server_wide_quota(lone: PeerageServer, clients: list[Client]) -> None:
    """[xmpp.upload] total_quota bounds every account's files and open slots together (Prosody's
    http_file_share_global_quota), with the same resource-constraint and retry stamp."""
    nina, noor = Client("nina@z.test", plugins=("xep_0363",)), Client("noor@z.test", plugins=("xep_0363",))
    clients.extend((nina, noor))
    await asyncio.gather(nina.login(LONE_ADDRESS), noor.login(LONE_ADDRESS))
    service = slixmpp.JID("upload.z.test")
    size = LONE_UPLOAD["max_file_size"]
    for index in range(2):  # nina's own quota allows two
        await nina.plugin["xep_0363"].request_slot(service, f"nina{index}.bin", size, timeout=10)
    await noor.plugin["xep_0363"].request_slot(service, "noor0.bin", LONE_UPLOAD["total_quota"] - 2 * size, timeout=10)
    # Now the server is full, though noor is far below its own quota.
    with pytest.raises(IqError) as refused:
        await noor.plugin["xep_0363"].request_slot(service, "noor1.bin", 1, timeout=10)
    kind, condition, error = upload_error(refused.value)
    assert (kind, condition) == ("wait", "resource-constraint")
    assert "server's upload space is full" in (error.findtext(f"{{{STANZAS_NS}}}text") or "")
    retry = error.find(f"{{{UPLOAD_NS}}}retry")
    assert retry is not None
    when = time.mktime(time.strptime(retry.get("stamp"), "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert time.time() < when < time.time() + 400  # the first open slot lapses within its lifetime
