"""docs/standards.md stays true: it is built from docs/standards.d and every test it names exists."""

import re
import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TEST_REF = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def test_standards_md_is_built_from_fragments() -> None:
    build = runpy.run_path(str(ROOT / "scripts" / "build-standards"))["build"]
    assert (ROOT / "docs" / "standards.md").read_text() == build(), "run scripts/build-standards"


def test_every_named_test_exists() -> None:
    text = (ROOT / "docs" / "standards.md").read_text()
    refs = TEST_REF.findall(text)
    assert refs
    missing = []
    for path, name in refs:
        file = ROOT / path
        if not file.exists() or not re.search(rf"def {name}\b", file.read_text()):
            missing.append(f"{path}::{name}")
    assert not missing, f"docs/standards.md names tests that do not exist: {missing}"
