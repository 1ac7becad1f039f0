"""RawXmlStream: exact bytes on an XMPP stream, for tests of malformed input, errors and spoofing.

The client (tests/xmpp/rawclient.py) and the server-to-server peer (tests/s2s/rawpeer.py) build their
negotiations on it; it only sends text and reads until a pattern matches or the peer closes, each within
a bound.
"""

from __future__ import annotations

import asyncio
import re
import ssl

# A bound for one server round trip (or several, over s2s) on a loaded 2-core CI machine running three
# test areas at once; a read whose stanza arrives sooner returns sooner.
READ_TIMEOUT = 30.0
READ_CHUNK = 65536


class RawXmlStream:
    read_timeout = READ_TIMEOUT

    def __init__(self) -> None:
        self.buffer = ""
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def send(self, data: str | bytes) -> None:
        assert self.writer is not None
        self.writer.write(data.encode() if isinstance(data, str) else data)
        await self.writer.drain()

    async def read_until(self, pattern: str, timeout: float | None = None) -> str:
        """Read until ``pattern`` (a regex) matches the buffer; consume and return up to the match end."""
        assert self.reader is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.read_timeout if timeout is None else timeout)
        while True:
            match = re.search(pattern, self.buffer, re.S)
            if match:
                consumed, self.buffer = self.buffer[:match.end()], self.buffer[match.end():]
                return consumed
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {pattern!r}; have {self.buffer[-500:]!r}")
            chunk = await asyncio.wait_for(self.reader.read(READ_CHUNK), remaining)
            if not chunk:
                raise ConnectionError(f"connection closed while waiting for {pattern!r}; have {self.buffer[-500:]!r}")
            self.buffer += chunk.decode("utf-8", "replace")

    async def read_to_eof(self, timeout: float | None = None) -> str:
        """Read until the peer closes the connection; return everything not yet consumed."""
        assert self.reader is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.read_timeout if timeout is None else timeout)
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"the stream was not closed; have {self.buffer[-500:]!r}")
            try:
                chunk = await asyncio.wait_for(self.reader.read(READ_CHUNK), remaining)
            except (ConnectionError, ssl.SSLError):
                chunk = b""
            if not chunk:
                text, self.buffer = self.buffer, ""
                return text
            self.buffer += chunk.decode("utf-8", "replace")

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()
            self.writer = None
