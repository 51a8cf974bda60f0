"""Creating jobs: one transaction with the first event, random ids, and Idempotency-Keys that survive races."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select

from broker.db.engine import Database
from broker.db.models import IdempotencyKey, Job, JobEvent
from broker.db.repositories import IdempotencyConflict, JobRepository, NewJob
from broker.jobs.events import EventKind
from broker.jobs.ids import is_job_id
from conveyor.spec import JobSpec, JobState
from tests.db.helpers import at, new_job, someone_waits_for_a_lock, wait_until


async def _count(db: Database, model: type[Job] | type[JobEvent] | type[IdempotencyKey]) -> int:
    async with db.read() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def test_a_job_is_stored_queued_with_its_created_event(jobs: JobRepository) -> None:
    spec = JobSpec.model_validate(
        {"name": "llama", "project": "EHPC-AIF-2026PG01-1147", "command": ["python"], "labels": {"team": "nlp"}}
    )
    job = await jobs.insert_job_with_event(NewJob.from_spec("user:alice", spec), actor="user:alice", now=at(0))

    stored = await jobs.get(job.id)
    assert stored is not None
    assert (stored.state, stored.owner, stored.project, stored.name) == (
        JobState.QUEUED, "user:alice", "EHPC-AIF-2026PG01-1147", "llama",
    )  # fmt: skip
    assert stored.labels == {"team": "nlp"}
    assert JobSpec.model_validate(stored.spec) == spec
    assert stored.created_at == at(0)
    assert stored.created_at.tzinfo is not None
    assert stored.next_attempt_at == at(0)
    [event] = await jobs.events(job.id)
    assert (event.kind, event.from_state, event.to_state, event.actor) == (
        EventKind.CREATED, None, JobState.QUEUED, "user:alice",
    )  # fmt: skip


async def test_job_ids_are_random_not_sequential(jobs: JobRepository) -> None:
    ids = [(await jobs.insert_job_with_event(new_job(), actor="test")).id for _ in range(50)]
    assert all(is_job_id(job_id) for job_id in ids)
    assert len(set(ids)) == 50
    assert ids != sorted(ids)  # 1 chance in 50! of failing
    assert len({job_id[4] for job_id in ids}) > 5  # the first random character varies


async def test_twenty_concurrent_creates_with_one_key_make_exactly_one_job(db: Database, jobs: JobRepository) -> None:
    results = await asyncio.gather(
        *(jobs.create_or_get("user:alice", "key-1", "hash-a", new_job(), actor="user:alice") for _ in range(20))
    )
    assert sum(created for _, created in results) == 1
    assert len({job.id for job, _ in results}) == 1
    assert await _count(db, Job) == 1
    assert await _count(db, IdempotencyKey) == 1
    assert await _count(db, JobEvent) == 1


async def test_a_key_with_another_body_conflicts_and_another_caller_gets_its_own_job(jobs: JobRepository) -> None:
    first, created = await jobs.create_or_get("user:alice", "key-1", "hash-a", new_job(), actor="user:alice")
    assert created
    again, created = await jobs.create_or_get("user:alice", "key-1", "hash-a", new_job(), actor="user:alice")
    assert (again.id, created) == (first.id, False)

    with pytest.raises(IdempotencyConflict) as conflict:
        await jobs.create_or_get("user:alice", "key-1", "hash-b", new_job(), actor="user:alice")
    assert conflict.value.job_id == first.id

    other, created = await jobs.create_or_get(
        "user:bob", "key-1", "hash-b", new_job(owner="user:bob"), actor="user:bob"
    )
    assert created
    assert other.id != first.id


async def test_a_create_racing_an_uncommitted_one_with_the_same_key_returns_the_winners_job(
    db: Database, jobs: JobRepository
) -> None:
    """The interleaving the 20-way race may or may not hit, forced: the loser waits, then reads the winner."""
    async with db.write() as session:
        session.add(
            Job(
                id="job_aaaaaaaaaaaaaaaaaaaa", owner="user:alice", project="p", name="winner", spec={}, labels={},
                state=JobState.QUEUED, created_at=at(0), updated_at=at(0), attempt_count=0, next_attempt_at=at(0),
            )
        )  # fmt: skip
        session.add(
            IdempotencyKey(
                caller="user:alice", key="k", request_hash="h", job_id="job_aaaaaaaaaaaaaaaaaaaa", created_at=at(0)
            )
        )
        await session.flush()
        loser = asyncio.create_task(jobs.create_or_get("user:alice", "k", "h", new_job(), actor="user:alice"))
        await wait_until(lambda: someone_waits_for_a_lock(db))
        assert not loser.done()
    job, created = await loser
    assert (job.id, job.name, created) == ("job_aaaaaaaaaaaaaaaaaaaa", "winner", False)
    assert await _count(db, Job) == 1
