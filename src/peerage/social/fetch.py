"""Outbound HTTPS for the social service: fetching remote documents and POSTing to inboxes.

This module is in charge of every request peerage makes to another ActivityPub server. Names are
resolved through the host's resolver (``peerage.net.dns``, the one ``[dns]`` configures, as SMTP and
XMPP do), certificates are verified against ``[tls] ca_file`` or the system store with the host name
checked (RFC 9110 §4.3.4), and addresses that are loopback, private or link-local are refused unless
``[social] allow_private_addresses`` is set: an actor or key URL must not turn the server into a proxy
into the provider's own network (SSRF). Responses are read up to ``MAX_FETCH_SIZE``; redirects are
not followed (an id must be served at its own URL, ActivityPub §3.1).
"""

from __future__ import annotations

import ipaddress
import json
import socket
import ssl
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from peerage.social.core import AP_MEDIA_TYPE, LD_MEDIA_TYPE, DocumentError, json_depth

# A remote actor, object or collection page; Mastodon's own fetch limit is 1 MiB
# (Request::MAX_BODY_SIZE... 1 MiB in ResponseWithLimit), so we take the same.
MAX_FETCH_SIZE = 1048576
# Whole-request bound for one fetch or delivery: Mastodon's Request uses 10 s to connect and read.
REQUEST_TIMEOUT = 10.0
ACCEPT = f"{AP_MEDIA_TYPE}, {LD_MEDIA_TYPE}"
USER_AGENT = "peerage"


class FetchError(Exception):
    """A remote document could not be had (network, status, size, type); the message says which."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class _HostResolver(AbstractResolver):
    def __init__(self, dns: Any, allow_private: bool) -> None:
        self.dns = dns
        self.allow_private = allow_private

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        try:
            ipaddress.ip_address(host)
            addresses = [host]
        except ValueError:
            addresses = await self.dns.addresses(host)
        results: list[ResolveResult] = []
        for address in addresses:
            ip = ipaddress.ip_address(address)
            if not self.allow_private and not ip.is_global:
                continue
            results.append({"hostname": host, "host": address, "port": port,
                            "family": socket.AF_INET6 if ip.version == 6 else socket.AF_INET,
                            "proto": 0, "flags": socket.AI_NUMERICHOST})
        if not results:
            raise OSError(f"{host} has no public address" if addresses else f"{host} does not resolve")
        return results

    async def close(self) -> None:
        return None


class Fetcher:
    def __init__(self, host: Any) -> None:
        self.host = host
        self._session: aiohttp.ClientSession | None = None

    def _client_context(self) -> ssl.SSLContext:
        ctx = self.host.tls.client_context(verify=True)
        ctx.check_hostname = True  # HTTPS: the server's certificate must name the host we asked for
        return ctx

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            config = self.host.config.social
            connector = aiohttp.TCPConnector(
                resolver=_HostResolver(self.host.dns, config.allow_private_addresses),
                ssl=self._client_context(), limit=256, ttl_dns_cache=60)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
                headers={"User-Agent": USER_AGENT})
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def get_json(self, url: str, headers: dict[str, str] | None = None, *, accept: str = ACCEPT) -> dict[str, Any]:
        """GET `url` as JSON (ActivityStreams, JRD); `headers` may carry a signature."""
        if not url.startswith("https://"):
            raise FetchError(f"{url}: only https URLs are fetched")
        try:
            async with self.session.get(url, headers={"Accept": accept, **(headers or {})},
                                        allow_redirects=False) as response:
                if response.status != 200:
                    raise FetchError(f"{url}: HTTP {response.status}", response.status)
                body = await _read_bounded(response)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise FetchError(f"{url}: {type(exc).__name__}: {exc}") from None
        text = body.decode("utf-8", "replace")
        if json_depth(text) > self.host.config.social.max_json_depth:
            raise FetchError(f"{url}: the JSON nests too deep")
        try:
            document = json.loads(text)
        except ValueError:
            raise FetchError(f"{url}: not JSON") from None
        if not isinstance(document, dict):
            raise FetchError(f"{url}: not a JSON object")
        return document

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
        """POST `body` to `url`; the status and the start of the answer (for the queue's last_error)."""
        try:
            async with self.session.post(url, data=body, allow_redirects=False,
                                         headers={"Content-Type": LD_MEDIA_TYPE, **headers}) as response:
                text = (await response.content.read(512)).decode("utf-8", "replace")
                return response.status, text
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise FetchError(f"{url}: {type(exc).__name__}: {exc}") from None


async def _read_bounded(response: aiohttp.ClientResponse) -> bytes:
    length = response.content_length
    if length is not None and length > MAX_FETCH_SIZE:
        raise FetchError(f"{response.url}: {length} bytes is more than {MAX_FETCH_SIZE}")
    chunks, size = [], 0
    async for chunk in response.content.iter_chunked(65536):
        size += len(chunk)
        if size > MAX_FETCH_SIZE:
            raise FetchError(f"{response.url}: more than {MAX_FETCH_SIZE} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


__all__ = ["ACCEPT", "DocumentError", "FetchError", "Fetcher"]
