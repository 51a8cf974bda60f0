"""The few statements that differ between SQLite and PostgreSQL, chosen by the session's dialect."""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from broker.db.models import Base


def insert_ignoring_conflict(
    session: AsyncSession, model: type[Base], **values: Any
) -> postgresql.Insert | sqlite.Insert:
    """``INSERT ... ON CONFLICT DO NOTHING`` for the session's database (both speak it; SQLAlchemy spells it
    per dialect). Add ``.returning(...)`` to learn whether the row was inserted."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(model).values(**values).on_conflict_do_nothing()
    return sqlite.insert(model).values(**values).on_conflict_do_nothing()


def is_sqlite(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "sqlite"
