"""The dispatcher's side: leased claims, attempts committed before Slurm is called, retries and releases."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from broker.db.engine import Database
from broker.db.models import AttemptOutcome, DispatchAttempt, Job
from broker.db.repositories import JobRepository
from broker.db.repositories.dispatch_writes import AttemptStart, Submitted
from broker.jobs.events import EventKind
from broker.tenancy.accounting import NOTHING
from conveyor.spec import JobState
from tests.db.helpers import at, new_job, only_postgresql


async def _queue(jobs: JobRepository, count: int) -> list[str]:
    return [(await jobs.insert_job_with_event(new_job(), actor="test", now=at(0))).id for _ in range(count)]


async def test_concurrent_claimers_get_disjoint_jobs_and_together_all_of_them(jobs: JobRepository) -> None:
    queued = set(await _queue(jobs, 30))
    batches = await asyncio.gather(*(jobs.claim_queued(f"dispatcher-{n}", 10, 60, now=at(1)) for n in range(4)))
    claimed = [job.id for batch in batches for job in batch]
    assert len(claimed) == len(set(claimed)) == 30
    assert set(claimed) == queued
    for n, batch in enumerate(batches):
        assert all(job.lease_owner == f"dispatcher-{n}" and job.lease_until == at(61) for job in batch)
    assert await jobs.claim_queued("dispatcher-9", 10, 60, now=at(2)) == []


@only_postgresql
async def test_a_claim_skips_rows_another_claimer_has_locked_without_waiting(db: Database, jobs: JobRepository) -> None:
    queued = await _queue(jobs, 6)
    async with db.write() as session:
        # Another replica mid-claim: it holds row locks on three queued jobs and has not committed yet.
        locked = (await session.scalars(select(Job.id).where(Job.id.in_(queued[:3])).with_for_update())).all()
        claimed = await asyncio.wait_for(jobs.claim_queued("dispatcher-b", 10, 60, now=at(1)), timeout=10)
        assert {job.id for job in claimed} == set(queued) - set(locked)


async def test_a_lease_holds_until_it_expires_then_another_dispatcher_may_claim(jobs: JobRepository) -> None:
    [job_id] = await _queue(jobs, 1)
    [first] = await jobs.claim_queued("dispatcher-a", 10, 60, now=at(1))
    assert first.id == job_id
    assert await jobs.claim_queued("dispatcher-b", 10, 60, now=at(60.999)) == []
    [again] = await jobs.claim_queued("dispatcher-b", 10, 60, now=at(61))
    assert (again.id, again.lease_owner, again.lease_until) == (job_id, "dispatcher-b", at(121))
    # The first dispatcher's lease is gone: it may no longer start an attempt (it must not call Slurm).
    assert (
        await jobs.record_attempt(
            job_id, lease_owner="dispatcher-a", factory="alpha", slurm_user="alice", actor="a", now=at(62)
        )
        is None
    )


async def test_an_attempt_is_committed_before_submission_and_numbered(db: Database, jobs: JobRepository) -> None:
    [job_id] = await _queue(jobs, 1)
    await jobs.claim_queued("d", 10, 60, now=at(1))
    first = await jobs.record_attempt(
        job_id, lease_owner="d", factory="alpha", slurm_user="alice", partition="gpu",
        placement_reason="4 free a100", actor="d", now=at(2),
    )  # fmt: skip
    assert first is not None
    assert (first.attempt, first.factory, first.started_at, first.finished_at) == (1, "alpha", at(2), None)
    assert await jobs.finish_attempt(
        job_id, 1, outcome=AttemptOutcome.NOT_APPLIED, error="connection refused", actor="d", now=at(3)
    )
    assert not await jobs.finish_attempt(
        job_id, 1, outcome=AttemptOutcome.SUBMITTED, actor="d", now=at(4)
    )  # closed once
    second = await jobs.record_attempt(
        job_id, lease_owner="d", factory="bravo", slurm_user="alice", actor="d", now=at(5)
    )
    assert second is not None
    assert second.attempt == 2
    assert [(a.attempt, a.outcome) for a in await jobs.attempts(job_id)] == [(1, AttemptOutcome.NOT_APPLIED), (2, None)]
    job = await jobs.get(job_id)
    assert job is not None
    assert (job.attempt_count, job.factory) == (2, "bravo")
    with pytest.raises(IntegrityError):  # (job, attempt) is unique: two dispatchers cannot both own attempt 2
        async with db.write() as session:
            session.add(DispatchAttempt(job_id=job_id, attempt=2, factory="x", started_at=at(6)))


async def test_a_submission_closes_the_attempt_and_moves_the_job_in_one_transaction(jobs: JobRepository) -> None:
    [job_id] = await _queue(jobs, 1)
    await jobs.claim_queued("d", 10, 60, now=at(1))
    attempt = await jobs.record_attempt(
        job_id, lease_owner="d", factory="alpha", slurm_user="alice", actor="d", now=at(2)
    )
    assert attempt is not None
    assert await jobs.record_submission(job_id, attempt.attempt, "4242", actor="d", now=at(3))
    job = await jobs.get(job_id)
    assert job is not None
    assert (job.state, job.slurm_job_id, job.submitted_at, job.lease_owner) == (JobState.SUBMITTED, "4242", at(3), None)
    [closed] = await jobs.attempts(job_id)
    assert (closed.outcome, closed.slurm_job_id, closed.finished_at) == (AttemptOutcome.SUBMITTED, "4242", at(3))
    kinds = [e.kind for e in await jobs.events(job_id)]
    assert kinds == [EventKind.CREATED, EventKind.ATTEMPT_STARTED, EventKind.STATE_CHANGED, EventKind.ATTEMPT_FINISHED]
    assert not await jobs.record_submission(job_id, attempt.attempt, "4242", actor="d", now=at(4))
    assert len(await jobs.events(job_id)) == 4


async def test_a_submission_for_a_closed_attempt_changes_nothing(jobs: JobRepository) -> None:
    [job_id] = await _queue(jobs, 1)
    await jobs.claim_queued("d", 10, 60, now=at(1))
    attempt = await jobs.record_attempt(
        job_id, lease_owner="d", factory="alpha", slurm_user="alice", actor="d", now=at(2)
    )
    assert attempt is not None
    assert await jobs.finish_attempt(job_id, 1, outcome=AttemptOutcome.AMBIGUOUS, actor="d", now=at(3))
    assert not await jobs.record_submission(job_id, 1, "4242", actor="d", now=at(4))
    job = await jobs.get(job_id)
    assert job is not None
    assert (job.state, job.slurm_job_id) == (JobState.QUEUED, None)  # the state change was rolled back too


async def test_a_batch_of_records_answers_each_job_on_its_own(jobs: JobRepository) -> None:
    """The dispatcher's group commits: one job's lost lease or closed attempt leaves the others' records be."""
    first, second, third = await _queue(jobs, 3)
    await jobs.claim_queued("d", 3, 60, now=at(1))
    [stranger] = await _queue(jobs, 1)  # queued, never claimed
    starts = [AttemptStart(job_id, "d", "alpha", "alice", "gpu", "fits", "d") for job_id in (first, second, third)]
    attempts = await jobs.record_attempts([*starts, dataclasses.replace(starts[0], job_id=stranger)], now=at(2))
    assert [attempt.attempt if attempt else None for attempt in attempts] == [1, 1, 1, None]
    assert await jobs.attempts(stranger) == []  # not leased to "d": nothing written for it

    assert await jobs.finish_attempt(second, 1, outcome=AttemptOutcome.AMBIGUOUS, actor="d", now=at(3))
    recorded = await jobs.record_submissions(
        [Submitted(job_id, 1, f"10{n}", "d") for n, job_id in enumerate((first, second, third))], now=at(4)
    )
    assert recorded == [True, False, True]
    states = {
        job_id: (job.state, job.slurm_job_id) for job_id in (first, second, third) if (job := await jobs.get(job_id))
    }
    assert states == {
        first: (JobState.SUBMITTED, "100"), second: (JobState.QUEUED, None), third: (JobState.SUBMITTED, "102")
    }  # fmt: skip
    assert [e.kind for e in await jobs.events(second)][-1] == EventKind.ATTEMPT_FINISHED  # its own close, no more


