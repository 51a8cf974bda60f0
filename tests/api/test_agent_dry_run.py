"""A dry run on a Factory reached through its agent shows version skew and a missing agent, as placement in the
dispatcher would judge them (what the live lease holder announced at hello)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from app.auth import StaticTokens
from app.main import create_app
from broker.agents.sessions import SessionRepository
from broker.agents.timings import AgentTimings
from broker.db.engine import Database
from broker.db.repositories import FactoryStateRepository
from broker.identity import DEV_PRINCIPAL
from conveyor.models import DryRun
from slurm_adapters.agent_protocol import FEATURES, Heartbeat, Hello
from tests.api.conftest import TOKEN, api_settings, client_for, factory, job_body, partition
from tests.api.test_jobs import problem_of


@pytest.fixture
async def client(db: Database, database_url: str, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    gamma = factory("gamma", "DE", partition("cpu", 60, 10, 1, default=True))
    gamma["adapter"] = {"kind": "agent", "cluster": "gamma"}
    path = tmp_path / "agent-factories.json"
    path.write_text(json.dumps({"factories": [gamma]}))
    app = create_app(api_settings(tmp_path, database_url, factories_file=path),
                     authenticator=StaticTokens({TOKEN: DEV_PRINCIPAL}))  # fmt: skip
    await FactoryStateRepository(db).record_health("gamma", healthy=True, detail="up", actor="test")
    async with app.router.lifespan_context(app), client_for(app, TOKEN) as client:
        yield client


async def connect(db: Database, features: list[str]) -> None:
    """An agent of gamma holding its lease, having announced ``features``."""
    sessions = SessionRepository(db, AgentTimings())
    hello = Hello(agent_version="0.9.0", adapter="rest", features=features, agent_time=datetime.now(UTC))
    opened = await sessions.open("gamma", "agent-1", hello)
    assert (await sessions.heartbeat("gamma", opened.id, Heartbeat(agent_time=datetime.now(UTC)))).holder


async def test_a_dry_run_says_the_job_waits_for_an_agent(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/jobs", params={"dry_run": "true"}, json=job_body())
    assert response.status_code == 200, response.text
    dry = DryRun.model_validate(response.json())
    assert dry.factory == "gamma"
    assert "not available now" in dry.reason
    assert "no agent connected to take orders" in dry.reason


async def test_a_dry_run_refuses_a_field_the_agent_did_not_announce_and_names_it(
    db: Database, client: httpx.AsyncClient
) -> None:
    await connect(db, [feature for feature in FEATURES if feature != "spec.environment"])
    body = job_body(environment={"HF_HOME": "/scratch/hf"})
    refused = await client.post("/v1/jobs", params={"dry_run": "true"}, json=body)
    problem = problem_of(refused, 422, "placement_failed.agent_lacks_feature")
    assert "gamma lacks spec.environment" in (problem.detail or "")
    # The same job without the field goes there, now.
    response = await client.post("/v1/jobs", params={"dry_run": "true"}, json=job_body())
    assert response.status_code == 200, response.text
    dry = DryRun.model_validate(response.json())
    assert dry.factory == "gamma"
    assert "not available now" not in dry.reason
    assert isinstance(dry.rendering.payload, dict)
    assert "environment" not in dry.rendering.payload  # only the fields the job uses travel
