"""Antennas, their operators, the assertion ids they used, and the count of their national users' active jobs.

``antennas.active_jobs`` counts the jobs of an Antenna's national users that have not ended. It changes only
inside the transactions that store jobs (:func:`take_slots`, a compare-and-set against the quota) and that
move a job across the line between active and ended (:func:`count_active`, from the job's compare-and-set),
so it always equals the count of those jobs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from broker.db.engine import Database
from broker.db.models import Antenna, AntennaAssertionSeen, AntennaOperator, User
from broker.db.repositories.errors import AntennaQuotaFull
from broker.db.repositories.sql import accept_once, insert_ignoring_conflict
from broker.db.types import utc_now

NATIONAL_ISSUER_PREFIX = "antenna:"  # a national user is the user of identity ("antenna:<id>", sub)


def national_issuer(antenna_id: str) -> str:
    return f"{NATIONAL_ISSUER_PREFIX}{antenna_id}"


def national_antenna(user: User) -> str | None:
    """The Antenna a national user belongs to; None for a direct user."""
    issuer = user.issuer or ""
    return issuer.removeprefix(NATIONAL_ISSUER_PREFIX) if issuer.startswith(NATIONAL_ISSUER_PREFIX) else None


class AntennaRepository:
    def __init__(self, database: Database, clock: Callable[[], datetime] = utc_now) -> None:
        self._db = database
        self._clock = clock

    async def create(self, antenna: Antenna) -> bool:
        """Insert ``antenna``; False if one with its id exists (never merged)."""
        async with self._db.write() as session:
            values = {column.key: getattr(antenna, column.key) for column in Antenna.__table__.columns}
            values["active_jobs"] = 0  # a new Antenna has no jobs yet
            added = await session.scalar(insert_ignoring_conflict(session, Antenna, **values).returning(Antenna.id))
            return added is not None

    async def get(self, antenna_id: str) -> Antenna | None:
        async with self._db.read() as session:
            return await session.get(Antenna, antenna_id)

    async def all(self) -> Sequence[Antenna]:
        async with self._db.read() as session:
            return (await session.scalars(select(Antenna).order_by(Antenna.id))).all()

    async def update(self, antenna_id: str, **values: Any) -> Antenna | None:
        async with self._db.write() as session:
            antenna = await session.get(Antenna, antenna_id)
            if antenna is None:
                return None
            for name, value in values.items():
                setattr(antenna, name, value)
            antenna.updated_at = self._clock()
            return antenna

    async def add_operator(self, antenna_id: str, user_id: str) -> bool:
        async with self._db.write() as session:
            added = await session.scalar(
                insert_ignoring_conflict(
                    session, AntennaOperator, antenna_id=antenna_id, user_id=user_id, added_at=self._clock()
                ).returning(AntennaOperator.user_id)
            )
            return added is not None

    async def operates(self, user_id: str, antenna_id: str) -> bool:
        async with self._db.read() as session:
            return await session.get(AntennaOperator, (antenna_id, user_id)) is not None

    async def accept_once(self, antenna_id: str, jti: str, expires_at: datetime) -> bool:
        """Record (Antenna, jti) as used; False if it was used before, by this replica or any other
        (:func:`~broker.db.repositories.sql.accept_once`)."""
        async with self._db.write() as session:
            return await accept_once(session, AntennaAssertionSeen, "antenna_id", antenna_id, jti, expires_at,
                                     self._clock())  # fmt: skip


async def take_slots(session: AsyncSession, wants: Sequence[tuple[str, str]]) -> dict[str, AntennaQuotaFull]:
    """Inside the transaction that stores the jobs: count each (job id, Antenna) among its Antenna's active
    jobs, if that stays within its quota, and say which jobs could not be (job id -> why); those must not be
    stored. As :func:`~broker.db.repositories.allocations.reserve_all`: one compare-and-set per Antenna when
    its jobs fit together, else one per job in arrival order, Antennas in id order (no crosswise waits)."""
    by_antenna: dict[str, list[str]] = {}
    for job_id, antenna_id in wants:
        by_antenna.setdefault(antenna_id, []).append(job_id)
    full: dict[str, AntennaQuotaFull] = {}
    for antenna_id in sorted(by_antenna):
        job_ids = by_antenna[antenna_id]
        if len(job_ids) > 1 and await _take(session, antenna_id, len(job_ids)):
            continue
        for job_id in job_ids:
            if not await _take(session, antenna_id, 1):
                full[job_id] = await _why_full(session, antenna_id)
    return full


async def _take(session: AsyncSession, antenna_id: str, count: int) -> bool:
    within = or_(Antenna.max_active_jobs.is_(None), Antenna.active_jobs + count <= Antenna.max_active_jobs)
    taken = await session.scalar(
        update(Antenna)
        .where(Antenna.id == antenna_id, within)
        .values(active_jobs=Antenna.active_jobs + count)
        .returning(Antenna.id)
    )
    return taken is not None


async def _why_full(session: AsyncSession, antenna_id: str) -> AntennaQuotaFull:
    antenna = await session.get(Antenna, antenna_id, populate_existing=True)
    if antenna is None:  # never registered (or gone): it has room for nothing
        return AntennaQuotaFull(antenna_id, 0, 0)
    return AntennaQuotaFull(antenna_id, antenna.active_jobs, antenna.max_active_jobs)


async def count_active(session: AsyncSession, antenna_id: str, change: int) -> None:
    """Add ``change`` to the Antenna's active jobs, inside the transaction that starts (+) or ends (-) a job
    of its national users, or gives back a slot taken for a job not stored after all. No quota check: a job
    Slurm shows again after it was lost counts again whatever the quota."""
    await session.execute(
        update(Antenna).where(Antenna.id == antenna_id).values(active_jobs=Antenna.active_jobs + change),
        execution_options={"synchronize_session": False},
    )


__all__ = [
    "NATIONAL_ISSUER_PREFIX", "AntennaRepository", "count_active", "national_antenna", "national_issuer", "take_slots",
]  # fmt: skip
