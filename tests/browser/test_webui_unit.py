"""The webmail's own unit tests (webui/test, node's test runner): the JMAP client against an in-process
fake of the API, reply/forward drafts, the query window, keyboard shortcuts."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_webui_unit_tests_pass() -> None:
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI") == "true":
            pytest.fail("node is missing (scripts/setup-test-env installs it)")
        pytest.skip("node is not installed")
    result = subprocess.run([node, "--test", "--test-reporter=tap", *sorted(str(p) for p in (ROOT / "webui" / "test").glob("*.test.mjs"))],
                            cwd=ROOT / "webui", capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "# fail 0" in result.stdout
