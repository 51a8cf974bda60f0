"""Held jobs on the lab, one cluster per Slurm release, on SQLite and PostgreSQL: a job that ran once and was
requeued held, then held by an administrator (``scontrol`` as root, the lab's SlurmUser), says so and who can
release it, is counted, waits like any job once released, and can still be cancelled."""

from __future__ import annotations

import pytest

from conveyor.spec import JobState
from tests.broker.conftest import Broker
from tests.lab import Cluster, clusters, job_dir, new_tag

pytestmark = pytest.mark.lab

# One cluster per release: 22.05, 24.11, 26.05.
RELEASES = ["alpha", "charlie", "delta"]
# Runs until the test creates "go" in its working directory (or is cancelled).
WAIT_FOR_GO = "#!/bin/bash\nwhile [ ! -e go ]; do sleep 0.2; done\n"


def lab_cluster(name: str) -> Cluster:
    return next(cluster for cluster in clusters() if cluster.name == name)


@pytest.mark.parametrize("factory", RELEASES)
async def test_defect_13_a_job_held_on_the_cluster_says_who_can_release_it(broker: Broker, factory: str) -> None:
    cluster = lab_cluster(factory)
    workdir = job_dir(cluster, new_tag("held"))
    # An administrator's requeuehold needs a job Slurm may requeue: by default a job runs at most once, and
    # Slurm refuses it ("Requested operation is presently disabled").
    job_id = await broker.queue(
        script=WAIT_FOR_GO, working_directory=workdir, placement={"factory": factory}, requeue=True
    )
    running = await broker.reach(job_id, JobState.RUNNING)
    slurm_job_id = str(running.slurm_job_id)
    try:
        cluster.slurm("scontrol", "requeuehold", slurm_job_id)  # it ran once; now requeued and held
        held = await broker.until(
            job_id, lambda job: job.state is JobState.SUBMITTED and bool(job.state_reason), "held, with a reason"
        )
        assert held.slurm_reason is not None
        assert held.state_reason is not None
        assert held.slurm_reason in held.state_reason
        assert "release" in held.state_reason
        assert broker.reconciler.figures()["reconcile_held_jobs"][factory] >= 1

        cluster.slurm("scontrol", "hold", slurm_job_id)  # an administrator's hold on top
        admin = await broker.until(job_id, lambda job: job.slurm_reason == "JobHeldAdmin", "JobHeldAdmin")
        assert admin.state is JobState.SUBMITTED
        assert admin.state_reason is not None
        assert "administrators" in admin.state_reason
        assert cluster.show_job(int(slurm_job_id))["JobState"] == "PENDING"  # a releasable hold is not cancelled

        cluster.slurm("scontrol", "release", slurm_job_id)
        released = await broker.until(job_id, lambda job: job.state_reason is None, "the hold's reason cleared")
        assert released.state is JobState.SUBMITTED
        assert released.slurm_reason not in {"JobHeldAdmin", "JobHeldUser"}

        # Its owner gives up: the broker cancels it in Slurm.
        assert await broker.jobs.request_cancel(job_id, actor="user:alice")
        await broker.reach(job_id, JobState.CANCELLED)
        assert cluster.show_job(int(slurm_job_id))["JobState"] == "CANCELLED"
    finally:
        cluster.host_path(f"{workdir}/go").touch()


@pytest.mark.parametrize("factory", ["charlie", "delta"])  # alpha's slurmrestd 22.05 ignores requeue (v0038.py)
async def test_by_default_slurm_refuses_to_run_a_job_again(broker: Broker, factory: str) -> None:
    """A job without ``requeue: true`` was submitted with --no-requeue: an administrator's requeue is refused,
    and the job keeps running its one run."""
    cluster = lab_cluster(factory)
    workdir = job_dir(cluster, new_tag("once"))
    job_id = await broker.queue(script=WAIT_FOR_GO, working_directory=workdir, placement={"factory": factory})
    slurm_job_id = str((await broker.reach(job_id, JobState.RUNNING)).slurm_job_id)
    try:
        with pytest.raises(AssertionError, match="presently disabled"):
            cluster.slurm("scontrol", "requeue", slurm_job_id)
        shown = cluster.show_job(int(slurm_job_id))
        assert (shown["Requeue"], shown["Restarts"], shown["JobState"]) == ("0", "0", "RUNNING")
    finally:
        cluster.host_path(f"{workdir}/go").touch()
    await broker.reach(job_id, JobState.COMPLETED)
