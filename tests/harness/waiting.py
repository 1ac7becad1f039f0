"""Bounded waits: poll a condition until it holds or a deadline passes, then fail with a message."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")
POLL_INTERVAL = 0.02
# The bound when a caller names none: long enough for a server round trip on a loaded 2-core CI
# machine running three test areas at once. A wait returns as soon as its condition holds, so a long
# bound costs nothing unless the event never comes.
DEFAULT_TIMEOUT = 30.0


def wait_for(predicate: Callable[[], T], timeout: float = DEFAULT_TIMEOUT, message: str = "condition") -> T:
    """Return the first truthy value of `predicate()`; raise AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(POLL_INTERVAL)


async def async_wait_for(
    predicate: Callable[[], Any] | Callable[[], Awaitable[Any]], timeout: float = DEFAULT_TIMEOUT, message: str = "condition"
) -> Any:
    """Async version: `predicate` may be a plain or a coroutine function."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        await asyncio.sleep(POLL_INTERVAL)
