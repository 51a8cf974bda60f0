"""The statements every job write is made of: the compare-and-set, events, attempt closing, list filters.

Each runs inside a transaction the caller opened with ``Database.write()`` (or ``read()`` for the filters), so
several can be combined atomically (``JobRepository.record_submission`` is one such combination).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, func, literal, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from broker.db.models import AttemptOutcome, DispatchAttempt, Job, JobEvent
from broker.db.repositories.antennas import count_active
from broker.db.repositories.pagination import JobFilter, Visibility
from broker.db.types import UTCDateTime
from broker.jobs.events import EventKind
from conveyor.spec import TERMINAL_STATES, JobState


def utc_literal(value: datetime) -> ColumnElement[datetime]:
    """A datetime as a typed SQL literal, so it is stored and compared exactly like the columns."""
    return literal(value, UTCDateTime())


def filter_conditions(where: JobFilter) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if where.projects is not None:
        conditions.append(Job.project.in_(sorted(where.projects)) if where.projects else literal(False))
    if where.states:
        conditions.append(Job.state.in_(sorted(where.states)))
    if where.factory is not None:
        conditions.append(Job.factory == where.factory)
    if where.project is not None:
        conditions.append(Job.project == where.project)
    if where.owner is not None:
        conditions.append(Job.owner == where.owner)
    for key, value in sorted(where.labels.items()):
        conditions.append(Job.labels[key].as_string() == value)
    if where.visible_to is not None:
        conditions.append(visible(where.visible_to))
    return conditions


def visible(to: Visibility) -> ColumnElement[bool]:
    """The tenancy rule as SQL: own jobs in one's projects, or any job of a project one leads."""
    own = Job.owner == to.owner
    if to.member_of is not None:
        own = and_(own, Job.project.in_(sorted(to.member_of))) if to.member_of else literal(False)
    return or_(own, Job.project.in_(sorted(to.leads))) if to.leads else own


def add_event(
    session: AsyncSession,
    job_id: str,
    kind: EventKind,
    *,
    actor: str,
    now: datetime,
    detail: Mapping[str, Any] | None = None,
    state: JobState | None = None,
) -> None:
    """An event that does not change the state (``state``, when given, is the one the job stays in)."""
    session.add(
        JobEvent(
            job_id=job_id,
            at=now,
            kind=kind,
            from_state=state,
            to_state=state,
            actor=actor,
            detail=dict(detail or {}),
        )
    )


async def compare_and_set(
    session: AsyncSession,
    job_id: str,
    expected: JobState,
    target: JobState,
    *,
    actor: str,
    kind: EventKind,
    detail: Mapping[str, Any],
    now: datetime,
    fields: Mapping[str, Any],
) -> bool:
    """``expected`` -> ``target`` and its event, or False (nothing written) if the job was not in ``expected``.
    A move across the line between active and ended carries the job's Antenna count with it."""
    values: dict[str, Any] = {"state": target, "updated_at": now}
    if target is JobState.SUBMITTED:
        values["submitted_at"] = _first(Job.submitted_at, now)
    elif target is JobState.RUNNING:
        values["started_at"] = _first(Job.started_at, now)
    if target in TERMINAL_STATES:
        values["ended_at"] = now
    if expected is JobState.QUEUED:
        values.update(lease_owner=None, lease_until=None)  # leases only mean something on queued jobs
    values.update(fields)
    moved = (
        await session.execute(
            update(Job).where(Job.id == job_id, Job.state == expected).values(**values).returning(Job.antenna),
            execution_options={"synchronize_session": False},
        )
    ).first()
    if moved is None:
        return False
    antenna = moved.antenna
    if antenna is not None and expected.is_terminal != target.is_terminal:
        # Its Antenna's count of active jobs follows it across the line (a lost job seen again counts again).
        await count_active(session, antenna, -1 if target.is_terminal else 1)
    session.add(
        JobEvent(job_id=job_id, at=now, kind=kind, from_state=expected, to_state=target, actor=actor, detail=detail)
    )
    return True


def _first(column: Any, now: datetime) -> ColumnElement[datetime]:
    """Keep a timestamp that is already set (a requeued job keeps its first submit time)."""
    return func.coalesce(column, utc_literal(now), type_=UTCDateTime())


async def finish_attempt(
    session: AsyncSession,
    job_id: str,
    attempt: int,
    *,
    outcome: AttemptOutcome,
    actor: str,
    slurm_job_id: str | None,
    error: str | None,
    now: datetime,
) -> bool:
    """Close an open attempt and note it in the job's events; False if it was closed already."""
    # The job's row first, like every other job write: one lock order, and the events' order per job.
    await session.execute(select(Job.id).where(Job.id == job_id).with_for_update())
    closed = await session.scalar(
        update(DispatchAttempt)
        .where(
            DispatchAttempt.job_id == job_id,
            DispatchAttempt.attempt == attempt,
            DispatchAttempt.finished_at.is_(None),
        )
        .values(finished_at=now, outcome=outcome, slurm_job_id=slurm_job_id, error=error)
        .returning(DispatchAttempt.attempt),
        execution_options={"synchronize_session": False},
    )
    if closed is None:
        return False
    await session.execute(
        update(Job).where(Job.id == job_id).values(updated_at=now), execution_options={"synchronize_session": False}
    )
    detail = {"attempt": attempt, "outcome": outcome.value, "slurm_job_id": slurm_job_id, "error": error}
    add_event(session, job_id, EventKind.ATTEMPT_FINISHED, actor=actor, now=now, detail=detail)
    return True
