"""The dispatcher and the health loop on an agent Factory, on SQLite and PostgreSQL, with a scripted agent
(no Slurm anywhere; the real link, dispatcher and health monitor).

Version skew: a job goes to an agent Factory only if the lease holder announced every field it uses there;
an agent that refuses an order for a field it does not know has the job rejected with its reason, never run
without the field. Health: no agent means unhealthy and jobs wait, then run once the agent connects. A
Slurm rate-limit report keeps the job queued.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select

from broker.agents.link import AgentLink
from broker.agents.service import AgentService
from broker.agents.sessions import agent_features
from broker.db.engine import Database
from broker.db.models import AgentOrder, AttemptOutcome, Job
from broker.db.repositories import FactoryStateRepository, JobRepository, NewJob
from broker.factories.adapters import AdapterPool
from broker.factories.health import HealthMonitor
from broker.factories.placement import FactoryStatus, PlacementError, place
from broker.factories.registry import FactoryRegistry, parse_factories
from broker.loops.dispatch import Dispatcher
from broker.settings import Settings
from conveyor.problems import PlacementCode
from conveyor.spec import JobSpec, JobState
from slurm_adapters.agent_protocol import FEATURES, Hello, Order, ReadOrder, Report, SubmitOrder
from slurm_adapters.codec import SPEC_FIELDS, cluster_info_to_json, error_to_json, health_to_json
from slurm_adapters.errors import ClusterUnavailable, InvalidRequest
from slurm_adapters.records import ClusterInfo, Health
from tests.db.agent_helpers import agent_factory, beat, hello
from tests.db.test_agent_adapter import TIMINGS, Answer, ScriptedAgent, now, ok, running

PROJECT = "EHPC-AIF-2026PG01-1147"
WITHOUT_ENVIRONMENT = [feature for feature in FEATURES if feature != "spec.environment"]


def healthy_site(then: Answer) -> Answer:
    """Answers the health loop's read with a healthy Slurm and every other order with ``then``."""

    def answer(order: Order) -> Report | None:
        if isinstance(order, ReadOrder) and order.op == "health":
            result = health_to_json(Health(ok=True, detail="slurmctld up", release="24.11.1"))
            return Report(order=order.id, ok=True, result=result, finished_at=now())
        if isinstance(order, ReadOrder) and order.op == "cluster_info":  # the capacity snapshot after it
            info = cluster_info_to_json(ClusterInfo(cluster="alpha", release="24.11.1", partitions=(), nodes=()))
            return Report(order=order.id, ok=True, result=info, finished_at=now())
        return then(order)

    return answer


def older_agent(order: Order) -> Report | None:
    """An agent of older code: it knows no ``environment`` and refuses a spec with it, as agent/executor.py
    does (strict decoding, InvalidRequest, nothing reaches Slurm)."""
    assert isinstance(order, SubmitOrder)
    known = {"version", *SPEC_FIELDS} - {"environment"}
    unknown = sorted(set(order.spec) - known)
    if unknown:
        error = InvalidRequest(f"the job spec cannot be run here: SlurmJobSpec: unknown fields {unknown}")
        return Report(order=order.id, ok=False, refused=True, error=error_to_json(error), finished_at=now())
    return ok(4242)(order)


def rate_limited(order: Order) -> Report | None:
    """What agent/executor.py reports once slurmctld's rate limit outlasts the order's not_after."""
    error = ClusterUnavailable(
        "slurmctld is rate-limiting this site; not tried again before the order's not_after: Rate limit exceeded",
        maybe_applied=False,
    )
    return Report(order=order.id, ok=False, error=error_to_json(error), finished_at=now())


