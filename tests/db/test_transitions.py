"""State changes: compare-and-set, forward-only, each with its event; events are append-only."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from broker.db.engine import Database
from broker.db.repositories import JobRepository
from broker.jobs.events import EventKind
from broker.jobs.states import IllegalTransition
from broker.tenancy.accounting import NOTHING
from conveyor.spec import JobState
from tests.db.helpers import at, new_job, someone_waits_for_a_lock, wait_until

TARGETS_FROM_QUEUED = [
    JobState.SUBMITTED, JobState.RUNNING, JobState.REJECTED, JobState.CANCELLED, JobState.LOST,
    JobState.COMPLETED, JobState.FAILED, JobState.TIMEOUT,
]  # fmt: skip


async def _move_from_queued(jobs: JobRepository, job_id: str, target: JobState, actor: str) -> bool:
    """The repository's door for a move from ``queued`` to ``target`` (the ends keep the books)."""
    if target is JobState.REJECTED:
        return await jobs.reject(job_id, JobState.QUEUED, reason="test", actor=actor, cause="test")
    if target is JobState.CANCELLED:
        return await jobs.cancel_queued(job_id, reason="test", actor=actor)
    if target is JobState.LOST:
        return await jobs.lose(job_id, JobState.QUEUED, reason="test", actor=actor, cause="test")
    if target.is_terminal:
        return await jobs.finish(job_id, JobState.QUEUED, target, used=NOTHING, actor=actor, cause="test")
    return await jobs.transition(job_id, JobState.QUEUED, target, actor=actor)


async def test_of_many_concurrent_transitions_from_one_state_exactly_one_wins(jobs: JobRepository) -> None:
    job = await jobs.insert_job_with_event(new_job(), actor="test")
    results = await asyncio.gather(
        *(_move_from_queued(jobs, job.id, target, actor=f"worker-{n}") for n, target in enumerate(TARGETS_FROM_QUEUED))
    )
    assert sum(results) == 1
    winner = TARGETS_FROM_QUEUED[results.index(True)]
    stored = await jobs.get(job.id)
    assert stored is not None
    assert stored.state == winner
    changes = [e for e in await jobs.events(job.id) if e.kind is EventKind.STATE_CHANGED]
    assert [(e.from_state, e.to_state) for e in changes] == [(JobState.QUEUED, winner)]


async def test_a_transition_waiting_behind_another_rechecks_the_state_and_loses(
    db: Database, jobs: JobRepository
) -> None:
    """Forced interleaving: B's UPDATE waits while A holds the row; after A commits, B's WHERE no longer matches."""
    job = await jobs.insert_job_with_event(new_job(), actor="test")
    async with db.write() as session:
        await session.execute(
            text("UPDATE jobs SET state = 'submitted' WHERE id = :id AND state = 'queued'"), {"id": job.id}
        )
        loser = asyncio.create_task(jobs.cancel_queued(job.id, reason="cancelled", actor="b"))
        await wait_until(lambda: someone_waits_for_a_lock(db))
        assert not loser.done()
    assert await loser is False
    stored = await jobs.get(job.id)
    assert stored is not None
    assert stored.state is JobState.SUBMITTED
    assert [e.kind for e in await jobs.events(job.id)] == [EventKind.CREATED]


async def test_states_only_move_forward(jobs: JobRepository) -> None:
    job = await jobs.insert_job_with_event(new_job(), actor="test")
    with pytest.raises(IllegalTransition):
        await jobs.transition(job.id, JobState.SUBMITTED, JobState.QUEUED, actor="test")
    assert await jobs.transition(job.id, JobState.QUEUED, JobState.SUBMITTED, actor="test")
    assert not await jobs.transition(job.id, JobState.QUEUED, JobState.SUBMITTED, actor="test")  # stale view
    with pytest.raises(ValueError, match="settles the job's reservation"):  # a move that ends it keeps the books
        await jobs.transition(job.id, JobState.SUBMITTED, JobState.COMPLETED, actor="test", exit_code=0)
    assert await jobs.finish(
        job.id, JobState.SUBMITTED, JobState.COMPLETED, used=NOTHING, actor="test", cause="test", exit_code=0
    )
    for target in JobState:
        if target is not JobState.COMPLETED:
            with pytest.raises(IllegalTransition):
                await jobs.transition(job.id, JobState.COMPLETED, target, actor="test")
    stored = await jobs.get(job.id)
    assert stored is not None
    assert (stored.state, stored.exit_code) == (JobState.COMPLETED, 0)
    assert [(e.from_state, e.to_state) for e in await jobs.events(job.id)] == [
        (None, JobState.QUEUED),
        (JobState.QUEUED, JobState.SUBMITTED),
        (JobState.SUBMITTED, JobState.COMPLETED),
    ]


