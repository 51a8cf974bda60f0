"""Accounting exactness on the real lab: jobs of 5, 10 and 20 s on 1, 2 and 4 GPUs, completed, failed,
cancelled and timed out, each charged what Slurm itself reports for it (elapsed x allocated GPUs, read with
the test's own sacct on alpha, the cluster with slurmdbd), within 1 s of elapsed time per job."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import timedelta

import pytest

from broker.db.models import AllocationUnit
from broker.db.repositories import NewJob
from broker.db.repositories.allocations import AllocationRepository
from broker.db.repositories.identity import IdentityRepository
from broker.db.repositories.projects import ProjectRepository
from broker.db.types import utc_now
from broker.tenancy.accounting import Reservation, reservation_s
from conveyor.spec import JobSpec, JobState
from tests.broker.conftest import PROJECT, Broker
from tests.lab import Cluster, clusters

pytestmark = pytest.mark.lab


@dataclass(frozen=True)
class Case:
    name: str
    command: str
    gpus: int
    time_limit_min: int
    expect: JobState


CASES = [
    Case("5s-1gpu", "sleep 5", 1, 5, JobState.COMPLETED),
    Case("10s-2gpu", "sleep 10", 2, 5, JobState.COMPLETED),
    Case("20s-4gpu", "sleep 20", 4, 5, JobState.COMPLETED),
    Case("5s-1gpu-fails", "sleep 5; exit 3", 1, 5, JobState.FAILED),
    Case("cancelled-2gpu", "sleep 300", 2, 5, JobState.CANCELLED),
    Case("timeout-1gpu", "sleep 300", 1, 1, JobState.TIMEOUT),
]


def alpha() -> Cluster:
    return next(cluster for cluster in clusters() if cluster.name == "alpha")


async def test_each_job_is_charged_what_slurm_reports_for_it(broker: Broker) -> None:
    identities, allocations = IdentityRepository(broker.db), AllocationRepository(broker.db)
    user = await identities.create_user("accounting-test")
    assert await ProjectRepository(broker.db).create(PROJECT, "accounting") is not None
    now = utc_now()
    allocation = await allocations.add(
        PROJECT, "alpha", AllocationUnit.GPU_HOURS, 100 * 3600, starts_at=now - timedelta(hours=1),
        ends_at=now + timedelta(days=1),
    )  # fmt: skip
    job_ids: dict[str, str] = {}
    for case in CASES:
        spec = JobSpec.model_validate({
            "name": case.name, "project": PROJECT, "command": ["bash", "-c", case.command],
            "resources": {"gpus_per_node": case.gpus, "gpu_type": "a100", "time_limit_min": case.time_limit_min},
        })  # fmt: skip
        need = reservation_s(spec, AllocationUnit.GPU_HOURS, case.time_limit_min)
        new = NewJob.from_spec(user.id, spec, reservation=Reservation(allocation.id, need))
        job_ids[case.name] = (await broker.jobs.insert_job_with_event(new, actor="test")).id

    cancelled = job_ids["cancelled-2gpu"]
    await broker.reach(cancelled, JobState.RUNNING, timeout_s=120)
    await broker.until(cancelled, lambda job: job.started_at is not None and utc_now() - job.started_at
                       > timedelta(seconds=8), "it to have run a while", timeout_s=60)  # fmt: skip
    assert await broker.jobs.request_cancel(cancelled, actor="test")
    # Slurm checks time limits about every 30 s: the 1-minute job ends between 60 and about 100 s.
    ended = await asyncio.gather(
        *(
            broker.reach(job_id, case.expect, timeout_s=240)
            for case, job_id in zip(CASES, job_ids.values(), strict=True)
        )
    )
    slurm_ids = [str(job.slurm_job_id) for job in ended]

    cluster = alpha()
    deadline = time.monotonic() + 60
    while True:  # slurmdbd records the end a moment after slurmctld reports it
        rows = cluster.slurm("sacct", "-X", "-n", "-P", "-o", "JobIDRaw,State,ElapsedRaw,AllocTRES", "-j",
                             ",".join(slurm_ids)).split("\n")  # fmt: skip
        reported = {cols[0]: cols for cols in (row.split("|") for row in rows if row)}
        if all(reported.get(i, ["", "PENDING"])[1].split()[0] not in {"PENDING", "RUNNING"} for i in slurm_ids):
            break
        assert time.monotonic() < deadline, reported
        await asyncio.sleep(0.5)

    for case, job in zip(CASES, ended, strict=True):
        _, state, elapsed_raw, tres = reported[str(job.slurm_job_id)]
        gpus = int(dict(item.split("=", 1) for item in tres.split(",")).get("gres/gpu", "0"))
        assert gpus == case.gpus, (case.name, tres)
        assert state.split()[0] == case.expect.value.upper(), (case.name, state)
        charge = await allocations.charge(job.id)
        assert charge is not None
        assert charge.charged_s is not None, case.name
        assert abs(charge.charged_s - int(elapsed_raw) * gpus) <= gpus, (case.name, charge.charged_s, elapsed_raw)
        assert charge.reserved_s == case.time_limit_min * 60 * case.gpus
    [usage] = await allocations.usage(PROJECT)
    assert usage.reserved_s == 0
    assert (
        usage.allocation.used_s
        == usage.charged_s
        == sum(charge.charged_s or 0 for charge in [await allocations.charge(job.id) for job in ended] if charge)
    )
