"""Fixtures of the multi-process tests: throw-away PostgreSQL databases (tests/db's fixtures)."""

from __future__ import annotations

from tests.db import conftest as database_fixtures

postgres_databases = database_fixtures.postgres_databases
