"""Pushing listings: a numbered full snapshot, then deltas of only what changed; a full one again after a gap,
when the broker asks, and when ``full_every_s`` has passed. In the loop: only the lease holder pushes, and only
while its clock is within the skew; it pushes the site's state too (health, cluster information)."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from pathlib import Path

import pytest

from agent.clock import BrokerClock
from agent.keys import SigningKey
from agent.listings import ListingPusher, ListingTooLarge
from agent.runner import Agent
from slurm_adapters import agent_protocol
from slurm_adapters.agent_protocol import Listing, ListingAnswer, PushPlan
from slurm_adapters.errors import ClusterUnavailable
from slurm_adapters.records import Health, JobRecord, SlurmJobState
from tests.agent.fakes import FakeBroker, RecordingAdapter, eventually
from tests.agent.test_agent_loop import build

PLAN = PushPlan(tag_prefix="job_", listing_interval_s=0.05, full_every_s=60, site_interval_s=0.05)
APPLIED = ListingAnswer(applied=True, want_full=False)


class ListedAdapter(RecordingAdapter):
    """A test double whose listing is whatever the test put in ``jobs`` (no Slurm behind it)."""

    def __init__(self) -> None:
        super().__init__()
        self.jobs: dict[int, JobRecord] = {}

    def put(self, job_id: int, state: SlurmJobState = SlurmJobState.PENDING) -> None:
        self.jobs[job_id] = JobRecord(
            job_id=job_id, tag=f"job_{job_id}", state=state, raw_state=state.value, reason=None, exit_code=None,
            signal=None, submit_time=None, start_time=None, end_time=None, nodes=None, user="alice",
        )  # fmt: skip

    async def list_jobs(self, *, tags: Collection[str] | None = None, tag_prefix: str | None = None) -> list[JobRecord]:
        await super().list_jobs(tags=tags, tag_prefix=tag_prefix)
        return list(self.jobs.values())


class Ticks:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _ids(listing: Listing) -> list[int]:
    return sorted(int(job["job_id"]) for job in listing.jobs)


async def test_a_full_snapshot_then_deltas_of_only_the_changed_jobs() -> None:
    adapter, ticks = ListedAdapter(), Ticks()
    pusher = ListingPusher(adapter, BrokerClock(), monotonic=ticks)
    adapter.put(1)
    adapter.put(2)
    full, jobs = await pusher.take(PLAN)
    assert (full.full, _ids(full)) == (True, [1, 2])
    assert adapter.calls_of("list_jobs")[0].args["tag_prefix"] == "job_"
    pusher.answered(full, jobs, APPLIED)

    adapter.put(2, SlurmJobState.RUNNING)
    adapter.put(3)
    del adapter.jobs[1]  # gone from Slurm: a delta does not say so
    delta, jobs = await pusher.take(PLAN)
    assert (delta.snapshot, delta.seq, _ids(delta)) == (full.snapshot, 1, [2, 3])
    pusher.answered(delta, jobs, APPLIED)

    unchanged, _ = await pusher.take(PLAN)
    assert (unchanged.seq, unchanged.jobs) == (2, [])


async def test_a_full_snapshot_again_when_asked_after_a_gap_and_when_due() -> None:
    adapter, ticks = ListedAdapter(), Ticks()
    pusher = ListingPusher(adapter, BrokerClock(), monotonic=ticks)
    adapter.put(1)
    first, jobs = await pusher.take(PLAN)
    pusher.answered(first, jobs, APPLIED)

    delta, jobs = await pusher.take(PLAN)
    pusher.answered(delta, jobs, ListingAnswer(applied=False, want_full=True))  # the broker holds another view
    asked, jobs = await pusher.take(PLAN)
    assert asked.full
    assert asked.snapshot != first.snapshot
    assert _ids(asked) == [1]
    pusher.answered(asked, jobs, APPLIED)

    pusher.forget()  # a push whose answer never came
    after_gap, jobs = await pusher.take(PLAN)
    assert after_gap.full
    pusher.answered(after_gap, jobs, APPLIED)

    ticks.now += PLAN.full_every_s - 1
    assert not (await pusher.take(PLAN))[0].full
    ticks.now += 1
    assert (await pusher.take(PLAN))[0].full


async def test_more_jobs_than_a_listing_carries_are_not_pushed(monkeypatch: pytest.MonkeyPatch) -> None:
    adapter = ListedAdapter()
    for job_id in range(3):
        adapter.put(job_id)
    monkeypatch.setattr("agent.listings.MAX_LISTED", 2)
    with pytest.raises(ListingTooLarge):
        await ListingPusher(adapter, BrokerClock()).take(PLAN)
    assert agent_protocol.MAX_LISTED > 2  # the contract's own bound is untouched


async def _run(agent: Agent, broker: FakeBroker) -> tuple[asyncio.Event, asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await broker.wait_for(lambda: bool(broker.polls))
    return stop, task


async def _stop(agent: Agent, stop: asyncio.Event, task: asyncio.Task[None]) -> None:
    stop.set()
    await asyncio.wait_for(task, 10)
    await agent.link.aclose()


async def test_the_lease_holder_pushes_and_a_cut_link_makes_the_next_listing_full(
    key: SigningKey, tmp_path: Path
) -> None:
    broker = FakeBroker(key)
    broker.push_plan = PLAN
    adapter = ListedAdapter()
    adapter.put(1)
    agent = build(key, broker, adapter, tmp_path)
    stop, task = await _run(agent, broker)
    try:
        await broker.wait_for(lambda: len(broker.listings) >= 3)
        assert [listing.full for listing in broker.listings[:3]] == [True, False, False]
        assert broker.listings[0].listed_at.tzinfo is not None

        broker.fail["listing"] = 1
        cut_at = len(broker.listings)
        await broker.wait_for(lambda: len(broker.listings) >= cut_at + 1)
        assert broker.listings[cut_at].full, "after a push whose answer was lost, the next listing is full"
        assert broker.rejected == []
    finally:
        await _stop(agent, stop, task)


async def test_a_standby_and_an_agent_out_of_skew_push_nothing(key: SigningKey, tmp_path: Path) -> None:
    broker = FakeBroker(key)
    broker.push_plan = PLAN
    broker.holder = False
    adapter = ListedAdapter()
    agent = build(key, broker, adapter, tmp_path)
    stop, task = await _run(agent, broker)
    try:
        await broker.wait_for(lambda: len(broker.heartbeats) >= 3)
        assert broker.listings == []
        assert adapter.calls_of("list_jobs") == []
        broker.offset_s = 10 * broker.clock_skew_s  # the broker's clock now far from the agent's
        broker.holder = True
        await broker.wait_for(lambda: len(broker.heartbeats) >= 6)
        assert broker.listings == []
        broker.offset_s = 0.0
        await eventually(lambda: len(broker.listings) >= 1)
        assert broker.listings[0].full
    finally:
        await _stop(agent, stop, task)


class DownAdapter(RecordingAdapter):
    """A test double whose Slurm does not answer (no Slurm behind it)."""

    async def health(self) -> Health:
        await super().health()
        raise ClusterUnavailable("slurmctld: Unable to contact slurm controller", cluster=self.cluster)


@pytest.mark.parametrize("down", [False, True], ids=["up", "down"])
async def test_the_holder_pushes_the_sites_health_and_cluster_info_and_says_when_slurm_is_down(
    key: SigningKey, tmp_path: Path, down: bool
) -> None:
    adapter = DownAdapter() if down else RecordingAdapter()
    broker = FakeBroker(key)
    broker.push_plan = PLAN
    agent = build(key, broker, adapter, tmp_path)
    stop, task = await _run(agent, broker)
    try:
        await broker.wait_for(lambda: len(broker.site_states) >= 2)
    finally:
        await _stop(agent, stop, task)
    pushed = broker.site_states[-1]
    if down:  # the health call's error, as a read order would report it
        assert pushed.health is None
        assert pushed.error is not None
        assert (pushed.error["type"], pushed.error["maybe_applied"]) == ("ClusterUnavailable", False)
        assert "Unable to contact" in pushed.error["message"]
        assert pushed.cluster_info is None
        assert adapter.calls_of("cluster_info") == []
    else:
        assert pushed.health is not None
        assert pushed.health["ok"] is True
        assert pushed.cluster_info is not None
        assert pushed.cluster_info["cluster"] == adapter.cluster
