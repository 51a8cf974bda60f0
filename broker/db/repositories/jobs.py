"""Jobs in the database: creation (idempotent), reads, listings, and every change of a job, each with its event.

Rules every method keeps:

- A state change is a compare-and-set, ``UPDATE jobs SET state = :target ... WHERE id = :id AND state =
  :expected``, checked against the transition rules first; its event is written in the same transaction.
  Two workers racing on one job: one UPDATE matches, the other matches nothing and is told so (False).
- Every write that appends an event first updates the job's row, so on PostgreSQL the row lock orders a
  job's events: their ids grow in commit order and ``events(after_id=...)`` never skips one.
- Claims set a lease in one short transaction; no transaction stays open across a Slurm call.
- Times are aware UTC; ``now`` may be passed for determinism (tests, one clock reading per cycle).
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, literal, or_, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from broker.accounting import Reservation
from broker.db.engine import Database
from broker.db.models import AttemptOutcome, DispatchAttempt, IdempotencyKey, Job, JobEvent
from broker.db.repositories import job_writes
from broker.db.repositories.allocations import reserve
from broker.db.repositories.errors import IdempotencyConflict
from broker.db.repositories.pagination import MAX_PAGE, JobFilter, JobPage, Position, decode_cursor, encode_cursor
from broker.db.repositories.sql import insert_ignoring_conflict, is_sqlite
from broker.db.types import utc_now
from broker.jobs.events import EventKind
from broker.jobs.ids import new_job_id
from broker.jobs.states import check_move, is_exception
from conveyor.spec import TERMINAL_STATES, JobSpec, JobState

ACTIVE_STATES = frozenset({JobState.SUBMITTED, JobState.RUNNING})
# What a transition may set besides the state; identity, ownership and bookkeeping columns are not among them.
TRANSITION_FIELDS = frozenset(
    {
        "state_reason", "slurm_state", "slurm_reason", "factory", "partition", "slurm_user", "slurm_job_id",
        "exit_code", "placement_reason", "submitted_at", "started_at", "ended_at",
    }
)  # fmt: skip


class _NothingToDo(Exception):
    """Raised inside a write transaction to roll back what it did so far."""


@dataclass(frozen=True)
class QueueStats:
    """The dispatcher's backlog: queued jobs, and how long the oldest one that is due has waited."""

    depth: int
    oldest_due_wait_s: float


@dataclass(frozen=True)
class NewJob:
    """What the submission path has decided about a job before it is stored."""

    owner: str
    project: str
    name: str
    spec: Mapping[str, Any]
    labels: Mapping[str, str] = field(default_factory=dict)
    source: str | None = None  # the client's address, kept in the created event (the audit trail)
    reservation: Reservation | None = None  # taken from its allocation in the same transaction

    @classmethod
    def from_spec(
        cls, owner: str, spec: JobSpec, source: str | None = None, reservation: Reservation | None = None
    ) -> NewJob:
        return cls(
            owner=owner, project=spec.project, name=spec.name, spec=spec.model_dump(mode="json"), labels=spec.labels,
            source=source, reservation=reservation,
        )  # fmt: skip


