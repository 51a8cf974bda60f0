"""Issue #3 (b): a Factory's slurmctld SIGKILLed during a 150-job burst, then restarted.

The API keeps answering 201 while Slurm is down (a request never waits on Slurm); the dispatcher's submits
fail or land in doubt, the Factory turns unhealthy, and once slurmctld is back every accepted job runs exactly
once. slurmctld is killed by its PID on the lab's expendable cluster only.

The exceptions, which the invariant names, are all Slurm's own: slurmctld saves its state asynchronously, so
a SIGKILL can make it forget jobs it acknowledged just before (and reuse their ids). Those jobs, and only
those, may end ``lost`` with a reason; even they must never run twice. If such a job had already run and the
broker had seen it end, it is ``completed`` though no Slurm job carries its id any more. And slurmctld can
forget that a job it had saved as pending already ran and ended: it then runs that same Slurm job again after
the restart. Each is allowed only as exactly that, proven from the ledger's times (the jobs' own record of
when they ran): see :class:`tests.faults.harness.SlurmAmnesia`.

It runs on SQLite and on PostgreSQL (the ``database`` fixture): the dispatcher's doubt about a submit that was
in flight when slurmctld died is settled from the attempt records, which live in the database.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from dev.lab import procs
from tests.faults.conftest import CtldWatch
from tests.faults.harness import (
    BrokerProcess,
    Progress,
    SlurmAmnesia,
    Workspace,
    burst,
    check_exactly_once,
    release_launch_failures,
    resume_drained,
    run_with,
    submissions,
    summary,
    wait_all_terminal,
)
from tests.lab import Cluster

pytestmark = [pytest.mark.lab, pytest.mark.exclusive, pytest.mark.timeout(480)]  # kills echo's slurmctld


async def test_slurmctld_killed_mid_burst_loses_no_job_and_runs_none_twice(
    broker: BrokerProcess, workspace: Workspace, run_id: str, echo: Cluster, echo_ctld: CtldWatch
) -> None:
    # 50 accepted before the kill, 50 while slurmctld is down, the rest (~50) while and after it comes back.
    items = submissions(workspace, echo.name, run_id, 150)
    progress = Progress()
    outage: dict[str, float] = {}
    killed_at: list[datetime] = []
    broker.start()

    async def kill_then_restart_slurmctld() -> None:
        await progress.until(lambda c: c["201"] >= 50, 60, "50 jobs accepted")
        killed = await asyncio.to_thread(echo.kill_ctld)
        assert killed is not None, "echo's slurmctld was not running"
        killed_at.append(datetime.now(UTC))
        outage["accepted_before"] = progress.created
        try:
            # Slurm stays down while the API accepts 50 more jobs: those requests cannot have waited on it.
            await progress.until(lambda c: c["201"] >= outage["accepted_before"] + 50, 60, "50 accepts while down")
            outage["accepted_while_down"] = progress.created - outage["accepted_before"]
        finally:
            await asyncio.to_thread(echo.start_ctld)
            echo_ctld.restarted_here()
        outage["up"] = 1

    try:
        async with broker.client(timeout_s=10) as client:
            await run_with(
                burst(client, items, concurrency=16, progress=progress), kill_then_restart_slurmctld(), timeout_s=120
            )
            assert all(item.last == "201" for item in items), summary(items)
            assert outage["accepted_while_down"] >= 50, outage
            resumed: list[str] = []

            def operator_repairs() -> None:
                resume_drained(echo, "Duplicate jobid", resumed)
                release_launch_failures(echo, resumed)

            # A job whose launch failed on a reused id ("Duplicate jobid") is requeued, and Slurm starts a requeued
            # job no sooner than 121 s later (measured on 22.05): the wait allows for one such round.
            await wait_all_terminal(
                client, run_id, len(items), timeout_s=300, context=broker.log_tail, on_poll=operator_repairs
            )
            found = await check_exactly_once(client, workspace, run_id, items, amnesia=SlurmAmnesia(killed_at[0]))
            print(
                f"outcome: {dict(found.states)}; accepted {outage}; resumed {resumed}; "
                f"forgotten by slurmctld: {found.lost}; forgotten after it ran: {found.forgotten_after_it_ran}; "
                f"rerun by slurmctld: {found.rerun_by_slurm}; timed out after it ran: {found.timed_out_after_it_ran}"
            )
    finally:
        if "up" not in outage:
            await asyncio.to_thread(_ensure_ctld, echo, echo_ctld)


def _ensure_ctld(cluster: Cluster, watch: CtldWatch) -> None:
    """Whatever happened, leave echo's slurmctld running for the tests after this one."""
    if procs.recorded_pid(cluster.host_path_of_pid_file()) is None:
        cluster.start_ctld()
        watch.restarted_here()
