"""Alembic from Python: upgrade a database, and tell whether its schema is the code's.

The broker never creates tables itself; a deployment runs ``alembic upgrade head`` (or :func:`upgrade`) first,
and the broker refuses to start on a schema that is not at head (:func:`schema_is_current`).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from broker.db.engine import Database

REPO_ROOT = Path(__file__).resolve().parents[2]


def alembic_ini() -> Path:
    """alembic.ini of this checkout, or ``CONVEYOR_ALEMBIC_INI`` where the broker runs installed (the image:
    /app/alembic.ini); its ``script_location`` is relative to the file itself."""
    return Path(os.environ.get("CONVEYOR_ALEMBIC_INI", str(REPO_ROOT / "alembic.ini")))


def alembic_config(url: str) -> Config:
    """The same configuration as alembic.ini, for ``url``; the URL is passed as an attribute, not as text
    (configparser would read a ``%`` in a password as interpolation)."""
    config = Config(str(alembic_ini()))
    config.attributes["url"] = url
    config.attributes["configure_logger"] = False
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Upgrade the database at ``url``. Synchronous (Alembic runs its own event loop): from async code use
    :func:`upgrade_async`."""
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


async def upgrade_async(url: str, revision: str = "head") -> None:
    await asyncio.to_thread(upgrade, url, revision)


async def downgrade_async(url: str, revision: str) -> None:
    await asyncio.to_thread(downgrade, url, revision)


def head_revisions() -> set[str]:
    return set(ScriptDirectory.from_config(alembic_config("")).get_heads())


async def schema_is_current(database: Database) -> bool:
    """True when the database is at the code's head revision (and so has exactly the tables the code uses)."""

    def current(connection: Connection) -> set[str]:
        return set(MigrationContext.configure(connection).get_current_heads())

    async with database.engine.connect() as connection:
        return await connection.run_sync(current) == head_revisions()
