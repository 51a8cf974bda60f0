"""Dispatcher and reconciler against real Slurm: a job's whole path, its failures, cancels and crash recovery."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import pytest

from broker.db.models import AttemptOutcome, Job
from broker.db.repositories import FactoryStateRepository
from broker.db.repositories.identity import IdentityRepository
from broker.errors import InvalidInput
from broker.factories.health import factory_statuses
from broker.factories.placement import place
from broker.factories.registry import parse_factories
from broker.identity import DEV_PRINCIPAL
from broker.jobs.translate import site_user, to_slurm_spec
from broker.tenancy.site_accounts import SiteAccountService
from conveyor.spec import JobSpec, JobState
from slurm_adapters.errors import ClusterUnavailable, JobNotFound
from slurm_adapters.interface import SlurmAdapter
from slurm_adapters.records import JobRecord, SlurmJobSpec, SubmitContext
from tests.broker.conftest import Broker
from tests.db.helpers import wait_until
from tests.lab import Cluster, clusters, job_dir, new_tag

pytestmark = pytest.mark.lab

# Waits for a file the test creates, so the test sees the job running for as long as it needs to.
WAIT_FOR_GO = "#!/bin/bash\nwhile [ ! -e go ]; do sleep 0.2; done\necho started-and-released\n"


def lab_cluster(name: str) -> Cluster:
    return next(cluster for cluster in clusters() if cluster.name == name)


async def slurm_jobs_tagged(broker: Broker, factory_id: str, job_id: str) -> list[int]:
    return [record.job_id for record in await broker.adapters.get(factory_id).list_jobs(tags={job_id})]


async def test_a_job_goes_queued_submitted_running_completed(broker: Broker) -> None:
    alpha = lab_cluster("alpha")
    workdir = job_dir(alpha, new_tag("path"))
    job_id = await broker.queue(script=WAIT_FOR_GO, working_directory=workdir)
    submitted = await broker.reach(job_id, JobState.SUBMITTED, JobState.RUNNING)
    assert (submitted.factory, submitted.partition, submitted.slurm_user) == ("alpha", "cpu", "alice")
    assert submitted.placement_reason
    assert submitted.placement_reason.startswith("alpha/cpu")
    running = await broker.reach(job_id, JobState.RUNNING)
    assert running.started_at is not None
    assert running.slurm_state == "RUNNING"
    shown = alpha.show_job(int(running.slurm_job_id or 0))  # Slurm's own view, not the adapter's
    assert (shown["Comment"], shown["Partition"], shown["Account"]) == (job_id, "cpu", "ehpc-aif-test")
    alpha.host_path(f"{workdir}/go").touch()
    done = await broker.reach(job_id, JobState.COMPLETED)
    assert done.exit_code == 0
    assert done.ended_at is not None
    out = alpha.host_path(f"{workdir}/conveyor-{job_id}.out").read_text()
    assert "started-and-released" in out
    states = [(e.from_state, e.to_state) for e in await broker.jobs.events(job_id) if e.to_state != e.from_state]
    assert states == [
        (None, JobState.QUEUED),
        (JobState.QUEUED, JobState.SUBMITTED),
        (JobState.SUBMITTED, JobState.RUNNING),
        (JobState.RUNNING, JobState.COMPLETED),
    ]


async def test_a_failing_job_ends_failed_with_its_exit_code(broker: Broker) -> None:
    job_id = await broker.queue(command=["bash", "-c", "exit 3"])
    failed = await broker.reach(job_id, JobState.FAILED, JobState.COMPLETED)
    assert (failed.state, failed.exit_code) == (JobState.FAILED, 3)
    assert failed.state_reason is not None
    assert "exit code 3" in failed.state_reason


async def test_a_gpu_job_within_allowed_countries_lands_on_the_gpu_factory_there(broker: Broker) -> None:
    job_id = await broker.queue(
        command=["true"],
        resources={"gpus_per_node": 1, "gpu_type": "h100", "time_limit_min": 5},
        placement={"countries": ["FI", "DE"]},
    )
    job = await broker.reach(job_id, JobState.SUBMITTED, JobState.RUNNING, JobState.COMPLETED)
    assert (job.factory, job.partition) == ("charlie", "gpu")  # bravo has h100 too, but in ES
    shown = lab_cluster("charlie").show_job(int(job.slurm_job_id or 0))
    assert shown["Comment"] == job_id
    assert shown["Partition"] == "gpu"
    assert "gpu:h100:1" in shown.get("TresPerNode", "") or "gres/gpu:h100=1" in shown.get("TRES", "")
    assert (await broker.reach(job_id, JobState.COMPLETED)).exit_code == 0


async def test_a_job_that_fits_nowhere_is_rejected_without_reaching_slurm(broker: Broker) -> None:
    job_id = await broker.queue(command=["true"], resources={"gpus_per_node": 1, "gpu_type": "b200"})
    job = await broker.reach(job_id, JobState.REJECTED)
    assert job.state_reason is not None
    assert "b200" in job.state_reason
    assert await broker.jobs.attempts(job_id) == []


async def test_cancelling_a_queued_job_ends_it_locally(broker: Broker) -> None:
    job_id = await broker.queue(command=["true"])
    assert await broker.jobs.request_cancel(job_id, actor="user:alice")
    job = await broker.reach(job_id, JobState.CANCELLED)
    assert job.slurm_job_id is None
    assert await broker.jobs.attempts(job_id) == []


async def test_cancelling_a_running_job_goes_through_slurm(broker: Broker) -> None:
    alpha = lab_cluster("alpha")
    job_id = await broker.queue(script=WAIT_FOR_GO, working_directory=job_dir(alpha, new_tag("cancel")))
    running = await broker.reach(job_id, JobState.RUNNING)
    assert await broker.jobs.request_cancel(job_id, actor="user:alice")
    cancelled = await broker.reach(job_id, JobState.CANCELLED)
    assert alpha.show_job(int(running.slurm_job_id or 0))["JobState"] == "CANCELLED"
    assert cancelled.ended_at is not None


async def test_a_job_over_maxtime_on_a_non_enforcing_cluster_is_rejected_with_slurms_reason(broker: Broker) -> None:
    # The broker's config says bravo's cpu partition allows 1000 min; Slurm's MaxTime is 30 and bravo does not
    # enforce limits at submit, so Slurm takes the job and it would pend for ever (PartitionTimeLimit).
    document: dict[str, Any] = {"factories": [f.model_dump(mode="json") for f in broker.registry]}
    bravo = next(f for f in document["factories"] if f["id"] == "bravo")
    assert bravo["enforce_part_limits"] == "NO"
    bravo["partitions"][0]["max_time_min"] = 1000
    broker.registry = parse_factories(document, source="a lying config")
    broker.dispatcher._registry = broker.registry  # the same loops, with the lying config
    job_id = await broker.queue(command=["true"], resources={"time_limit_min": 100}, placement={"factory": "bravo"})
    job = await broker.reach(job_id, JobState.REJECTED)
    # 22.05 says PartitionConfig or PartitionTimeLimit for it; either can never clear.
    assert job.slurm_reason in {"PartitionTimeLimit", "PartitionConfig"}
    assert job.state_reason == f"Slurm can never start the job: {job.slurm_reason}"
    shown = lab_cluster("bravo").show_job(int(job.slurm_job_id or 0))
    assert shown["JobState"] == "CANCELLED"  # not left pending in Slurm's queue


async def _attempt_then_crash(broker: Broker, job_id: str, *, submit: bool) -> tuple[str, int | None]:
    """What a dispatcher that died does: claim, commit the attempt, (submit,) and nothing more."""
    [claimed] = await broker.jobs.claim_queued("crashed-dispatcher", 10, 60, now=broker.clock())
    spec = JobSpec.model_validate(claimed.spec)
    placement = place(spec, broker.registry, await factory_statuses(FactoryStateRepository(broker.db)))
    factory = placement.factory
    attempt = await broker.jobs.record_attempt(
        job_id, lease_owner="crashed-dispatcher", factory=factory.id, slurm_user=site_user(factory), actor="test"
    )
    assert attempt is not None
    slurm_id = None
    if submit:
        slurm_spec: SlurmJobSpec = to_slurm_spec(job_id, spec, placement, factory)
        slurm_id = await broker.adapters.get(factory.id).submit(slurm_spec, site_user(factory))
    # Its lease runs out (released here rather than waited for), and so does the attempt's settle window
    # (submit window + MessageTimeout + clock skew), before which nobody may look its tag up.
    assert await broker.jobs.release_lease(job_id, "crashed-dispatcher")
    broker.past_the_settle_window(factory.id)
    return factory.id, slurm_id


async def _dispatch_until_told(broker: Broker, job_id: str, timeout_s: float = 60) -> Job:
    """Dispatch cycles until the doubt is settled: while slurmdbd is behind, the job waits for its retry."""
    deadline = time.monotonic() + timeout_s
    while True:
        await broker.dispatcher.run_once()
        job = await broker.job(job_id)
        if job.state is not JobState.QUEUED or "cannot be told yet" not in (job.state_reason or ""):
            return job
        assert time.monotonic() < deadline, f"still in doubt after {timeout_s} s: {job.state_reason}"
        broker.clock.offset += timedelta(seconds=broker.settings.retry_backoff_max_s)  # its retry is due
        await asyncio.sleep(0.2)  # slurmdbd drains its backlog meanwhile


async def test_after_a_crash_after_submit_the_job_is_found_by_tag_and_not_submitted_twice(broker: Broker) -> None:
    job_id = await broker.queue(command=["true"])
    factory_id, slurm_id = await _attempt_then_crash(broker, job_id, submit=True)
    await broker.dispatcher.run_once()
    job = await broker.job(job_id)
    assert (job.state, job.slurm_job_id) == (JobState.SUBMITTED, str(slurm_id))
    assert await slurm_jobs_tagged(broker, factory_id, job_id) == [slurm_id]
    attempts = await broker.jobs.attempts(job_id)
    assert [(a.attempt, a.outcome, a.slurm_job_id) for a in attempts] == [(1, AttemptOutcome.SUBMITTED, str(slurm_id))]
    assert (await broker.reach(job_id, JobState.COMPLETED)).exit_code == 0


async def test_after_a_crash_before_submit_absence_is_proven_and_the_job_submitted_once(broker: Broker) -> None:
    job_id = await broker.queue(command=["true"])
    factory_id, _ = await _attempt_then_crash(broker, job_id, submit=False)
    await broker.dispatcher.run_once()
    job = await broker.job(job_id)
    assert job.state is JobState.SUBMITTED
    assert await slurm_jobs_tagged(broker, factory_id, job_id) == [int(job.slurm_job_id or 0)]
    outcomes = [a.outcome for a in await broker.jobs.attempts(job_id)]
    assert outcomes == [AttemptOutcome.NOT_APPLIED, AttemptOutcome.SUBMITTED]


async def test_an_attempt_older_than_minjobage_on_a_factory_without_slurmdbd_makes_the_job_lost(
    broker: Broker,
) -> None:
    job_id = await broker.queue(command=["true"], placement={"factory": "bravo"})
    factory_id, _ = await _attempt_then_crash(broker, job_id, submit=False)
    assert not broker.registry[factory_id].accounting
    broker.clock.offset = timedelta(seconds=broker.registry[factory_id].min_job_age_s + 120)
    await broker.dispatcher.run_once()
    job = await broker.job(job_id)
    assert job.state is JobState.LOST
    assert job.state_reason is not None
    assert "beyond MinJobAge" in job.state_reason
    assert "no slurmdbd record" in job.state_reason
    assert await slurm_jobs_tagged(broker, factory_id, job_id) == []  # never resubmitted blindly
    assert [a.outcome for a in await broker.jobs.attempts(job_id)] == [AttemptOutcome.AMBIGUOUS]


async def test_beyond_minjobage_slurmdbd_proves_absence_and_the_job_is_submitted_once(broker: Broker) -> None:
    job_id = await broker.queue(command=["true"], placement={"factory": "alpha"})
    factory_id, _ = await _attempt_then_crash(broker, job_id, submit=False)
    assert broker.registry[factory_id].accounting
    broker.clock.offset = timedelta(seconds=broker.registry[factory_id].min_job_age_s + 120)
    job = await _dispatch_until_told(broker, job_id)
    assert job.state is JobState.SUBMITTED, job.state_reason
    attempts = await broker.jobs.attempts(job_id)
    assert [a.outcome for a in attempts] == [AttemptOutcome.NOT_APPLIED, AttemptOutcome.SUBMITTED]
    assert "slurmdbd (caught up)" in (attempts[0].error or "")
    assert await slurm_jobs_tagged(broker, factory_id, job_id) == [int(job.slurm_job_id or 0)]


@pytest.mark.exclusive  # restarts echo's slurmctld
async def test_a_slurmctld_restart_since_the_attempt_makes_an_untraceable_job_lost(broker: Broker) -> None:
    """slurmctld may drop a job it had not saved when it dies: after a restart, "not listed" proves nothing."""
    echo = lab_cluster("echo")
    job_id = await broker.queue(command=["true"], placement={"factory": "echo"})
    factory_id, _ = await _attempt_then_crash(broker, job_id, submit=False)
    assert factory_id == "echo"
    assert echo.kill_ctld() is not None
    echo.start_ctld()
    adapter = broker.adapters.get("echo")
    await wait_until(lambda: _up_since_known(adapter), 30)
    await broker.dispatcher.run_once()
    job = await broker.job(job_id)
    assert job.state is JobState.LOST
    assert "may have restarted since the attempt" in (job.state_reason or "")
    assert await slurm_jobs_tagged(broker, factory_id, job_id) == []
    assert [a.outcome for a in await broker.jobs.attempts(job_id)] == [AttemptOutcome.AMBIGUOUS]


async def _up_since_known(adapter: SlurmAdapter) -> bool:
    try:
        return (await adapter.health()).up_since is not None
    except ClusterUnavailable:
        return False


async def test_a_job_slurmctld_has_purged_gets_its_end_from_slurmdbd(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After MinJobAge slurmctld forgets a job; where the Factory has slurmdbd, the reconciler reads its end
    there instead of calling it lost. The purge is simulated (MinJobAge is 300 s): slurmctld's listing and
    get-by-id are made to miss the job; slurmdbd's record is real."""
    job_id = await broker.queue(command=["bash", "-c", "exit 3"], placement={"factory": "alpha"})
    await broker.dispatcher.run_once()
    job = await broker.job(job_id)
    assert job.state is JobState.SUBMITTED
    slurm_id = int(job.slurm_job_id or 0)
    adapter = broker.adapters.get("alpha")

    async def ended_in_slurmdbd() -> bool:
        return any(r.tag == job_id for r in await adapter.accounted_jobs(job_ids=[slurm_id]))

    await wait_until(ended_in_slurmdbd, 30)
    real_list = adapter.list_jobs

    async def purged_listing(**filters: Any) -> list[JobRecord]:
        return [r for r in await real_list(**filters) if r.job_id != slurm_id]

    async def purged_get(job_id: int) -> JobRecord:
        raise JobNotFound(f"job {job_id} purged (simulated)", cluster="alpha")

    monkeypatch.setattr(adapter, "list_jobs", purged_listing)
    monkeypatch.setattr(adapter, "get_job", purged_get)
    stats = await broker.reconciler.run_once("alpha")
    assert stats.ok, stats.error
    job = await broker.job(job_id)
    assert (job.state, job.slurm_state) == (JobState.FAILED, "FAILED"), job.state_reason
    assert job.exit_code is None  # 22.05's slurmdbd JSON loses exit codes: unknown, never a false 0
    assert job.ended_at is not None


