"""Issue 12 item 15: a SIGKILLed broker's claimed job is dispatched again long before its lease would end.

The broker runs with the default lease (120 s) and is SIGKILLed right before its Slurm submit (the attempt is
committed, Slurm never heard of the job). Restarted on the same database (a new process, a new instance), it
takes the dead instance's claim over once that heartbeat lapses, waits out the attempt's settle window (the
call's deadline + Slurm's MessageTimeout + the clock skew), proves the tag absent and submits: the job runs
exactly once, well within the lease. On SQLite and PostgreSQL; it kills only the broker process it started.
"""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from tests.faults.conftest import CtldWatch, NewWorkspace
from tests.faults.harness import BrokerProcess, check_exactly_once, submissions, submit_one, wait_all_terminal

pytestmark = pytest.mark.lab

LEASE_S = 120  # the broker's default
# The heartbeat TTL (15 s) or the settle window (8 + 10 + 1 s on the lab), then a job's run, with room.
WITHIN_S = 75  # far below LEASE_S


async def test_defect_15_a_killed_brokers_job_is_dispatched_again_long_before_its_lease_ends(
    database: str, broker: BrokerProcess, new_workspace: NewWorkspace, run_id: str, echo_ctld: CtldWatch
) -> None:
    del echo_ctld  # a settled slurmctld, and a note on failure if someone else restarts it
    broker.extra_env = {"CONVEYOR_LEASE_S": str(LEASE_S)}
    workspace = new_workspace(run_id)
    [item] = submissions(workspace, "echo", run_id, 1)
    await asyncio.to_thread(broker.start, failpoints="before_submit")
    async with broker.client() as client:
        assert await submit_one(client, item) == "201", item.problems
    assert await asyncio.to_thread(broker.wait_exit, 60) == -signal.SIGKILL, broker.log_tail()
    killed_at = time.monotonic()
    await asyncio.to_thread(broker.start)
    async with broker.client() as client:
        [job] = await wait_all_terminal(client, run_id, 1, timeout_s=WITHIN_S, context=broker.log_tail)
        took_s = time.monotonic() - killed_at
        assert took_s < WITHIN_S, (took_s, broker.log_tail())
        assert job["state"] == "completed", job
        await check_exactly_once(client, workspace, run_id, [item])
        events = (await client.get(f"/v1/jobs/{job['id']}/events", params={"limit": 500})).json()["items"]
    assert [e["kind"] for e in events].count("attempt_started") == 2
