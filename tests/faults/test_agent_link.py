"""Jobs through a real ``conveyor-agent``: the broker holds no Slurm key and reaches no cluster.

The broker process serves echo as ``adapter: {kind: agent}``; the agent process (slurmrestd inside it, with
echo's JWT key) dials out to the broker, long-polls for orders, submits at the site and reports. Each job runs
exactly once (the ledger, the broker's answers and Slurm's own listing agree), on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import os
import signal

import httpx
import pytest

from slurm_adapters.agent_protocol import MAX_WAIT_S
from tests.agentlink.harness import AgentProcess
from tests.faults.conftest import NewWorkspace
from tests.faults.harness import (
    TOKEN,
    BrokerProcess,
    check_exactly_once,
    poll_until,
    submissions,
    submit_one,
    wait_all_terminal,
)

pytestmark = pytest.mark.lab


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


def test_a_stopping_broker_answers_its_agents_long_poll_and_exits_at_once(
    agent_broker: BrokerProcess, echo_agent: AgentProcess
) -> None:
    """SIGTERM while echo's agent long-polls for the longest wait the protocol allows: the broker answers the
    poll and exits cleanly at once, rather than holding its shutdown until the poll's wait is over."""
    agent_broker.kill()
    agent_broker.extra_env["CONVEYOR_AGENT_POLL_WAIT_S"] = f"{MAX_WAIT_S:g}"
    agent_broker.start()
    poll_until(lambda: connected(agent_broker, "echo"), 30, "echo's agent to hold the lease",
               context=echo_agent.log_tail)  # fmt: skip
    assert agent_broker.process is not None
    os.kill(agent_broker.process.pid, signal.SIGTERM)
    # uvicorn raises the signal it caught again once it has shut down: the exit status says SIGTERM either way
    assert agent_broker.wait_exit(MAX_WAIT_S / 2) == -signal.SIGTERM
    assert "Finished server process" in agent_broker.log_tail(), agent_broker.log_tail()
