"""Issue #3 (c): the broker's PostgreSQL stopped (by its PID, dev/postgres.py) during an accept burst.

While the database is down the API answers 503 problem+json with Retry-After: never a 500, never a hang (the
clients' timeout is bounded and must not fire). Nothing answered 201 is lost: once PostgreSQL is back, every
such job exists and runs exactly once. Requests answered 503 are resent with their Idempotency-Key, as a
client honouring Retry-After would, and also end up as exactly one job each.

PostgreSQL is shared with the other tests: it is started again, and must accept connections, before this test
ends, whatever happens.

PostgreSQL only, on purpose: the other fault tests run on both databases, but this outage has no SQLite
counterpart. Embedded SQLite is a file inside the broker's own process, not a server that can stop while the
broker runs; a SQLite that cannot be written is a broken disk, not an outage the API should ride out.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from conveyor.problems import PROBLEM_MEDIA_TYPE
from tests.db.postgres_control import dev_postgres, ensure_postgres_up
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
from tests.lab import Cluster

# exclusive: it stops PostgreSQL, which other tests use
pytestmark = [pytest.mark.lab, pytest.mark.postgresql, pytest.mark.exclusive, pytest.mark.timeout(300)]


async def _wait_ready(client: httpx.AsyncClient, ready: bool, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while (await client.get("/readyz")).status_code != (200 if ready else 503):
        assert time.monotonic() < deadline, f"/readyz not {'ready' if ready else 'unready'} after {timeout_s} s"
        await asyncio.sleep(0.1)  # a poll interval


def _check_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE), response.headers
    assert int(response.headers["retry-after"]) > 0, response.headers
    problem = response.json()
    assert problem["status"] == 503, problem
    assert problem["code"] == "unavailable.database", problem


async def test_postgres_stopped_mid_burst_answers_503_and_loses_no_201(
    postgres_broker: BrokerProcess, workspace: Workspace, run_id: str, echo: Cluster
) -> None:
    broker = postgres_broker
    items = submissions(workspace, echo.name, run_id, 150)
    progress = Progress()
    broker.start()

    async def stop_then_start_postgres(client: httpx.AsyncClient) -> None:
        await progress.until(lambda c: c["201"] >= 40, 60, "40 jobs accepted")
        await asyncio.to_thread(dev_postgres, "stop")
        try:
            await _wait_ready(client, ready=False, timeout_s=15)
            # The clients keep submitting meanwhile: wait until the outage has been answered a few times.
            await progress.until(lambda c: c["503"] >= 10 or c["answered"] + c["unanswered"] == len(items), 30, "503s")
        finally:
            await ensure_postgres_up()
        await _wait_ready(client, ready=True, timeout_s=60)

    try:
        async with broker.client(timeout_s=15) as client:
            await run_with(
                burst(client, items, concurrency=16, progress=progress), stop_then_start_postgres(client), 120
            )
            answers = summary(items)
            assert set(answers) <= {"201", "503"}, f"only 201 or 503 may answer (no 500, no hang): {answers}"
            assert answers.get("201", 0) >= 40, answers
            assert answers.get("503", 0) >= 1, answers
            for item in items:
                for response in item.problems:
                    _check_unavailable(response)
            # Clients retry the 503s with the same key once the database is back.
            unavailable = [item for item in items if item.last == "503"]
            await asyncio.gather(*(submit_one(client, item) for item in unavailable))
            assert all(item.last in {"200", "201"} for item in unavailable), summary(unavailable)
            await wait_all_terminal(client, run_id, len(items), timeout_s=180, context=broker.log_tail)
            await check_exactly_once(client, workspace, run_id, items)
    finally:
        broker.stop()
        await ensure_postgres_up()