@dataclass
class Site:
    db: Database
    link: AgentLink
    service: AgentService
    registry: FactoryRegistry
    jobs: JobRepository
    states: FactoryStateRepository
    dispatcher: Dispatcher
    health: HealthMonitor

    async def queue(self, **spec: Any) -> str:
        body = {"name": "train", "project": PROJECT, "command": ["python", "train.py"], **spec}
        new = NewJob(owner="user:alice", project=PROJECT, name="train", spec=body, labels={})
        return (await self.jobs.insert_job_with_event(new, actor="test")).id

    async def job(self, job_id: str) -> Job:
        job = await self.jobs.get(job_id)
        assert job is not None
        return job

    async def submit_orders(self) -> list[AgentOrder]:
        async with self.db.read() as session:
            return list((await session.scalars(select(AgentOrder).where(AgentOrder.kind == "submit"))).all())

    async def connect(self, answer: Answer, features: list[str] | None = None) -> ScriptedAgent:
        agent = ScriptedAgent(self.service, "alpha", answer)
        if features is None:
            return await agent.connect()
        greeting = Hello(agent_version="0.9.0", adapter="rest", slurm_release="24.11.1", features=features,
                      agent_time=now())  # fmt: skip
        granted = await self.service.open_session("alpha", "key-1", greeting)
        agent.session_id, agent.heartbeat_s = granted.session_id, granted.heartbeat_s
        await agent.hold()
        return agent


@pytest.fixture
async def site(db: Database, tmp_path: Path) -> AsyncIterator[Site]:
    registry = parse_factories({"factories": [agent_factory("alpha")]})
    link = AgentLink(db, TIMINGS)
    url = db.engine.url.render_as_string(hide_password=False)
    settings = Settings(database_url=url, data_dir=tmp_path, agent_silent_s=60)
    adapters = AdapterPool(registry, agents=link)
    dispatcher = Dispatcher(db, registry, adapters, settings, "dispatcher-1", failpoints=frozenset())
    health = HealthMonitor(db, registry, adapters, agent_silent_s=settings.agent_silent_s)
    yield Site(db, link, AgentService(link, registry), registry, JobRepository(db), FactoryStateRepository(db),
               dispatcher, health)  # fmt: skip
    await link.aclose()


async def test_a_job_using_a_field_the_agent_did_not_announce_is_not_placed_there(site: Site) -> None:
    async with running(await site.connect(healthy_site(ok(4242)), features=WITHOUT_ENVIRONMENT)) as agent:
        assert (await site.health.run_once())["alpha"] is True
        plain = await site.queue()
        with_env = await site.queue(environment={"HF_HOME": "/scratch/hf"})
        assert await site.dispatcher.run_once() == 2
    rejected = await site.job(with_env)
    assert rejected.state is JobState.REJECTED
    assert rejected.state_reason is not None
    assert "alpha lacks spec.environment" in rejected.state_reason
    submitted = await site.job(plain)
    assert (submitted.state, submitted.slurm_job_id) == (JobState.SUBMITTED, "4242")
    # Only the plain job's order was written: no order carries a field the agent does not know.
    [order] = await site.submit_orders()
    assert order.attempt == f"{plain}/1"
    assert "environment" not in order.payload["spec"]
    assert [o.id for o in agent.received if isinstance(o, SubmitOrder)] == [order.id]


async def test_placement_says_which_field_the_agent_lacks_and_the_job_must_change(site: Site) -> None:
    await site.connect(ok(4242), features=WITHOUT_ENVIRONMENT)
    agents = await agent_features(site.db, site.registry, now())
    spec = JobSpec.model_validate({"name": "t", "project": PROJECT, "command": ["true"], "environment": {"A": "1"}})
    with pytest.raises(PlacementError) as raised:
        place(spec, site.registry, {"alpha": FactoryStatus(healthy=True)}, agents=agents)
    assert raised.value.code is PlacementCode.AGENT_LACKS_FEATURE
    assert not raised.value.transient
    assert raised.value.details["factories"] == {"alpha": ["spec.environment"]}


