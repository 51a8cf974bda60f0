"""Jobs through a real ``conveyor-agent``: the broker holds no Slurm key and reaches no cluster.

The broker process serves echo as ``adapter: {kind: agent}``; the agent process (slurmrestd inside it, with
echo's JWT key) dials out to the broker, long-polls for orders, submits at the site and reports. Each job runs
exactly once (the ledger, the broker's answers and Slurm's own listing agree), on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dev.lab.view import lab_json_path
from tests.agentlink.harness import AgentProcess, agent_factories_file, register_agent_keys
from tests.faults.conftest import NewDatabase, NewWorkspace
from tests.faults.harness import (
    TOKEN,
    BrokerProcess,
    check_exactly_once,
    poll_until,
    submissions,
    submit_one,
    wait_all_terminal,
)
from tests.lab import Cluster

pytestmark = pytest.mark.lab

# Fast agent timings: a lapsed session or lease is noticed within seconds.
AGENT_TIMINGS = {
    "CONVEYOR_AGENT_HEARTBEAT_S": "1",
    "CONVEYOR_AGENT_LEASE_S": "3",
    "CONVEYOR_AGENT_SESSION_TTL_S": "6",
    "CONVEYOR_AGENT_POLL_WAIT_S": "5",
}


@pytest.fixture
def agent_broker(
    database: str, tmp_path: Path, new_database_url: NewDatabase, echo: Cluster
) -> Iterator[BrokerProcess]:
    """A broker (started) that reaches echo only through an agent; stopped by its PID at the end."""
    workdir = tmp_path / "broker"
    workdir.mkdir()
    factories = agent_factories_file(lab_json_path().with_name("factories.yaml"), {echo.name: echo.name}, tmp_path)
    broker = BrokerProcess(
        workdir=workdir, database_url=new_database_url(database, workdir), factories_file=factories,
        extra_env=dict(AGENT_TIMINGS),
    )  # fmt: skip
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def echo_agent(tmp_path: Path, echo: Cluster, agent_broker: BrokerProcess) -> Iterator[AgentProcess]:
    """echo's agent (started, its key registered); stopped by its PID at the end."""
    agent = AgentProcess(tmp_path / "agent", echo, echo.name, agent_broker.base_url)
    register_agent_keys(agent_broker, echo.name, agent.public_jwks)
    agent.start()
    try:
        yield agent
    finally:
        if agent.running():
            agent.kill()


def connected(broker: BrokerProcess, factory_id: str) -> bool:
    """Whether the Factory's agent holds the lease, as /v1/factories says."""
    answer = httpx.get(f"{broker.base_url}/v1/factories/{factory_id}", headers={"Authorization": f"Bearer {TOKEN}"},
                       timeout=5)  # fmt: skip
    agent = answer.json().get("agent") or {}
    return bool(agent.get("connected"))


async def test_jobs_go_through_the_agent_and_each_runs_once(
    agent_broker: BrokerProcess, echo_agent: AgentProcess, new_workspace: NewWorkspace, run_id: str
) -> None:
    poll_until(lambda: connected(agent_broker, "echo"), 30, "echo's agent to hold the lease",
               context=echo_agent.log_tail)  # fmt: skip
    workspace = new_workspace(run_id)
    items = submissions(workspace, "echo", run_id, 5)
    async with agent_broker.client() as client:
        answers = await asyncio.gather(*(submit_one(client, item) for item in items))
        assert answers == ["201"] * 5, [item.problems for item in items]
        jobs = await wait_all_terminal(client, run_id, 5, timeout_s=90, context=echo_agent.log_tail)
        assert {job["state"] for job in jobs} == {"completed"}, jobs
        await check_exactly_once(client, workspace, run_id, items)
