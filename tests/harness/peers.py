"""Third-party peers: find their binaries, and run them with a private /etc/resolv.conf.

In CI (`CI=true`) a missing peer is a failure, never a skip: the run must prove interop.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import NoReturn

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# The one kind of skip allowed in CI (tests/conftest.py turns every other skip there into a failure):
# what the machine itself rules out, not a peer setup-test-env would have installed. Its reason says why.
MACHINE_LIMIT = "this machine cannot run it: "


def machine_limit(reason: str) -> str:
    """A skip reason that stands in CI too: pytest.skip(machine_limit("...")) or skipif(reason=...)."""
    return MACHINE_LIMIT + reason


def missing_peer(message: str) -> NoReturn:
    """Stop the test because something it needs is not on this machine: a failure in CI, where
    scripts/setup-test-env installs everything, and a skip elsewhere."""
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def require_binary(name: str, *candidates: str) -> str:
    """Path of `name` (or one of `candidates`); skip locally, fail in CI, when it is missing."""
    for option in (name, *candidates):
        found = shutil.which(option) or (option if os.path.isabs(option) and os.access(option, os.X_OK) else None)
        if found:
            return found
    missing_peer(f"{name} is not installed (Debian package providing it is installed by .ci/run)")


def private_resolv_conf(command: list[str], dns_address: str, workdir: Path) -> list[str]:
    """Wrap `command` so it sees a resolv.conf naming only `dns_address`; the network stays shared.

    Uses a private mount namespace (`unshare --mount`) and a bind mount over /etc/resolv.conf, which is
    what `ip netns exec` does for /etc/netns/NAME/resolv.conf, without leaving the host's network.
    """
    require_binary("unshare")
    resolv = workdir / "resolv.conf"
    resolv.write_text(f"nameserver {dns_address}\noptions timeout:1 attempts:2\n")
    script = f'mount --bind {resolv} /etc/resolv.conf && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *command]