async def test_an_agent_refusing_a_field_it_does_not_know_has_the_job_rejected_with_its_reason(site: Site) -> None:
    """The agent announced every field but its code knows no ``environment``: the broker hears why, and the
    job ends rejected, never run without the field (and never retried as if the site were down)."""
    async with running(await site.connect(healthy_site(older_agent))) as agent:
        assert (await site.health.run_once())["alpha"] is True
        job_id = await site.queue(environment={"HF_HOME": "/scratch/hf"})
        assert await site.dispatcher.run_once() == 1
    job = await site.job(job_id)
    assert job.state is JobState.REJECTED
    assert job.state_reason is not None
    assert "unknown fields ['environment']" in job.state_reason
    assert job.slurm_job_id is None
    [attempt] = await site.jobs.attempts(job_id)
    assert attempt.outcome is AttemptOutcome.REFUSED
    [order] = [o for o in agent.received if isinstance(o, SubmitOrder)]
    assert order.spec["environment"] == {"HF_HOME": "/scratch/hf"}


async def test_with_no_agent_the_factory_is_unhealthy_and_jobs_wait_until_one_connects(site: Site) -> None:
    assert (await site.health.run_once())["alpha"] is False
    [state] = await site.states.all()
    assert state.healthy is False
    assert state.health_detail == "no agent has connected to Factory alpha"
    job_id = await site.queue()
    assert await site.dispatcher.run_once() == 1
    waiting = await site.job(job_id)
    assert waiting.state is JobState.QUEUED
    assert waiting.state_reason is not None
    assert "no agent has connected" in waiting.state_reason
    assert await site.submit_orders() == []  # nothing was written for nobody to take

    async with running(await site.connect(healthy_site(ok(777)))):
        assert (await site.health.run_once())["alpha"] is True
        async with site.db.write() as session:  # due now, rather than after the placement retry delay
            row = await session.get(Job, job_id)
            assert row is not None
            row.next_attempt_at = now()
        assert await site.dispatcher.run_once() == 1
    job = await site.job(job_id)
    assert (job.state, job.slurm_job_id) == (JobState.SUBMITTED, "777")


async def test_a_rate_limit_report_keeps_the_job_queued_for_a_retry(site: Site) -> None:
    async with running(await site.connect(healthy_site(rate_limited))):
        assert (await site.health.run_once())["alpha"] is True
        job_id = await site.queue()
        assert await site.dispatcher.run_once() == 1
    job = await site.job(job_id)
    assert job.state is JobState.QUEUED
    assert job.state_reason is not None
    assert "rate-limiting" in job.state_reason
    assert job.next_attempt_at is not None
    [attempt] = await site.jobs.attempts(job_id)
    assert attempt.outcome is AttemptOutcome.NOT_APPLIED  # nothing reached Slurm: no doubt, no lookup


async def test_an_agent_silent_longer_than_allowed_makes_its_factory_unhealthy(site: Site) -> None:
    long_ago = now() - timedelta(seconds=600)
    opened = await site.link.sessions.open("alpha", "key-1", hello(long_ago), now=long_ago)
    await site.link.sessions.heartbeat("alpha", opened.id, beat(long_ago), now=long_ago)
    assert (await site.health.run_once())["alpha"] is False
    [state] = await site.states.all()
    assert state.health_detail is not None
    assert state.health_detail.startswith("the agent of Factory alpha has been silent for 600 s")
    assert await site.submit_orders() == []


async def test_a_batch_reads_the_announced_features_once_whatever_its_size(site: Site) -> None:
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    async with running(await site.connect(healthy_site(ok(4242)), features=WITHOUT_ENVIRONMENT)):
        assert (await site.health.run_once())["alpha"] is True
        queued = [await site.queue(environment={"N": str(n)}) for n in range(6)]
        event.listen(site.db.engine.sync_engine, "before_cursor_execute", count)
        try:
            assert await site.dispatcher.run_once() == 6
        finally:
            event.remove(site.db.engine.sync_engine, "before_cursor_execute", count)
    assert [(await site.job(job_id)).state for job_id in queued] == [JobState.REJECTED] * 6
    grouped = [s for s in statements if "GROUP BY agent_sessions.factory_id" in s]
    assert len(grouped) == 1
