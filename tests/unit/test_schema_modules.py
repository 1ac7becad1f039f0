"""``load_all_tables``: every protocol's table module is loaded, and a missing one is an error."""

from __future__ import annotations

import pytest

from peerage.store import schema


def test_every_table_module_is_loaded() -> None:
    metadata = schema.load_all_tables()
    for table in ("accounts", "xmpp_offline", "login_tokens", "sip_registrations"):
        assert table in metadata.tables


def test_a_missing_table_module_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(schema, "PROTOCOL_TABLE_MODULES", (*schema.PROTOCOL_TABLE_MODULES, "peerage.nothing.tables"))
    with pytest.raises(RuntimeError, match=r"peerage\.nothing\.tables"):
        schema.load_all_tables()
