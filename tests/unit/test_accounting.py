"""What a job reserves and what it is charged (broker.tenancy.accounting): arithmetic on specs and Slurm records."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from broker.db.models import AllocationUnit
from broker.tenancy.accounting import charge_s, elapsed_s, reservation_s, units_allocated
from conveyor.spec import JobSpec
from slurm_adapters.records import JobRecord, SlurmJobState

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
GPU, NODE = AllocationUnit.GPU_HOURS, AllocationUnit.NODE_HOURS


def spec(nodes: int, gpus: int) -> JobSpec:
    return JobSpec.model_validate(
        {"name": "t", "project": "P-1", "command": ["true"], "resources": {"nodes": nodes, "gpus_per_node": gpus}}
    )


def record(tres: dict[str, str], *, ran_s: int | None = 100, elapsed: int | None = None) -> JobRecord:
    start = None if ran_s is None else T0
    end = None if ran_s is None else T0 + timedelta(seconds=ran_s)
    return JobRecord(
        job_id=1, tag="job_x", state=SlurmJobState.COMPLETED, raw_state="COMPLETED", reason=None, exit_code=0, signal=0,
        submit_time=T0, start_time=start, end_time=end, nodes="gn1", user="alice", allocated_tres=tres,
        elapsed_s=elapsed,
    )  # fmt: skip


def test_a_job_reserves_its_time_limit_times_what_it_asks() -> None:
    assert reservation_s(spec(2, 4), GPU, 30) == 30 * 60 * 8
    assert reservation_s(spec(2, 4), NODE, 30) == 30 * 60 * 2
    assert reservation_s(spec(1, 0), GPU, 30) == 0  # a CPU job uses no GPU-hours


def test_a_job_pays_slurms_elapsed_time_times_what_slurm_allocated() -> None:
    held = record({"cpu": "16", "node": "2", "gres/gpu": "8"}, ran_s=754)
    assert (charge_s(held, GPU), charge_s(held, NODE)) == (754 * 8, 754 * 2)
    assert elapsed_s(record({}, ran_s=754, elapsed=750)) == 750  # slurmdbd's own figure wins
    assert charge_s(record({"gres/gpu": "4"}, ran_s=None), GPU) == 0  # never ran
    assert units_allocated(record({"gres/gpu": "N/A"}), GPU) == 0
