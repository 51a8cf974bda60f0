"""Issue #3 (a) and (d): the broker process SIGKILLed, then restarted on the same database.

(a) At the dispatcher's two failpoints: right before the Slurm submit (the attempt is committed, Slurm never
heard of the job) and right after it (Slurm has the job, the broker never recorded it). Either way, after a
restart without failpoints the job runs exactly once: the open attempt is settled by looking the tag up.

(d) In the middle of an accept burst of 16 clients, a third of whose jobs carry a secret environment. Every 201
survives; a request cut off without an answer may or may not have been stored, and resending it with the same
Idempotency-Key maps to that job or creates one, never two.

They run on SQLite and on PostgreSQL (the ``database`` fixture): what a crash leaves behind, and how the
restarted broker reads it, is the database's business. Each crash costs the dead broker's heartbeat TTL
(15 s) before its claimed jobs are due again, and an open attempt its settle window (the call's deadline +
MessageTimeout + clock skew, about 20 s on the lab), so the three crashes run side by side, each with a
broker, a database and a ledger of its own (they share nothing but echo), and their waits overlap. Each
crash that fails is reported on its own, by name.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

import pytest

from tests.faults.conftest import CtldWatch, NewBroker, NewWorkspace
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

Crash = Callable[[BrokerProcess, Workspace, str], Awaitable[None]]


async def killed_at_before_submit(broker: BrokerProcess, workspace: Workspace, run: str) -> None:
    """(a) The attempt is committed, Slurm never heard of the job: proven absent by tag (within MinJobAge),
    then submitted by a second attempt."""
    attempts = await _killed_at_failpoint("before_submit", broker, workspace, run)
    assert len(attempts) == 2, attempts


async def killed_at_after_submit(broker: BrokerProcess, workspace: Workspace, run: str) -> None:
    """(a) Slurm has the job, the broker never recorded it: found by tag and recorded, never submitted again."""
    attempts = await _killed_at_failpoint("after_submit", broker, workspace, run)
    assert len(attempts) == 1, attempts


async def _killed_at_failpoint(
    failpoint: str, broker: BrokerProcess, workspace: Workspace, run: str
) -> list[dict[str, object]]:
    """One job; the broker SIGKILLs itself at ``failpoint``; after a restart the job ran exactly once.
    Returns the job's ``attempt_started`` events."""
    [item] = submissions(workspace, "echo", run, 1)
    await asyncio.to_thread(broker.start, failpoints=failpoint)
    async with broker.client() as client:
        assert await submit_one(client, item) == "201", item.problems
    # The dispatcher picks the job up at once and the process kills itself at the failpoint.
    assert await asyncio.to_thread(broker.wait_exit, 60) == -signal.SIGKILL, broker.log_tail()
    assert f"failpoint {failpoint}" in broker.log_tail(), broker.log_tail()
    await asyncio.to_thread(broker.start)  # the same database and port, no failpoints
    async with broker.client() as client:
        # The dead broker's heartbeat must lapse, and the attempt's settle window pass, before it is looked up.
        [job] = await wait_all_terminal(client, run, 1, timeout_s=120, context=broker.log_tail)
        await check_exactly_once(client, workspace, run, [item])
        events = (await client.get(f"/v1/jobs/{job['id']}/events", params={"limit": 500})).json()["items"]
    return [event for event in events if event["kind"] == "attempt_started"]


async def killed_during_an_accept_burst(broker: BrokerProcess, workspace: Workspace, run: str) -> None:
    """(d) 120 submissions by 16 clients, every third with a secret environment; SIGKILL once 40 are accepted;
    restart, resend, and check (a resent secret job is a replay under the key the restarted broker reads)."""
    items = submissions(workspace, "echo", run, 120, secret_every=3)
    progress = Progress()
    await asyncio.to_thread(broker.start)

    async def kill_mid_burst() -> None:
        await progress.until(lambda c: c["201"] >= 40, 60, "40 jobs accepted")
        assert await asyncio.to_thread(broker.kill) == -signal.SIGKILL

    async with broker.client(timeout_s=10) as client:
        await run_with(burst(client, items, concurrency=16, progress=progress), kill_mid_burst(), timeout_s=90)
    answered_before = summary(items)
    created = [item for item in items if item.last == "201"]
    cut_off = [item for item in items if not item.accepted]
    assert len(created) >= 40, answered_before
    assert cut_off, f"the kill came after the burst: {answered_before}"
    assert all(item.last == "201" or (item.last or "").startswith("no answer") for item in items), answered_before

    await asyncio.to_thread(broker.start)
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
        await wait_all_terminal(client, run, len(items), timeout_s=150, context=broker.log_tail)
        await check_exactly_once(client, workspace, run, items)


CRASHES: dict[str, Crash] = {
    "before_submit": killed_at_before_submit,
    "after_submit": killed_at_after_submit,
    "mid_burst": killed_during_an_accept_burst,
}


@pytest.fixture
def crash_brokers(database: str, new_broker: NewBroker) -> dict[str, BrokerProcess]:
    """A broker per crash, each on a fresh database of its own (made here, not inside the test's event loop)."""
    return {name: new_broker(database, name) for name in CRASHES}


async def test_a_broker_killed_at_either_failpoint_or_mid_burst_loses_nothing_and_runs_nothing_twice(
    database: str, crash_brokers: dict[str, BrokerProcess], new_workspace: NewWorkspace, run_id: str,
    echo_ctld: CtldWatch,
) -> None:  # fmt: skip
    del echo_ctld  # a settled slurmctld, and a note on failure if someone else restarts it
    runs = {name: f"{run_id}-{name}" for name in CRASHES}
    outcomes = await asyncio.gather(
        *(crash(crash_brokers[name], new_workspace(runs[name]), runs[name]) for name, crash in CRASHES.items()),
        return_exceptions=True,
    )
    failed = {name: outcome for name, outcome in zip(CRASHES, outcomes, strict=True) if outcome is not None}
    if failed:
        raise ExceptionGroup(
            f"on {database}, crash {', '.join(failed)} failed",
            [_named(name, error) for name, error in failed.items()],
        )


def _named(crash: str, error: BaseException) -> Exception:
    """The crash's failure with a note naming the crash (its traceback kept)."""
    if isinstance(error, Exception):
        error.add_note(f"crash: {crash}")
        return error
    return RuntimeError(f"crash {crash}: {error!r}")
