"""SIP test fixtures: no SIPp process outlives the test that started it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.sip.sipp import kill_leftovers


@pytest.fixture(autouse=True)
def _reap_sipp() -> Iterator[None]:
    yield
    kill_leftovers()