async def test_a_slurm_requeue_is_allowed_and_recorded_as_an_exception(jobs: JobRepository) -> None:
    job = await jobs.insert_job_with_event(new_job(), actor="test")
    assert await jobs.transition(job.id, JobState.QUEUED, JobState.SUBMITTED, actor="d", now=at(1))
    assert await jobs.transition(job.id, JobState.SUBMITTED, JobState.RUNNING, actor="r", now=at(2))
    assert await jobs.transition(
        job.id, JobState.RUNNING, JobState.SUBMITTED, actor="r", cause="reconcile", now=at(3),
        slurm_state="REQUEUED", slurm_reason="BeginTime", detail={"slurm_job_id": "42"},
    )  # fmt: skip
    assert await jobs.transition(job.id, JobState.SUBMITTED, JobState.RUNNING, actor="r", now=at(4))
    events = await jobs.events(job.id)
    exception = events[3]
    assert exception.kind is EventKind.STATE_EXCEPTION
    assert (exception.from_state, exception.to_state) == (JobState.RUNNING, JobState.SUBMITTED)
    assert exception.detail == {"slurm_job_id": "42", "cause": "reconcile"}
    assert [e.kind for e in events].count(EventKind.STATE_EXCEPTION) == 1
    stored = await jobs.get(job.id)
    assert stored is not None
    # The first submit and start are kept across the requeue; Slurm's own words sit beside ours.
    assert (stored.submitted_at, stored.started_at) == (at(1), at(2))
    assert (stored.slurm_state, stored.slurm_reason) == ("REQUEUED", "BeginTime")


async def test_a_terminal_transition_sets_the_end_time_and_drops_the_lease(jobs: JobRepository) -> None:
    job = await jobs.insert_job_with_event(new_job(), actor="test", now=at(0))
    [claimed] = await jobs.claim_queued("dispatcher-1", 10, 60, now=at(1))
    assert claimed.lease_owner == "dispatcher-1"
    assert await jobs.reject(job.id, JobState.QUEUED, reason="no Factory fits", actor="d", cause="test", now=at(2))
    stored = await jobs.get(job.id)
    assert stored is not None
    assert (stored.ended_at, stored.lease_owner, stored.lease_until) == (at(2), None, None)
    assert stored.state_reason == "no Factory fits"


async def test_a_transition_cannot_rewrite_identity_or_bookkeeping(jobs: JobRepository) -> None:
    job = await jobs.insert_job_with_event(new_job(), actor="test")
    for field in ("owner", "project", "id", "lease_owner", "attempt_count", "state"):
        fields: dict[str, Any] = {field: "x"}
        with pytest.raises(TypeError, match=field):
            await jobs.transition(job.id, JobState.QUEUED, JobState.SUBMITTED, actor="t", **fields)


async def test_events_are_append_only(db: Database, jobs: JobRepository) -> None:
    job = await jobs.insert_job_with_event(new_job(), actor="test")
    for statement in ("UPDATE job_events SET actor = 'someone else'", "DELETE FROM job_events"):
        with pytest.raises(DBAPIError, match="append-only"):
            async with db.write() as session:
                await session.execute(text(statement))
    [event] = await jobs.events(job.id)
    assert event.actor == "test"


async def test_events_resume_after_the_last_id_seen(jobs: JobRepository) -> None:
    job = await jobs.insert_job_with_event(new_job(), actor="test")
    other = await jobs.insert_job_with_event(new_job(), actor="test")
    assert await jobs.transition(job.id, JobState.QUEUED, JobState.SUBMITTED, actor="d")
    assert await jobs.request_cancel(job.id, actor="user:alice")
    assert not await jobs.request_cancel(job.id, actor="user:alice")  # once
    first = await jobs.events(job.id, limit=1)
    rest = await jobs.events(job.id, after_id=first[-1].id)
    assert [e.kind for e in [*first, *rest]] == [EventKind.CREATED, EventKind.STATE_CHANGED, EventKind.CANCEL_REQUESTED]
    assert all(e.job_id == job.id for e in rest)
    assert [e.kind for e in await jobs.events(other.id)] == [EventKind.CREATED]
    stored = await jobs.get(job.id)
    assert stored is not None
    assert stored.cancel_requested_at is not None
