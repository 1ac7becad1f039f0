"""Third-party peers: find their binaries, and run them with a private /etc/resolv.conf.

In CI (`CI=true`) a missing peer is a failure, never a skip: the run must prove interop.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_binary(name: str, *candidates: str) -> str:
    """Path of `name` (or one of `candidates`); skip locally, fail in CI, when it is missing."""
    for option in (name, *candidates):
        found = shutil.which(option) or (option if os.path.isabs(option) and os.access(option, os.X_OK) else None)
        if found:
            return found
    message = f"{name} is not installed (Debian package providing it is installed by .ci/run)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


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
