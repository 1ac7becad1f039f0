"""Fixtures for the federation tests: a LocalDNS and a TestCA on the s2s block (127.0.2.0/24)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import LocalDNS, TestCA
from tests.s2s.helpers import DNS_ADDRESS, Federation


@pytest.fixture(scope="module")
def local_dns() -> Iterator[LocalDNS]:
    dns = LocalDNS(DNS_ADDRESS, 53)
    dns.start()
    try:
        yield dns
    finally:
        dns.stop()


@pytest.fixture(scope="module")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("s2s-ca"))


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory, local_dns: LocalDNS, test_ca: TestCA
               ) -> Iterator[Federation]:
    fed = Federation(Path(tmp_path_factory.mktemp("s2s")), local_dns, test_ca)
    try:
        yield fed
    finally:
        fed.stop_all()
