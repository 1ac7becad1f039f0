"""A Chromium the tests drive: `driver.mjs` (playwright-core) in a node subprocess, one JSON command per
line, every answer awaited with a bound. The browser is Debian's `chromium`, headless, with a fresh
profile; host names resolve only to the loopback addresses the test maps them to."""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "driver.mjs"
PLAYWRIGHT = HERE / "node_modules" / "playwright-core"
COMMAND_TIMEOUT = 45.0  # past the driver's own default bound (30 s, driver.mjs DEFAULT_TIMEOUT_MS)
START_TIMEOUT = 60.0
ANSWER_MARGIN = 10.0  # seconds past a driver-side bound before the driver itself counts as stuck


def require_browser() -> tuple[str, str]:
    """(node, chromium) paths; a skip where they are missing, and a failure in CI."""
    node = shutil.which("node")
    chromium = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    missing = [name for name, found in (("node", node), ("chromium", chromium),
                                        ("playwright-core (npm --prefix tests/browser ci)", PLAYWRIGHT.is_dir() or None))
               if not found]
    if missing:
        message = "browser tests need " + ", ".join(missing) + " (scripts/setup-test-env installs them)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    assert node is not None and chromium is not None
    return node, chromium


class BrowserError(AssertionError):
    pass


class Browser:
    def __init__(self, workdir: Path, *, hosts: dict[str, str], allow_hosts: list[str],
                 width: int = 1400, height: int = 860, extra_args: list[str] | None = None) -> None:
        node, chromium = require_browser()
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        profile = self.workdir / "profile"
        shutil.rmtree(profile, ignore_errors=True)
        options = {"userDataDir": str(profile), "chromium": chromium, "hosts": hosts, "allowHosts": allow_hosts,
                   "width": width, "height": height, "extraArgs": extra_args or []}
        self.stderr = open(self.workdir / "driver.stderr", "wb")  # noqa: SIM115 - closed in close()
        self.process = subprocess.Popen(
            [node, str(DRIVER), json.dumps(options)], cwd=HERE, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self.stderr, text=True, bufsize=1,
        )
        self.answers: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.counter = 0
        self.shots: list[Path] = []
        hello = self._answer(0, START_TIMEOUT)
        self.version = hello["result"]["version"]

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            line = line.strip()
            if line.startswith("{"):
                self.answers.put(json.loads(line))
        self.answers.put(None)

    def _answer(self, wanted: int, timeout: float) -> dict[str, Any]:
        while True:
            try:
                answer = self.answers.get(timeout=timeout)
            except queue.Empty:
                raise BrowserError(f"the browser did not answer within {timeout}s") from None
            if answer is None:
                raise BrowserError(f"the browser driver exited: {(self.workdir / 'driver.stderr').read_text()[-3000:]}")
            if answer.get("id") == wanted:
                return answer

    def do(self, op: str, **args: Any) -> Any:
        """Run one driver command. A `timeout` among the arguments is the driver's own bound, in
        milliseconds as playwright takes it; the wait here for the answer is that bound plus a margin
        (the driver reports its own timeout as an error, which reads better than ours), and never less
        than COMMAND_TIMEOUT."""
        self.counter += 1
        assert self.process.stdin is not None
        driver_ms = args.get("timeout")
        bound = COMMAND_TIMEOUT if driver_ms is None else max(COMMAND_TIMEOUT, driver_ms / 1000 + ANSWER_MARGIN)
        self.process.stdin.write(json.dumps({"id": self.counter, "op": op, **args}) + "\n")
        self.process.stdin.flush()
        answer = self._answer(self.counter, bound)
        if not answer["ok"]:
            self.screenshot(f"failed-{op}")
            raise BrowserError(f"{op} {args}: {answer['error']}")
        return answer["result"]

    # Shorthands the tests read well with.
    def goto(self, url: str, **kw: Any) -> Any:
        return self.do("goto", url=url, **kw)

    def click(self, selector: str, **kw: Any) -> None:
        self.do("click", selector=selector, **kw)

    def fill(self, selector: str, value: str, **kw: Any) -> None:
        self.do("fill", selector=selector, value=value, **kw)

    def press(self, key: str, **kw: Any) -> None:
        self.do("press", key=key, **kw)

    # The bounds of wait_for/wait_until are in seconds and go to the driver (as milliseconds), so a
    # wait of 20 s really waits up to 20 s.
    def type(self, text: str, **kw: Any) -> None:
        self.do("type", text=text, **kw)

    def wait_for(self, selector: str, timeout: float = 30.0, **kw: Any) -> Any:
        return self.do("waitFor", selector=selector, timeout=int(timeout * 1000), **kw)

    def wait_until(self, expression: str, timeout: float = 30.0, **kw: Any) -> Any:
        return self.do("waitForFunction", expression=expression, timeout=int(timeout * 1000), **kw)

    def eval(self, expression: str, **kw: Any) -> Any:
        return self.do("eval", expression=expression, **kw)

    def text(self, selector: str, **kw: Any) -> str:
        return str(self.do("text", selector=selector, **kw))

    def count(self, selector: str, **kw: Any) -> int:
        return int(self.do("count", selector=selector, **kw))

    def events(self) -> dict[str, list[dict[str, Any]]]:
        return dict(self.do("events"))

    def screenshot(self, name: str) -> Path:
        path = self.workdir / f"{len(self.shots):02d}-{name}.png"
        self.shots.append(path)
        try:
            self.counter += 1
            assert self.process.stdin is not None
            self.process.stdin.write(json.dumps({"id": self.counter, "op": "screenshot", "path": str(path)}) + "\n")
            self.process.stdin.flush()
            self._answer(self.counter, COMMAND_TIMEOUT)
        except (BrowserError, OSError):
            pass
        return path

    def close(self) -> None:
        try:
            if self.process.poll() is None and self.process.stdin is not None:
                self.process.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.process.stdin.flush()
                self.process.wait(15)
        except (OSError, subprocess.TimeoutExpired):
            pass
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        self.stderr.close()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
