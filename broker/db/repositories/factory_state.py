"""What the broker knows of each Factory at run time: drained or not, healthy or not.

Persisted, not held in memory, so that every broker replica sees a drain at once. Drains, undrains and
health *changes* are events (health checks that change nothing are not, to keep the log readable).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from broker.db.engine import Database
from broker.db.models import FactoryEvent, FactoryState
from broker.db.repositories.sql import insert_ignoring_conflict
from broker.db.types import utc_now
from broker.jobs.events import EventKind


class FactoryStateRepository:
    """Drain, undrain and health of Factories (which Factories exist is the config's business, not this)."""

    def __init__(self, database: Database, clock: Callable[[], datetime] = utc_now) -> None:
        self._db = database
        self._clock = clock

    async def get(self, factory_id: str) -> FactoryState | None:
        async with self._db.read() as session:
            return await session.get(FactoryState, factory_id)

    async def all(self) -> Sequence[FactoryState]:
        async with self._db.read() as session:
            return (await session.scalars(select(FactoryState).order_by(FactoryState.factory_id))).all()

    async def drained(self) -> frozenset[str]:
        """The Factories placement must skip."""
        async with self._db.read() as session:
            ids = await session.scalars(select(FactoryState.factory_id).where(FactoryState.drained.is_(True)))
            return frozenset(ids.all())

    async def drain(self, factory_id: str, *, reason: str, actor: str, source: str | None = None) -> bool:
        """Stop placing new jobs on a Factory (running ones are unaffected); False if it was drained already."""
        return await self._set_drained(factory_id, drained=True, reason=reason, actor=actor, source=source)

    async def undrain(self, factory_id: str, *, actor: str, source: str | None = None) -> bool:
        """Place jobs on the Factory again; False if it was not drained."""
        return await self._set_drained(factory_id, drained=False, reason=None, actor=actor, source=source)

    async def _set_drained(
        self, factory_id: str, *, drained: bool, reason: str | None, actor: str, source: str | None
    ) -> bool:
        now = self._clock()
        async with self._db.write() as session:
            await _ensure_row(session, factory_id, now)
            changed = await session.scalar(
                update(FactoryState)
                .where(FactoryState.factory_id == factory_id, FactoryState.drained.is_(not drained))
                .values(drained=drained, drained_reason=reason, updated_at=now)
                .returning(FactoryState.factory_id)
            )
            if changed is None:
                return False
            kind = EventKind.FACTORY_DRAINED if drained else EventKind.FACTORY_UNDRAINED
            detail = {"reason": reason, **({"source": source} if source else {})}
            _add_event(session, factory_id, kind, actor=actor, now=now, detail=detail)
            return True

    async def record_health(
        self, factory_id: str, *, healthy: bool, detail: str | None, actor: str, now: datetime | None = None
    ) -> bool:
        """Store a health check's result; True (and an event) when health flipped or was first known."""
        now = now or self._clock()
        async with self._db.write() as session:
            await _ensure_row(session, factory_id, now)
            previous = await session.scalar(
                select(FactoryState.healthy).where(FactoryState.factory_id == factory_id).with_for_update()
            )
            await session.execute(
                update(FactoryState)
                .where(FactoryState.factory_id == factory_id)
                .values(healthy=healthy, health_detail=detail, checked_at=now, updated_at=now),
                execution_options={"synchronize_session": False},
            )
            if previous is healthy:
                return False
            event_detail = {"healthy": healthy, "previous": previous, "detail": detail}
            _add_event(session, factory_id, EventKind.FACTORY_HEALTH_CHANGED, actor=actor, now=now, detail=event_detail)
            return True

    async def events(self, factory_id: str, *, after_id: int = 0, limit: int = 1000) -> Sequence[FactoryEvent]:
        query = (
            select(FactoryEvent)
            .where(FactoryEvent.factory_id == factory_id, FactoryEvent.id > after_id)
            .order_by(FactoryEvent.id)
            .limit(max(1, limit))
        )
        async with self._db.read() as session:
            return (await session.scalars(query)).all()


async def _ensure_row(session: AsyncSession, factory_id: str, now: datetime) -> None:
    await session.execute(
        insert_ignoring_conflict(session, FactoryState, factory_id=factory_id, drained=False, updated_at=now)
    )


def _add_event(
    session: AsyncSession, factory_id: str, kind: EventKind, *, actor: str, now: datetime, detail: Mapping[str, Any]
) -> None:
    session.add(FactoryEvent(factory_id=factory_id, at=now, kind=kind, actor=actor, detail=dict(detail)))
