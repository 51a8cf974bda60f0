"""A job's secret environment from the database to Slurm, on SQLite and PostgreSQL: the dispatcher unseals it
into the Slurm job's environment only; an agent Factory's submit order keeps it sealed in its row and hands the
value to the agent's session alone; a process without the key (or with another) never sends the job or the
order, and says why; a site's error echoing the value is stored scrubbed. After each, no column of any table
holds the value.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from broker.agents.link import AgentLink
from broker.agents.orders import OrderRepository
from broker.agents.service import AgentService
from broker.db.engine import Database
from broker.db.models import AgentOrder
from broker.db.repositories import FactoryStateRepository, JobRepository, NewJob
from broker.factories.adapters import AdapterPool
from broker.factories.registry import FactoryRegistry, load_factories
from broker.jobs import secrets
from broker.loops.dispatch import Dispatcher
from broker.secret_box import SecretBox
from broker.settings import Settings
from conveyor.spec import JobSpec, JobState
from slurm_adapters.agent_protocol import Poll, Requester, SubmitOrder
from slurm_adapters.codec import spec_from_json
from slurm_adapters.errors import ClusterUnavailable, JobError
from slurm_adapters.factory import AgentConfig
from slurm_adapters.records import SlurmJobSpec, SubmitContext
from tests.api.conftest import write_factories
from tests.db.agent_helpers import agent_registry
from tests.db.plaintext import columns_holding
from tests.db.test_agent_adapter import TIMINGS, ScriptedAgent, failed, ok, running
from tests.db.test_takeover_dispatch import ScriptedSlurm

SECRET = "hf_dispatch-secret-7c1e"
Direct = tuple[FactoryRegistry, AdapterPool, Settings]  # a registry with alpha direct, its adapters, the settings
BOX = SecretBox.generate()


def spec_with_secret(job_root: str = "/scratch/alpha") -> JobSpec:
    return JobSpec.model_validate(
        {"name": "train", "project": "EHPC-AIF-2026PG01-1147", "command": ["printenv", "HF_TOKEN"],
         "environment": {"PLAIN": "visible"}, "secret_environment": {"HF_TOKEN": SECRET},
         "working_directory": job_root, "resources": {"time_limit_min": 5}, "placement": {"factory": "alpha"}}
    )  # fmt: skip


async def store(jobs: JobRepository, spec: JobSpec, box: SecretBox = BOX) -> str:
    stored = secrets.stored(spec, box)
    new = NewJob.from_spec("user:alice", spec, stored=stored.spec, sealed=stored.sealed)
    return (await jobs.insert_job_with_event(new, actor="test")).id


@pytest.fixture
async def direct(db: Database, tmp_path: Path) -> Direct:
    """The API tests' Factories (alpha direct), alpha healthy, with recording adapters."""
    registry = load_factories(write_factories(tmp_path))
    await FactoryStateRepository(db).record_health("alpha", healthy=True, detail="up", actor="test")
    settings = Settings(database_url=str(db.engine.url.render_as_string(hide_password=False)), data_dir=tmp_path)
    return registry, AdapterPool(registry, build=ScriptedSlurm), settings


def dispatcher(db: Database, direct: Direct, box: SecretBox | None) -> Dispatcher:
    registry, adapters, settings = direct
    return Dispatcher(db, registry, adapters, settings, "d", failpoints=frozenset(), secret_box=box)


def alpha(direct: Direct) -> ScriptedSlurm:
    adapter = direct[1].get("alpha")
    assert isinstance(adapter, ScriptedSlurm)
    return adapter


async def test_the_value_reaches_the_slurm_jobs_environment_only(
    db: Database, jobs: JobRepository, direct: Direct
) -> None:
    job_id = await store(jobs, spec_with_secret())
    assert await dispatcher(db, direct, BOX).run_once() == 1
    [(sent, context)] = alpha(direct).submitted
    assert dict(sent.environment) == {"PLAIN": "visible", "HF_TOKEN": SECRET}
    assert SECRET not in sent.script
    assert context is not None
    assert context.secret_names == frozenset({"HF_TOKEN"})
    job = await jobs.get(job_id)
    assert job is not None
    assert (job.state, job.slurm_job_id) == (JobState.SUBMITTED, "77")
    assert await columns_holding(db, SECRET) == []


