"""The few statements that differ between SQLite and PostgreSQL, chosen by the session's dialect."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from broker.db.models import Base


def insert_ignoring_conflict(
    session: AsyncSession, model: type[Base], **values: Any
) -> postgresql.Insert | sqlite.Insert:
    """``INSERT ... ON CONFLICT DO NOTHING`` for the session's database (both speak it; SQLAlchemy spells it
    per dialect). Add ``.returning(...)`` to learn whether the row was inserted; without ``values``, add
    ``.values(rows)`` for several rows."""
    insert = postgresql.insert(model) if session.get_bind().dialect.name == "postgresql" else sqlite.insert(model)
    return (insert.values(**values) if values else insert).on_conflict_do_nothing()


async def accept_once(  # noqa: PLR0917 - the table, its row, and the clock
    session: AsyncSession, seen: type[Base], owner: str, owner_id: str, jti: str, expires_at: datetime, now: datetime
) -> bool:
    """Record the assertion id ``jti`` of ``owner_id`` in ``seen`` (a table keyed by (``owner`` column, jti),
    with ``expires_at``); False if it was there before, put by this replica or any other.

    The primary key decides, so two replicas racing on one jti cannot both win. The owner's rows of expired
    assertions are dropped on the way (they would be refused as expired anyway)."""
    columns = seen.__table__.c
    await session.execute(delete(seen).where(columns[owner] == owner_id, columns.expires_at < now))
    values = {owner: owner_id, "jti": jti, "expires_at": expires_at}
    added = await session.scalar(insert_ignoring_conflict(session, seen, **values).returning(columns.jti))
    return added is not None


def is_sqlite(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "sqlite"


# SQLSTATE classes of a row the database refused: 22 data exception (a NUL in JSON text, a value too long),
# 23 integrity constraint violation. asyncpg's errors of class 22 reach SQLAlchemy as a plain DBAPIError.
_ROW_REFUSED_SQLSTATE_CLASSES = ("22", "23")


def sqlstate_starts_with(orig: BaseException | None, prefixes: tuple[str, ...]) -> bool:
    """Whether the driver error under a SQLAlchemy error (``.orig``, or what it wraps: SQLAlchemy's asyncpg
    adapter keeps asyncpg's error as the cause) carries a SQLSTATE with one of ``prefixes``."""
    for error in (orig, getattr(orig, "__cause__", None)):
        sqlstate = getattr(error, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate.startswith(prefixes):
            return True
    return False


def refused_a_row(error: DBAPIError) -> bool:
    """Did the database refuse a row's values (so that the same statement without that row may succeed), as
    opposed to failing as a whole (connection lost, server down, lock timeout)?"""
    return isinstance(error, IntegrityError | DataError) or sqlstate_starts_with(
        error.orig, _ROW_REFUSED_SQLSTATE_CLASSES
    )
