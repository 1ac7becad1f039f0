"""Hosted domains without editing files by hand: `peerage domain add|list|del`.

This module is in charge of the `[[domain]]` entries of peerage.toml (appended or removed as text, so
the operator's comments and layout stay as they are; the result is loaded again before it replaces the
file) and of everything a new domain needs on disk: a self-signed certificate unless one is given, and
the DKIM keys. The command line then asks a running server to reload, which serves the domain at once.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from peerage.config import Config, ConfigError, config_from_dict

_HEADER = re.compile(r"^\s*\[")
_DOMAIN_HEADER = re.compile(r"^\s*\[\[\s*domain\s*\]\]\s*(#.*)?$")
_NAME = re.compile(r"""^\s*name\s*=\s*["']([^"']+)["']""")


def _write_checked(path: Path, text: str) -> Config:
    """Replace `path` with `text` only if `text` is a valid configuration; return it loaded."""
    import tomllib

    try:
        config = config_from_dict(tomllib.loads(text), path, check_files=False)
    except (tomllib.TOMLDecodeError, ConfigError) as exc:
        raise ConfigError(f"{path}: the edited file would not load ({exc}); it was left unchanged") from None
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=".peerage-", suffix=".toml")
    with os.fdopen(handle, "w", encoding="utf-8") as file:
        file.write(text)
    os.chmod(tmp, path.stat().st_mode & 0o777)
    os.replace(tmp, path)
    return config


def add_entry(config: Config, name: str, cert: Path, key: Path) -> Config:
    """Append a `[[domain]]` entry for `name` (paths written relative to the file when they can be)."""
    base = config.path.parent

    def shown(path: Path) -> str:
        try:
            return str(path.resolve().relative_to(base))
        except ValueError:
            return str(path.resolve())

    text = config.path.read_text(encoding="utf-8")
    if not text.endswith("\n"):
        text += "\n"
    text += f'\n[[domain]]\nname = "{name}"\ncert = "{shown(cert)}"\nkey = "{shown(key)}"\n'
    return _write_checked(config.path, text)


def remove_entry(config: Config, name: str) -> Config:
    """Remove the `[[domain]]` entry whose name is `name`."""
    lines = config.path.read_text(encoding="utf-8").splitlines(keepends=True)
    start = None
    index = 0
    while index < len(lines):
        if _DOMAIN_HEADER.match(lines[index]):
            end = index + 1
            while end < len(lines) and not _HEADER.match(lines[end]):
                end += 1
            names = [m.group(1) for m in map(_NAME.match, lines[index + 1:end]) if m]
            if names and names[0].lower().rstrip(".") == name:
                start = index
                break
            index = end
        else:
            index += 1
    if start is None:
        raise ConfigError(f"{config.path}: no [[domain]] entry with name = \"{name}\" to remove (is it written "
                          "another way? remove it by hand)")
    while start > 0 and not lines[start - 1].strip():  # the blank line add_entry put before it
        start -= 1
    kept = lines[:start] + lines[end:]
    return _write_checked(config.path, "".join(kept))


def certificate_paths(config: Config, name: str) -> tuple[Path, Path]:
    folder = config.path.parent / "certs"
    return folder / f"{name}.crt", folder / f"{name}.key"
