"""Capacity snapshots (broker/factories/health.py): when one is taken, what it holds, what a failure leaves behind."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from broker.factories.health import CapacitySnapshots
from slurm_adapters.errors import ClusterUnavailable
from slurm_adapters.records import ClusterInfo, Health, NodeInfo

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
OK = Health(ok=True, detail="answered", release="22.05.8")


def node(name: str, gpus: dict[str, int], used: dict[str, int]) -> NodeInfo:
    return NodeInfo(name=name, state="MIXED", cpus=8, alloc_cpus=0, memory_mb=16000, partitions=("gpu",),
                    gpus=gpus, gpus_used=used)  # fmt: skip


INFO = ClusterInfo(
    cluster="alpha",
    release="22.05.8",
    partitions=(),
    nodes=(node("gn1", {"a100": 4}, {"a100": 3}), node("gn2", {"a100": 4}, {}), node("cn1", {}, {})),
)


@dataclass
class Clock:
    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Reader:
    """Stands in for ``adapter.cluster_info``: answers ``info`` or raises ``error``, and counts its calls."""

    info: ClusterInfo = INFO
    error: Exception | None = None
    calls: int = field(default=0)

    async def __call__(self) -> ClusterInfo:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return self.info


async def test_a_snapshot_after_a_successful_check_holds_gpus_by_type_and_the_release() -> None:
    snapshots, read = CapacitySnapshots(clock=Clock()), Reader()
    assert snapshots("alpha") is None  # never looked at: unknown
    await snapshots.refresh("alpha", OK, read)
    capacity = snapshots("alpha")
    assert capacity is not None
    assert (capacity.total_gpus, capacity.free_gpus) == ({"a100": 8}, {"a100": 5})
    assert (capacity.release, capacity.observed_at) == ("22.05.8", T0)
    assert snapshots("bravo") is None


async def test_the_release_comes_from_the_health_check_when_the_description_has_none() -> None:
    snapshots = CapacitySnapshots(clock=Clock())
    await snapshots.refresh("alpha", OK, Reader(ClusterInfo(cluster="alpha", release=None, partitions=(), nodes=())))
    capacity = snapshots("alpha")
    assert capacity is not None
    assert (capacity.release, capacity.total_gpus, capacity.free_gpus) == ("22.05.8", {}, {})


async def test_an_unhealthy_factory_is_not_asked_and_gets_no_capacity() -> None:
    snapshots, read = CapacitySnapshots(clock=Clock()), Reader()
    await snapshots.refresh("alpha", Health(ok=False, detail="no answer"), read)
    assert read.calls == 0
    assert snapshots("alpha") is None


async def test_a_failed_snapshot_keeps_the_previous_one_with_its_own_time() -> None:
    clock = Clock()
    snapshots, read = CapacitySnapshots(clock=clock), Reader()
    await snapshots.refresh("alpha", OK, read)
    for error in (ClusterUnavailable("slurmctld does not answer", cluster="alpha"), RuntimeError("adapter bug")):
        clock.advance(60)
        read.error = error
        await snapshots.refresh("alpha", OK, read)
        capacity = snapshots("alpha")
        assert capacity is not None
        assert (capacity.observed_at, capacity.free_gpus) == (T0, {"a100": 5})  # not presented as fresh
    assert read.calls == 3


async def test_snapshots_are_taken_at_most_once_per_interval_even_when_they_fail() -> None:
    clock = Clock()
    snapshots, read = CapacitySnapshots(min_interval_s=30, clock=clock), Reader(error=ClusterUnavailable("down"))
    await snapshots.refresh("alpha", OK, read)
    clock.advance(29)
    read.error = None
    await snapshots.refresh("alpha", OK, read)
    await snapshots.refresh("bravo", OK, read)  # the interval is per Factory
    assert read.calls == 2
    assert snapshots("alpha") is None
    clock.advance(1)
    await snapshots.refresh("alpha", OK, read)
    assert read.calls == 3
    capacity = snapshots("alpha")
    assert capacity is not None
    assert capacity.observed_at == T0 + timedelta(seconds=30)


async def test_without_an_interval_every_successful_check_takes_one() -> None:
    clock = Clock()
    snapshots, read = CapacitySnapshots(clock=clock), Reader()
    for _ in range(3):
        await snapshots.refresh("alpha", OK, read)
    assert read.calls == 3
