"""The SDK's tests run against live brokers on migrated databases of their own (fixtures of tests/db)."""

from tests.db.conftest import (  # noqa: F401 - fixtures shared with the database tests
    migrated_postgres_url,
    migrated_sqlite_template,
    postgres_databases,
)
