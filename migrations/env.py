"""Alembic's entry point: runs the migrations on the broker's own engine (same pragmas, same write transactions).

The URL comes from ``-x url=...``, else from the caller (``broker.db.migrate`` sets it in the config's
attributes), else from the broker's Settings (``CONVEYOR_DATABASE_URL`` or the embedded default). The whole
upgrade is one transaction on both databases: a failed migration leaves the schema as it was.
"""

from __future__ import annotations

import asyncio
import logging.config

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection

from broker.db.engine import create_database
from broker.db.models import Base
from broker.settings import Settings

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    logging.config.fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.attributes.get("url")
    return str(url) if url else Settings().database_url


def _configure(**kwargs: object) -> None:
    context.configure(
        target_metadata=Base.metadata,
        transactional_ddl=True,  # SQLite too: pysqlite's own transaction handling is off (broker.db.engine)
        compare_type=True,
        **kwargs,
    )


def _run(connection: Connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    _configure(connection=connection, render_as_batch=sqlite)
    with context.begin_transaction():
        context.run_migrations()
        if sqlite:
            # Foreign keys are off while SQLite rebuilds tables; prove nothing dangles before committing.
            broken = connection.execute(text("PRAGMA foreign_key_check")).fetchall()
            if broken:
                raise RuntimeError(f"migration left dangling foreign keys: {broken[:5]}")


async def _run_online(url: str) -> None:
    database = create_database(url, sqlite_foreign_keys=False)
    try:
        async with database.write_engine.connect() as connection:
            await connection.run_sync(_run)
    finally:
        await database.dispose()


if context.is_offline_mode():
    _configure(url=_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_online(_url()))
