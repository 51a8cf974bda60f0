"""Fixtures of the fuzz tests: the migrated SQLite template their brokers start from."""

from __future__ import annotations

from tests.db import conftest as database_fixtures

migrated_sqlite_template = database_fixtures.migrated_sqlite_template
