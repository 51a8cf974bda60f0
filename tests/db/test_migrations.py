"""Alembic is the only way the schema changes: ``upgrade head`` on an empty database yields exactly the models."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from broker.db.engine import create_database
from broker.db.migrate import downgrade_async, schema_is_current, upgrade_async
from broker.db.models import Base


def _differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True, "compare_server_default": True})
    return list(compare_metadata(context, Base.metadata))


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


async def test_upgrade_head_on_an_empty_database_yields_exactly_the_models(empty_database_url: str) -> None:
    database = create_database(empty_database_url)
    try:
        async with database.engine.connect() as connection:
            assert await connection.run_sync(_tables) == set()  # creating the engine created nothing
        assert not await schema_is_current(database)

        await upgrade_async(empty_database_url)

        async with database.engine.connect() as connection:
            assert await connection.run_sync(_differences) == []
            assert await connection.run_sync(_tables) == set(Base.metadata.tables) | {"alembic_version"}
        assert await schema_is_current(database)
    finally:
        await database.dispose()


async def test_downgrade_to_base_removes_every_table(empty_database_url: str) -> None:
    await upgrade_async(empty_database_url)
    await downgrade_async(empty_database_url, "base")
    database = create_database(empty_database_url)
    try:
        async with database.engine.connect() as connection:
            assert await connection.run_sync(_tables) == {"alembic_version"}
        await upgrade_async(empty_database_url)  # and back: the downgrade left nothing behind that blocks a new upgrade
        assert await schema_is_current(database)
    finally:
        await database.dispose()
