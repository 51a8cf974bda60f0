"""/metrics for agent Factories, on SQLite and PostgreSQL: counted where orders and reports happen, the
sessions table's view at scrape time, rendered in the Prometheus text format."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from app import metrics
from broker.agents.adapter import AgentAdapter
from broker.agents.link import AgentLink
from broker.agents.service import AgentService
from broker.jobs.ids import JOB_ID_PREFIX
from slurm_adapters.agent_protocol import Listing, Reports
from slurm_adapters.codec import health_to_json, record_to_json
from slurm_adapters.factory import AgentConfig
from slurm_adapters.records import Health, JobRecord, SlurmJobState
from tests.db.agent_helpers import agent_registry
from tests.db.test_agent_adapter import SPEC, ScriptedAgent, agent_timings, context, link, ok, running

__all__ = ["agent_timings", "link"]  # fixtures, found by name


def samples(text: str) -> dict[str, float]:
    """Each sample line of an exposition: 'name{labels}' -> value."""
    lines = (line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {name: float(value) for name, value in lines}


async def test_orders_reports_latencies_and_sessions_per_agent_factory(link: AgentLink) -> None:
    service = AgentService(link, agent_registry())
    adapter = link.adapter("alpha", AgentConfig(cluster="alpha", timeout_s=1.0))
    assert isinstance(adapter, AgentAdapter)
    before = samples(metrics.render({}, [], None, agents=await service.figures()))
    assert before['conveyor_agent_sessions{factory="alpha"}'] == 0
    assert before['conveyor_agent_orders_written_total{factory="alpha",kind="submit"}'] == 0
    assert not any(name.startswith("conveyor_agent_lease_epoch") for name in before)
    assert not any('factory="charlie"' in name for name in before)  # reached directly: no agent series

    health = Health(ok=True, detail="up")
    answers = {"submit": ok(4242)}
    agent = await ScriptedAgent(service, answer=lambda order: answers.get(order.kind, ok(None))(order)).connect()
    async with running(agent):
        assert await adapter.submit(SPEC, "alice", context()) == 4242
        answers["read"] = ok(health_to_json(health))
        assert (await adapter.health()).ok
        # The submit's report again: a repeat, counted as ignored.
        [submit] = [order for order in agent.received if order.kind == "submit"]
        repeat = ok(4242)(submit)
        assert repeat is not None
        assert (await service.report("alpha", agent.session_id, Reports(reports=[repeat]))).ignored == 1

    after = samples(metrics.render({}, [], None, agents=await service.figures()))
    alpha = 'factory="alpha"'
    assert after[f"conveyor_agent_sessions{{{alpha}}}"] == 1
    assert after[f"conveyor_agent_lease_epoch{{{alpha}}}"] == 1
    assert 0 <= after[f"conveyor_agent_seconds_since_heartbeat{{{alpha}}}"] < 30
    for kind in ("submit", "read"):
        assert after[f'conveyor_agent_orders_written_total{{{alpha},kind="{kind}"}}'] == 1
        assert after[f'conveyor_agent_orders_delivered_total{{{alpha},kind="{kind}"}}'] == 1
        assert after[f'conveyor_agent_order_delivery_seconds_count{{{alpha},kind="{kind}"}}'] == 1
        assert after[f'conveyor_agent_order_answer_seconds_count{{{alpha},kind="{kind}"}}'] == 1
        assert after[f'conveyor_agent_order_answer_seconds_bucket{{{alpha},kind="{kind}",le="+Inf"}}'] == 1
    assert after[f'conveyor_agent_orders_written_total{{{alpha},kind="cancel"}}'] == 0
    assert after[f"conveyor_agent_reports_applied_total{{{alpha}}}"] == 2
    assert after[f"conveyor_agent_reports_ignored_total{{{alpha}}}"] == 1
    assert after['conveyor_agent_sessions{factory="bravo"}'] == 0


async def test_listings_and_the_listing_calls_they_served_are_counted(link: AgentLink) -> None:
    service = AgentService(link, agent_registry())
    agent = await ScriptedAgent(service).connect()
    record = record_to_json(
        JobRecord(job_id=7, tag=f"{JOB_ID_PREFIX}7", state=SlurmJobState.RUNNING, raw_state="RUNNING", reason=None,
                  exit_code=None, signal=None, submit_time=None, start_time=None, end_time=None, nodes=None,
                  user="alice")
    )  # fmt: skip
    asked = datetime.now(UTC)
    for seq in (0, 1, 3):  # seq 3: a gap, refused
        listing = Listing(snapshot=11, seq=seq, listed_at=asked + timedelta(seconds=1), jobs=[record])
        await service.listing("alpha", agent.session_id, listing)
    adapter = link.adapter("alpha", AgentConfig(cluster="alpha", timeout_s=1.0))
    assert [r.job_id for r in await adapter.list_jobs(tag_prefix=JOB_ID_PREFIX)] == [7]

    counted = samples(metrics.render({}, [], None, agents=await service.figures()))
    alpha = 'factory="alpha"'
    assert counted[f'conveyor_agent_listings_total{{{alpha},kind="full",outcome="applied"}}'] == 1
    assert counted[f'conveyor_agent_listings_total{{{alpha},kind="delta",outcome="applied"}}'] == 1
    assert counted[f'conveyor_agent_listings_total{{{alpha},kind="delta",outcome="refused"}}'] == 1
    assert counted[f"conveyor_agent_listed_jobs_total{{{alpha}}}"] == 2
    assert counted[f'conveyor_agent_reads_served_total{{{alpha},source="push",what="listing"}}'] == 1
    assert counted[f'conveyor_agent_reads_served_total{{{alpha},source="order",what="listing"}}'] == 0
