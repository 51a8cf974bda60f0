"""The agents' pushed listings on SQLite and PostgreSQL: a delta applies only onto the listing it builds on, a
job leaves the view only with a full snapshot, and the reconciler's listing call is served from a view only if
that view's listing began after the call (else it becomes a read order, as before)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from broker.agents.adapter import AgentAdapter
from broker.agents.bell import Bell
from broker.agents.errors import SessionExpired
from broker.agents.link import AgentLink
from broker.agents.listings import ListingRepository
from broker.agents.service import AgentService
from broker.agents.timings import AgentTimings
from broker.db.engine import Database
from broker.db.models import AgentOrder
from broker.errors import InvalidInput
from broker.jobs.ids import JOB_ID_PREFIX
from slurm_adapters.agent_protocol import FEATURES, PUSH, Hello, Listing
from slurm_adapters.codec import record_to_json
from slurm_adapters.errors import ClusterUnavailable
from slurm_adapters.factory import AgentConfig
from slurm_adapters.records import JobRecord, SlurmJobState
from tests.db.agent_helpers import beat, hello
from tests.db.helpers import wait_until
from tests.db.test_agent_adapter import link, service  # fixtures, found by name

__all__ = ["link", "service"]

# Pushes every 0.5 s: a listing call waits at most 2 x 0.5 + skew (0 here) + 5 s for a fresh view.
TIMINGS = AgentTimings(session_ttl_s=30, lease_s=15, heartbeat_s=5, poll_wait_s=5, bell_interval_s=0.05,
                       read_timeout_s=1.0, listing_interval_s=0.5, listing_full_s=60, site_interval_s=0.5)  # fmt: skip


def now() -> datetime:
    return datetime.now(UTC)


def record(job_id: int, state: SlurmJobState = SlurmJobState.PENDING, tag: str | None = None) -> dict[str, Any]:
    return record_to_json(
        JobRecord(job_id=job_id, tag=tag or f"{JOB_ID_PREFIX}{job_id}", state=state, raw_state=state.value,
                  reason=None, exit_code=None, signal=None, submit_time=None, start_time=None, end_time=None,
                  nodes=None, user="alice")
    )  # fmt: skip


def listing(snapshot: int, seq: int, *jobs: dict[str, Any], at: datetime | None = None) -> Listing:
    return Listing(snapshot=snapshot, seq=seq, listed_at=at or now(), jobs=list(jobs))


@pytest.fixture
def agent_timings() -> AgentTimings:
    return TIMINGS


async def _session(service: AgentService, factory_id: str = "alpha", *, hold: bool = True) -> str:
    granted = await service.open_session(factory_id, "key-1", hello(now()))
    if hold:
        await service.heartbeat(factory_id, granted.session_id, beat(now()))
    return granted.session_id


async def _view(link: AgentLink, factory_id: str = "alpha") -> dict[int, str]:
    records = await link.listings.listed_after(factory_id, datetime.min.replace(tzinfo=UTC), timeout_s=0, stale_s=60)
    assert records is not None
    return {r.job_id: r.raw_state for r in records}


async def test_a_session_that_announced_pushing_is_given_the_plan_and_one_that_did_not_is_not(
    service: AgentService,
) -> None:
    granted = await service.open_session("alpha", "key-1", hello(now()))
    assert granted.push is not None
    plan = granted.push
    assert (plan.tag_prefix, plan.listing_interval_s, plan.full_every_s, plan.site_interval_s) == (
        JOB_ID_PREFIX, 0.5, 60, 0.5
    )  # fmt: skip
    older = Hello(agent_version="0.9", adapter="rest", features=[f for f in FEATURES if f != PUSH],
                  agent_time=now())  # fmt: skip
    assert (await service.open_session("alpha", "key-1", older)).push is None


async def test_deltas_build_on_their_snapshot_and_only_a_full_snapshot_removes_a_job(
    service: AgentService, link: AgentLink
) -> None:
    session = await _session(service)
    first = await service.listing("alpha", session, listing(7, 0, record(1), record(2)))
    assert (first.applied, first.want_full) == (True, False)
    assert await _view(link) == {1: "PENDING", 2: "PENDING"}

    # A delta names new and changed jobs; job 2, absent from it, stays (a delta never says a job is gone).
    delta = await service.listing("alpha", session, listing(7, 1, record(1, SlurmJobState.RUNNING), record(3)))
    assert (delta.applied, delta.want_full) == (True, False)
    assert await _view(link) == {1: "RUNNING", 2: "PENDING", 3: "PENDING"}

    # A full snapshot without job 2: now it is gone.
    full = await service.listing("alpha", session, listing(8, 0, record(1, SlurmJobState.RUNNING), record(3)))
    assert full.applied
    assert await _view(link) == {1: "RUNNING", 3: "PENDING"}
    head = await link.listings.head("alpha")
    assert head is not None
    assert (head.snapshot, head.seq, head.version) == (8, 0, 3)


@pytest.mark.parametrize(
    ("snapshot", "seq", "why"),
    [(7, 3, "a gap: seq 2 never arrived"), (7, 1, "a repeat of the applied delta"), (9, 1, "another snapshot")],
)
async def test_a_delta_that_does_not_build_on_the_view_changes_nothing_and_asks_for_a_full_one(
    service: AgentService, link: AgentLink, snapshot: int, seq: int, why: str
) -> None:
    session = await _session(service)
    await service.listing("alpha", session, listing(7, 0, record(1)))
    await service.listing("alpha", session, listing(7, 1, record(2)))
    answer = await service.listing("alpha", session, listing(snapshot, seq, record(1, SlurmJobState.RUNNING)))
    assert (answer.applied, answer.want_full) == (False, True), why
    assert await _view(link) == {1: "PENDING", 2: "PENDING"}


async def test_a_delta_of_another_session_is_refused_and_a_first_delta_asks_for_a_full_one(
    service: AgentService, link: AgentLink
) -> None:
    standby = await _session(service, hold=False)
    assert (await service.listing("alpha", standby, listing(5, 1, record(1)))).want_full  # nothing to build on
    holder = await _session(service, "alpha")
    await service.listing("alpha", holder, listing(7, 0, record(1)))
    answer = await service.listing("alpha", standby, listing(7, 1, record(2)))  # same numbers, other session
    assert (answer.applied, answer.want_full) == (False, True)
    assert await _view(link) == {1: "PENDING"}


async def test_a_listing_older_than_the_view_is_ignored(service: AgentService, link: AgentLink) -> None:
    session = await _session(service)
    late = now()
    await service.listing("alpha", session, listing(7, 0, record(1), at=late))
    answer = await service.listing("alpha", session, listing(8, 0, record(2), at=late - timedelta(seconds=1)))
    assert (answer.applied, answer.want_full) == (False, True)
    assert await _view(link) == {1: "PENDING"}


@pytest.mark.parametrize(
    "jobs",
    [
        [record(1), record(1)],
        [{**record(1), "job_id": "1"}],
        [{**record(1), "job_id": 2**63}],
        [{"job_id": 1}],
    ],
    ids=["listed-twice", "id-as-text", "id-out-of-range", "not-a-record"],
)
async def test_a_listing_whose_records_do_not_decode_is_refused_whole(
    service: AgentService, link: AgentLink, jobs: list[dict[str, Any]]
) -> None:
    session = await _session(service)
    await service.listing("alpha", session, listing(7, 0, record(5)))
    with pytest.raises(InvalidInput):
        await service.listing("alpha", session, listing(8, 0, *jobs))
    assert await _view(link) == {5: "PENDING"}


async def test_only_a_live_session_of_the_factory_pushes(service: AgentService, link: AgentLink) -> None:
    session = await _session(service)
    with pytest.raises(SessionExpired):
        await link.listings.apply("alpha", session, listing(7, 0, record(1)), now=now() + timedelta(seconds=60))
    assert await link.listings.head("alpha") is None


async def test_a_view_is_served_only_once_its_listing_began_after_the_call(
    service: AgentService, link: AgentLink
) -> None:
    session = await _session(service)
    await service.listing("alpha", session, listing(7, 0, record(1), at=now() - timedelta(seconds=2)))
    asked = now()
    waiting = asyncio.create_task(link.listings.listed_after("alpha", asked, timeout_s=5, stale_s=60))
    await asyncio.sleep(0)  # the waiter is registered, and finds the view too old
    assert not waiting.done()
    await service.listing("alpha", session, listing(7, 1, record(2), at=asked - timedelta(milliseconds=1)))
    await asyncio.sleep(0.05)
    assert not waiting.done(), "a listing that began before the call must not serve it"
    await service.listing("alpha", session, listing(7, 2, record(3), at=now()))
    records = await asyncio.wait_for(waiting, 5)
    assert records is not None
    assert sorted(r.job_id for r in records) == [1, 2, 3]


async def test_no_view_without_a_recent_push_and_none_after_the_wait(service: AgentService, link: AgentLink) -> None:
    assert await link.listings.listed_after("alpha", now(), timeout_s=5, stale_s=60) is None  # never pushed
    session = await _session(service)
    await service.listing("alpha", session, listing(7, 0, record(1)))
    pushed = now()
    assert await link.listings.listed_after("alpha", pushed, timeout_s=5, stale_s=0) is None  # stale at once
    assert await link.listings.listed_after("alpha", pushed + timedelta(hours=1), timeout_s=0.2, stale_s=60) is None


async def test_another_process_bell_sees_an_applied_listing(db: Database, service: AgentService) -> None:
    """A replica's waiter learns of a listing applied by another process through its bell's one check."""
    other = ListingRepository(db, Bell(db, 0.05))
    session = await _session(service)
    await service.listing("alpha", session, listing(7, 0, record(1)))
    asked = now()
    waiting = asyncio.create_task(other.listed_after("alpha", asked, timeout_s=5, stale_s=60))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    await service.listing("alpha", session, listing(7, 1, record(2), at=now()))
    records = await asyncio.wait_for(waiting, 5)
    assert records is not None
    assert sorted(r.job_id for r in records) == [1, 2]


async def _pushed(link: AgentLink) -> bool:
    return await link.listings.head("alpha") is not None


async def _read_orders(db: Database, op: str) -> int:
    async with db.read() as session:
        payloads = (await session.scalars(select(AgentOrder.payload).where(AgentOrder.kind == "read"))).all()
    return sum(1 for payload in payloads if payload["op"] == op)


async def test_the_reconcilers_listing_comes_from_the_push_and_other_listings_stay_orders(
    db: Database, service: AgentService, link: AgentLink
) -> None:
    adapter: AgentAdapter = link.adapter("alpha", AgentConfig(cluster="alpha-cluster", timeout_s=1.0))
    session = await _session(service)

    async def push_every(interval_s: float) -> None:
        seq = 0
        while True:
            await service.listing("alpha", session, listing(7, seq, record(1), record(2, tag="other-2"), at=now()))
            seq += 1
            await asyncio.sleep(interval_s)

    pusher = asyncio.create_task(push_every(0.1))
    try:
        await wait_until(lambda: _pushed(link))
        records = await adapter.list_jobs(tag_prefix=JOB_ID_PREFIX)
        assert [(r.job_id, r.tag) for r in records] == [(1, f"{JOB_ID_PREFIX}1")]
        narrower = await adapter.list_jobs(tag_prefix=f"{JOB_ID_PREFIX}9")
        assert narrower == []
        assert await _read_orders(db, "list_jobs") == 0
        assert link.metrics.served_reads[("alpha", "listing", "push")] == 2
        # Any other listing is still asked of the agent: nobody answers here, so it times out as a read does.
        with pytest.raises(ClusterUnavailable):
            await adapter.list_jobs()
        assert await _read_orders(db, "list_jobs") == 1
    finally:
        pusher.cancel()
        await asyncio.gather(pusher, return_exceptions=True)


async def test_without_a_push_the_reconcilers_listing_is_a_read_order(db: Database, link: AgentLink) -> None:
    adapter = link.adapter("alpha", AgentConfig(cluster="alpha-cluster", timeout_s=1.0))
    with pytest.raises(ClusterUnavailable):  # no agent at all: no order could be written
        await adapter.list_jobs(tag_prefix=JOB_ID_PREFIX)
    assert link.metrics.served_reads[("alpha", "listing", "order")] == 1