async def test_a_batch_numbers_repeats_in_turn_and_refuses_an_ended_lease_and_a_second_move(
    jobs: JobRepository,
) -> None:
    """The batch writes check in Python what the one-job compare-and-sets checked in SQL: a lease that ran out at
    ``now`` starts nothing, a job started twice in one batch gets attempts 1 and 2, and a job moved once in a
    batch is not moved again; every write comes with its event, in order."""
    job_id, expired = [(await jobs.insert_job_with_event(new_job(), actor="test", now=at(t))).id for t in (0, 0.5)]
    [first] = await jobs.claim_queued("d", 1, 60, now=at(1))  # the older job first, leased until at(61)
    [second] = await jobs.claim_queued("d", 1, 1, now=at(1))  # leased until at(2)
    assert (first.id, second.id) == (job_id, expired)
    start = AttemptStart(job_id, "d", "alpha", "alice", "gpu", "fits", "d")
    attempts = await jobs.record_attempts([start, dataclasses.replace(start, job_id=expired), start], now=at(2))
    assert [attempt.attempt if attempt else None for attempt in attempts] == [1, None, 2]
    assert await jobs.attempts(expired) == []
    stored = await jobs.get(job_id)
    assert stored is not None
    assert (stored.attempt_count, stored.factory, stored.partition, stored.placement_reason) == (
        2,
        "alpha",
        "gpu",
        "fits",
    )

    recorded = await jobs.record_submissions(
        [Submitted(job_id, 2, "77", "d"), Submitted(job_id, 1, "78", "d")], now=at(3)
    )
    assert recorded == [True, False]
    job = await jobs.get(job_id)
    assert job is not None
    assert (job.state, job.slurm_job_id, job.submitted_at, job.lease_owner, job.lease_until) == (
        JobState.SUBMITTED, "77", at(3), None, None
    )  # fmt: skip
    closed = {a.attempt: (a.outcome, a.slurm_job_id, a.finished_at) for a in await jobs.attempts(job_id)}
    assert closed == {1: (None, None, None), 2: (AttemptOutcome.SUBMITTED, "77", at(3))}
    events = [(e.kind, e.from_state, e.to_state, e.detail.get("attempt")) for e in await jobs.events(job_id)]
    assert events[1:] == [
        (EventKind.ATTEMPT_STARTED, None, None, 1),
        (EventKind.ATTEMPT_STARTED, None, None, 2),
        (EventKind.STATE_CHANGED, JobState.QUEUED, JobState.SUBMITTED, 2),
        (EventKind.ATTEMPT_FINISHED, None, None, 2),
    ]


