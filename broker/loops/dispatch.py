"""The dispatcher: claim -> (settle doubt) -> place -> attempt record -> submit -> record the Slurm job id.

Why it is shaped like this:

- Claims are short leased transactions (``JobRepository.claim_queued``); no row lock is held across a Slurm
  call, so several dispatchers (replicas) can run side by side.
- An attempt is committed *before* every submit. A job whose latest attempt has no outcome (the dispatcher
  died mid-call, or the call failed in a way that may have reached Slurm) is in doubt: before anything else
  the tag is looked up on that attempt's Factory (tag AND expected Slurm user AND submitted after the
  attempt), in slurmctld and, where the Factory has it, in slurmdbd. Found: it is recorded as submitted.
  Not found: :mod:`broker.loops.doubt` decides whether absence is proven (no slurmctld restart since the attempt,
  and MinJobAge not yet passed or slurmdbd explaining every job since), so it may be submitted again.
  Otherwise Slurm can no longer tell, and the job becomes ``lost`` with that reason: never resubmitted
  blindly, so a job reaches Slurm at most once.
- Nobody settles an attempt before its start + the Factory's submit window + Slurm's MessageTimeout + the
  clock skew (:func:`settle_not_before`): until then the call may still reach Slurm, whoever holds the
  claim now. The submit window (:attr:`Factory.submit_window_s`: the adapter's call deadline +
  ``SUBMIT_SLACK_S``, the same rule for every adapter kind) is enforced, not assumed: each submit carries
  ``not_after`` = the attempt's start + that window (:func:`submit_context`), and the adapter never starts a
  call that could still run after it; a dispatcher delayed between the commit and the call has its submit
  refused (not applied) and retried, never made late. A claim whose process died is taken over as soon as
  its heartbeat lapses (:mod:`broker.db.repositories.instances`), so this rule, not the lease, is what keeps
  a job from being submitted twice; and while a claimed job's Slurm call is in flight
  (:attr:`Dispatcher.in_flight`), the heartbeat renews its lease.
- The jobs of a claimed batch share their writes: their attempts are one group commit
  (:mod:`broker.db.group_commit`), each still committed before its own Slurm call, and the submissions that
  return together another, each in a savepoint; what they read (health, reserved Factories, site accounts)
  is read once per batch.
  The runtime carries up to ``dispatch_batches`` claimed batches at once (:meth:`Dispatcher.claim`, then
  :meth:`Dispatcher.carry` in the background), so a claim does not wait for the slowest call of the batch
  before it; claims are leased, hence disjoint, and each job keeps every rule above on its own.
- A job's secret environment (:mod:`broker.jobs.secrets`) is unsealed here, just before its translation, and
  travels only in the Slurm job's environment; its submit context names the secret entries, so an agent
  Factory's order keeps them sealed. What the dispatcher writes about the submit has any value scrubbed. A
  process without the key that sealed them keeps the job queued, saying so (its operators' fault, not the job's).
- Only the job's own fault ends it ``rejected`` (placement that can never succeed, Slurm refusing the request).
  Site faults (authentication, availability) keep it queued with a visible reason, mark the Factory
  unhealthy, and retry with a bounded backoff.

Failpoints (tests only): ``CONVEYOR_FAILPOINTS=before_submit,after_submit`` makes the process SIGKILL itself
at that point, to prove the crash paths with a real crash.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import traceback
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from broker.agents.sessions import agent_features
from broker.db.engine import Database
from broker.db.group_commit import GroupCommit
from broker.db.models import AttemptOutcome, DispatchAttempt, Job
from broker.db.repositories import FactoryStateRepository, JobRepository
from broker.db.repositories.allocations import AllocationRepository
from broker.db.repositories.dispatch_writes import AttemptStart, Submitted
from broker.db.repositories.jobs import ClosedAttempt
from broker.db.types import utc_now
from broker.factories.adapters import AdapterProvider
from broker.factories.health import factory_statuses
from broker.factories.placement import AgentFeatures, FactoryStatus, Placement, PlacementError, place
from broker.factories.registry import Factory, FactoryRegistry
from broker.jobs.secrets import scrub, secret_names
from broker.jobs.translate import TranslationError, to_slurm_spec
from broker.loops.doubt import Attempt, Evidence, settle
from broker.secret_box import SealedUnreadable, SecretBox
from broker.settings import Settings
from broker.tenancy.site_accounts import RunAs, SiteAccountService
from conveyor.problems import PlacementCode
from conveyor.spec import JobSpec, JobState
from slurm_adapters.agent_protocol import features_used
from slurm_adapters.errors import (
    AccountingUnavailable,
    AuthenticationError,
    ClusterUnavailable,
    JobError,
    SiteError,
    SlurmError,
    SubmitWindowClosed,
)
from slurm_adapters.records import SlurmJobSpec, SubmitContext

log = logging.getLogger(__name__)

ACTOR = "dispatcher"
FAILPOINTS_ENV = "CONVEYOR_FAILPOINTS"
FAILPOINTS = frozenset({"before_submit", "after_submit"})
RETRY_BASE_S = 2.0
# A job that fits but whose Factories are all drained or unhealthy looks again after this long.
PLACEMENT_RETRY_S = 10.0
GROUP_COMMIT_MAX = 1000  # Settings.claim_batch's ceiling: a claimed batch's records fit one transaction


class _Batch:
    """What the jobs of one claimed batch share, read once for all of them: the Factories' health, the
    Factory each job's allocation is on, what each agent Factory's agent announced, and the site account of
    each (Factory, owner, project)."""

    def __init__(
        self, statuses: Mapping[str, FactoryStatus], reserved: Mapping[str, str], agents: AgentFeatures
    ) -> None:
        self.statuses = statuses
        self.reserved = reserved
        self.agents = agents
        self._run_as: dict[tuple[str, str, str], asyncio.Future[RunAs]] = {}

    def run_as(self, accounts: SiteAccountService, factory: Factory, owner: str, project: str) -> Awaitable[RunAs]:
        key = (factory.id, owner, project)
        if key not in self._run_as:  # the first job asking reads it; the others wait for that read
            self._run_as[key] = asyncio.ensure_future(accounts.run_as(factory, owner, project))
        return self._run_as[key]


def active_failpoints(environ: Mapping[str, str] | None = None) -> frozenset[str]:
    """The failpoints ``CONVEYOR_FAILPOINTS`` enables; an unknown name is an error (a typo must not pass)."""
    raw = (os.environ if environ is None else environ).get(FAILPOINTS_ENV, "")
    names = frozenset(name.strip() for name in raw.split(",") if name.strip())
    unknown = names - FAILPOINTS
    if unknown:
        raise ValueError(f"unknown failpoints {sorted(unknown)}; known: {sorted(FAILPOINTS)}")
    return names


def retry_delay_s(attempts: int, cap_s: float) -> float:
    """Exponential backoff from ``RETRY_BASE_S``, capped: an outage never pushes a job out of sight."""
    exponent = min(max(attempts - 1, 0), 20)
    return float(min(cap_s, RETRY_BASE_S * 2.0**exponent))


def submit_context(job: Job, attempt: DispatchAttempt, factory: Factory) -> SubmitContext:
    """What a submit of ``attempt`` carries: its id, and ``not_after`` = its start + the Factory's submit
    window, after which the adapter starts no call of it; on whose behalf (owner, project, Antenna); which
    environment entries are secrets."""
    return SubmitContext(
        attempt=f"{job.id}/{attempt.attempt}",
        not_after=attempt.started_at + timedelta(seconds=factory.submit_window_s),
        requester_user=job.owner,
        requester_project=job.project,
        requester_antenna=job.antenna,
        secret_names=secret_names(job.spec),
    )


def settle_not_before(factory: Factory, attempt: DispatchAttempt) -> datetime:
    """The earliest time an attempt's outcome may be looked up in Slurm: after it, no call of it can still be
    running (its submit window, which the adapter's fence enforces through ``not_after``) and no message of
    it can still reach slurmctld (MessageTimeout), even by a clock that runs ``clock_skew_s`` behind."""
    window = factory.submit_window_s + factory.message_timeout_s + factory.clock_skew_s
    return attempt.started_at + timedelta(seconds=window)


def _lacking(spec: SlurmJobSpec, announced: frozenset[str] | None) -> tuple[str, ...]:
    """The features ``spec`` uses that an agent announcing ``announced`` lacks (None: no agent, nothing to
    compare; its submit finds no lease holder and the job is retried)."""
    return () if announced is None else tuple(sorted(features_used(spec) - announced))


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _job_log(level: int, job_id: str, message: str, *args: Any) -> None:
    log.log(level, "job %s: " + message, job_id, *args, extra={"job_id": job_id})


class UnexpectedError(Exception):
    """An adapter's unexpected exception, its text scrubbed of the job's secret values (its traceback too, logged
    at debug where it was raised)."""


class Dispatcher:
    """Moves queued jobs to Slurm. ``run_once`` is one cycle; the runtime calls it in a loop."""

    def __init__(
        self,
        database: Database,
        registry: FactoryRegistry,
        adapters: AdapterProvider,
        settings: Settings,
        worker_id: str | None = None,
        *,
        clock: Callable[[], datetime] = utc_now,
        failpoints: frozenset[str] | None = None,
        secret_box: SecretBox | None = None,
    ) -> None:
        self._registry = registry
        self._secret_box = secret_box  # unseals jobs' secret environments; None: such jobs wait
        self._database = database
        self._adapters = adapters
        self._settings = settings
        self.worker_id = worker_id or default_worker_id()
        self._clock = clock
        self._jobs = JobRepository(database, clock)
        self._states = FactoryStateRepository(database, clock)
        self._allocations = AllocationRepository(database, clock)
        self._site_accounts = SiteAccountService(database, registry, clock)
        # The jobs of a claimed batch reach these two writes together: one transaction for all that are
        # ready, each still committed before its caller goes on (its Slurm call, or the next job).
        self._attempt_starts: GroupCommit[AttemptStart, DispatchAttempt | None] = GroupCommit(
            self._jobs.record_attempts, max_batch=GROUP_COMMIT_MAX
        )
        self._submissions: GroupCommit[Submitted, bool] = GroupCommit(
            self._jobs.record_submissions, max_batch=GROUP_COMMIT_MAX
        )
        self._failpoints = active_failpoints() if failpoints is None else failpoints
        self.errors_by_factory: dict[str, int] = {}
        self.in_flight: set[str] = set()  # claimed jobs still being carried: their leases are renewed

    async def run_once(self) -> int:
        """Claim a batch of due queued jobs and carry each as far as it goes; returns how many were claimed."""
        claimed = await self.claim()
        await self.carry(claimed)
        return len(claimed)

    async def claim(self) -> Sequence[Job]:
        """Lease a batch of due queued jobs to this dispatcher (none is leased to two claims at once, so the
        batches of several claims, of this process or of others, are disjoint)."""
        return await self._jobs.claim_queued(
            self.worker_id, self._settings.claim_batch, self._settings.lease_s, self._clock()
        )

    async def carry(self, claimed: Sequence[Job]) -> None:
        """Carry each job of a claimed batch as far as it goes (each its own attempt, committed before its
        Slurm call); batches may be carried side by side."""
        if not claimed:
            return
        ids = [job.id for job in claimed]
        self.in_flight.update(ids)
        try:
            statuses = await factory_statuses(self._states)
            agents = await agent_features(self._database, self._registry, self._clock())
            batch = _Batch(statuses, await self._allocations.reserved_factories(ids), agents)
            await asyncio.gather(*(self._guarded(job, batch) for job in claimed))
        finally:  # a batch that failed before its jobs were carried must not keep their leases renewed
            self.in_flight.difference_update(ids)

    async def _guarded(self, job: Job, batch: _Batch) -> None:
        """One job's dispatch; a bug on one job must not stop the batch, and the job must not vanish."""
        try:
            await self._dispatch(job, batch)
        except Exception as exc:
            _job_log(logging.ERROR, job.id, "dispatch failed unexpectedly: %r", exc)
            if not isinstance(exc, UnexpectedError):
                log.debug("traceback", exc_info=True)
            # Any open attempt stays open: the next claim settles it by tag before submitting again.
            await self._retry(job.id, job.attempt_count + 1, f"internal error while dispatching: {exc!r}")
        finally:
            self.in_flight.discard(job.id)

    async def _dispatch(self, job: Job, batch: _Batch) -> None:
        # attempt_count grows in the transaction that adds an attempt, and this claim's lease stops anyone
        # else adding one: a job claimed with none has none (skips a read per new job; bench/forwarding.py).
        attempts = await self._jobs.attempts(job.id) if job.attempt_count else []
        latest = attempts[-1] if attempts else None
        if latest is not None and latest.finished_at is None and not await self._settle_doubt(job, latest):
            return
        if job.cancel_requested_at is not None:
            if await self._jobs.cancel_queued(job.id, reason="cancelled before it reached Slurm", actor=ACTOR):
                _job_log(logging.INFO, job.id, "cancelled before submission")
            return
        readable = await self._spec_of(job)
        if readable is None:
            return
        spec, values = readable
        reserved = batch.reserved.get(job.id)  # its allocation's Factory, and only that
        try:
            allowed = None if reserved is None else {reserved}
            placement = place(spec, self._registry, batch.statuses, allowed=allowed, agents=batch.agents)
        except PlacementError as exc:
            if exc.transient:
                at = self._clock() + timedelta(seconds=PLACEMENT_RETRY_S)
                if await self._jobs.schedule_retry(
                    job.id, owner=self.worker_id, at=at, reason=f"waiting: {exc.message}", actor=ACTOR
                ):
                    _job_log(logging.INFO, job.id, "waits: %s", exc.message)
            else:
                await self._reject(job.id, exc.message, code=exc.code.value)
            return
        factory = placement.factory
        run_as = await batch.run_as(self._site_accounts, factory, job.owner, job.project)
        slurm_spec = await self._translate(job.id, spec, placement, run_as, batch, secrets=values)
        if slurm_spec is None:
            return
        user = run_as.user
        attempt = await self._attempt_starts.submit(
            AttemptStart(job.id, self.worker_id, factory.id, user, placement.partition.name, placement.reason, ACTOR)
        )
        if attempt is None:
            _job_log(logging.WARNING, job.id, "lease lost before submission; another dispatcher has it")
            return
        await self.submit(job, attempt, factory, slurm_spec, user)

    async def _spec_of(self, job: Job) -> tuple[JobSpec, dict[str, str]] | None:
        """The job's spec and the values of its secret environment; None when the job was rejected (its stored
        spec is no longer valid) or cannot go on now (:meth:`_unsealed`)."""
        try:
            spec = JobSpec.model_validate(job.spec)
        except ValidationError as exc:
            await self._reject(job.id, f"the stored job spec is no longer valid: {exc.errors()[0]['msg']}")
            return None
        values = await self._unsealed(job, spec)
        return None if values is None else (spec, values)

    async def _unsealed(self, job: Job, spec: JobSpec) -> dict[str, str] | None:
        """The values of the job's secret environment (none: empty); None when they cannot be had, the job
        then waits (no key here, or none of its keys opens them) or is rejected (they are not stored)."""
        names = set(spec.secret_environment)
        if not names:
            return {}
        if job.secrets is None:
            await self._reject(job.id, "the values of its secret_environment were never stored")
            return None
        why = "this broker process has no secrets key (CONVEYOR_SECRETS_KEY_FILE)"
        values: dict[str, str] | None = None
        if self._secret_box is not None:
            try:
                values = self._secret_box.open(job.secrets)
            except SealedUnreadable:
                why = "no key of this broker's secrets key file opens them (was the key that sealed them removed?)"
        if values is None:
            reason = f"waiting: its secret_environment cannot be unsealed: {why}"
            await self._retry(job.id, job.attempt_count + 1, reason)
            return None
        if set(values) != names:
            await self._reject(job.id, "the stored values of its secret_environment do not match its names")
            return None
        return values

    async def _translate(
        self, job_id: str, spec: JobSpec, placement: Placement, run_as: RunAs, batch: _Batch, *, secrets: dict[str, str]
    ) -> SlurmJobSpec | None:
        """The Slurm job to submit, ``secrets`` (the values) in its environment; None when the job was rejected
        (it cannot be expressed there, or the Factory's agent lacks a field it uses with the mapped site account)."""
        factory = placement.factory
        try:
            slurm_spec = to_slurm_spec(
                job_id, spec, placement, factory, account=run_as.account, user=run_as.user, secrets=secrets
            )
        except TranslationError as exc:
            await self._reject(job_id, str(exc))
            return None
        lacking = _lacking(slurm_spec, batch.agents.get(factory.id))
        if lacking:  # the site account made the job use a field placement's translation did not
            message = f"the agent of Factory {factory.id} lacks {', '.join(lacking)}, which the job uses there"
            await self._reject(job_id, message, code=PlacementCode.AGENT_LACKS_FEATURE.value)
            return None
        return slurm_spec

    async def submit(self, job: Job, attempt: DispatchAttempt, factory: Factory, spec: SlurmJobSpec, user: str) -> None:
        """Submit one attempt of ``job`` (already committed: its start bounds the call, see
        :func:`submit_context`) and record what came of it."""
        job_id, number = job.id, attempt.attempt
        context = submit_context(job, attempt, factory)
        hidden = [spec.environment[name] for name in context.secret_names if name in spec.environment]
        self._failpoint("before_submit")
        try:
            slurm_job_id = await self._adapters.get(factory.id).submit(spec, user, context)
        except SubmitWindowClosed as exc:  # this dispatcher was late, not the site: nothing was sent
            await self._too_late(job_id, number, factory.id, scrub(_describe(exc), hidden))
            return
        except JobError as exc:
            message = scrub(_describe(exc), hidden)
            refused = ClosedAttempt(number, AttemptOutcome.REFUSED, message)
            await self._reject(job_id, f"Slurm refused the job on {factory.id}: {message}", attempt=refused)
            return
        except (AuthenticationError, ClusterUnavailable) as exc:
            maybe_applied = isinstance(exc, ClusterUnavailable) and exc.maybe_applied
            await self._site_failure(job_id, number, factory.id, scrub(_describe(exc), hidden), maybe_applied)
            return
        except SlurmError as exc:  # an error the adapter could not classify: it may have reached Slurm
            self._count_error(factory.id)
            await self._in_doubt(job_id, number, factory.id, scrub(_describe(exc), hidden))
            return
        except Exception as exc:  # an adapter's bug: its text (and traceback) may quote the job's environment
            log.debug("traceback: %s", scrub(traceback.format_exc(), hidden))
            raise UnexpectedError(scrub(repr(exc), hidden)) from None
        self._failpoint("after_submit")
        # Shielded: Slurm has the job, so its record is written even if this dispatcher is being stopped.
        if await asyncio.shield(self._submissions.submit(Submitted(job_id, number, str(slurm_job_id), ACTOR))):
            _job_log(logging.INFO, job_id, "submitted to %s as Slurm job %s", factory.id, slurm_job_id)
        else:
            _job_log(logging.WARNING, job_id, "Slurm job %s submitted but the job had left queued", slurm_job_id)

    async def _too_late(self, job_id: str, attempt: int, factory_id: str, message: str) -> None:
        """The attempt's submit window closed before its call could start (``message``, the adapter's): closed as
        not applied and retried, with the Factory's health untouched."""
        await self._jobs.finish_attempt(job_id, attempt, outcome=AttemptOutcome.NOT_APPLIED, error=message, actor=ACTOR)
        await self._retry(job_id, attempt, f"the submission to {factory_id} was not started in time: {message}")

    async def _site_failure(
        self, job_id: str, attempt: int, factory_id: str, message: str, maybe_applied: bool
    ) -> None:
        """The site failed the submit (authentication or availability, ``message``); ``maybe_applied``: it may
        have reached Slurm all the same."""
        await self._mark_unhealthy(factory_id, message)
        if maybe_applied:
            await self._in_doubt(job_id, attempt, factory_id, message)
            return
        await self._jobs.finish_attempt(job_id, attempt, outcome=AttemptOutcome.NOT_APPLIED, error=message, actor=ACTOR)
        await self._retry(job_id, attempt, f"Factory {factory_id} unavailable: {message}")

    async def _in_doubt(self, job_id: str, attempt: int, factory_id: str, message: str) -> None:
        """The submit may have landed: leave the attempt open so the next claim looks the tag up first."""
        _job_log(logging.WARNING, job_id, "attempt %s on %s may have reached Slurm: %s", attempt, factory_id, message)
        await self._retry(
            job_id,
            attempt,
            f"the submission to {factory_id} may have reached Slurm ({message}); "
            "its tag will be looked up before any new submission",
        )

    async def _settle_doubt(self, job: Job, attempt: DispatchAttempt) -> bool:
        """Resolve an attempt without an outcome; True when absence is proven and the job may be submitted."""
        factory = self._registry.get(attempt.factory)
        if factory is None:
            await self._lose(job.id, attempt, f"attempt {attempt.attempt} went to Factory {attempt.factory}, "
                             "which is no longer configured: whether it reached Slurm cannot be checked")  # fmt: skip
            return False
        not_before = settle_not_before(factory, attempt)
        if self._clock() < not_before:
            reason = (
                f"attempt {attempt.attempt} on {factory.id} (started {attempt.started_at:%H:%M:%S} UTC) may still "
                f"reach Slurm; it is looked up from {not_before:%H:%M:%S} UTC, before any new submission"
            )
            if await self._jobs.schedule_retry(job.id, owner=self.worker_id, at=not_before, reason=reason, actor=ACTOR):
                _job_log(logging.INFO, job.id, "waits until %s: %s", not_before.isoformat(), reason)
            return False
        return await self._look_up(job, attempt, factory)

    async def _look_up(self, job: Job, attempt: DispatchAttempt, factory: Factory) -> bool:
        """Settle an attempt whose call can no longer reach Slurm by looking its tag up (:mod:`broker.loops.doubt`)."""
        try:
            evidence = await self._evidence(factory, attempt)
        except SlurmError as exc:
            if isinstance(exc, SiteError):
                await self._mark_unhealthy(factory.id, _describe(exc))
            await self._retry(
                job.id,
                attempt.attempt,
                f"checking whether attempt {attempt.attempt} reached {factory.id} failed ({_describe(exc)}); "
                "it is looked up again before any new submission",
            )
            return False
        verdict = settle(
            Attempt(job.id, attempt.slurm_user, attempt.started_at),
            evidence,
            now=self._clock(),
            min_job_age_s=factory.min_job_age_s,
            skew=timedelta(seconds=factory.clock_skew_s),
        )
        if verdict.found is not None:
            slurm_job_id = str(verdict.found.job_id)
            if await self._jobs.record_submission(job.id, attempt.attempt, slurm_job_id, actor=ACTOR):
                _job_log(logging.INFO, job.id, "found by tag on %s as Slurm job %s", factory.id, slurm_job_id)
            return False
        if verdict.later:
            await self._retry(
                job.id,
                attempt.attempt,
                f"whether attempt {attempt.attempt} reached {factory.id} cannot be told yet ({verdict.reason}); "
                "it is looked up again before any new submission",
            )
            return False
        if verdict.absent:
            await self._jobs.finish_attempt(
                job.id, attempt.attempt, outcome=AttemptOutcome.NOT_APPLIED, error=verdict.reason, actor=ACTOR
            )
            _job_log(logging.INFO, job.id, "attempt %s never reached %s; submitting again", attempt.attempt, factory.id)
            return True
        await self._lose(
            job.id,
            attempt,
            f"attempt {attempt.attempt} on {factory.id} may have reached Slurm, which cannot tell: {verdict.reason}; "
            "not resubmitted, to never run it twice",
        )
        return False

    async def _evidence(self, factory: Factory, attempt: DispatchAttempt) -> Evidence:
        """What the Factory's Slurm says, in the order :mod:`broker.loops.doubt` relies on (health last)."""
        adapter = self._adapters.get(factory.id)
        listed = await adapter.list_jobs()
        accounted = None
        if factory.accounting:
            try:
                skew = timedelta(seconds=factory.clock_skew_s)
                accounted = await adapter.accounted_jobs(submitted_after=attempt.started_at - skew)
            except AccountingUnavailable as exc:
                log.warning("Factory %s: slurmdbd lookup failed: %s", factory.id, _describe(exc))
        return Evidence(listed=listed, accounted=accounted, health=await adapter.health())

    async def _lose(self, job_id: str, attempt: DispatchAttempt, reason: str) -> None:
        closed = ClosedAttempt(attempt.attempt, AttemptOutcome.AMBIGUOUS, reason)
        if await self._jobs.lose(job_id, JobState.QUEUED, reason=reason, actor=ACTOR, cause="dispatch", attempt=closed):
            _job_log(logging.ERROR, job_id, "lost: %s", reason)

    async def _reject(self, job_id: str, reason: str, *, attempt: ClosedAttempt | None = None, **detail: Any) -> None:
        """It never ran: the repository gives its reservation back in the move's own transaction."""
        if await self._jobs.reject(
            job_id, JobState.QUEUED, reason=reason, actor=ACTOR, cause="dispatch", detail=detail, attempt=attempt
        ):
            _job_log(logging.INFO, job_id, "rejected: %s", reason)

    async def _retry(self, job_id: str, attempts: int, reason: str) -> None:
        delay = retry_delay_s(attempts, self._settings.retry_backoff_max_s)
        at = self._clock() + timedelta(seconds=delay)
        if await self._jobs.schedule_retry(job_id, owner=self.worker_id, at=at, reason=reason, actor=ACTOR):
            _job_log(logging.WARNING, job_id, "retry in %.0f s: %s", delay, reason)

    async def _mark_unhealthy(self, factory_id: str, detail: str) -> None:
        self._count_error(factory_id)
        await self._states.record_health(factory_id, healthy=False, detail=detail, actor=ACTOR)

    def _count_error(self, factory_id: str) -> None:
        self.errors_by_factory[factory_id] = self.errors_by_factory.get(factory_id, 0) + 1

    def _failpoint(self, name: str) -> None:
        if name in self._failpoints:
            log.critical("failpoint %s: killing this process", name)
            os.kill(os.getpid(), signal.SIGKILL)


def _describe(exc: SlurmError) -> str:
    """The adapter's message with Slurm's own errors, which are what the user needs to read."""
    extra = [error for error in exc.errors if error not in exc.message]
    return "; ".join([str(exc), *extra])


__all__ = ["Dispatcher", "active_failpoints", "retry_delay_s", "settle_not_before", "submit_context"]