class JobRepository:
    """Every read and write of jobs, their events and their dispatch attempts."""

    def __init__(self, database: Database, clock: Callable[[], datetime] = utc_now) -> None:
        self._db = database
        self._clock = clock

    # --- creation ---------------------------------------------------------------------------------------

    async def insert_job_with_event(self, new: NewJob, *, actor: str, now: datetime | None = None) -> Job:
        """Store a queued job and its ``created`` event in one transaction (committed when this returns)."""
        now = now or self._clock()
        async with self._db.write() as session:
            job = self._add_job(session, new, new_job_id(), actor=actor, now=now, detail=_source(new.source))
            await _reserve(session, job.id, new)
            return job

    async def create_or_get(
        self, caller: str, key: str, request_hash: str, new: NewJob, *, actor: str, now: datetime | None = None
    ) -> tuple[Job, bool]:
        """The job this caller's ``key`` names, creating it on first use: ``(job, created)``.

        The key row is inserted first with ``ON CONFLICT DO NOTHING`` and is the arbiter of a race: on
        PostgreSQL a second transaction's insert waits for the first to commit and then inserts nothing,
        and the read that follows (READ COMMITTED: a fresh snapshot per statement) sees the winner's row;
        on SQLite the single writer serializes them. The key's foreign key to the job is deferred to commit,
        which is why the key can be written before its job. Raises :class:`IdempotencyConflict` when the
        key was used with another request.
        """
        now = now or self._clock()
        job_id = new_job_id()
        async with self._db.write() as session:
            claimed = await session.scalar(
                insert_ignoring_conflict(
                    session,
                    IdempotencyKey,
                    caller=caller,
                    key=key,
                    request_hash=request_hash,
                    job_id=job_id,
                    created_at=now,
                ).returning(IdempotencyKey.job_id)
            )
            if claimed is not None:
                job = self._add_job(
                    session, new, job_id, actor=actor, now=now, detail={"idempotency_key": key, **_source(new.source)}
                )
                await _reserve(session, job.id, new)
                return job, True
            existing = (
                await session.execute(
                    select(IdempotencyKey.request_hash, IdempotencyKey.job_id).where(
                        IdempotencyKey.caller == caller, IdempotencyKey.key == key
                    )
                )
            ).one()
            if existing.request_hash != request_hash:
                raise IdempotencyConflict(caller, key, existing.job_id)
            job = await session.get_one(Job, existing.job_id)
            return job, False

    def _add_job(
        self, session: AsyncSession, new: NewJob, job_id: str, *, actor: str, now: datetime, detail: dict[str, Any]
    ) -> Job:
        job = Job(
            id=job_id,
            owner=new.owner,
            project=new.project,
            name=new.name,
            spec=dict(new.spec),
            labels=dict(new.labels),
            state=JobState.QUEUED,
            created_at=now,
            updated_at=now,
            attempt_count=0,
            next_attempt_at=now,
        )
        session.add(job)
        session.add(
            JobEvent(
                job_id=job_id, at=now, kind=EventKind.CREATED, to_state=JobState.QUEUED, actor=actor, detail=detail
            )
        )
        return job

    # --- reads ------------------------------------------------------------------------------------------

    async def get(self, job_id: str) -> Job | None:
        async with self._db.read() as session:
            return await session.get(Job, job_id)

    async def list(self, where: JobFilter, *, limit: int = 50, cursor: str | None = None) -> JobPage:
        """One page of matching jobs, newest first. ``cursor`` is a previous page's ``next_cursor``."""
        limit = max(1, min(limit, MAX_PAGE))
        conditions = job_writes.filter_conditions(where)
        if cursor is not None:
            after = decode_cursor(cursor)
            boundary = tuple_(job_writes.utc_literal(after.created_at), literal(after.job_id))
            conditions.append(tuple_(Job.created_at, Job.id) < boundary)
        query = select(Job).where(*conditions).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
        async with self._db.read() as session:
            rows = builtins.list((await session.scalars(query)).all())
        if len(rows) <= limit:
            return JobPage(items=rows, next_cursor=None)
        last = rows[limit - 1]
        return JobPage(items=rows[:limit], next_cursor=encode_cursor(Position(last.created_at, last.id)))

    async def events(self, job_id: str, *, after_id: int = 0, limit: int = 1000) -> Sequence[JobEvent]:
        """A job's events with ids above ``after_id``, oldest first (resume a stream from the last id seen)."""
        query = (
            select(JobEvent)
            .where(JobEvent.job_id == job_id, JobEvent.id > after_id)
            .order_by(JobEvent.id)
            .limit(max(1, limit))
        )
        async with self._db.read() as session:
            return (await session.scalars(query)).all()

    async def attempts(self, job_id: str) -> Sequence[DispatchAttempt]:
        async with self._db.read() as session:
            query = select(DispatchAttempt).where(DispatchAttempt.job_id == job_id).order_by(DispatchAttempt.attempt)
            return (await session.scalars(query)).all()

    async def active_jobs_by_factory(self, factory: str, states: Iterable[JobState] = ACTIVE_STATES) -> Sequence[Job]:
        """The reconciler's worklist for one Factory: its jobs that Slurm should still know about."""
        query = select(Job).where(Job.factory == factory, Job.state.in_(builtins.list(states))).order_by(Job.id)
        async with self._db.read() as session:
            return (await session.scalars(query)).all()

    async def find_in_states(self, factory: str, job_ids: Iterable[str], states: Iterable[JobState]) -> Sequence[Job]:
        """Of ``job_ids``, those on ``factory`` in one of ``states`` (the reconciler: lost jobs Slurm lists again)."""
        ids = builtins.list(job_ids)
        if not ids:
            return []
        query = select(Job).where(Job.id.in_(ids), Job.factory == factory, Job.state.in_(builtins.list(states)))
        async with self._db.read() as session:
            return (await session.scalars(query.order_by(Job.id))).all()

    async def queue_stats(self, now: datetime) -> QueueStats:
        """How many jobs are queued and how long the oldest due one has waited (the dispatch lag)."""
        query = select(func.count()).select_from(Job).where(Job.state == JobState.QUEUED)
        # min() keeps the column's type, so the result is an aware datetime on both databases.
        due = select(func.min(Job.next_attempt_at)).where(
            Job.state == JobState.QUEUED, Job.next_attempt_at <= job_writes.utc_literal(now)
        )
        async with self._db.read() as session:
            depth = await session.scalar(query)
            oldest_due = await session.scalar(due)
        lag = (now - oldest_due).total_seconds() if oldest_due is not None else 0.0
        return QueueStats(depth=int(depth or 0), oldest_due_wait_s=max(lag, 0.0))

    # --- state changes ----------------------------------------------------------------------------------

    async def transition(
        self,
        job_id: str,
        expected: JobState,
        target: JobState,
        *,
        actor: str,
        cause: str | None = None,
        detail: Mapping[str, Any] | None = None,
        now: datetime | None = None,
        **fields: Any,
    ) -> bool:
        """Compare-and-set ``expected`` -> ``target`` with its event; False if the job was not in ``expected``.

        Raises :class:`~broker.jobs.states.IllegalTransition` for a move the rules forbid, whatever the job's
        state. The event kind comes from the rules, not the caller: ``state_exception`` for a backward move
        that only Slurm causes, ``state_changed`` otherwise; ``cause`` (e.g. "reconcile", "dispatch") goes in
        its detail. ``fields`` are other columns to set (see ``TRANSITION_FIELDS``).
        """
        check_move(expected, target)
        unknown = set(fields) - TRANSITION_FIELDS
        if unknown:
            raise TypeError(f"transition cannot set {sorted(unknown)}")
        now = now or self._clock()
        kind = EventKind.STATE_EXCEPTION if is_exception(expected, target) else EventKind.STATE_CHANGED
        event_detail = {**(detail or {}), **({"cause": cause} if cause else {})}
        async with self._db.write() as session:
            return await job_writes.compare_and_set(
                session, job_id, expected, target, actor=actor, kind=kind, detail=event_detail, now=now, fields=fields
            )

    async def record_slurm_view(
        self,
        job_id: str,
        expected: JobState,
        *,
        slurm_state: str | None,
        slurm_reason: str | None,
        now: datetime | None = None,
    ) -> bool:
        """Keep Slurm's own state and reason beside an unchanged broker state (e.g. a new pending reason).

        No event: an observation is not a state change, and the reconciler sees every job every cycle. A
        compare-and-set on ``expected`` and only when something differs, so it never overwrites a newer state.
        """
        now = now or self._clock()
        async with self._db.write() as session:
            changed = await session.scalar(
                update(Job)
                .where(
                    Job.id == job_id,
                    Job.state == expected,
                    or_(
                        Job.slurm_state.is_distinct_from(slurm_state),
                        Job.slurm_reason.is_distinct_from(slurm_reason),
                    ),
                )
                .values(slurm_state=slurm_state, slurm_reason=slurm_reason, updated_at=now)
                .returning(Job.id),
                execution_options={"synchronize_session": False},
            )
            return changed is not None

    async def request_cancel(
        self, job_id: str, *, actor: str, now: datetime | None = None, source: str | None = None
    ) -> bool:
        """Record a user's intent to cancel (the dispatcher or reconciler carries it out); False if the job has
        ended or cancellation was already requested."""
        now = now or self._clock()
        async with self._db.write() as session:
            changed = await session.scalar(
                update(Job)
                .where(Job.id == job_id, Job.cancel_requested_at.is_(None), Job.state.not_in(TERMINAL_STATES))
                .values(cancel_requested_at=now, updated_at=now)
                .returning(Job.state)
            )
            if changed is None:
                return False
            job_writes.add_event(
                session, job_id, EventKind.CANCEL_REQUESTED, actor=actor, now=now, state=changed, detail=_source(source)
            )
            return True

    # --- dispatcher ---------------------------------------------------------------------------------------

    async def claim_queued(self, owner: str, limit: int, lease_s: float, now: datetime) -> Sequence[Job]:
        """Lease up to ``limit`` due queued jobs to ``owner`` for ``lease_s`` seconds, in one short transaction.

        PostgreSQL: ``SELECT ... FOR UPDATE SKIP LOCKED`` so concurrent claimers (several replicas) take
        disjoint jobs without waiting on each other. SQLite: the single writer (and BEGIN IMMEDIATE across
        processes) means no other claim runs meanwhile, so a plain select-then-update is safe. Either way the
        UPDATE repeats the conditions, so a job is never leased twice. A job whose lease expired (its
        dispatcher died) is due again.
        """
        due = and_(
            Job.state == JobState.QUEUED,
            Job.next_attempt_at <= job_writes.utc_literal(now),
            or_(Job.lease_until.is_(None), Job.lease_until <= job_writes.utc_literal(now)),
        )
        query = select(Job.id).where(due).order_by(Job.next_attempt_at, Job.created_at, Job.id).limit(limit)
        async with self._db.write() as session:
            if not is_sqlite(session):
                query = query.with_for_update(skip_locked=True)
            ids = builtins.list((await session.scalars(query)).all())
            if not ids:
                return []
            claimed = await session.scalars(
                update(Job)
                .where(Job.id.in_(ids), due)
                .values(lease_owner=owner, lease_until=now + timedelta(seconds=lease_s), updated_at=now)
                .returning(Job),
                execution_options={"synchronize_session": False},
            )
            jobs = builtins.list(claimed.all())
        jobs.sort(key=lambda job: (job.next_attempt_at or now, job.created_at, job.id))
        return jobs

    async def record_attempt(
        self,
        job_id: str,
        *,
        lease_owner: str,
        factory: str,
        slurm_user: str | None,
        partition: str | None = None,
        placement_reason: str | None = None,
        actor: str,
        now: datetime | None = None,
    ) -> DispatchAttempt | None:
        """Commit attempt number N+1 *before* the Slurm call; None if ``lease_owner`` no longer holds a live
        lease on the queued job (it expired and another dispatcher may have it), so the caller must not submit.
        """
        now = now or self._clock()
        async with self._db.write() as session:
            number = await session.scalar(
                update(Job)
                .where(
                    Job.id == job_id,
                    Job.state == JobState.QUEUED,
                    Job.lease_owner == lease_owner,
                    Job.lease_until > job_writes.utc_literal(now),
                )
                .values(
                    attempt_count=Job.attempt_count + 1,
                    factory=factory,
                    slurm_user=slurm_user,
                    partition=partition,
                    placement_reason=placement_reason,
                    updated_at=now,
                )
                .returning(Job.attempt_count)
            )
            if number is None:
                return None
            attempt = DispatchAttempt(
                job_id=job_id, attempt=number, factory=factory, slurm_user=slurm_user, started_at=now
            )
            session.add(attempt)
            detail = {"attempt": number, "factory": factory, "slurm_user": slurm_user, "partition": partition}
            job_writes.add_event(session, job_id, EventKind.ATTEMPT_STARTED, actor=actor, now=now, detail=detail)
            return attempt

    async def finish_attempt(
        self,
        job_id: str,
        attempt: int,
        *,
        outcome: AttemptOutcome,
        actor: str,
        slurm_job_id: str | None = None,
        error: str | None = None,
        now: datetime | None = None,
    ) -> bool:
        """Close an attempt with what the Slurm call returned; False if it was already closed."""
        now = now or self._clock()
        async with self._db.write() as session:
            return await job_writes.finish_attempt(
                session, job_id, attempt, outcome=outcome, actor=actor, slurm_job_id=slurm_job_id, error=error, now=now
            )

    async def record_submission(
        self, job_id: str, attempt: int, slurm_job_id: str, *, actor: str, now: datetime | None = None
    ) -> bool:
        """The dispatcher's happy path in one transaction: close the attempt as submitted and move the job
        ``queued`` -> ``submitted`` with its Slurm job id and no lease. False (and nothing written) if the
        job had left ``queued`` or the attempt was already closed."""
        now = now or self._clock()
        try:
            async with self._db.write() as session:
                moved = await job_writes.compare_and_set(
                    session,
                    job_id,
                    JobState.QUEUED,
                    JobState.SUBMITTED,
                    actor=actor,
                    kind=EventKind.STATE_CHANGED,
                    detail={"cause": "dispatch", "attempt": attempt, "slurm_job_id": slurm_job_id},
                    now=now,
                    fields={"slurm_job_id": slurm_job_id},
                )
                closed = moved and await job_writes.finish_attempt(
                    session, job_id, attempt, outcome=AttemptOutcome.SUBMITTED, actor=actor,
                    slurm_job_id=slurm_job_id, error=None, now=now,
                )  # fmt: skip
                if not closed:
                    raise _NothingToDo
        except _NothingToDo:
            return False
        return True

    async def release_lease(self, job_id: str, owner: str, *, now: datetime | None = None) -> bool:
        """Give a claimed job back before the lease runs out (e.g. on shutdown); False if not ours."""
        now = now or self._clock()
        async with self._db.write() as session:
            released = await session.scalar(
                update(Job)
                .where(Job.id == job_id, Job.lease_owner == owner)
                .values(lease_owner=None, lease_until=None, updated_at=now)
                .returning(Job.id)
            )
            return released is not None

    async def schedule_retry(
        self, job_id: str, *, owner: str, at: datetime, reason: str, actor: str, now: datetime | None = None
    ) -> bool:
        """Put a queued job the lease ``owner`` could not submit back in line for ``at``, releasing the lease."""
        now = now or self._clock()
        async with self._db.write() as session:
            moved = await session.scalar(
                update(Job)
                .where(Job.id == job_id, Job.state == JobState.QUEUED, Job.lease_owner == owner)
                .values(next_attempt_at=at, state_reason=reason, lease_owner=None, lease_until=None, updated_at=now)
                .returning(Job.id)
            )
            if moved is None:
                return False
            detail = {"next_attempt_at": at.isoformat(), "reason": reason}
            job_writes.add_event(session, job_id, EventKind.RETRY_SCHEDULED, actor=actor, now=now, detail=detail)
            return True


def _source(address: str | None) -> dict[str, Any]:
    """An event's detail for a call made from ``address`` (events double as the audit trail: who, from where)."""
    return {"source": address} if address else {}


async def _reserve(session: AsyncSession, job_id: str, new: NewJob) -> None:
    if new.reservation is not None:
        await reserve(session, job_id, new.reservation.allocation_id, new.reservation.need_s)
