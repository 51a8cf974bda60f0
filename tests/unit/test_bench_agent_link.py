"""The agent-link benchmark's pure helpers: its percentiles, its Factory files and its latency join, and the
simulated null Slurm's answers (it must never need a cluster)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from bench.agent_link import (
    agent_factories,
    cpu_percent,
    delivery_latencies,
    direct_factories,
    null_factory_ids,
    percentile,
)
from bench.null_slurm import NullSlurm
from slurm_adapters.errors import JobNotFound
from slurm_adapters.records import SlurmJobSpec, SlurmJobState, SubmitContext

LAB: dict[str, Any] = {
    "factories": [
        {
            "id": "echo",
            "name": "echo",
            "adapter": {"kind": "rest", "url": "http://127.0.0.1:6880", "jwt_key_file": "k"},
        },
        {"id": "alpha", "name": "alpha", "adapter": {"kind": "rest", "url": "http://127.0.0.1:6820"}},
    ]
}


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([3.0, 1.0, 2.0], 99) == 3.0
    assert percentile([7.0], 1) == 7.0
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


def test_cpu_percent_is_of_one_core() -> None:
    assert cpu_percent(0.5, 10.0) == pytest.approx(5.0)
    assert cpu_percent(3.0, 2.0) == pytest.approx(150.0)


def test_agent_factories_hold_no_slurm_key_and_name_the_simulations() -> None:
    document = agent_factories(LAB, "echo", null_factory_ids(3))
    ids = [entry["id"] for entry in document["factories"]]
    assert ids == ["echo", "null-01", "null-02", "null-03"]
    for entry in document["factories"]:
        assert entry["adapter"] == {"kind": "agent", "cluster": entry["id"]}
    assert all("simulation" in entry["name"] for entry in document["factories"][1:])
    assert LAB["factories"][0]["adapter"]["kind"] == "rest"  # the lab's document is left as it was
    with pytest.raises(ValueError, match="no Factory 'zulu'"):
        agent_factories(LAB, "zulu", [])


def test_direct_factories_keep_the_labs_adapter() -> None:
    assert direct_factories(LAB, "echo") == {"factories": [LAB["factories"][0]]}
    with pytest.raises(ValueError, match="no Factory 'zulu'"):
        direct_factories(LAB, "zulu")


def test_delivery_latencies_take_each_jobs_first_delivery() -> None:
    t0 = datetime(2026, 12, 7, 1, 0, 0)
    created = {"j1": t0, "j2": t0 + timedelta(seconds=1), "j3": t0}
    delivered = {
        "j1/1": t0 + timedelta(milliseconds=40),
        "j2/2": t0 + timedelta(seconds=3),
        "j2/1": t0 + timedelta(seconds=1, milliseconds=250),
        "other/1": t0,  # an attempt of a job this run did not create
    }
    assert delivery_latencies(created, delivered) == {"j1": pytest.approx(0.04), "j2": pytest.approx(0.25)}


async def test_null_slurm_makes_up_ids_and_remembers_its_jobs() -> None:
    slurm = NullSlurm("null-01")
    spec = SlurmJobSpec(name="n", script="#!/bin/bash\ntrue\n", working_directory="/tmp", tag="cvy-a")
    context = SubmitContext(attempt="a/1", not_after=datetime(2030, 1, 1), requester_user="u", requester_project="p")
    first = await slurm.submit(spec, "alice", context)
    second = await slurm.submit(SlurmJobSpec(name="n", script="x", working_directory="/tmp", tag="cvy-b"), "bob")
    assert (first, second) == (1, 2)
    assert set(slurm.received) == {"a/1"}
    assert (await slurm.get_job(first)).state is SlurmJobState.PENDING
    assert [job.job_id for job in await slurm.list_jobs(tags=["cvy-b"])] == [2]
    assert [job.job_id for job in await slurm.list_jobs(tag_prefix="cvy-")] == [1, 2]
    await slurm.cancel(first, "alice", "cvy-a")
    with pytest.raises(JobNotFound):
        await slurm.get_job(first)
    assert (await slurm.health()).ok
