"""Allocations and job charges. Every change to a budget is one compare-and-set on ``allocations.used_s``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from broker.db.engine import Database
from broker.db.models import Allocation, AllocationUnit, JobCharge
from broker.db.repositories.errors import AllocationNotInForce
from broker.db.types import utc_now
from broker.ids import random_id
from broker.tenancy.accounting import Use


class OverBudget(Exception):
    """The allocation cannot take the reservation; ``left_s`` is what it still has. Plain values only: the
    transaction (and with it the row) is rolled back by the time anyone reads this."""

    def __init__(self, allocation: Allocation, need_s: int) -> None:
        self.project_id = allocation.project_id
        self.factory_id = allocation.factory_id
        self.unit = allocation.unit
        self.left_s = allocation.granted_s - allocation.used_s
        self.need_s = need_s
        super().__init__(f"allocation {allocation.id} has {self.left_s} left, {need_s} asked")


@dataclass(frozen=True, slots=True)
class Usage:
    allocation: Allocation
    reserved_s: int  # held by jobs that have not ended
    charged_s: int  # used by jobs that ended
    jobs: int


@dataclass(frozen=True, slots=True)
class Hold:
    """What one job is to take from an allocation when it is stored."""

    job_id: str
    allocation_id: str
    need_s: int


async def reserve_all(
    session: AsyncSession, holds: Sequence[Hold], now: datetime
) -> dict[str, OverBudget | AllocationNotInForce]:
    """Inside the transaction that stores the jobs: take each hold from its allocation, if that is in force
    at ``now``, and say which jobs could not be held (job id -> why); those must not be stored.

    An allocation's holds are taken in one compare-and-set when they fit together, else one by one in the
    given (arrival) order, so a refusal is exact and nothing is ever overspent. The allocation's period is
    part of the compare-and-set, so a job chosen for it from a stale read can never hold an ended one.
    Allocations are updated in id order, so two transactions holding several never wait on each other
    crosswise. Charges are added separately (:func:`add_charges`), once the jobs' rows exist.
    """
    by_allocation: dict[str, list[Hold]] = {}
    for hold in holds:
        by_allocation.setdefault(hold.allocation_id, []).append(hold)
    refused: dict[str, OverBudget | AllocationNotInForce] = {}
    for allocation_id in sorted(by_allocation):
        group = by_allocation[allocation_id]
        if len(group) > 1 and await _take(session, allocation_id, sum(hold.need_s for hold in group), now):
            continue
        for hold in group:
            if not await _take(session, allocation_id, hold.need_s, now):
                refused[hold.job_id] = await _why_not(session, allocation_id, hold.need_s, now)
    return refused


async def _take(session: AsyncSession, allocation_id: str, need_s: int, now: datetime) -> bool:
    taken = await session.scalar(
        update(Allocation)
        .where(Allocation.id == allocation_id, Allocation.used_s + need_s <= Allocation.granted_s)
        .where(Allocation.starts_at <= now, Allocation.ends_at > now)
        .values(used_s=Allocation.used_s + need_s)
        .returning(Allocation.id)
    )
    return taken is not None


async def _why_not(
    session: AsyncSession, allocation_id: str, need_s: int, now: datetime
) -> OverBudget | AllocationNotInForce:
    allocation = await session.get(Allocation, allocation_id, populate_existing=True)
    if allocation is None or not allocation.starts_at <= now < allocation.ends_at:
        return AllocationNotInForce(allocation_id)
    return OverBudget(allocation, need_s)


async def add_charges(session: AsyncSession, holds: Sequence[Hold]) -> None:
    """The open charge of each held job (after its row: the charge refers to it)."""
    if holds:
        rows = [{"job_id": hold.job_id, "allocation_id": hold.allocation_id, "reserved_s": hold.need_s,
                 "charged_s": None, "settled_at": None} for hold in holds]  # fmt: skip
        await session.execute(insert(JobCharge), rows)


async def settle(session: AsyncSession, job_id: str, used: Use, now: datetime) -> bool:
    """Inside the transaction that ends the job: replace its open reservation by what ``used`` costs in its
    allocation's unit, once (False: it holds none, or it was settled already). The allocation gives back the
    reservation and keeps the charge in the same compare-and-set on ``used_s``."""
    held = (
        await session.execute(
            select(JobCharge.allocation_id, JobCharge.reserved_s, Allocation.unit)
            .join(Allocation, JobCharge.allocation_id == Allocation.id)
            .where(JobCharge.job_id == job_id, JobCharge.settled_at.is_(None))
        )
    ).first()
    if held is None:
        return False
    allocation_id, reserved_s, unit = held
    charged_s = used.charge_s(unit)
    closed = await session.scalar(
        update(JobCharge)
        .where(JobCharge.job_id == job_id, JobCharge.settled_at.is_(None))
        .values(charged_s=charged_s, settled_at=now)
        .returning(JobCharge.job_id)
    )
    if closed is None:
        return False
    await session.execute(
        update(Allocation)
        .where(Allocation.id == allocation_id)
        .values(used_s=Allocation.used_s - reserved_s + charged_s)
    )
    return True


async def read_in_force(session: AsyncSession, project_id: str, now: datetime) -> Sequence[Allocation]:
    """The project's allocations in force at ``now``, the one ending first first (inside a caller's
    transaction)."""
    query = (
        select(Allocation)
        .where(Allocation.project_id == project_id, Allocation.starts_at <= now, Allocation.ends_at > now)
        .order_by(Allocation.ends_at, Allocation.id)
    )
    return (await session.scalars(query)).all()


class AllocationRepository:
    def __init__(self, database: Database, clock: Callable[[], datetime] = utc_now) -> None:
        self._db = database
        self._clock = clock

    async def add(
        self, project_id: str, factory_id: str, unit: AllocationUnit, granted_s: int, *, starts_at: datetime,
        ends_at: datetime,
    ) -> Allocation:  # fmt: skip
        allocation = Allocation(
            id=random_id("alc_"), project_id=project_id, factory_id=factory_id, unit=unit, granted_s=granted_s,
            used_s=0, starts_at=starts_at, ends_at=ends_at, created_at=self._clock(),
        )  # fmt: skip
        async with self._db.write() as session:
            session.add(allocation)
        return allocation

    async def reserved_factories(self, job_ids: Sequence[str]) -> dict[str, str]:
        """Job id -> the Factory whose allocation it holds, for those of ``job_ids`` that hold one (the
        dispatcher reads it once per claimed batch)."""
        if not job_ids:
            return {}
        async with self._db.read() as session:
            rows = await session.execute(
                select(JobCharge.job_id, Allocation.factory_id)
                .join(Allocation, JobCharge.allocation_id == Allocation.id)
                .where(JobCharge.job_id.in_(job_ids))
            )
            return {job_id: factory_id for job_id, factory_id in rows}

    async def charge(self, job_id: str) -> JobCharge | None:
        async with self._db.read() as session:
            return await session.get(JobCharge, job_id)

    async def usage(self, project_id: str) -> Sequence[Usage]:
        async with self._db.read() as session:
            allocations = (
                await session.scalars(
                    select(Allocation).where(Allocation.project_id == project_id).order_by(Allocation.starts_at)
                )
            ).all()
            sums = {
                allocation_id: (int(reserved or 0), int(charged or 0), int(count))
                for allocation_id, reserved, charged, count in await session.execute(
                    select(
                        JobCharge.allocation_id,
                        func.sum(JobCharge.reserved_s).filter(JobCharge.settled_at.is_(None)),
                        func.sum(JobCharge.charged_s),
                        func.count(),
                    ).group_by(JobCharge.allocation_id)
                )
            }
            return [Usage(a, *sums.get(a.id, (0, 0, 0))) for a in allocations]