async def test_an_ambiguous_submit_failure_is_settled_by_tag_not_by_a_second_submit(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    adapter = broker.adapters.get("alpha")
    real_submit = adapter.submit

    async def submit_then_time_out(spec: SlurmJobSpec, user: str, context: SubmitContext | None = None) -> int:
        await real_submit(spec, user, context)
        raise ClusterUnavailable("read timeout after sending", cluster="alpha", maybe_applied=True)

    monkeypatch.setattr(adapter, "submit", submit_then_time_out)
    job_id = await broker.queue(command=["true"])
    await broker.dispatcher.run_once()
    job = await broker.job(job_id)
    assert job.state is JobState.QUEUED
    assert job.state_reason is not None
    assert "may have reached Slurm" in job.state_reason
    state = await FactoryStateRepository(broker.db).get("alpha")
    assert state is not None
    assert state.healthy is False
    monkeypatch.undo()
    broker.past_the_settle_window("alpha")  # the retry is due, and the attempt may be looked up
    await broker.dispatcher.run_once()
    job = await broker.job(job_id)
    assert job.state is JobState.SUBMITTED
    assert await slurm_jobs_tagged(broker, "alpha", job_id) == [int(job.slurm_job_id or 0)]


async def test_each_user_runs_as_its_mapped_site_user(broker: Broker) -> None:
    """Two broker users mapped to alice and bob on bravo: Slurm's own UserId of each job says so."""
    identities = IdentityRepository(broker.db)
    first, second = await identities.create_user("first"), await identities.create_user("second")
    accounts = SiteAccountService(broker.db, broker.registry)
    for user, slurm_name in ((first, "alice"), (second, "bob")):
        await accounts.set(DEV_PRINCIPAL, "bravo", "user", user.id, slurm_user=slurm_name, slurm_account=None,
                           source=None)  # fmt: skip
    with pytest.raises(InvalidInput, match="site user 'daemon'"):  # not one of the lab's people (uid 1)
        await accounts.set(DEV_PRINCIPAL, "bravo", "user", first.id, slurm_user="daemon", slurm_account=None,
                           source=None)  # fmt: skip
    jobs = {
        slurm_name: await broker.queue(owner=user.id, command=["true"], placement={"factory": "bravo"})
        for user, slurm_name in ((first, "alice"), (second, "bob"))
    }
    bravo = lab_cluster("bravo")
    for slurm_name, job_id in jobs.items():
        job = await broker.reach(job_id, JobState.SUBMITTED, JobState.RUNNING, JobState.COMPLETED)
        assert job.slurm_user == slurm_name
        assert bravo.show_job(int(job.slurm_job_id or 0))["UserId"].startswith(f"{slurm_name}(")
