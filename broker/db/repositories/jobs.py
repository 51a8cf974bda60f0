"""Jobs in the database: creation (idempotent), reads, listings, and every change of a job, each with its event.

Rules every method keeps:

- A state change is a compare-and-set, ``UPDATE jobs SET state = :target ... WHERE id = :id AND state =
  :expected``, checked against the transition rules first; its event is written in the same transaction.
  Two workers racing on one job: one UPDATE matches, the other matches nothing and is told so (False).
- Every write that appends an event first updates the job's row, so on PostgreSQL the row lock orders a
  job's events: their ids grow in commit order and ``events(after_id=...)`` never skips one.
- A move that ends a job keeps the books in its own transaction: a refund (it never ran) or Slurm's charge
  replaces the job's reservation together with the state change and its event (:meth:`JobRepository.reject`,
  :meth:`~JobRepository.cancel_queued`, :meth:`~JobRepository.finish`). :meth:`~JobRepository.transition`
  makes the moves that change no money and refuses the others; a lost job keeps its reservation (Slurm may
  still run it).
- Claims set a lease in one short transaction; no transaction stays open across a Slurm call.
- Times are aware UTC; ``now`` may be passed for determinism (tests, one clock reading per cycle).
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, insert, literal, or_, select, tuple_, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from broker.db.engine import Database
from broker.db.models import (
    AttemptOutcome,
    BrokerInstance,
    DispatchAttempt,
    IdempotencyKey,
    Job,
    JobEvent,
    ProjectMember,
)
from broker.db.repositories import dispatch_writes, job_writes
from broker.db.repositories.allocations import Hold, OverBudget, add_charges, reserve_all, settle
from broker.db.repositories.antennas import count_active, take_slots
from broker.db.repositories.dispatch_writes import AttemptStart, Submitted
from broker.db.repositories.errors import AllocationNotInForce, AntennaQuotaFull, IdempotencyConflict, NotAMember
from broker.db.repositories.pagination import MAX_PAGE, JobFilter, JobPage, Position, decode_cursor, encode_cursor
from broker.db.repositories.sql import insert_ignoring_conflict, is_sqlite, refused_a_row
from broker.db.types import utc_now
from broker.jobs.events import EventKind
from broker.jobs.ids import new_job_id
from broker.jobs.secrets import redact
from broker.jobs.states import check_move, is_exception
from broker.tenancy.accounting import NOTHING, Reservation, Use
from conveyor.spec import TERMINAL_STATES, JobSpec, JobState

ACTIVE_STATES = frozenset({JobState.SUBMITTED, JobState.RUNNING})
# The ends of a job that settle its reservation (lost does not: Slurm may still run it, and charge it then).
SETTLING_STATES = TERMINAL_STATES - {JobState.LOST}
# What a transition may set besides the state; identity, ownership and bookkeeping columns are not among them.
TRANSITION_FIELDS = frozenset(
    {
        "state_reason", "slurm_state", "slurm_reason", "factory", "partition", "slurm_user", "slurm_job_id",
        "exit_code", "signal", "placement_reason", "submitted_at", "started_at", "ended_at",
    }
)  # fmt: skip


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
    antenna: str | None = None  # its owner's Antenna: counted against its quota in the same transaction
    secrets: str | None = None  # the spec's secret values, sealed (broker.jobs.secrets); ``spec`` has them redacted

    @classmethod
    def from_spec(
        cls,
        owner: str,
        spec: JobSpec,
        source: str | None = None,
        reservation: Reservation | None = None,
        antenna: str | None = None,
        *,
        stored: Mapping[str, Any] | None = None,
        sealed: str | None = None,
    ) -> NewJob:
        """The job of ``spec``. ``stored``: the spec as stored, when the caller made it already; ``sealed``: its
        secret values sealed, required when it has some. The stored spec never holds a secret's value."""
        if spec.secret_environment and sealed is None:
            raise ValueError("a spec with secret_environment is stored only with its values sealed")
        document = redact(stored if stored is not None else spec.model_dump(mode="json"))
        return cls(
            owner=owner, project=spec.project, name=spec.name, spec=document, labels=spec.labels,
            source=source, reservation=reservation, antenna=antenna, secrets=sealed,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class KeyUse:
    """A caller's Idempotency-Key and the fingerprint of the request that came with it (stored), with those older
    keys of a rotated secrets key file made of it (matched, never stored)."""

    caller: str
    key: str
    request_hash: str
    older_hashes: tuple[str, ...] = ()

    def matches(self, stored_hash: str) -> bool:
        """Whether ``stored_hash`` was made of this same request."""
        return stored_hash == self.request_hash or stored_hash in self.older_hashes

    @property
    def pair(self) -> tuple[str, str]:
        return self.caller, self.key


@dataclass(frozen=True, slots=True)
class Creation:
    """One accepted job to store: what was decided about it, who asked, and its Idempotency-Key if any."""

    new: NewJob
    actor: str
    key: KeyUse | None = None
    owner_must_be_member: bool = False  # checked at commit: the caller's roles may have been read seconds ago


@dataclass(frozen=True, slots=True)
class ClosedAttempt:
    """An attempt a move closes in its own transaction, with how it ended."""

    attempt: int
    outcome: AttemptOutcome
    error: str | None


# Per creation: the job and whether this call created it (False: a replay of the key), or why not.
Created = tuple[Job, bool] | IdempotencyConflict | OverBudget | AllocationNotInForce | NotAMember | AntennaQuotaFull


class JobRepository:
    """Every read and write of jobs, their events and their dispatch attempts."""

    def __init__(self, database: Database, clock: Callable[[], datetime] = utc_now) -> None:
        self._db = database
        self._clock = clock

    # --- creation ---------------------------------------------------------------------------------------

    async def insert_job_with_event(self, new: NewJob, *, actor: str, now: datetime | None = None) -> Job:
        """Store a queued job and its ``created`` event in one transaction (committed when this returns)."""
        job, _ = await self.create_one(Creation(new, actor), now=now)
        return job

    async def create_or_get(
        self, caller: str, key: str, request_hash: str, new: NewJob, *, actor: str, now: datetime | None = None
    ) -> tuple[Job, bool]:
        """The job this caller's ``key`` names, creating it on first use: ``(job, created)``. Raises
        :class:`IdempotencyConflict` when the key was used with another request (see :meth:`create_many`)."""
        return await self.create_one(Creation(new, actor, KeyUse(caller, key, request_hash)), now=now)

    async def create_one(self, creation: Creation, *, now: datetime | None = None) -> tuple[Job, bool]:
        """:meth:`create_many` for one job, its refusal raised."""
        (result,) = await self.create_many([creation], now=now)
        if isinstance(result, Exception):
            raise result
        return result

    async def create_many(self, creations: Sequence[Creation], *, now: datetime | None = None) -> list[Created]:
        """Store many accepted jobs in one transaction, committed when this returns: per creation, in order,
        ``(job, created)`` or the exception its caller is to get (:class:`NotAMember`,
        :class:`IdempotencyConflict`, :class:`AntennaQuotaFull`, :class:`OverBudget`,
        :class:`AllocationNotInForce`); the others are stored regardless, and nothing of a refused one is (its
        key, its Antenna slot and its reservation included).

        Membership is checked first, for the creations that ask for it. Keys are claimed next, all at once,
        with ``INSERT ... ON CONFLICT DO NOTHING``: the key row is the arbiter of a race. On PostgreSQL an
        insert of a key that another transaction holds uncommitted waits for it, then inserts nothing, and
        the read that follows (READ COMMITTED: a fresh snapshot per statement) sees the winner's row; on
        SQLite the single writer serializes them. Keys are inserted in sorted order, so two batches never
        wait on each other crosswise. The key's foreign key to its job is deferred to commit, which is why
        the key can be written before its job. Two creations with the same caller and key must not share a
        call (the group commit keeps them apart). Then each new job of an Antenna's national user takes a
        slot of the Antenna's quota (a compare-and-set on its counter), and each job with a reservation takes
        it from its allocation (another); a job refused by its allocation gives its slot back.

        A statement's failure fails the whole call and writes nothing; when the database refused one row's
        values (:func:`~broker.db.repositories.sql.refused_a_row`), the others may be tried again without it.
        """
        now = now or self._clock()
        ids = [new_job_id() for _ in creations]
        results: list[Created | None] = [None] * len(creations)
        async with self._db.write() as session:
            await _check_members(session, creations, results)
            fresh = await _claim_keys(session, creations, ids, now, results)
            refused, holds = await _take_room(session, [(creations[i].new, ids[i]) for i in fresh], now)
            await _release_keys(session, [key for i in fresh if ids[i] in refused and (key := creations[i].key)])
            stored = [i for i in fresh if ids[i] not in refused]
            jobs = await _insert_jobs(session, [(creations[i], ids[i]) for i in stored], now)
            await add_charges(session, holds)  # after their jobs
        for i in fresh:
            if ids[i] in refused:
                results[i] = refused[ids[i]]
        for i, job in zip(stored, jobs, strict=True):
            results[i] = (job, True)
        return [result for result in results if result is not None]

    async def create_together(
        self, creations: Sequence[Creation], *, now: datetime | None = None
    ) -> Sequence[Created | Exception]:
        """:meth:`create_many` for creations of unrelated callers (a group commit). Should the database refuse
        one row's values, that call wrote nothing: each creation is then tried alone, so only its own caller
        gets the error. Any other failure is every caller's (the database is down, say) and is raised."""
        try:
            return await self.create_many(creations, now=now)
        except DBAPIError as exc:
            if len(creations) == 1 or not refused_a_row(exc):
                raise
        return [await self._create_alone(creation, now) for creation in creations]

    async def _create_alone(self, creation: Creation, now: datetime | None) -> Created | Exception:
        try:
            (result,) = await self.create_many([creation], now=now)
        except DBAPIError as exc:
            if not refused_a_row(exc):
                raise
            return exc
        return result

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

        A move that settles the job's reservation is refused (``ValueError``): :meth:`reject`,
        :meth:`cancel_queued` and :meth:`finish` make those, with their money. :meth:`lose` makes ``lost``.
        """
        check_move(expected, target)
        if target in SETTLING_STATES:
            raise ValueError(f"a move to {target} settles the job's reservation: use reject, cancel_queued or finish")
        return await self._move(job_id, expected, target, actor=actor, cause=cause, detail=detail, now=now, **fields)

    async def reject(
        self,
        job_id: str,
        expected: JobState,
        *,
        reason: str,
        actor: str,
        cause: str,
        detail: Mapping[str, Any] | None = None,
        attempt: ClosedAttempt | None = None,
        now: datetime | None = None,
        **fields: Any,
    ) -> bool:
        """``expected`` -> ``rejected`` with ``reason``: the job never ran, so its reservation goes back in the
        same transaction, and ``attempt`` (Slurm refused it) is closed there too. False, and nothing written,
        if the job was not in ``expected``."""
        return await self._move(
            job_id, expected, JobState.REJECTED, actor=actor, cause=cause, detail=detail, now=now, used=NOTHING,
            attempt=attempt, state_reason=reason, **fields,
        )  # fmt: skip

    async def cancel_queued(self, job_id: str, *, reason: str, actor: str, now: datetime | None = None) -> bool:
        """A cancel carried out before the job reached Slurm: ``queued`` -> ``cancelled`` and its reservation
        back, in one transaction; False if the job had left ``queued``."""
        return await self._move(
            job_id, JobState.QUEUED, JobState.CANCELLED, actor=actor, cause="dispatch", detail=None, now=now,
            used=NOTHING, state_reason=reason,
        )  # fmt: skip

    async def finish(
        self,
        job_id: str,
        expected: JobState,
        target: JobState,
        *,
        used: Use,
        actor: str,
        cause: str,
        detail: Mapping[str, Any] | None = None,
        now: datetime | None = None,
        **fields: Any,
    ) -> bool:
        """Slurm ended the job (``target``: completed, failed, cancelled, timeout): the move and the charge for
        what it ``used`` in place of its reservation, in one transaction. False if it was not in ``expected``."""
        if target not in SETTLING_STATES - {JobState.REJECTED}:
            raise ValueError(f"{target} is not an end Slurm reports")
        return await self._move(
            job_id, expected, target, actor=actor, cause=cause, detail=detail, now=now, used=used, **fields
        )

    async def lose(
        self,
        job_id: str,
        expected: JobState,
        *,
        reason: str,
        actor: str,
        cause: str,
        attempt: ClosedAttempt | None = None,
        now: datetime | None = None,
    ) -> bool:
        """``expected`` -> ``lost``: Slurm can no longer tell about the job. Its reservation stays held (should
        Slurm show it again, it is charged when it ends); ``attempt`` is closed in the same transaction."""
        return await self._move(
            job_id, expected, JobState.LOST, actor=actor, cause=cause, detail=None, now=now, attempt=attempt,
            state_reason=reason,
        )  # fmt: skip

    async def _move(
        self,
        job_id: str,
        expected: JobState,
        target: JobState,
        *,
        actor: str,
        cause: str | None,
        detail: Mapping[str, Any] | None,
        now: datetime | None,
        used: Use | None = None,
        attempt: ClosedAttempt | None = None,
        **fields: Any,
    ) -> bool:
        """The one transaction of a move: the compare-and-set and its event, then its consequences (the
        attempt it closes, the reservation it settles for ``used``); nothing is written if the job had moved."""
        check_move(expected, target)
        unknown = set(fields) - TRANSITION_FIELDS
        if unknown:
            raise TypeError(f"transition cannot set {sorted(unknown)}")
        now = now or self._clock()
        kind = EventKind.STATE_EXCEPTION if is_exception(expected, target) else EventKind.STATE_CHANGED
        event_detail = {**(detail or {}), **({"cause": cause} if cause else {})}
        async with self._db.write() as session:
            if not await job_writes.compare_and_set(
                session, job_id, expected, target, actor=actor, kind=kind, detail=event_detail, now=now, fields=fields
            ):
                return False
            if attempt is not None:
                await job_writes.finish_attempt(
                    session, job_id, attempt.attempt, outcome=attempt.outcome, actor=actor, slurm_job_id=None,
                    error=attempt.error, now=now,
                )  # fmt: skip
            if used is not None:
                await settle(session, job_id, used, now)
            return True

    async def record_slurm_view(
        self,
        job_id: str,
        expected: JobState,
        *,
        slurm_state: str | None,
        slurm_reason: str | None,
        state_reason: str | None = None,
        set_state_reason: bool = False,
        now: datetime | None = None,
    ) -> bool:
        """Keep Slurm's own state and reason beside an unchanged broker state (e.g. a new pending reason), and
        with ``set_state_reason`` what that means for the job (``state_reason``, e.g. who can release a hold).

        No event: an observation is not a state change, and the reconciler sees every job every cycle. A
        compare-and-set on ``expected`` and only when something differs, so it never overwrites a newer state.
        """
        now = now or self._clock()
        values: dict[str, Any] = {"slurm_state": slurm_state, "slurm_reason": slurm_reason}
        differs = [Job.slurm_state.is_distinct_from(slurm_state), Job.slurm_reason.is_distinct_from(slurm_reason)]
        if set_state_reason:
            values["state_reason"] = state_reason
            differs.append(Job.state_reason.is_distinct_from(state_reason))
        async with self._db.write() as session:
            changed = await session.scalar(
                update(Job)
                .where(Job.id == job_id, Job.state == expected, or_(*differs))
                .values(**values, updated_at=now)
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
        UPDATE repeats the conditions, so a job is never leased twice. A job whose lease expired, or whose lease
        owner's heartbeat lapsed (``broker_instances``: its process died), is due again; any attempt it left
        open is settled by the dispatcher's rule before anything is submitted.
        """
        lapsed = select(BrokerInstance.worker_id).where(BrokerInstance.expires_at <= job_writes.utc_literal(now))
        due = and_(
            Job.state == JobState.QUEUED,
            Job.next_attempt_at <= job_writes.utc_literal(now),
            or_(
                Job.lease_until.is_(None),
                Job.lease_until <= job_writes.utc_literal(now),
                Job.lease_owner.in_(lapsed.scalar_subquery()),
            ),
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
        start = AttemptStart(job_id, lease_owner, factory, slurm_user, partition, placement_reason, actor)
        (attempt,) = await self.record_attempts([start], now=now)
        return attempt

    async def record_attempts(
        self, starts: Sequence[AttemptStart], *, now: datetime | None = None
    ) -> builtins.list[DispatchAttempt | None]:
        """:meth:`record_attempt` for many jobs in one transaction (the dispatcher's claimed batch, through a
        group commit): per job, its attempt or None. A job whose lease is gone gets None and writes nothing."""
        now = now or self._clock()
        async with self._db.write() as session:
            return await dispatch_writes.start_attempts(session, starts, now)

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
        (recorded,) = await self.record_submissions([Submitted(job_id, attempt, slurm_job_id, actor)], now=now)
        return recorded

    async def record_submissions(
        self, submitted: Sequence[Submitted], *, now: datetime | None = None
    ) -> builtins.list[bool]:
        """:meth:`record_submission` for many jobs in one transaction (submits that returned together, through
        a group commit); an item with nothing to do leaves the others be."""
        now = now or self._clock()
        async with self._db.write() as session:
            return await dispatch_writes.record_submitted(session, submitted, now)

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


async def _insert_jobs(session: AsyncSession, creations: Sequence[tuple[Creation, str]], now: datetime) -> list[Job]:
    """Queued jobs (creation, new id) and their ``created`` events, as two bulk inserts; the stored jobs, in
    order (a unit-of-work flush of the same rows cost half of a batch's time)."""
    if not creations:
        return []
    jobs = [
        {"id": job_id, "owner": c.new.owner, "project": c.new.project, "name": c.new.name, "spec": dict(c.new.spec),
         "labels": dict(c.new.labels), "state": JobState.QUEUED, "created_at": now, "updated_at": now,
         "attempt_count": 0, "next_attempt_at": now, "antenna": c.new.antenna, "secrets": c.new.secrets}
        for c, job_id in creations
    ]  # fmt: skip
    stored = list(await session.scalars(insert(Job).returning(Job, sort_by_parameter_order=True), jobs))
    events = [
        {"job_id": job_id, "at": now, "kind": EventKind.CREATED, "from_state": None, "to_state": JobState.QUEUED,
         "actor": c.actor, "detail": {**({"idempotency_key": c.key.key} if c.key else {}), **_source(c.new.source)}}
        for c, job_id in creations
    ]  # fmt: skip
    await session.execute(insert(JobEvent), events)
    return stored


Refusal = AntennaQuotaFull | OverBudget | AllocationNotInForce


async def _take_room(
    session: AsyncSession, wanting: Sequence[tuple[NewJob, str]], now: datetime
) -> tuple[dict[str, Refusal], list[Hold]]:
    """For new jobs (job, id) in arrival order: a slot of its Antenna's quota, if any, then its reservation,
    if any. Returns the refused (job id -> why) and the holds taken. A job its allocation refuses gives its
    slot back, and the jobs its Antenna refused meanwhile try again for it, so a refusal is exact."""
    refused: dict[str, Refusal] = {}
    holds: list[Hold] = []
    trying = list(wanting)
    while trying:
        counted = [(job_id, new.antenna) for new, job_id in trying if new.antenna is not None]
        full = await take_slots(session, counted)
        wanted = [
            Hold(job_id, new.reservation.allocation_id, new.reservation.need_s)
            for new, job_id in trying
            if job_id not in full and new.reservation is not None
        ]
        over = await reserve_all(session, wanted, now)
        freed = set()
        for job_id, antenna in counted:
            if job_id in over:
                await count_active(session, antenna, -1)
                freed.add(antenna)
        holds += [hold for hold in wanted if hold.job_id not in over]
        refused.update(over)
        refused.update(full)
        trying = [(new, job_id) for new, job_id in trying if job_id in full and new.antenna in freed]
        for _, job_id in trying:
            del refused[job_id]
    return refused, holds


async def _check_members(session: AsyncSession, creations: Sequence[Creation], results: list[Created | None]) -> None:
    """Refuse, in ``results``, the creations whose owner must be, and is no longer, a member of the project."""
    pairs = {(c.new.owner, c.new.project) for c in creations if c.owner_must_be_member}
    if not pairs:
        return
    found = await session.execute(
        select(ProjectMember.user_id, ProjectMember.project_id).where(
            tuple_(ProjectMember.user_id, ProjectMember.project_id).in_(sorted(pairs))
        )
    )
    members = {(user_id, project_id) for user_id, project_id in found}
    for index, creation in enumerate(creations):
        owner, project = creation.new.owner, creation.new.project
        if creation.owner_must_be_member and (owner, project) not in members:
            results[index] = NotAMember(owner, project)


async def _claim_keys(
    session: AsyncSession,
    creations: Sequence[Creation],
    ids: Sequence[str],
    now: datetime,
    results: list[Created | None],
) -> list[int]:
    """Insert the idempotency keys of the creations not refused yet; the indexes of those that are to create a
    job (no key, or a key first used now). A key used before answers its job (a replay) or a conflict, in
    ``results``."""
    pending = [i for i in range(len(creations)) if results[i] is None]
    keyed = sorted(
        ((i, key) for i in pending if (key := creations[i].key) is not None),
        key=lambda keyed_creation: keyed_creation[1].pair,
    )
    if not keyed:
        return pending
    rows = [
        {"caller": key.caller, "key": key.key, "request_hash": key.request_hash, "job_id": ids[i], "created_at": now}
        for i, key in keyed
    ]
    inserted = await session.execute(
        insert_ignoring_conflict(session, IdempotencyKey)
        .values(rows)
        .returning(IdempotencyKey.caller, IdempotencyKey.key)
    )
    claimed = {(caller, key) for caller, key in inserted}
    used_before = [(i, key) for i, key in keyed if key.pair not in claimed]
    if used_before:
        await _answer_replays(session, used_before, results)
    replayed = {i for i, _ in used_before}
    return [i for i in pending if i not in replayed]


async def _answer_replays(
    session: AsyncSession, used_before: Sequence[tuple[int, KeyUse]], results: list[Created | None]
) -> None:
    """For keys used before: the job each names when the request is the same (a replay), else a conflict."""
    pairs = [key.pair for _, key in used_before]
    stored = {
        (caller, key): (request_hash, job_id)
        for caller, key, request_hash, job_id in await session.execute(
            select(IdempotencyKey.caller, IdempotencyKey.key, IdempotencyKey.request_hash, IdempotencyKey.job_id)
            .where(tuple_(IdempotencyKey.caller, IdempotencyKey.key).in_(pairs))
        )
    }  # fmt: skip
    replays = [stored[key.pair][1] for _, key in used_before if key.matches(stored[key.pair][0])]
    jobs = {job.id: job for job in await session.scalars(select(Job).where(Job.id.in_(replays)))} if replays else {}
    for index, key in used_before:
        request_hash, job_id = stored[key.pair]
        same = key.matches(request_hash)
        results[index] = (jobs[job_id], False) if same else IdempotencyConflict(key.caller, key.key, job_id)


async def _release_keys(session: AsyncSession, keys: Sequence[KeyUse]) -> None:
    """Withdraw keys claimed in this transaction for jobs not stored after all (over budget): the same
    request may be made again once the budget allows."""
    if keys:
        pairs = [key.pair for key in keys]
        await session.execute(
            delete(IdempotencyKey).where(tuple_(IdempotencyKey.caller, IdempotencyKey.key).in_(pairs))
        )
