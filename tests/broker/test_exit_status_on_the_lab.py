"""A job's end as the broker stores and serves it: the exit code and signal Slurm gives, on every release.

Slurm keeps a job's end as ``ExitCode=exit:signal`` (``scontrol show job``): 0:0 for a clean end, 3:0 for
``exit 3``, 0:9 for a script killed by SIGKILL, 0:15 for a cancelled job. The broker must serve the same pair,
through the reconciler, its database (both of them) and the wire model. Timed-out jobs (0:15, a minute at
least) are compared with Slurm's own view in tests/adapters/test_sbatch_twins.py; out-of-memory and node
failures, which the lab cannot produce on every release, on recorded records in tests/unit.
"""

from __future__ import annotations

import pytest

from broker.jobs.service import job_to_wire
from conveyor.spec import TERMINAL_STATES, JobState
from slurm_adapters.convert import parse_exit_code
from tests.broker.conftest import Broker
from tests.lab import Cluster, clusters, job_dir, new_tag

pytestmark = pytest.mark.lab

# What each job runs, and the state Slurm ends it in (the cancelled one is cancelled while it runs).
ENDINGS = {
    "completed": ("true\n", JobState.COMPLETED),
    "failed": ("exit 3\n", JobState.FAILED),
    "signalled": ("kill -KILL $$\n", JobState.FAILED),
    "cancelled": ("sleep 300\n", JobState.CANCELLED),
}


def one_cluster_per_release() -> list[Cluster]:
    chosen: dict[str, Cluster] = {}
    for cluster in clusters():
        if not cluster.raw["expendable"]:
            chosen.setdefault(cluster.short_release, cluster)
    return [chosen[release] for release in sorted(chosen)]


async def test_defect_12_exit_code_and_signal_are_slurms(broker: Broker) -> None:
    lab = one_cluster_per_release()
    assert len({cluster.short_release for cluster in lab}) >= 3, [cluster.name for cluster in lab]
    jobs: dict[tuple[str, str], str] = {}
    for cluster in lab:
        for ending, (script, _) in ENDINGS.items():
            jobs[(cluster.name, ending)] = await broker.queue(
                script=f"#!/bin/bash\n{script}",
                working_directory=job_dir(cluster, new_tag(ending)),
                placement={"factory": cluster.name},
                resources={"time_limit_min": 5},
            )
    for (_, ending), job_id in jobs.items():
        if ending == "cancelled":
            await broker.reach(job_id, JobState.RUNNING, timeout_s=60)
            assert await broker.jobs.request_cancel(job_id, actor="user:alice")
    by_name = {cluster.name: cluster for cluster in lab}
    seen: dict[tuple[str, str], tuple[JobState, int | None, int | None, str]] = {}
    for (name, ending), job_id in jobs.items():
        row = await broker.reach(job_id, *TERMINAL_STATES, timeout_s=60)
        wire = job_to_wire(row)
        slurm = by_name[name].show_job(int(row.slurm_job_id or 0))
        seen[(name, ending)] = (wire.state, wire.exit_code, wire.signal, slurm["ExitCode"])
    for (name, ending), (state, exit_code, signal, slurm_exit) in seen.items():
        assert state is ENDINGS[ending][1], (name, ending, seen)
        assert (exit_code, signal) == parse_exit_code(slurm_exit), (name, ending, seen)
    # What Slurm said, for the record: killed 0:9, exit 3 is 3:0; a cancel's SIGTERM is Slurm's and bash's
    # timing: the script killed by it (0:15, the usual), bash exiting 128+15 after its sleep was (143:0, seen
    # once in a whole-suite run), or SIGKILL after KillWait (0:9). The broker serves each exactly (checked above).
    assert {seen[(cluster.name, "cancelled")][3] for cluster in lab} <= {"0:15", "143:0", "0:9"}
    assert {seen[(cluster.name, "signalled")][3] for cluster in lab} == {"0:9"}
    assert {seen[(cluster.name, "failed")][3] for cluster in lab} == {"3:0"}
