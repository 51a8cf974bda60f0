"""The reconciler: per Factory, ONE listing call per cycle, and the broker's jobs brought in line with it.

Status reads are served from the database, so the cost on slurmctld is one call per Factory per cycle,
whatever the number of jobs or clients. Every change is a compare-and-set with its event, so two reconcilers
(replicas) cannot both apply one. Why the rest is shaped as it is:

- The worklist is read *before* the listing: a job the dispatcher records as submitted afterwards is simply
  seen next cycle, never mistaken for one that vanished.
- A job missing from the listing is asked for by id before it becomes ``lost`` (a listing may be partial, a
  requeue may renumber nothing but reorder plenty). ``lost`` is only for jobs Slurm can no longer tell about.
- A pending reason that can never clear is the job's own fault: the Slurm job is cancelled and the broker job
  ends ``rejected`` with Slurm's reason, rather than waiting for ever.
- A hold never clears by itself either (:mod:`broker.jobs.holds` lists each reason and what it means): one
  Slurm made after a failed launch ends the job ``failed`` with Slurm's reason (cancelled in Slurm); one made
  on purpose leaves it ``submitted`` with a ``state_reason`` saying who can release it, counted per Factory
  (``reconcile_held_jobs``).
- Slurm's exceptions (requeue, preemption, a lost job seen again) are applied and recorded as such.
- Every cancel names the job's tag (its broker id): slurmctld re-issues ids after a crash that lost its state,
  so the adapter cancels only a Slurm job that still carries the tag and belongs to the job's Slurm user.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from broker.db.engine import Database
from broker.db.models import Job
from broker.db.repositories import JobRepository
from broker.db.types import utc_now
from broker.factories.adapters import AdapterProvider
from broker.factories.registry import FactoryRegistry
from broker.jobs.holds import Hold, hold_of, is_hold_reason
from broker.jobs.ids import JOB_ID_PREFIX
from broker.jobs.states import can_move, from_slurm
from broker.jobs.translate import site_user
from broker.settings import Settings
from broker.tenancy.accounting import Use
from conveyor.spec import JobState
from slurm_adapters.errors import JobNotFound, SlurmError
from slurm_adapters.interface import SlurmAdapter
from slurm_adapters.records import JobRecord

log = logging.getLogger(__name__)

ACTOR = "reconciler"
TRACKED_STATES = frozenset({JobState.SUBMITTED, JobState.RUNNING})
SLURM_STATE_WIDTH = 32  # the jobs.slurm_state column


@dataclass
class ReconcileStats:
    """What one cycle on one Factory saw and did, and how long it took (the reconcile lag's raw figures)."""

    factory: str
    started_at: datetime
    duration_s: float = 0.0
    tracked: int = 0  # broker jobs Slurm should know about
    listed: int = 0  # Slurm jobs carrying a broker tag
    changed: int = 0  # state changes applied
    lost: int = 0
    rejected: int = 0
    held: int = 0  # jobs waiting on a hold someone can release
    cancel_calls: int = 0
    found_again: int = 0
    error: str | None = None
    job_errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None


def _log(level: int, job_id: str, message: str, *args: Any) -> None:
    log.log(level, "job %s: " + message, job_id, *args, extra={"job_id": job_id})


def _pick(job: Job, candidates: Iterable[JobRecord]) -> JobRecord | None:
    """The Slurm job that is this broker job: same Slurm id when we know it, and the expected user."""
    own = [r for r in candidates if r.user is None or job.slurm_user is None or r.user == job.slurm_user]
    if job.slurm_job_id is not None:
        return next((r for r in own if str(r.job_id) == job.slurm_job_id), None)
    # A job lost before its Slurm id was recorded (dispatch doubt): the first one submitted with its tag.
    return min(own, key=lambda r: (r.submit_time is None, r.submit_time, r.job_id), default=None)


def _reason_for(target: JobState, record: JobRecord, was: JobState) -> str | None:
    """The state_reason a move leaves on the job: what Slurm said, where that matters to the user."""
    hold = hold_of(record)
    if hold is not None:
        return hold.state_reason()
    if was is JobState.LOST:
        return f"seen again in Slurm as job {record.job_id} ({record.raw_state})"
    if was is JobState.RUNNING and target is JobState.SUBMITTED:
        return f"back in Slurm's queue ({record.raw_state}): requeued or preempted"
    if target is JobState.FAILED:
        code = f", exit code {record.exit_code}" if record.exit_code is not None else ""
        signal = f", signal {record.signal}" if record.signal else ""
        return f"Slurm: {record.raw_state}{code}{signal}"
    if target in {JobState.TIMEOUT, JobState.CANCELLED}:
        return f"Slurm: {record.raw_state}"
    return None


class Reconciler:
    """Brings each Factory's jobs in line with Slurm; ``run_once(factory_id)`` is one cycle on one Factory."""

    def __init__(
        self,
        database: Database,
        registry: FactoryRegistry,
        adapters: AdapterProvider,
        settings: Settings,
        *,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._registry = registry
        self._adapters = adapters
        self._settings = settings
        self._clock = clock
        self._jobs = JobRepository(database, clock)
        self.last: dict[str, ReconcileStats] = {}
        self.last_success: dict[str, datetime] = {}
        self.errors_by_factory: dict[str, int] = {}

    async def run_once(self, factory_id: str) -> ReconcileStats:
        started = time.monotonic()
        stats = ReconcileStats(factory=factory_id, started_at=self._clock())
        try:
            await self._cycle(factory_id, stats)
        except SlurmError as exc:
            stats.error = str(exc)
            log.warning("Factory %s: reconcile cycle failed: %s", factory_id, exc)
        stats.duration_s = time.monotonic() - started
        self.last[factory_id] = stats
        if stats.ok:
            self.last_success[factory_id] = stats.started_at
        else:
            self.errors_by_factory[factory_id] = self.errors_by_factory.get(factory_id, 0) + 1
        return stats

    async def _cycle(self, factory_id: str, stats: ReconcileStats) -> None:
        adapter = self._adapters.get(factory_id)
        tracked = await self._jobs.active_jobs_by_factory(factory_id, TRACKED_STATES)  # before the listing
        stats.tracked = len(tracked)
        records = await adapter.list_jobs(tag_prefix=JOB_ID_PREFIX)  # the one listing call of this cycle
        stats.listed = len(records)
        by_tag: dict[str, list[JobRecord]] = {}
        for record in records:
            if record.tag is not None:
                by_tag.setdefault(record.tag, []).append(record)
        for job in tracked:
            seen = _pick(job, by_tag.pop(job.id, ()))
            if seen is None:
                await self._guarded(job, stats, self._confirm_missing(adapter, job, stats))
            else:
                await self._guarded(job, stats, self._apply(adapter, job, seen, stats))
        for job in await self._jobs.find_in_states(factory_id, by_tag, {JobState.LOST}):
            again = _pick(job, by_tag[job.id])
            if again is not None:
                stats.found_again += 1
                await self._guarded(job, stats, self._apply(adapter, job, again, stats))

    async def _guarded(self, job: Job, stats: ReconcileStats, work: Awaitable[None]) -> None:
        """One job's reconciliation; a failure on one job is counted, and the others still get theirs."""
        try:
            await work
        except SlurmError as exc:
            stats.job_errors.append(f"{job.id}: {exc}")
            _log(logging.WARNING, job.id, "reconcile step failed, retried next cycle: %s", exc)

    async def _confirm_missing(self, adapter: SlurmAdapter, job: Job, stats: ReconcileStats) -> None:
        """Not in the listing: ask by id, then slurmdbd where the Factory has it, before concluding anything."""
        if job.slurm_job_id is None:  # cannot happen for a submitted job; say so rather than guess
            await self._lose(job, "tracked without a Slurm job id", stats)
            return
        try:
            record = await adapter.get_job(int(job.slurm_job_id))
        except JobNotFound:
            await self._confirm_in_accounting(adapter, job, int(job.slurm_job_id), stats)
            return
        if record.tag != job.id:
            await self._lose(job, f"Slurm job {job.slurm_job_id} is now another job (tag {record.tag!r})", stats)
            return
        await self._apply(adapter, job, record, stats)

    async def _confirm_in_accounting(
        self, adapter: SlurmAdapter, job: Job, slurm_job_id: int, stats: ReconcileStats
    ) -> None:
        """slurmctld has purged the job: slurmdbd, where the Factory has it, still knows how it ended.

        slurmdbd writes the tag only when a job ends, so an untagged record is a job slurmctld lost while it
        was pending or running. If slurmdbd cannot be asked, the error leaves the job as it is until the next
        cycle rather than calling it lost too early.
        """
        gone = f"Slurm no longer knows job {slurm_job_id}: absent from the listing and not found by id"
        factory = self._registry.get(job.factory or "")
        if factory is None or not factory.accounting:
            await self._lose(job, f"{gone} (its end was not seen before Slurm purged it)", stats)
            return
        records = await adapter.accounted_jobs(job_ids=[slurm_job_id])  # AccountingUnavailable: next cycle
        record = next((r for r in records if r.job_id == slurm_job_id), None)
        if record is None:
            await self._lose(job, f"{gone}, nor kept by slurmdbd", stats)
        elif record.tag is None:
            await self._lose(job, f"slurmctld lost job {slurm_job_id} before it ended (slurmdbd last saw it "
                             f"{record.raw_state})", stats)  # fmt: skip
        elif record.tag != job.id:
            await self._lose(job, f"Slurm job {slurm_job_id} is another job in slurmdbd (tag {record.tag!r})", stats)
        else:
            await self._apply(adapter, job, record, stats)

    async def _lose(self, job: Job, reason: str, stats: ReconcileStats) -> None:
        if await self._jobs.lose(job.id, job.state, reason=reason, actor=ACTOR, cause="reconcile"):
            stats.lost += 1
            _log(logging.ERROR, job.id, "lost: %s", reason)

    async def _apply(self, adapter: SlurmAdapter, job: Job, record: JobRecord, stats: ReconcileStats) -> None:
        record = record.observed()
        slurm_fields: dict[str, Any] = {
            "slurm_state": record.raw_state[:SLURM_STATE_WIDTH] or None,
            "slurm_reason": record.reason,
        }
        user = job.slurm_user or site_user(self._registry[job.factory or ""])
        if record.never_starts and job.state in {JobState.SUBMITTED, JobState.LOST}:
            # First: a rejected job must not linger in Slurm's queue.
            await adapter.cancel(record.job_id, user, tag=job.id)
            stats.cancel_calls += 1
            reason = f"Slurm can never start the job: {record.reason}"
            if await self._jobs.reject(
                job.id, job.state, reason=reason, actor=ACTOR, cause="reconcile",
                detail={"slurm_job_id": record.job_id, "slurm_reason": record.reason}, **slurm_fields,
            ):  # fmt: skip
                stats.rejected += 1
                _log(logging.INFO, job.id, "rejected: %s", reason)  # it never ran: its reservation went back
            return
        hold = hold_of(record)
        if hold is not None and hold.ends_job:
            await self._end_held(adapter, job, record, hold, user=user, stats=stats)
            return
        if hold is not None:
            stats.held += 1
        if job.cancel_requested_at is not None and not record.state.is_terminal:
            await adapter.cancel(record.job_id, user, tag=job.id)  # the listing of a later cycle shows it cancelled
            stats.cancel_calls += 1
            _log(logging.INFO, job.id, "cancel requested: scancel of Slurm job %s sent", record.job_id)
        target = from_slurm(record.state)
        if target is None or target is job.state:
            # Most jobs look the same every cycle: write only what changed (one write transaction per
            # unchanged job made a 10,000-job cycle take 30 s; bench/reconcile_scale.py).
            view = _view_reason(job, hold)
            if (job.slurm_state, job.slurm_reason) != (slurm_fields["slurm_state"], slurm_fields["slurm_reason"]) or (
                view is not None and view[0] != job.state_reason
            ):
                await self._jobs.record_slurm_view(
                    job.id, job.state, slurm_state=slurm_fields["slurm_state"], slurm_reason=record.reason,
                    state_reason=None if view is None else view[0], set_state_reason=view is not None,
                )  # fmt: skip
            return
        if not can_move(job.state, target):
            _log(logging.WARNING, job.id, "Slurm says %s, which cannot follow %s", record.raw_state, job.state)
            return
        fields = {**slurm_fields, **_times(record, target), "state_reason": _reason_for(target, record, job.state)}
        if target.is_terminal:
            fields["exit_code"], fields["signal"] = record.exit_code, record.signal
        if job.slurm_job_id is None:
            fields["slurm_job_id"] = str(record.job_id)
        detail = {"slurm_job_id": record.job_id, "slurm_state": record.raw_state, "slurm_reason": record.reason}
        if await self._move(job, target, record, detail, fields):
            stats.changed += 1
            _log(logging.INFO, job.id, "%s -> %s (Slurm %s)", job.state, target, record.raw_state)

    async def _move(
        self, job: Job, target: JobState, record: JobRecord, detail: dict[str, Any], fields: dict[str, Any]
    ) -> bool:
        """An ended job pays what Slurm says it held (elapsed x allocated GPUs or nodes), not what it asked,
        in the transaction of its last move."""
        if target.is_terminal:
            return await self._jobs.finish(
                job.id, job.state, target, used=Use.of(record), actor=ACTOR, cause="reconcile", detail=detail, **fields
            )
        return await self._jobs.transition(job.id, job.state, target, actor=ACTOR, cause="reconcile", detail=detail,
                                           **fields)  # fmt: skip

    async def _end_held(
        self, adapter: SlurmAdapter, job: Job, record: JobRecord, hold: Hold, *, user: str, stats: ReconcileStats
    ) -> None:
        """A hold Slurm made after a failed launch: cancel it in Slurm, end the job ``failed`` with the reason,
        charged what Slurm says it held, in the transaction of that move."""
        if job.state.is_terminal and job.state is not JobState.LOST:
            return
        # First: an ended job must not linger held in Slurm's queue.
        await adapter.cancel(record.job_id, user, tag=job.id)
        stats.cancel_calls += 1
        reason = hold.state_reason()
        fields: dict[str, Any] = {
            "state_reason": reason, "slurm_state": record.raw_state[:SLURM_STATE_WIDTH] or None,
            "slurm_reason": record.reason, "slurm_job_id": job.slurm_job_id or str(record.job_id),
        }  # fmt: skip
        detail = {"slurm_job_id": record.job_id, "slurm_reason": record.reason}
        if await self._jobs.finish(
            job.id, job.state, JobState.FAILED, used=Use.of(record), actor=ACTOR, cause="reconcile", detail=detail,
            **fields,
        ):  # fmt: skip
            stats.changed += 1
            _log(logging.WARNING, job.id, "failed: %s", reason)

    def figures(self, now: datetime | None = None) -> dict[str, dict[str, float]]:
        """Per-Factory figures for /metrics, each a mapping Factory -> number (absent: not measured yet)."""
        now = now or self._clock()
        ids = self._registry.ids
        return {
            "reconcile_cycle_seconds": {f: self.last[f].duration_s for f in ids if f in self.last},
            "reconcile_last_cycle_timestamp_seconds": {
                f: self.last[f].started_at.timestamp() for f in ids if f in self.last
            },
            "reconcile_lag_seconds": {
                f: (now - self.last_success[f]).total_seconds() for f in ids if f in self.last_success
            },
            "reconcile_errors": {f: float(self.errors_by_factory.get(f, 0)) for f in ids},
            "reconcile_held_jobs": {f: float(self.last[f].held) for f in ids if f in self.last},
        }


def _view_reason(job: Job, hold: Hold | None) -> tuple[str | None] | None:
    """The state_reason an unchanged job should now carry, in a 1-tuple; None to leave it as it is. A hold
    says who can release it; once released, its reason goes."""
    if hold is not None:
        return (hold.state_reason(),)
    if is_hold_reason(job.state_reason):
        return (None,)
    return None


def _times(record: JobRecord, target: JobState) -> dict[str, datetime]:
    """Slurm's own start and end times, when it reports them (better than the time we noticed)."""
    times: dict[str, datetime] = {}
    if record.start_time is not None and target is not JobState.SUBMITTED:
        times["started_at"] = record.start_time
    if record.end_time is not None and target.is_terminal:
        times["ended_at"] = record.end_time
    return times


__all__ = ["ReconcileStats", "Reconciler"]
