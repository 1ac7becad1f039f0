"""Configuration loading: defaults, virtual hosts, and errors that name the key and the fix."""

from pathlib import Path

import pytest

from peerage.config import ConfigError, load_config, parse_listen


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "peerage.toml"
    path.write_text(text)
    return path


def test_defaults_and_virtual_hosts(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, '[[domain]]\nname = "A.test"\n[[domain]]\nname = "b.test"\n'))
    assert list(cfg.domains) == ["a.test", "b.test"]
    assert cfg.data_dir == tmp_path / "data"
    assert cfg.database_url.startswith("sqlite+aiosqlite:///")
    assert cfg.xmpp.max_stanza_size >= 10000  # RFC 6120 §13.12
    assert cfg.xmpp.federation.level == "encrypted"


def test_per_service_listen_and_federation_overrides(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, """
[xmpp]
c2s_listen = ["127.0.0.1:15222"]
[xmpp.federation]
level = "trusted"
[xmpp.federation.domains."Legacy.test"]
level = "verified"
[database]
url = "postgresql+asyncpg://u@h/db"
"""))
    assert cfg.xmpp.c2s_listen == ["127.0.0.1:15222"]
    assert cfg.xmpp.federation.domains["legacy.test"].level == "verified"
    assert cfg.database_url == "postgresql+asyncpg://u@h/db"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[xmpp]\nbogus = 1\n", "[xmpp] unknown key 'bogus'"),
        ("[nonsense]\n", "unknown section or key 'nonsense'"),
        ("[xmpp]\nmax_stanza_size = \"big\"\n", "[xmpp] max_stanza_size must be a whole number"),
        ("[xmpp.federation]\nlevel = \"paranoid\"\n", "use one of"),
        ("[sip]\nenabled = 1\n", "must be true or false"),
        ("[[domain]]\nname = \"a.test\"\ncert = \"missing.crt\"\nkey = \"missing.key\"\n", "does not exist"),
        ("[[domain]]\nname = \"a.test\"\ncert = \"x.crt\"\n", "set both 'cert' and 'key'"),
        ("[[domain]]\nname = \"bad_domain\"\n", "name:"),
        ("[[domain]]\nname = \"a.test\"\n[[domain]]\nname = \"A.TEST\"\n", "configured twice"),
        ("[server\n", "not valid TOML"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert fragment in str(err.value)
    assert str(tmp_path / "peerage.toml") in str(err.value)


def test_missing_file_says_how_to_create(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="peerage init"):
        load_config(tmp_path / "nope.toml")


def test_parse_listen() -> None:
    assert parse_listen("0.0.0.0:5222") == ("0.0.0.0", 5222)
    assert parse_listen("[::1]:5061") == ("::1", 5061)
    with pytest.raises(ConfigError):
        parse_listen("localhost")
