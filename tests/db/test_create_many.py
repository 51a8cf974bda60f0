"""Many accepts in one transaction (the group commit's write): each creation gets its own answer, in order, and
a refusal of one stores nothing of it while the others are stored."""

from __future__ import annotations

import dataclasses

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError

from broker.db.engine import Database
from broker.db.models import Allocation, AllocationUnit, IdempotencyKey, Job, JobCharge, JobEvent, ProjectRole
from broker.db.repositories import IdempotencyConflict, JobRepository
from broker.db.repositories.allocations import AllocationRepository, OverBudget
from broker.db.repositories.errors import AllocationNotInForce, NotAMember
from broker.db.repositories.identity import IdentityRepository
from broker.db.repositories.jobs import Creation, KeyUse
from broker.db.repositories.projects import ProjectRepository
from broker.tenancy.accounting import Reservation
from tests.db.helpers import at, new_job

PROJECT = "EHPC-AIF-2026PG01-1147"
HOUR = 3600


async def _allocation(db: Database, granted_s: int) -> str:
    await ProjectRepository(db).create(PROJECT, "test")
    allocation = await AllocationRepository(db).add(
        PROJECT, "alpha", AllocationUnit.GPU_HOURS, granted_s, starts_at=at(-HOUR), ends_at=at(HOUR)
    )
    return allocation.id


def _held(allocation_id: str, need_s: int, name: str, key: str | None = None, request_hash: str = "h") -> Creation:
    new = dataclasses.replace(new_job(name=name), reservation=Reservation(allocation_id, need_s))
    return Creation(new, "user:alice", KeyUse("user:alice", key, request_hash) if key else None)


async def _count(db: Database, model: type[Job] | type[JobEvent] | type[IdempotencyKey] | type[JobCharge]) -> int:
    async with db.read() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def _used_s(db: Database, allocation_id: str) -> int:
    async with db.read() as session:
        return int(await session.scalar(select(Allocation.used_s).where(Allocation.id == allocation_id)) or 0)


async def test_every_creation_of_a_batch_gets_its_own_answer_in_order(db: Database, jobs: JobRepository) -> None:
    allocation = await _allocation(db, granted_s=10 * HOUR)
    replayed, _ = await jobs.create_or_get("user:alice", "old", "h", new_job(name="earlier"), actor="user:alice")

    answers = await jobs.create_many(
        [
            _held(allocation, 4 * HOUR, "fits-1", key="k1"),
            Creation(new_job(name="unkeyed, no allocation"), "user:alice"),
            Creation(new_job(name="replay"), "user:alice", KeyUse("user:alice", "old", "h")),
            Creation(new_job(name="other body"), "user:alice", KeyUse("user:alice", "old", "another")),
            _held(allocation, 4 * HOUR, "fits-2"),
            _held(allocation, 4 * HOUR, "too much", key="k3"),
            _held(allocation, 2 * HOUR, "fits the rest", key="k4"),
        ],
        now=at(0),
    )

    kinds = [type(answer).__name__ if isinstance(answer, Exception) else answer[1] for answer in answers]
    assert kinds == [True, True, False, "IdempotencyConflict", True, "OverBudget", True]
    names = [answer[0].name for answer in answers if not isinstance(answer, Exception)]
    assert names == ["fits-1", "unkeyed, no allocation", "earlier", "fits-2", "fits the rest"]
    replay = answers[2]
    assert not isinstance(replay, Exception)
    assert replay[0].id == replayed.id
    conflict = answers[3]
    assert isinstance(conflict, IdempotencyConflict)
    assert conflict.job_id == replayed.id
    refused = answers[5]
    assert isinstance(refused, OverBudget)
    assert (refused.left_s, refused.need_s) == (2 * HOUR, 4 * HOUR)

    # 1 earlier + 4 new jobs, each with its created event; charges only for the held jobs that fit, and the
    # refused job's key was withdrawn with it, so the same request can be made again.
    assert (await _count(db, Job), await _count(db, JobEvent), await _count(db, JobCharge)) == (5, 5, 3)
    assert await _used_s(db, allocation) == 10 * HOUR
    async with db.read() as session:
        keys = set(await session.scalars(select(IdempotencyKey.key)))
    assert keys == {"old", "k1", "k4"}


