"""Issue #3 (a) and (d): the broker process SIGKILLed, then restarted on the same database.

(a) At the dispatcher's two failpoints: right before the Slurm submit (the attempt is committed, Slurm never
heard of the job) and right after it (Slurm has the job, the broker never recorded it). Either way, after a
restart without failpoints the job runs exactly once: the open attempt is settled by looking the tag up.

(d) In the middle of an accept burst of 16 clients. Every 201 survives; a request cut off without an answer
may or may not have been stored, and resending it with the same Idempotency-Key maps to that job or creates
one, never two.
"""

from __future__ import annotations

import asyncio
import signal

import pytest

from tests.faults.harness import (
    BrokerProcess,
    Progress,
    Workspace,
    burst,
    check_exactly_once,
    run_with,
    submissions,
    submit_one,
    summary,
    wait_all_terminal,
)

pytestmark = pytest.mark.lab


@pytest.mark.parametrize("failpoint", ["before_submit", "after_submit"])
async def test_a_broker_killed_at_the_submit_runs_the_job_once_after_restart(
    broker: BrokerProcess, workspace: Workspace, run_id: str, failpoint: str
) -> None:
    [item] = submissions(workspace, "echo", run_id, 1)
    broker.start(failpoints=failpoint)
    async with broker.client() as client:
        assert await submit_one(client, item) == "201", item.problems
    # The dispatcher picks the job up at once and the process kills itself at the failpoint.
    assert broker.wait_exit(timeout_s=60) == -signal.SIGKILL, broker.log_tail()
    assert f"failpoint {failpoint}" in broker.log_tail()
    broker.start()  # the same database and port, no failpoints
    async with broker.client() as client:
        # The dead broker's lease (30 s) must run out before the job is claimed again.
        [job] = await wait_all_terminal(client, run_id, 1, timeout_s=120, context=broker.log_tail)
        await check_exactly_once(client, workspace, run_id, [item])
        events = (await client.get(f"/v1/jobs/{job['id']}/events", params={"limit": 500})).json()["items"]
    attempts = [event for event in events if event["kind"] == "attempt_started"]
    if failpoint == "before_submit":
        # The first attempt never reached Slurm: proven absent by tag (within MinJobAge), then a second one.
        assert len(attempts) == 2, events
    else:
        # Slurm had it: found by tag and recorded, never submitted again.
        assert len(attempts) == 1, events


async def test_a_broker_killed_during_an_accept_burst_loses_nothing_and_runs_nothing_twice(
    broker: BrokerProcess, workspace: Workspace, run_id: str
) -> None:
    items = submissions(workspace, "echo", run_id, 120)
    progress = Progress()
    broker.start()

    async def kill_mid_burst() -> None:
        await progress.until(lambda c: c["201"] >= 40, 60, "40 jobs accepted")
        assert broker.kill() == -signal.SIGKILL

    async with broker.client(timeout_s=10) as client:
        await run_with(burst(client, items, concurrency=16, progress=progress), kill_mid_burst(), timeout_s=90)
    answered_before = summary(items)
    created = [item for item in items if item.last == "201"]
    cut_off = [item for item in items if not item.accepted]
    assert len(created) >= 40, answered_before
    assert cut_off, f"the kill came after the burst: {answered_before}"
    assert all(item.last == "201" or (item.last or "").startswith("no answer") for item in items), answered_before

    broker.start()
    async with broker.client(timeout_s=10) as client:
        # Every 201 exists after the restart, at once (it was committed before the answer).
        for item in created:
            response = await client.get(f"/v1/jobs/{item.job_id}")
            assert response.status_code == 200, (item.tag, response.text)
        # Resend the unanswered ones with their keys: 200 = the cut-off request had been stored, 201 = not.
        await asyncio.gather(*(submit_one(client, item) for item in cut_off))
        assert all(item.last in {"200", "201"} for item in cut_off), [(i.tag, i.answers) for i in cut_off]
        # A second resend of everything is a replay: the same job, 200.
        await burst(client, items, concurrency=16)
        assert all(item.last == "200" for item in items), summary(items)
        await wait_all_terminal(client, run_id, len(items), timeout_s=150, context=broker.log_tail)
        await check_exactly_once(client, workspace, run_id, items)