@pytest.mark.parametrize("box", [None, SecretBox.generate()], ids=["no key", "another key"])
async def test_a_process_that_cannot_unseal_keeps_the_job_queued_and_says_why(
    db: Database, jobs: JobRepository, direct: Direct, box: SecretBox | None
) -> None:
    job_id = await store(jobs, spec_with_secret())
    await dispatcher(db, direct, box).run_once()
    assert alpha(direct).submitted == []
    job = await jobs.get(job_id)
    assert job is not None
    assert job.state is JobState.QUEUED
    assert "secret_environment cannot be unsealed" in (job.state_reason or "")
    assert await columns_holding(db, SECRET) == []


async def test_a_sites_error_that_echoes_the_value_is_stored_scrubbed(
    db: Database, jobs: JobRepository, direct: Direct
) -> None:
    job_id = await store(jobs, spec_with_secret())
    alpha(direct).error = JobError(f"sbatch: error: invalid environment HF_TOKEN={SECRET}", cluster="alpha")
    await dispatcher(db, direct, BOX).run_once()
    job = await jobs.get(job_id)
    assert job is not None
    assert job.state is JobState.REJECTED
    assert f"HF_TOKEN={secrets.REDACTED}" in (job.state_reason or "")
    assert await columns_holding(db, SECRET) == []


