"""The site states agents push (Slurm health, cluster information) on SQLite and PostgreSQL: stored as the codec
reads them and never replaced by an older one; served to the adapter only once taken after the call; taken as
they recently were by the health checks, without an order."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from broker.agents.errors import SessionExpired
from broker.agents.link import AgentLink
from broker.agents.service import AgentService
from broker.agents.timings import AgentTimings
from broker.db.engine import Database
from broker.db.models import AgentOrder
from broker.db.repositories import FactoryStateRepository
from broker.errors import InvalidInput
from broker.factories.adapters import AdapterPool
from broker.factories.health import AgentVerdict, HealthMonitor
from slurm_adapters.agent_protocol import SiteState
from slurm_adapters.codec import cluster_info_to_json, error_to_json, health_to_json
from slurm_adapters.errors import ClusterUnavailable
from slurm_adapters.factory import AgentConfig
from slurm_adapters.records import ClusterInfo, Health, NodeInfo, PartitionInfo
from tests.db.agent_helpers import agent_registry, beat, hello
from tests.db.helpers import wait_until
from tests.db.test_agent_adapter import link, service  # fixtures, found by name

__all__ = ["link", "service"]

TIMINGS = AgentTimings(session_ttl_s=30, lease_s=15, heartbeat_s=5, poll_wait_s=5, bell_interval_s=0.05,
                       read_timeout_s=0.5, report_grace_s=0.1, listing_interval_s=0.5, site_interval_s=0.5)  # fmt: skip
HEALTHY = Health(ok=True, detail="slurmctld up", release="24.11.1", up_since=datetime(2026, 12, 1, tzinfo=UTC))
INFO = ClusterInfo(
    cluster="alpha-cluster",
    release="24.11.1",
    partitions=(PartitionInfo(name="gpu", default=True, state="UP", max_time_min=60, default_time_min=10,
                              nodes=("a1",), total_cpus=8, total_gpus={"h100": 4}),),
    nodes=(NodeInfo(name="a1", state="IDLE", cpus=8, alloc_cpus=0, memory_mb=16000, partitions=("gpu",),
                    gpus={"h100": 4}, gpus_used={"h100": 1}),),
)  # fmt: skip

ASK_SITE = AgentVerdict(None, "an agent holds the lease", ask_site=True)


@pytest.fixture
def agent_timings() -> AgentTimings:
    return TIMINGS


def now() -> datetime:
    return datetime.now(UTC)


def state(at: datetime | None = None, health: Health = HEALTHY, info: ClusterInfo | None = INFO) -> SiteState:
    return SiteState(taken_at=at or now(), health=health_to_json(health),
                     cluster_info=cluster_info_to_json(info) if info is not None else None)  # fmt: skip


def down_state(at: datetime | None = None) -> SiteState:
    error = ClusterUnavailable("slurmctld: Unable to contact slurm controller", cluster="alpha-cluster")
    return SiteState(taken_at=at or now(), error=error_to_json(error))


async def _holder(service: AgentService) -> str:
    granted = await service.open_session("alpha", "key-1", hello(now()))
    await service.heartbeat("alpha", granted.session_id, beat(now()))
    return granted.session_id


async def _read_orders(db: Database) -> list[str]:
    async with db.read() as session:
        payloads = (await session.scalars(select(AgentOrder.payload).where(AgentOrder.kind == "read"))).all()
    return [payload["op"] for payload in payloads]


async def test_a_state_is_kept_as_read_and_never_replaced_by_an_older_one(
    service: AgentService, link: AgentLink
) -> None:
    session = await _holder(service)
    taken = now()
    assert (await service.site_state("alpha", session, state(taken))).applied
    older = state(taken - timedelta(seconds=1), health=Health(ok=False, detail="late news"))
    assert not (await service.site_state("alpha", session, older)).applied
    site = await link.sites.health_after("alpha", taken, timeout_s=0, stale_s=60)
    assert site is not None
    assert (site.health, site.error) == (HEALTHY, None)
    assert await link.sites.cluster_info_after("alpha", taken, timeout_s=0, stale_s=60) == INFO


@pytest.mark.parametrize(
    ("part", "value"),
    [
        ("health", {"ok": "yes", "detail": "x"}),
        ("health", {}),
        ("cluster_info", {"cluster": 1}),
        ("error", {"type": "ClusterUnavailable", "message": 5}),
    ],
    ids=["ok-as-text", "empty-health", "cluster-as-number", "error-message-as-number"],
)
async def test_a_state_that_does_not_decode_is_refused(
    service: AgentService, link: AgentLink, part: str, value: dict[str, object]
) -> None:
    session = await _holder(service)
    body = state().model_dump(mode="json") | {part: value}
    if part == "error":
        body["health"] = None
    with pytest.raises(InvalidInput, match=part):
        await service.site_state("alpha", session, SiteState.model_validate(body))
    assert await link.sites.health_after("alpha", now(), timeout_s=0, stale_s=60) is None


async def test_only_a_live_session_pushes(service: AgentService, link: AgentLink) -> None:
    session = await _holder(service)
    with pytest.raises(SessionExpired):
        await link.sites.apply("alpha", session, state(), now=now() + timedelta(seconds=60))


async def test_the_adapter_is_served_a_state_taken_after_it_asked_and_asks_by_order_without_one(
    db: Database, service: AgentService, link: AgentLink
) -> None:
    adapter = link.adapter("alpha", AgentConfig(cluster="alpha-cluster", timeout_s=1.0))
    session = await _holder(service)
    await service.site_state("alpha", session, state(now() - timedelta(seconds=1)))
    asking = asyncio.create_task(adapter.health())
    await wait_until(lambda: link.bell.waiting > 0)  # the call waits for a push
    assert not asking.done(), "a state taken before the call must not answer it"
    taken = now() + timedelta(milliseconds=10)
    await service.site_state("alpha", session, state(taken))
    assert await asyncio.wait_for(asking, 5) == HEALTHY

    # A state without cluster information answers health, never cluster_info: that one is an order.
    await wait_until(lambda: now() > taken)  # so the call comes after the state above was taken
    no_info = asyncio.create_task(adapter.cluster_info())
    await wait_until(lambda: link.bell.waiting > 0)  # the call waits for a push
    await service.site_state("alpha", session, state(now() + timedelta(milliseconds=10), info=None))
    with pytest.raises(ClusterUnavailable):  # nobody answers orders here
        await no_info
    assert await _read_orders(db) == ["cluster_info"]
    assert link.metrics.served_reads[("alpha", "health", "push")] == 1
    assert link.metrics.served_reads[("alpha", "cluster_info", "order")] == 1


async def test_a_pushed_health_error_is_raised_by_the_adapter_as_its_own(
    service: AgentService, link: AgentLink
) -> None:
    adapter = link.adapter("alpha", AgentConfig(cluster="alpha-cluster", timeout_s=1.0))
    session = await _holder(service)
    await service.site_state("alpha", session, state(now() - timedelta(seconds=1)))  # the agent is pushing
    asking = asyncio.create_task(adapter.health())
    await wait_until(lambda: link.bell.waiting > 0)  # the call waits for a push
    await service.site_state("alpha", session, down_state(now() + timedelta(milliseconds=10)))
    with pytest.raises(ClusterUnavailable, match="Unable to contact") as raised:
        await asyncio.wait_for(asking, 5)
    assert (raised.value.cluster, raised.value.maybe_applied) == ("alpha-cluster", False)


async def test_the_health_check_takes_the_recent_push_and_orders_nothing(
    db: Database, service: AgentService, link: AgentLink
) -> None:
    registry = agent_registry()
    monitor = HealthMonitor(db, registry, AdapterPool(registry, agents=link), agent_state_max_age_s=10)
    session = await _holder(service)
    sick = Health(ok=False, detail="slurmctld: Unable to contact slurm controller")
    await service.site_state("alpha", session, state(health=sick, info=None))
    assert await monitor.check("alpha", ASK_SITE) is False
    await service.site_state("alpha", session, state())
    assert await monitor.check("alpha", ASK_SITE) is True
    capacity = monitor.capacity("alpha")
    assert capacity is not None
    assert (capacity.release, capacity.total_gpus, capacity.free_gpus) == ("24.11.1", {"h100": 4}, {"h100": 3})
    assert await _read_orders(db) == []

    # A push saying the site's health call failed: unhealthy with that error, as a failed order would say.
    await service.site_state("alpha", session, down_state())
    assert await monitor.check("alpha", ASK_SITE) is False
    assert await _read_orders(db) == []
    recorded = await FactoryStateRepository(db).get("alpha")
    assert recorded is not None
    assert "Unable to contact slurm controller" in (recorded.health_detail or "")

    # Without a recent push (a monitor that allows none), the site is asked by order, as before.
    strict = HealthMonitor(db, registry, AdapterPool(registry, agents=link), agent_state_max_age_s=0)
    assert await strict.check("alpha", ASK_SITE) is False  # nobody answers the order here
    assert "health" in await _read_orders(db)
