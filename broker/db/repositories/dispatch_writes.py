"""The dispatcher's two batch writes: attempts started before the Slurm calls, and submissions recorded after
them, each a fixed handful of statements whatever the batch's size.

Both lock the batch's job rows first (``SELECT ... FOR UPDATE`` in id order; on SQLite the write transaction
already holds the database's write lock), check in Python what the one-job compare-and-sets would have checked
in SQL, and write only the items that pass, with executemany UPDATEs and bulk INSERTs. An item with nothing to
do writes nothing and leaves the others be. Locking the job's row before writing its events keeps the rule of
every job write (their ids grow in commit order, see :mod:`broker.db.repositories.jobs`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from broker.db.models import AttemptOutcome, DispatchAttempt, Job, JobEvent
from broker.jobs.events import EventKind
from conveyor.spec import JobState


@dataclass(frozen=True, slots=True)
class AttemptStart:
    """A dispatcher's next attempt at a job it leases, to commit before the Slurm call."""

    job_id: str
    lease_owner: str
    factory: str
    slurm_user: str | None
    partition: str | None
    placement_reason: str | None
    actor: str


@dataclass(frozen=True, slots=True)
class Submitted:
    """Slurm took the job on this attempt, as this Slurm job."""

    job_id: str
    attempt: int
    slurm_job_id: str
    actor: str


async def start_attempts(
    session: AsyncSession, starts: Sequence[AttemptStart], now: datetime
) -> list[DispatchAttempt | None]:
    """Attempt N+1 of each job its starter still leases (queued, lease owned and not run out), with its
    ``attempt_started`` event; None for the others, which write nothing."""
    jobs = await _lock_jobs(session, (s.job_id for s in starts), Job.state, Job.lease_owner, Job.lease_until)
    counts = {job_id: row.attempt_count for job_id, row in jobs.items()}
    attempts: list[DispatchAttempt | None] = []
    changes: dict[str, dict[str, Any]] = {}
    events: list[dict[str, Any]] = []
    for start in starts:
        job = jobs.get(start.job_id)
        leased = job is not None and job.lease_until is not None and job.lease_until > now
        if job is None or job.state != JobState.QUEUED or job.lease_owner != start.lease_owner or not leased:
            attempts.append(None)
            continue
        number = counts[start.job_id] = counts[start.job_id] + 1
        attempts.append(
            DispatchAttempt(
                job_id=start.job_id, attempt=number, factory=start.factory, slurm_user=start.slurm_user, started_at=now
            )
        )
        changes[start.job_id] = {
            "id": start.job_id, "attempt_count": number, "factory": start.factory, "slurm_user": start.slurm_user,
            "partition": start.partition, "placement_reason": start.placement_reason, "updated_at": now,
        }  # fmt: skip
        detail = {"attempt": number, "factory": start.factory, "slurm_user": start.slurm_user,
                  "partition": start.partition}  # fmt: skip
        events.append(_event(start.job_id, EventKind.ATTEMPT_STARTED, detail, actor=start.actor, now=now))
    if changes:
        await session.execute(update(Job), list(changes.values()))
        rows = [
            {"job_id": a.job_id, "attempt": a.attempt, "factory": a.factory, "slurm_user": a.slurm_user,
             "started_at": now}
            for a in attempts if a is not None
        ]  # fmt: skip
        await session.execute(insert(DispatchAttempt), rows)
        await session.execute(insert(JobEvent), events)
    return attempts


async def record_submitted(session: AsyncSession, submitted: Sequence[Submitted], now: datetime) -> list[bool]:
    """Per item: close its attempt as submitted and move its job ``queued`` -> ``submitted`` with the Slurm job
    id and no lease, with both events; False (nothing written for it) if the job had left ``queued`` or the
    attempt was closed already. Neither state is an end, so no Antenna count moves."""
    jobs = await _lock_jobs(session, (s.job_id for s in submitted), Job.state, Job.submitted_at)
    still_open = {
        (row.job_id, row.attempt)
        for row in await session.execute(
            select(DispatchAttempt.job_id, DispatchAttempt.attempt).where(
                DispatchAttempt.job_id.in_(jobs), DispatchAttempt.finished_at.is_(None)
            )
        )
    }
    recorded: list[bool] = []
    moves: list[dict[str, Any]] = []
    closes: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    moved: set[str] = set()
    for item in submitted:
        job = jobs.get(item.job_id)
        queued = job is not None and job.state == JobState.QUEUED and item.job_id not in moved
        if job is None or not queued or (item.job_id, item.attempt) not in still_open:
            recorded.append(False)
            continue
        moved.add(item.job_id)
        recorded.append(True)
        moves.append(
            {"id": item.job_id, "state": JobState.SUBMITTED, "submitted_at": job.submitted_at or now,
             "lease_owner": None, "lease_until": None, "slurm_job_id": item.slurm_job_id, "updated_at": now}
        )  # fmt: skip
        closes.append(
            {"job_id": item.job_id, "attempt": item.attempt, "finished_at": now, "outcome": AttemptOutcome.SUBMITTED,
             "slurm_job_id": item.slurm_job_id, "error": None}
        )  # fmt: skip
        detail = {"cause": "dispatch", "attempt": item.attempt, "slurm_job_id": item.slurm_job_id}
        events.append(
            _event(
                item.job_id,
                EventKind.STATE_CHANGED,
                detail,
                actor=item.actor,
                now=now,
                from_state=JobState.QUEUED,
                to_state=JobState.SUBMITTED,
            )
        )
        detail = {"attempt": item.attempt, "outcome": AttemptOutcome.SUBMITTED.value,
                  "slurm_job_id": item.slurm_job_id, "error": None}  # fmt: skip
        events.append(_event(item.job_id, EventKind.ATTEMPT_FINISHED, detail, actor=item.actor, now=now))
    if moves:
        await session.execute(update(Job), moves)
        await session.execute(update(DispatchAttempt), closes)
        await session.execute(insert(JobEvent), events)
    return recorded


async def _lock_jobs(session: AsyncSession, ids: Iterable[str], *columns: Any) -> dict[str, Row[Any]]:
    """The rows of these jobs (id, attempt_count and ``columns``), locked for the transaction, in id order."""
    wanted = sorted(set(ids))
    rows = await session.execute(
        select(Job.id, Job.attempt_count, *columns).where(Job.id.in_(wanted)).order_by(Job.id).with_for_update()
    )
    return {row.id: row for row in rows}


def _event(
    job_id: str,
    kind: EventKind,
    detail: dict[str, Any],
    *,
    actor: str,
    now: datetime,
    from_state: JobState | None = None,
    to_state: JobState | None = None,
) -> dict[str, Any]:
    """A row of ``job_events`` (the states only for a state change)."""
    return {"job_id": job_id, "at": now, "kind": kind, "from_state": from_state, "to_state": to_state,
            "actor": actor, "detail": detail}  # fmt: skip