@pytest.mark.parametrize(
    "error",
    [
        ClusterUnavailable(f"slurmctld hung up reading {SECRET}", cluster="alpha"),
        RuntimeError(f"an adapter's bug, quoting HF_TOKEN={SECRET}"),  # the dispatcher's catch-all
    ],
    ids=["site", "bug"],
)
async def test_a_site_failure_that_echoes_the_value_is_stored_scrubbed(
    db: Database, jobs: JobRepository, direct: Direct, error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    job_id = await store(jobs, spec_with_secret())
    alpha(direct).error = error
    await dispatcher(db, direct, BOX).run_once()
    assert SECRET not in caplog.text
    job = await jobs.get(job_id)
    assert job is not None
    assert job.state is JobState.QUEUED
    assert secrets.REDACTED in (job.state_reason or "")
    assert await columns_holding(db, SECRET) == []  # nor the Factory's health detail, the attempt's error


# --- through a Factory agent -----------------------------------------------------------------------------


@pytest.fixture
async def link(db: Database) -> AsyncIterator[AgentLink]:
    link = AgentLink(db, TIMINGS, secret_box=BOX)
    yield link
    await link.aclose()


async def test_an_agent_factorys_order_keeps_the_value_sealed_and_hands_it_to_the_agent(
    db: Database, jobs: JobRepository, link: AgentLink, tmp_path: Path
) -> None:
    registry = agent_registry()  # alpha: through its agent
    await FactoryStateRepository(db).record_health("alpha", healthy=True, detail="up", actor="test")
    settings = Settings(database_url=str(db.engine.url.render_as_string(hide_password=False)), data_dir=tmp_path)
    pool = AdapterPool(registry, agents=link)
    service = AgentService(link, registry)
    job_id = await store(jobs, spec_with_secret())
    agent = ScriptedAgent(service, answer=ok(4242))
    async with running(await agent.connect()):
        await Dispatcher(db, registry, pool, settings, "d", failpoints=frozenset(), secret_box=BOX).run_once()
    [order] = agent.received
    assert isinstance(order, SubmitOrder)
    sent = spec_from_json(order.spec)
    assert dict(sent.environment) == {"PLAIN": "visible", "HF_TOKEN": SECRET}  # the protocol is unchanged
    job = await jobs.get(job_id)
    assert job is not None
    assert (job.state, job.slurm_job_id) == (JobState.SUBMITTED, "4242")
    async with db.read() as session:
        row = await session.get(AgentOrder, order.id)
    assert row is not None
    assert row.payload["spec"]["environment"]["HF_TOKEN"] == secrets.REDACTED
    assert row.secrets is not None
    assert BOX.open(row.secrets) == {"HF_TOKEN": SECRET}
    assert await columns_holding(db, SECRET) == []
    await pool.aclose()


async def test_an_agents_report_that_echoes_the_value_is_stored_scrubbed(
    db: Database, jobs: JobRepository, link: AgentLink, tmp_path: Path
) -> None:
    registry = agent_registry()
    await FactoryStateRepository(db).record_health("alpha", healthy=True, detail="up", actor="test")
    settings = Settings(database_url=str(db.engine.url.render_as_string(hide_password=False)), data_dir=tmp_path)
    pool = AdapterPool(registry, agents=link)
    job_id = await store(jobs, spec_with_secret())
    echoed = JobError(f"sbatch: error: cannot export HF_TOKEN={SECRET}", errors=[f"value {SECRET}"])
    agent = ScriptedAgent(AgentService(link, registry), answer=failed(echoed))
    async with running(await agent.connect()):
        await Dispatcher(db, registry, pool, settings, "d", failpoints=frozenset(), secret_box=BOX).run_once()
    job = await jobs.get(job_id)
    assert job is not None
    assert job.state is JobState.REJECTED
    assert f"HF_TOKEN={secrets.REDACTED}" in (job.state_reason or "")
    assert await columns_holding(db, SECRET) == []  # the order's report included
    await pool.aclose()


@pytest.mark.parametrize("box", [None, SecretBox.generate()], ids=["no key", "another key"])
async def test_an_order_a_replica_cannot_unseal_is_not_handed_out(db: Database, box: SecretBox | None) -> None:
    """Written by a replica with the key, polled on one without it: the order is not sent (not even redacted),
    not marked delivered; it expires, and its attempt is settled by tag lookup."""
    link = AgentLink(db, TIMINGS, secret_box=BOX)
    service = AgentService(link, agent_registry())
    try:
        agent = await ScriptedAgent(service).connect()
        now = datetime.now(UTC)
        placed = await link.orders.put_submit(
            "alpha", attempt="j/1", spec={"version": 1, "name": "t", "script": "#!/bin/sh\n", "tag": "j",
                                          "working_directory": "/scratch", "environment": {"HF_TOKEN": SECRET}},
            site_user="alice", requester=Requester(user="user:alice", project="P"),
            not_after=now + timedelta(seconds=30), secret_names={"HF_TOKEN"},
        )  # fmt: skip
        assert await columns_holding(db, SECRET) == []
        elsewhere = OrderRepository(db, secret_box=box)
        taken = await elsewhere.take("alpha", agent.session_id, Poll(ack=0, wait_s=0))
        assert taken.orders == []
        async with db.read() as session:
            row = await session.get(AgentOrder, placed.id)
        assert row is not None
        assert row.delivered_at is None
        [order] = (await link.orders.take("alpha", agent.session_id, Poll(ack=0, wait_s=0))).orders
        assert isinstance(order, SubmitOrder)
        assert order.spec["environment"] == {"HF_TOKEN": SECRET}
    finally:
        await link.aclose()


async def test_an_agent_adapter_without_the_key_sends_no_order_with_secrets(db: Database) -> None:
    link = AgentLink(db, TIMINGS)  # no secret_box
    service = AgentService(link, agent_registry())
    try:
        await ScriptedAgent(service).connect()
        adapter = link.adapter("alpha", AgentConfig(cluster="alpha", timeout_s=1.0))
        spec = SlurmJobSpec(name="t", script="#!/bin/sh\n", working_directory="/scratch", tag="j",
                            environment={"HF_TOKEN": SECRET})  # fmt: skip
        context = SubmitContext("j/1", datetime.now(UTC) + timedelta(seconds=5), "user:alice", "P",
                                secret_names=frozenset({"HF_TOKEN"}))  # fmt: skip
        with pytest.raises(ClusterUnavailable, match="no secrets key") as refused:
            await adapter.submit(spec, "alice", context)
        assert not refused.value.maybe_applied
        assert await columns_holding(db, SECRET) == []
    finally:
        await link.aclose()
