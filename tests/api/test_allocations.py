"""Allocations through the API on SQLite and PostgreSQL: a job reserves its time limit times what it asks on
its project's allocation when it is accepted, concurrent submissions never overspend, an over-budget job is a
clear 422 with the figures, and an ended job's reservation is replaced by its charge."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import update

from broker.db.models import Allocation
from broker.db.repositories.allocations import AllocationRepository
from broker.db.repositories.jobs import JobRepository
from broker.tenancy.accounting import Use
from conveyor.spec import JobState
from slurm_adapters.records import JobRecord
from slurm_adapters.records import SlurmJobState as SlurmState
from tests.api.conftest import PROJECT, Broker, job_body
from tests.api.test_jobs import problem_of

# One GPU for 60 minutes: 1 GPU-hour reserved per job.
ONE_GPU_HOUR = {"resources": {"gpus_per_node": 1, "gpu_type": "a100", "time_limit_min": 60}}


async def researcher_with_budget(broker: Broker, gpu_hours: float) -> str:
    """A researcher of a fresh project whose only allocation is ``gpu_hours`` on alpha."""
    pi_id, _ = await broker.user("pi")
    async with broker.client(broker.admin_token) as admin:
        assert (await admin.post("/v1/admin/projects", json={"id": PROJECT, "title": "p"})).status_code == 201
        assert (await admin.put(f"/v1/projects/{PROJECT}/members/{pi_id}", json={"role": "pi"})).status_code == 204
    await broker.grant(PROJECT, "alpha", gpu_hours)
    user_id, token = await broker.user("alice")
    async with broker.client(broker.admin_token) as admin:
        granted = await admin.put(f"/v1/projects/{PROJECT}/members/{user_id}", json={"role": "researcher"})
        assert granted.status_code == 204
    return token


def gpu_job(**changes: Any) -> dict[str, Any]:
    return job_body(**ONE_GPU_HOUR, **changes)


async def test_fifty_concurrent_submissions_against_a_budget_for_twenty_accept_exactly_twenty(broker: Broker) -> None:
    token = await researcher_with_budget(broker, gpu_hours=20)
    async with broker.client(token) as client:
        answers = await asyncio.gather(*(client.post("/v1/jobs", json=gpu_job(name=f"j{i}")) for i in range(50)))
        statuses = sorted(response.status_code for response in answers)
        assert statuses == [201] * 20 + [422] * 30
        for refused in (r for r in answers if r.status_code == 422):
            problem_of(refused, 422, "placement_failed.allocation_exhausted")
        [usage] = (await client.get(f"/v1/projects/{PROJECT}/usage")).json()
    assert (usage["granted_hours"], usage["reserved_hours"], usage["left_hours"], usage["jobs"]) == (20, 20, 0, 20)


async def test_an_over_budget_job_is_a_422_naming_project_factory_hours_left_and_asked(broker: Broker) -> None:
    token = await researcher_with_budget(broker, gpu_hours=1.5)
    async with broker.client(token) as client:
        assert (await client.post("/v1/jobs", json=gpu_job())).status_code == 201
        response = await client.post("/v1/jobs", json=job_body(resources={"gpus_per_node": 2, "time_limit_min": 30}))
    problem = problem_of(response, 422, "placement_failed.allocation_exhausted")
    assert problem.detail == (
        f"project '{PROJECT}' has 0.5 gpu-hours left on Factory 'alpha'; this job asks 1.0 (30 min x 2 GPUs)"
    )
    extra = problem.model_extra or {}
    assert (extra["project"], extra["factory"], extra["hours_left"], extra["hours_asked"]) == (
        PROJECT,
        "alpha",
        0.5,
        1.0,
    )


async def test_no_allocation_in_force_is_a_422_and_the_job_is_not_stored(broker: Broker) -> None:
    token = await researcher_with_budget(broker, gpu_hours=10)
    async with broker.client(broker.admin_token) as admin:
        assert (await admin.post("/v1/admin/projects", json={"id": "EHPC-EMPTY-0001", "title": "e"})).status_code == 201
        me = (await admin.get("/v1/me")).json()["id"]
        assert (await admin.put(f"/v1/projects/EHPC-EMPTY-0001/members/{me}", json={"role": "pi"})).status_code == 204
        problem_of(await admin.post("/v1/jobs", json=job_body(project="EHPC-EMPTY-0001")), 422,
                   "placement_failed.no_allocation")  # fmt: skip
    async with broker.client(token) as client:  # an explicit Factory without an allocation is refused
        response = await client.post("/v1/jobs", json=gpu_job(placement={"factory": "bravo"}))
        problem_of(response, 422, "placement_failed.factory_not_allowed")
        assert (await client.get("/v1/jobs")).json()["items"] == []


async def test_an_idempotent_replay_reserves_nothing_more(broker: Broker) -> None:
    token = await researcher_with_budget(broker, gpu_hours=5)
    async with broker.client(token) as client:
        headers = {"Idempotency-Key": "k-1"}
        first = await client.post("/v1/jobs", json=gpu_job(), headers=headers)
        again = await client.post("/v1/jobs", json=gpu_job(), headers=headers)
        assert (first.status_code, again.status_code) == (201, 200)
        [usage] = (await client.get(f"/v1/projects/{PROJECT}/usage")).json()
    assert (usage["reserved_hours"], usage["jobs"]) == (1, 1)


async def test_an_ended_job_pays_what_slurm_allocated_for_the_time_it_ran(broker: Broker) -> None:
    """The reconciler's last move of a job, fed a Slurm record: elapsed x allocated GPUs replaces the
    reservation, once."""
    token = await researcher_with_budget(broker, gpu_hours=10)
    async with broker.client(token) as client:
        job_id = (await client.post("/v1/jobs", json=gpu_job())).json()["id"]
    allocations = AllocationRepository(broker.db)
    assert await allocations.reserved_factories([job_id, "job_none"]) == {job_id: "alpha"}
    start = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    record = JobRecord(
        job_id=1, tag=job_id, state=SlurmState.COMPLETED, raw_state="COMPLETED", reason=None, exit_code=0, signal=0,
        submit_time=start, start_time=start, end_time=start + timedelta(seconds=754), nodes="gn1", user="alice",
        allocated_tres={"cpu": "1", "node": "1", "gres/gpu": "2"},  # Slurm gave it 2 GPUs
    )  # fmt: skip
    jobs = JobRepository(broker.db)
    used = Use.of(record)
    assert await jobs.finish(job_id, JobState.QUEUED, JobState.COMPLETED, used=used, actor="test", cause="test")
    assert not await jobs.finish(job_id, JobState.QUEUED, JobState.COMPLETED, used=used, actor="test", cause="test")
    charge = await allocations.charge(job_id)
    assert charge is not None
    assert (charge.reserved_s, charge.charged_s) == (3600, 754 * 2)
    async with broker.client(token) as client:
        [usage] = (await client.get(f"/v1/projects/{PROJECT}/usage")).json()
    assert usage["charged_hours"] == round(754 * 2 / 3600, 3)
    assert usage["reserved_hours"] == 0
    assert usage["left_hours"] == round(10 - 754 * 2 / 3600, 3)
    assert (await JobRepository(broker.db).get(job_id)) is not None


async def test_usage_is_for_the_projects_members_only(broker: Broker) -> None:
    await researcher_with_budget(broker, gpu_hours=1)
    _, outsider = await broker.user("eve")
    async with broker.client(outsider) as client:
        problem_of(await client.get(f"/v1/projects/{PROJECT}/usage"), 404, "not_found")
        body = {"project": PROJECT, "factory": "alpha", "unit": "gpu_hours", "hours": 1e6,
                "starts_at": "2026-01-01T00:00:00Z", "ends_at": "2030-01-01T00:00:00Z"}  # fmt: skip
        problem_of(await client.post("/v1/admin/allocations", json=body), 403, "forbidden")


async def test_a_grant_made_between_two_submissions_serves_the_second_at_once(broker: Broker) -> None:
    """The broker remembers a member's allocations for a few seconds; a refusal made on that memory is
    decided again on what the database says now."""
    token = await researcher_with_budget(broker, gpu_hours=10)
    h100_job = job_body(resources={"gpus_per_node": 1, "gpu_type": "h100", "time_limit_min": 60})
    async with broker.client(token) as client:
        assert (await client.post("/v1/jobs", json=gpu_job())).status_code == 201  # alpha's allocation, remembered
        problem_of(await client.post("/v1/jobs", json=h100_job), 422, "placement_failed.gpu_type_unavailable")
        await broker.grant(PROJECT, "bravo", 5)
        accepted = await client.post("/v1/jobs", json=h100_job)
        assert accepted.status_code == 201, accepted.text
        assert accepted.json()["factory"] is None  # placed at dispatch; the reservation says where:
        usage = {u["factory"]: u["reserved_hours"] for u in (await client.get(f"/v1/projects/{PROJECT}/usage")).json()}
    assert usage == {"alpha": 1, "bravo": 1}


async def test_an_allocation_that_ended_after_it_was_remembered_holds_no_new_job(broker: Broker) -> None:
    token = await researcher_with_budget(broker, gpu_hours=10)
    async with broker.client(token) as client:
        assert (await client.post("/v1/jobs", json=gpu_job())).status_code == 201
        async with broker.db.write() as session:  # the grant ends now (an admin's period ran out)
            await session.execute(update(Allocation).values(ends_at=datetime.now(UTC) - timedelta(seconds=1)))
        problem_of(await client.post("/v1/jobs", json=gpu_job()), 422, "placement_failed.no_allocation")
        [usage] = (await client.get(f"/v1/projects/{PROJECT}/usage")).json()
    assert (usage["reserved_hours"], usage["jobs"]) == (1, 1)
