"""Slurm's own exceptions (requeue, a lost job seen again), confirmed loss, and the runtime's loops."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Any, cast

import pytest
from sqlalchemy import select

from app.metrics import render
from broker.db.engine import Database
from broker.db.models import DispatchAttempt
from broker.factories.adapters import AdapterPool
from broker.factories.registry import FactoryRegistry
from broker.jobs.events import EventKind
from broker.loops.runtime import Runtime
from conveyor.spec import JobState
from slurm_adapters.interface import SlurmAdapter
from slurm_adapters.records import SlurmJobSpec, SubmitContext
from tests.broker.conftest import Broker, make_broker
from tests.broker.test_loops_on_the_lab import WAIT_FOR_GO, lab_cluster
from tests.db.helpers import wait_until
from tests.lab import Cluster, job_dir, new_tag

pytestmark = pytest.mark.lab


def _slurm_state(cluster: Cluster, slurm_id: str) -> str:
    """Slurm's own JobState for the job, read with the cluster's scontrol."""
    return cluster.show_job(int(slurm_id)).get("JobState", "")


async def test_a_requeued_running_job_goes_back_to_submitted_as_a_recorded_exception(broker: Broker) -> None:
    alpha = lab_cluster("alpha")
    workdir = job_dir(alpha, new_tag("requeue"))
    job_id = await broker.queue(script=WAIT_FOR_GO, working_directory=workdir, requeue=True)  # Slurm may requeue it
    running = await broker.reach(job_id, JobState.RUNNING)
    alpha.slurm("scontrol", "requeue", str(running.slurm_job_id))
    requeued_at = time.time()
    back = await broker.reach(job_id, JobState.SUBMITTED)
    assert back.state_reason is not None
    assert "requeued" in back.state_reason
    exceptions = [e for e in await broker.jobs.events(job_id) if e.kind is EventKind.STATE_EXCEPTION]
    assert [(e.from_state, e.to_state) for e in exceptions] == [(JobState.RUNNING, JobState.SUBMITTED)]
    alpha.host_path(f"{workdir}/go").touch()
    # Skip requeue's start delay, but not into the second in which Slurm revoked the first run's credential:
    # slurmd compares whole seconds, and a new launch within it is refused ("Job credential revoked",
    # FAILED with exit 1; seen in CI). That delay is what the requeue delay is for.
    slurm_id = str(running.slurm_job_id)
    await wait_until(lambda: _slurm_state(alpha, slurm_id) == "PENDING", timeout_s=30)
    await wait_until(lambda: time.time() >= math.floor(requeued_at) + 2, timeout_s=5)
    alpha.slurm("scontrol", "update", f"JobId={slurm_id}", "StartTime=now")
    assert (await broker.reach(job_id, JobState.COMPLETED)).slurm_job_id == running.slurm_job_id


async def test_a_job_slurm_no_longer_knows_is_lost_only_after_a_lookup_by_id(broker: Broker) -> None:
    job_id = await broker.queue(command=["true"])
    [_claimed] = await broker.jobs.claim_queued("d", 10, 60, now=broker.clock())
    attempt = await broker.jobs.record_attempt(job_id, lease_owner="d", factory="bravo", slurm_user="alice", actor="t")
    assert attempt is not None
    assert await broker.jobs.record_submission(job_id, attempt.attempt, "987654321", actor="t")  # never existed
    stats = await broker.reconciler.run_once("bravo")
    assert stats.ok
    assert stats.lost == 1
    job = await broker.job(job_id)
    assert job.state is JobState.LOST
    assert job.state_reason is not None
    assert "not found by id" in job.state_reason


async def test_a_lost_job_seen_again_is_tracked_again(broker: Broker) -> None:
    alpha = lab_cluster("alpha")
    workdir = job_dir(alpha, new_tag("lost-again"))
    # The job waits for its go file: it cannot have ended before it is marked lost, however slowly the cycles
    # run on a loaded machine (a job already completed cannot become lost).
    job_id = await broker.queue(script=WAIT_FOR_GO, working_directory=workdir)
    submitted = await broker.reach(job_id, JobState.SUBMITTED, JobState.RUNNING)
    assert await broker.jobs.transition(job_id, submitted.state, JobState.LOST, actor="test", state_reason="test")
    alpha.host_path(f"{workdir}/go").touch()
    job = await broker.reach(job_id, JobState.COMPLETED)
    assert job.slurm_job_id == submitted.slurm_job_id
    exceptions = [e for e in await broker.jobs.events(job_id) if e.kind is EventKind.STATE_EXCEPTION]
    assert [e.from_state for e in exceptions] == [JobState.LOST]


async def test_the_runtime_dispatches_a_new_job_at_once_when_notified_and_stops_cleanly(
    db: Database, registry: FactoryRegistry, tmp_path: Path
) -> None:
    adapters = AdapterPool(registry)
    broker = make_broker(db, registry, adapters, tmp_path)
    settings = broker.settings.model_copy(update={"dispatcher_interval_s": 3600.0, "reconciler_interval_s": 0.2})
    runtime = Runtime(settings, db, registry, adapters, worker_id="runtime-test")
    await runtime.start()
    try:
        job_id = await broker.queue(command=["true"])
        runtime.notify_new_job()  # the interval is an hour: only the wake-up can dispatch it

        async def completed() -> bool:
            return (await broker.job(job_id)).state is JobState.COMPLETED

        await wait_until(completed, timeout_s=30)
        metrics = runtime.metrics()
        assert metrics["dispatch_queue_depth"] == 0
        assert set(metrics["reconcile_cycle_seconds"]) <= set(registry.ids)
        assert "alpha" in metrics["reconcile_lag_seconds"]
        assert metrics["dispatch_errors"]["alpha"] == 0
        # What /metrics renders is this very shape (it once read another one and showed no reconcile figure).
        rendered = render({}, [], metrics).splitlines()
        assert any(line.startswith('conveyor_reconcile_lag_seconds{factory="alpha"}') for line in rendered)
        assert any(line.startswith("conveyor_reconcile_cycle_seconds{") for line in rendered)
    finally:
        await asyncio.wait_for(runtime.stop(), timeout=30)
        await adapters.aclose()
    assert not runtime.running


class _HeldSubmits:
    """The lab's adapters, every submit held until ``release`` is set; each submit notes whether its attempt was
    committed (started, no outcome) when the call began."""

    def __init__(self, adapters: AdapterPool, db: Database) -> None:
        self.adapters = adapters
        self.db = db
        self.release = asyncio.Event()
        self.held = 0
        self.attempts: list[tuple[str, bool]] = []  # (attempt id, committed before the call)

    def get(self, factory_id: str) -> SlurmAdapter:
        return cast(SlurmAdapter, _Held(self.adapters.get(factory_id), self))


class _Held:
    """One adapter as it is, but for its submits (see :class:`_HeldSubmits`)."""

    def __init__(self, adapter: SlurmAdapter, owner: _HeldSubmits) -> None:
        self._adapter = adapter
        self._owner = owner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._adapter, name)

    async def submit(self, spec: SlurmJobSpec, user: str, context: SubmitContext | None = None) -> int:
        assert context is not None
        job_id, number = context.attempt.split("/")
        async with self._owner.db.read() as session:
            row = await session.scalar(
                select(DispatchAttempt).where(DispatchAttempt.job_id == job_id, DispatchAttempt.attempt == int(number))
            )
        self._owner.attempts.append((context.attempt, row is not None and row.finished_at is None))
        self._owner.held += 1
        await self._owner.release.wait()
        return await self._adapter.submit(spec, user, context)


async def test_the_runtime_carries_two_claimed_batches_at_once_and_claims_none_once_stopping(
    db: Database, registry: FactoryRegistry, tmp_path: Path
) -> None:
    """Claims of 2 with submits held at the site: the runtime claims a second batch while the first is still being
    carried (dispatch_batches 2), never a third. Stopped meanwhile and then released: the two batches reach Slurm,
    each job once and each call only after its attempt was committed, and the jobs left are not claimed."""
    pool = AdapterPool(registry)
    broker = make_broker(db, registry, pool, tmp_path)
    held = _HeldSubmits(pool, db)
    settings = broker.settings.model_copy(
        update={"dispatcher_interval_s": 0.05, "claim_batch": 2, "dispatch_batches": 2, "reconciler_interval_s": 0.2}
    )
    runtime = Runtime(settings, db, registry, held, worker_id="runtime-batches")
    alpha = lab_cluster("alpha")
    workdir = job_dir(alpha, new_tag("batches"))
    jobs = [
        await broker.queue(command=["true"], working_directory=workdir, placement={"factory": "alpha"})
        for _ in range(6)
    ]
    await runtime.start()
    try:
        await wait_until(lambda: held.held == 4, timeout_s=30)  # two batches of two held at once
        leased = [job.id for job in [await broker.job(job_id) for job_id in jobs] if job.lease_owner is not None]
        assert len(leased) == 4  # the third batch waits for room
        stopping = asyncio.ensure_future(runtime.stop())
        await wait_until(lambda: not runtime.running, timeout_s=10)
        held.release.set()
        await asyncio.wait_for(stopping, timeout=30)
    finally:
        held.release.set()
        await asyncio.wait_for(runtime.stop(), timeout=30)
        await pool.aclose()
    after = {job_id: await broker.job(job_id) for job_id in jobs}
    assert all(after[job_id].slurm_job_id is not None for job_id in leased)
    assert [job.state for job_id, job in after.items() if job_id not in leased] == [JobState.QUEUED] * 2
    assert all(job.attempt_count == 0 for job_id, job in after.items() if job_id not in leased)
    assert sorted(attempt for attempt, _ in held.attempts) == sorted(f"{job_id}/1" for job_id in leased)
    assert all(committed for _, committed in held.attempts), held.attempts
