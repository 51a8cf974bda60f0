"""A job's secret environment through a real ``conveyor-agent``, on SQLite and PostgreSQL: the broker (dev mode:
its secrets key made in its data dir) keeps the value sealed in the job and in the submit order, hands it to the
agent with the order, and the job on echo prints it (``printenv HF_TOKEN``), read back through the agent. No column
of any table, before or after that read, no byte of the SQLite files before it and no line of the broker's or the
agent's log holds it.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from broker.jobs.secrets import REDACTED
from tests.agentlink.harness import AgentProcess
from tests.db.plaintext import columns_holding_at, sqlite_files_holding
from tests.faults.harness import PROJECT, TERMINAL, TOKEN, BrokerProcess, poll_until
from tests.faults.test_agent_link import connected

pytestmark = pytest.mark.lab

SECRET = "hf_agent-secret-5e0c2d"
POLL_S = 0.2  # a poll interval, not a wait for something to happen


def test_a_secret_reaches_the_job_through_the_agent_and_stays_sealed_at_the_broker(
    agent_broker: BrokerProcess, echo_agent: AgentProcess
) -> None:
    poll_until(lambda: connected(agent_broker, "echo"), 30, "echo's agent to hold the lease",
               context=echo_agent.log_tail)  # fmt: skip
    body: dict[str, Any] = {
        "name": "agent-secret", "project": PROJECT, "command": ["printenv", "HF_TOKEN"],
        "secret_environment": {"HF_TOKEN": SECRET}, "resources": {"time_limit_min": 2, "memory_mb": 100},
        "placement": {"factory": "echo"},
    }  # fmt: skip
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=agent_broker.base_url, headers=headers, timeout=10) as client:
        created = client.post("/v1/jobs", json=body)
        assert created.status_code == 201, created.text
        assert SECRET not in created.text
        job_id = created.json()["id"]
        deadline = time.monotonic() + 90
        while (job := client.get(f"/v1/jobs/{job_id}").json())["state"] not in TERMINAL:
            assert time.monotonic() < deadline, f"{job}\n{echo_agent.log_tail()}"
            time.sleep(POLL_S)
        assert job["state"] == "completed", f"{job}\n{echo_agent.log_tail()}"
        assert job["spec"]["secret_environment"] == {"HF_TOKEN": REDACTED}
        for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/events", "/v1/jobs", "/metrics"):
            assert SECRET not in client.get(path).text, path
        assert columns_holding_at(agent_broker.database_url, SECRET) == []  # the job's row and the order's
        assert sqlite_files_holding(agent_broker.database_url, SECRET) == []
        output = client.get(f"/v1/jobs/{job_id}/output")  # read at the site by the agent
        assert output.status_code == 200, output.text
        assert output.json()["content"] == f"{SECRET}\n"
        # The read's answer is the job's own output (here, its secret), relayed through a read order's report,
        # which keeps it only until the read has it. (SQLite's files may hold the freed bytes until reused.)
        assert columns_holding_at(agent_broker.database_url, SECRET) == []
    assert not any(SECRET in log.read_text(errors="replace") for log in agent_broker.logs)
    assert SECRET not in echo_agent.log_text()