async def test_holds_that_fit_together_take_the_allocation_in_one_go_and_exactly(
    db: Database, jobs: JobRepository
) -> None:
    allocation = await _allocation(db, granted_s=6 * HOUR)
    answers = await jobs.create_many([_held(allocation, 2 * HOUR, f"j{i}", key=f"k{i}") for i in range(3)], now=at(0))
    assert all(not isinstance(answer, Exception) and answer[1] for answer in answers)
    assert await _used_s(db, allocation) == 6 * HOUR
    more = await jobs.create_many([_held(allocation, 1, "one second more")], now=at(0))
    assert isinstance(more[0], OverBudget)
    assert more[0].left_s == 0


async def test_a_batch_the_database_refuses_writes_nothing_and_each_creation_is_tried_alone(
    db: Database, jobs: JobRepository
) -> None:
    """A row only PostgreSQL refuses (a NUL character in JSON text); SQLite stores it, so there the whole
    batch is simply written. Either way no creation's answer is another's."""
    allocation = await _allocation(db, granted_s=10 * HOUR)
    poisoned = dataclasses.replace(new_job(name="poisoned"), spec={"name": "poisoned", "note": "a\x00b"})
    creations = [
        _held(allocation, HOUR, "good-1", key="g1"),
        Creation(poisoned, "user:alice", KeyUse("user:alice", "p", "h")),
        _held(allocation, HOUR, "good-2", key="g2"),
    ]
    if not db.is_sqlite:
        with pytest.raises(DBAPIError):
            await jobs.create_many(creations, now=at(0))
        assert (await _count(db, Job), await _used_s(db, allocation)) == (0, 0)

    answers = await jobs.create_together(creations, now=at(0))

    first, middle, last = answers
    assert not isinstance(first, Exception)
    assert first[0].name == "good-1"
    assert not isinstance(last, Exception)
    assert last[0].name == "good-2"
    if db.is_sqlite:
        assert not isinstance(middle, Exception)
        assert middle[1]
    else:
        assert isinstance(middle, DBAPIError)
    assert await _used_s(db, allocation) == 2 * HOUR
    assert await _count(db, IdempotencyKey) == (3 if db.is_sqlite else 2)


async def test_membership_and_the_allocations_period_are_checked_again_at_commit(
    db: Database, jobs: JobRepository
) -> None:
    """The caller's roles and allocations may have been read seconds before: the write decides."""
    allocation = await _allocation(db, granted_s=10 * HOUR)
    projects, identities = ProjectRepository(db), IdentityRepository(db)
    alice, mallory = (await identities.create_user("alice")).id, (await identities.create_user("mallory")).id
    await projects.set_member(PROJECT, alice, ProjectRole.RESEARCHER)
    held = _held(allocation, HOUR, "member")
    member = Creation(dataclasses.replace(held.new, owner=alice), alice, KeyUse(alice, "m", "h"), True)
    stranger = Creation(new_job(owner=mallory, name="stranger"), mallory, KeyUse(mallory, "s", "h"), True)
    answers = await jobs.create_many([member, stranger], now=at(0))
    assert not isinstance(answers[0], Exception)
    assert isinstance(answers[1], NotAMember)

    await projects.remove_member(PROJECT, alice)
    again = dataclasses.replace(member, key=KeyUse(alice, "m2", "h"))
    (refused,) = await jobs.create_many([again], now=at(0))
    assert isinstance(refused, NotAMember)

    (ended,) = await jobs.create_many([_held(allocation, HOUR, "too late")], now=at(HOUR))
    assert isinstance(ended, AllocationNotInForce)
    assert ended.allocation_id == allocation
    # Nothing of the refused ones is stored, their keys included; the allocation holds the member's hour only.
    assert (await _count(db, Job), await _count(db, IdempotencyKey)) == (1, 1)
    assert await _used_s(db, allocation) == HOUR
