"""MTA-STS (RFC 8461): discover, fetch and apply a recipient domain's SMTP TLS policy.

This module is in charge of the sans-I/O policy parser and matcher, and of fetching a policy over
HTTPS with a verified certificate, resolving names through the configured DNS. A policy in `enforce`
mode makes the queue refuse to deliver over an unverified or missing TLS connection.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

# RFC 8461 §3.3: senders may limit the policy body to 64 KiB.
MAX_POLICY_BYTES = 64 * 1024
# Room for the HTTP status line and headers in front of the policy body.
MAX_RESPONSE_HEAD = 8192
# RFC 8461 §3.3: the fetch should time out after a minute or so (Mox uses 1 minute).
FETCH_TIMEOUT_SECONDS = 60.0
# RFC 8461 §3.2: max_age is at most 31557600 seconds (one year).
MAX_POLICY_AGE = 31557600


@dataclass(frozen=True)
class Policy:
    mode: str  # enforce, testing, none
    mx: tuple[str, ...]
    max_age: int
    policy_id: str = ""
    fetched_at: float = field(default=0.0, compare=False)

    def matches(self, mx_host: str) -> bool:
        """RFC 8461 §4.1: exact, or a wildcard covering exactly one leftmost label."""
        host = mx_host.rstrip(".").lower()
        for pattern in self.mx:
            pattern = pattern.rstrip(".").lower()
            if pattern.startswith("*."):
                head, _, rest = host.partition(".")
                if head and rest == pattern[2:]:
                    return True
            elif host == pattern:
                return True
        return False


class PolicyError(ValueError):
    pass


def parse_txt(record: str) -> str | None:
    """The policy id of a `_mta-sts` TXT record (RFC 8461 §3.1), or None if not one."""
    tags = {}
    for part in record.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep:
            tags[name.strip()] = value.strip()
    if tags.get("v") != "STSv1" or "id" not in tags:
        return None
    return tags["id"]


def parse_policy(body: str, policy_id: str = "") -> Policy:
    """Parse the policy file (RFC 8461 §3.2); raise PolicyError when it is not valid."""
    values: dict[str, list[str]] = {}
    for line in body.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise PolicyError(f"policy line without a colon: {line!r}")
        values.setdefault(key.strip(), []).append(value.strip())
    if values.get("version") != ["STSv1"]:
        raise PolicyError("policy version is not STSv1")
    mode = (values.get("mode") or [""])[0]
    if mode not in ("enforce", "testing", "none"):
        raise PolicyError(f"unknown policy mode {mode!r}")
    try:
        max_age = int((values.get("max_age") or [""])[0])
    except ValueError:
        raise PolicyError("max_age is not a number") from None
    mx = tuple(values.get("mx", []))
    if mode != "none" and not mx:
        raise PolicyError("a policy in enforce or testing mode needs mx lines")
    return Policy(mode, mx, min(max_age, MAX_POLICY_AGE), policy_id, time.time())


class PolicyFetcher:
    """Fetches and caches policies. `dns` is `host.dns`; `ca_file` the trust anchors for HTTPS."""

    def __init__(self, dns: Any, ca_file: str | None, port: int = 443) -> None:
        self.dns = dns
        self.port = port
        self.context = ssl.create_default_context(cafile=ca_file)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._cache: dict[str, Policy] = {}
        # Domains whose announced policy could not be had, with the RFC 8460 §4.3.2.2 result type
        # and why (for TLS-RPT); bounded like the cache, by the domains we send to.
        self.failures: dict[str, tuple[str, str]] = {}

    async def policy(self, domain: str) -> Policy | None:
        """The domain's policy, or None when it publishes none (or it cannot be fetched and none is
        cached: RFC 8461 §5.1 then falls back to opportunistic TLS)."""
        domain = domain.lower()
        cached = self._cache.get(domain)
        try:
            records = await self.dns.txt(f"_mta-sts.{domain}")
        except Exception:
            records = []
        ids = [i for r in records if (i := parse_txt(_text(r))) is not None]
        self.failures.pop(domain, None)
        if len(ids) != 1:
            if cached and time.time() - cached.fetched_at < cached.max_age:
                return cached
            return None
        if cached and cached.policy_id == ids[0] and time.time() - cached.fetched_at < cached.max_age:
            return cached
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation of the
            # delivery waiting here (CPython gh-86296), and the stopped task would run on.
            async with asyncio.timeout(FETCH_TIMEOUT_SECONDS):
                body = await self._fetch(f"mta-sts.{domain}")
            policy = parse_policy(body, ids[0])
        except ssl.SSLError as exc:
            self.failures[domain] = ("sts-webpki-invalid", str(exc)[:200])
            return cached
        except PolicyError as exc:
            self.failures[domain] = ("sts-policy-invalid", str(exc)[:200])
            return cached
        except (OSError, TimeoutError, UnicodeDecodeError) as exc:
            self.failures[domain] = ("sts-policy-fetch-error", (str(exc) or type(exc).__name__)[:200])
            return cached
        self._cache[domain] = policy
        return policy

    async def _fetch(self, host: str) -> str:
        addresses = list(await self.dns.a(host)) + list(await self.dns.aaaa(host))
        if not addresses:
            raise OSError(f"{host} has no address")
        reader, writer = await asyncio.open_connection(
            str(addresses[0]), self.port, ssl=self.context, server_hostname=host
        )
        try:
            request = (
                f"GET /.well-known/mta-sts.txt HTTP/1.0\r\nHost: {host}\r\n"
                "User-Agent: peerage\r\nConnection: close\r\n\r\n"
            )
            writer.write(request.encode("ascii"))
            await writer.drain()
            response = b""
            while len(response) <= MAX_POLICY_BYTES + MAX_RESPONSE_HEAD:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                response += chunk
        finally:
            writer.close()
        head, _, body = response.partition(b"\r\n\r\n")
        status_line = head.split(b"\r\n", 1)[0].split()
        if len(status_line) < 2 or status_line[1] != b"200":
            raise PolicyError(f"policy fetch answered {head[:80]!r}")
        # RFC 8461 §3.3: redirects must not be followed; only a 200 counts.
        return body[:MAX_POLICY_BYTES].decode("utf-8")


def _text(record: Any) -> str:
    if isinstance(record, bytes):
        return record.decode("utf-8", "replace")
    if isinstance(record, list | tuple):
        return "".join(_text(r) for r in record)
    return str(record)
