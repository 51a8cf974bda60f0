"""Antennas, their operators, the assertion ids they used, and the active jobs of their national users."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select

from broker.db.engine import Database
from broker.db.models import Antenna, AntennaAssertionSeen, AntennaOperator, Job, User
from broker.db.repositories.sql import insert_ignoring_conflict
from broker.db.types import utc_now
from conveyor.spec import TERMINAL_STATES

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
        """Record (Antenna, jti) as used; False if it was used before, by this replica or any other.

        The primary key decides, so two replicas racing on one jti cannot both win. Rows of assertions that
        expired are dropped on the way (they would be refused as expired anyway)."""
        async with self._db.write() as session:
            await session.execute(
                delete(AntennaAssertionSeen).where(
                    AntennaAssertionSeen.antenna_id == antenna_id, AntennaAssertionSeen.expires_at < self._clock()
                )
            )
            added = await session.scalar(
                insert_ignoring_conflict(
                    session, AntennaAssertionSeen, antenna_id=antenna_id, jti=jti, expires_at=expires_at
                ).returning(AntennaAssertionSeen.jti)
            )
            return added is not None

    async def active_jobs(self, antenna_id: str) -> int:
        """Jobs of the Antenna's national users that have not ended (what its quota counts)."""
        async with self._db.read() as session:
            count = await session.scalar(
                select(func.count())
                .select_from(Job)
                .join(User, User.id == Job.owner)
                .where(User.issuer == national_issuer(antenna_id), Job.state.not_in(list(TERMINAL_STATES)))
            )
            return int(count or 0)


__all__ = ["NATIONAL_ISSUER_PREFIX", "AntennaRepository", "national_antenna", "national_issuer"]
