"""Security policy of every web response and request: headers, host names, origins, body limits.

This module is in charge of the headers every HTTPS answer carries (CSP, HSTS, frame-ancestors,
Referrer-Policy, nosniff), of refusing Host names this server does not serve (a DNS-rebinding page then
cannot talk to it), of the same-origin check on state-changing requests, and of reading request bodies
within a size and a time bound (slow bodies get 408, large ones 413).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import Iterable
from typing import Any

from aiohttp import web

# Pages of the web service itself (login, session lists): nothing but same-origin resources, no
# inline script, and never framed. Routes that need another policy set their own header.
DEFAULT_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
# The webmail at /mail/: its own scripts and styles only; messages are shown in sandboxed srcdoc
# frames (no allow-scripts), which inherit this policy. img-src allows https: so that a message's remote
# images can load once the user asks for them: until then the webmail's sanitizer removes every remote
# URL and the frame's own policy (img-src data:) refuses any it missed.
WEBMAIL_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob: https:; "
    "font-src 'self'; connect-src 'self'; frame-src 'self' blob: data:; child-src 'self' blob:; "
    "worker-src 'self'; manifest-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
# Per RFC 9110 §9.2.1 these change nothing on the server; every other method is a state change.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Deepest nesting a JSON request may have. JMAP requests nest about 6 deep; Python's parser recurses
# per level and would stop at ~1000 with RecursionError, so a bound well below keeps that out of reach.
MAX_JSON_DEPTH = 64


def security_headers(response: web.StreamResponse, hsts_max_age: int) -> None:
    headers = response.headers
    headers.setdefault("Content-Security-Policy", DEFAULT_CSP)
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("X-Frame-Options", "DENY")  # for browsers older than CSP frame-ancestors
    headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
    headers.setdefault("Cross-Origin-Resource-Policy", "same-origin")
    if hsts_max_age:
        headers.setdefault("Strict-Transport-Security", f"max-age={hsts_max_age}")


class HostNames:
    """The Host names this server answers to: hosted domains, their autoconfig./mta-sts. names, and the
    public host name. An IP literal is accepted (a rebinding attack needs a name)."""

    PREFIXES = ("autoconfig.", "mta-sts.", "www.")

    def __init__(self, domains: list[str], public_hostname: str = "") -> None:
        names = set(domains)
        for domain in domains:
            names.update(prefix + domain for prefix in self.PREFIXES)
        if public_hostname:
            names.add(public_hostname.lower())
        self.names = frozenset(names)
        self.domains = tuple(domains)

    def name(self, request: web.BaseRequest) -> str | None:
        """The request's host name without port, lower-cased, or None when it is not ours."""
        host = (request.host or "").lower()
        name = split_host(host)
        if name in self.names:
            return name
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return None
        return name

    def domain(self, name: str) -> str:
        """The hosted domain a host name belongs to (the first domain for an IP or the public name)."""
        for prefix in self.PREFIXES:
            if name.startswith(prefix) and name[len(prefix):] in self.domains:
                return name[len(prefix):]
        if name in self.domains:
            return name
        return self.domains[0] if self.domains else name


def split_host(host: str) -> str:
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        return host.partition(":")[0]
    return host


def same_origin(request: web.BaseRequest) -> bool:
    """False when the browser says this request comes from another site (Fetch Metadata, Origin or
    Referer); True for same-origin requests and for non-browser clients, which send none of them."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    own = f"{request.scheme}://{request.host}"
    origin = request.headers.get("Origin")
    if origin == "null":
        # A form post from a page under Referrer-Policy: no-referrer carries "Origin: null" (Fetch
        # §3.2.5); then only the browser's Sec-Fetch-Site can say it is ours.
        return site == "same-origin"
    if origin is not None:
        return origin == own
    referer = request.headers.get("Referer")
    if referer is not None:
        return referer == own or referer.startswith(own + "/")
    return True


async def read_body(request: web.BaseRequest, limit: int, timeout: float) -> bytes:
    """The whole body, or 413 when it is larger than `limit`, or 408 when it takes over `timeout`."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=declared)
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            while True:
                chunk = await request.content.readany()
                if not chunk:
                    break
                size += len(chunk)
                if size > limit:
                    raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size)
                chunks.append(chunk)
    except TimeoutError:
        raise web.HTTPRequestTimeout(text="the request body did not arrive in time\n") from None
    return b"".join(chunks)


class JsonError(ValueError):
    pass


def parse_json(data: bytes) -> Any:
    """Parse a JSON request body; JsonError when it is not UTF-8 JSON or nests deeper than MAX_JSON_DEPTH."""
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise JsonError(f"not valid JSON: {exc}") from None
    except RecursionError:
        raise JsonError(f"JSON nests deeper than {MAX_JSON_DEPTH} levels") from None
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children: Iterable[Any]
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > MAX_JSON_DEPTH:
            raise JsonError(f"JSON nests deeper than {MAX_JSON_DEPTH} levels")
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return value
