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

from broker.loops.runtime import STOP_GRACE_S
from slurm_adapters.agent_protocol import MAX_WAIT_S
from tests.agentlink.harness import AgentProcess
from tests.faults.conftest import NewAgent, NewWorkspace, register_agents
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


def first_cycles_over(broker: BrokerProcess, factory_id: str) -> bool:
    """Whether the broker's first health check and first reconcile of the Factory are behind it (/metrics)."""
    text = httpx.get(f"{broker.base_url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5).text
    lines = [line for line in text.splitlines() if f'factory="{factory_id}"' in line]
    checked = any(line.startswith("conveyor_factory_healthy{") for line in lines)
    reconciled = any(line.startswith(("conveyor_reconcile_cycle_seconds{", "conveyor_errors_total{"))
                     and 'loop="dispatch"' not in line for line in lines)  # fmt: skip
    return checked and reconciled


def test_a_stopping_broker_answers_its_agents_open_long_poll_at_once(
    agent_broker: BrokerProcess, new_agent: NewAgent
) -> None:
    """SIGTERM while echo's agent long-polls for the longest wait the protocol allows: the poll is answered at
    once (the agent's next poll then finds the broker gone), rather than held until its wait is over; the broker
    then shuts down cleanly.

    No read order may end the poll first: the health check and the reconciler run once at start, before the
    agent connects, and not again for ten minutes."""
    agent_broker.kill()
    quiet = {"CONVEYOR_HEALTH_INTERVAL_S": "600", "CONVEYOR_RECONCILER_INTERVAL_S": "600"}
    agent_broker.extra_env.update({"CONVEYOR_AGENT_POLL_WAIT_S": f"{MAX_WAIT_S:g}", **quiet})
    agent_broker.start()
    poll_until(lambda: first_cycles_over(agent_broker, "echo"), 30, "the first health check and reconcile of echo",
               context=agent_broker.log_tail)  # fmt: skip
    agent = new_agent("agent")
    register_agents(agent_broker, agent)
    agent.start()
    # Its first session: the poll opens as the session does, and the lease comes with the first heartbeat.
    poll_until(lambda: connected(agent_broker, "echo"), 30, "echo's agent to hold the lease", context=agent.log_tail)
    assert agent_broker.process is not None
    os.kill(agent_broker.process.pid, signal.SIGTERM)
    poll_until(lambda: "poll failed" in agent.log_text(), MAX_WAIT_S / 3,
               "the agent's open poll to be answered and its next one to find the broker stopping",
               context=agent.log_tail)  # fmt: skip
    # uvicorn raises the signal it caught again once it has shut down: the exit status says SIGTERM either way
    assert agent_broker.wait_exit(STOP_GRACE_S + MAX_WAIT_S) == -signal.SIGTERM
    assert "Finished server process" in agent_broker.log_tail(), agent_broker.log_tail()
    assert "reports not delivered" not in agent.log_text()  # no order was out: the poll was idle