async def test_a_retry_waits_for_its_time_and_a_released_lease_frees_the_job(jobs: JobRepository) -> None:
    retried, released = await _queue(jobs, 2)
    await jobs.claim_queued("d", 10, 60, now=at(1))
    assert not await jobs.schedule_retry(retried, owner="someone-else", at=at(30), reason="x", actor="d", now=at(2))
    assert await jobs.schedule_retry(retried, owner="d", at=at(30), reason="alpha unreachable", actor="d", now=at(2))
    assert await jobs.release_lease(released, "d", now=at(2))
    assert not await jobs.release_lease(released, "d", now=at(2))
    assert [job.id for job in await jobs.claim_queued("e", 10, 60, now=at(3))] == [released]
    [job] = await jobs.claim_queued("e", 10, 60, now=at(30))
    assert (job.id, job.state_reason) == (retried, "alpha unreachable")
    assert EventKind.RETRY_SCHEDULED in [e.kind for e in await jobs.events(retried)]


async def test_the_reconciler_sees_one_factorys_active_jobs(db: Database, jobs: JobRepository) -> None:
    ids = await _queue(jobs, 4)
    for job_id, factory, target in zip(
        ids,
        ["alpha", "alpha", "bravo", "alpha"],
        [JobState.SUBMITTED, JobState.RUNNING, JobState.RUNNING, JobState.FAILED],
        strict=True,
    ):
        if target.is_terminal:
            assert await jobs.finish(job_id, JobState.QUEUED, target, used=NOTHING, actor="t", cause="t",
                                     factory=factory)  # fmt: skip
        else:
            assert await jobs.transition(job_id, JobState.QUEUED, target, actor="t", factory=factory)
    assert [job.id for job in await jobs.active_jobs_by_factory("alpha")] == sorted(ids[:2])
    if db.is_sqlite:  # the reconciler's query uses its index
        query = "EXPLAIN QUERY PLAN SELECT id FROM jobs WHERE factory = 'alpha' AND state IN ('submitted', 'running')"
        async with db.read() as session:
            plan = " ".join(str(row[-1]) for row in await session.execute(text(query)))
        assert "ix_jobs_factory_state" in plan
