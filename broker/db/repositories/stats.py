"""Counts over the jobs table for /metrics and the Factory views: one GROUP BY, never a scan per Factory."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import func, select

from broker.db.engine import Database
from broker.db.models import Job
from conveyor.spec import JobState


class JobStats:
    """Read-only aggregates; cheap enough to serve on every scrape (indexed on factory, state)."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def by_factory_and_state(self) -> Mapping[tuple[str | None, JobState], int]:
        """How many jobs each (Factory, state) holds; Factory None: not placed yet."""
        query = select(Job.factory, Job.state, func.count()).group_by(Job.factory, Job.state)
        async with self._db.read() as session:
            rows = (await session.execute(query)).all()
        return {(factory, JobState(state)): int(count) for factory, state, count in rows}

    async def ping(self) -> None:
        """One round trip to the database (readiness)."""
        async with self._db.read() as session:
            await session.execute(select(1))
