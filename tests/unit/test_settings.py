"""Broker settings: defaults for an embedded broker, overrides from CONVEYOR_*, and refusing a dev token in prod."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from broker.settings import Settings, UnsafeSettings


def test_the_default_database_is_a_sqlite_file_in_the_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONVEYOR_DATABASE_URL", raising=False)
    assert Settings().database_url == "sqlite+aiosqlite:////var/lib/conveyor/conveyor.db"
    monkeypatch.setenv("CONVEYOR_DATA_DIR", "/srv/conveyor")
    settings = Settings()
    assert settings.data_dir == Path("/srv/conveyor")
    assert settings.database_url == "sqlite+aiosqlite:////srv/conveyor/conveyor.db"
    assert settings.is_sqlite


def test_the_environment_overrides_with_the_conveyor_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_DATABASE_URL", "postgresql+asyncpg://u:p@db.example/conveyor")
    monkeypatch.setenv("CONVEYOR_LEASE_S", "90")
    monkeypatch.setenv("CONVEYOR_DISPATCHER_INTERVAL_S", "0.5")
    settings = Settings()
    assert not settings.is_sqlite
    assert (settings.lease_s, settings.dispatcher_interval_s) == (90.0, 0.5)


def test_a_sync_driver_or_a_short_lease_is_refused() -> None:
    with pytest.raises(ValidationError, match="aiosqlite"):
        Settings(database_url="sqlite:////tmp/x.db")
    with pytest.raises(ValidationError, match="lease_s"):
        Settings(lease_s=5)


def test_a_dev_token_is_refused_outside_dev_mode() -> None:
    token = "a-long-enough-dev-token"
    Settings(dev_mode=True, dev_token=token).refuse_unsafe()
    Settings().refuse_unsafe()
    with pytest.raises(UnsafeSettings, match="DEV_MODE"):
        Settings(dev_token=token).refuse_unsafe()
    with pytest.raises(UnsafeSettings, match="16"):
        Settings(dev_mode=True, dev_token="short").refuse_unsafe()
    assert token not in repr(Settings(dev_mode=True, dev_token=token))
