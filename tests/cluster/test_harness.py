"""The multi-process harness itself: 3 API and 2 loop processes on one PostgreSQL behind the round-robin proxy.

Jobs submitted through the proxy are accepted by every API process (each one's own access log says how many),
and one API process SIGKILLed mid-burst loses none of the 201s it gave: every submission is resent with its
Idempotency-Key until it is accepted (the proxy skips the dead process), the broker then holds exactly the jobs
it answered, and each runs exactly once on the lab's Factory bravo, dispatched by the two loop processes
(:func:`tests.faults.harness.check_exactly_once`, from the broker, the jobs' own ledger and Slurm). Each job
carries a secret: sealed by the API process that accepted it and unsealed by a loop process (the replicas share
their secrets key file), it is in no column of any table.
"""

from __future__ import annotations

import collections
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.db.engine import create_database
from broker.db.migrate import upgrade
from tests.api.server import LAB_FACTORIES
from tests.cluster.harness import BrokerCluster, answers, broker_cluster
from tests.db.conftest import PostgresDatabases
from tests.db.plaintext import columns_holding
from tests.faults.harness import (
    Progress,
    Workspace,
    burst,
    check_exactly_once,
    factories_file_with,
    jobs_of_run,
    run_with,
    submissions,
    summary,
    wait_all_terminal,
)
from tests.lab import clusters

pytestmark = [pytest.mark.lab, pytest.mark.postgresql, pytest.mark.timeout(300)]

FACTORY = "bravo"  # jobs only: no test kills its daemons (echo's slurmctld may be killed by fault tests)
JOBS = 60
KILL_AFTER = 20  # 201s before one API process is SIGKILLed


@pytest.fixture
def workspace() -> Iterator[Workspace]:
    [cluster] = [c for c in clusters() if c.name == FACTORY]
    made = Workspace.create(cluster, "cluster")
    yield made
    shutil.rmtree(cluster.host_path(made.inside), ignore_errors=True)


@pytest.fixture
def cluster(tmp_path: Path, postgres_databases: PostgresDatabases) -> Iterator[BrokerCluster]:
    url = postgres_databases.create()
    upgrade(url)
    factories = factories_file_with(LAB_FACTORIES, [FACTORY], tmp_path)
    with broker_cluster(tmp_path, url, factories, api=3, loops=2) as started:
        yield started


async def test_api_processes_behind_the_proxy_share_the_burst_and_a_killed_one_loses_no_201(
    cluster: BrokerCluster, workspace: Workspace
) -> None:
    run = secrets.token_hex(4)
    items = submissions(workspace, FACTORY, run, JOBS)
    secret = f"cluster-secret-{secrets.token_hex(8)}"
    for item in items:
        item.body["secret_environment"] = {"CLUSTER_SECRET": secret}
    progress = Progress()
    victim = cluster.api[1]

    async def kill_mid_burst() -> None:
        await progress.until(lambda counts: counts["201"] >= KILL_AFTER, 60, f"{KILL_AFTER} jobs accepted")
        assert cluster.kill(victim) == -9

    async with cluster.client(new_connection_per_request=True) as client:
        await run_with(burst(client, items, concurrency=6, progress=progress), kill_mid_burst(), timeout_s=120)
        for _ in range(5):  # a client resends what got no 201/200, with the same key
            unanswered = [item for item in items if not item.accepted]
            if not unanswered:
                break
            await burst(client, unanswered, concurrency=6)
        assert all(item.accepted for item in items), summary(items)

        # Every job id the broker answered is stored, and nothing else of this run.
        stored = {job["id"] for job in await jobs_of_run(client, run)}
        assert stored == {item.job_id for item in items}

        # The burst landed on every API process, the killed one included, and on nothing else.
        created = {process.base_url: answers(process, "POST", "/v1/jobs")[201] for process in cluster.api}
        assert all(count > 0 for count in created.values()), created
        received = collections.Counter(answer for item in items for answer in item.answers)["201"]
        assert sum(created.values()) <= received == len({item.job_id for item in items if "201" in item.answers})
        assert all(answers(process, "POST", "/v1/jobs")[201] == 0 for process in cluster.loops)
        assert cluster.proxy is not None
        print(f"201s per API process {created}; answers {summary(items)}; proxy {dict(cluster.proxy.connections)}")

        await wait_all_terminal(client, run, JOBS, timeout_s=120, context=cluster.log_tail)
        await check_exactly_once(client, workspace, run, items)
    async with cluster.client() as client:
        assert secret not in (await client.get("/v1/jobs", params={"limit": 200})).text
    database = create_database(cluster.api[0].database_url)
    try:
        assert await columns_holding(database, secret) == []
    finally:
        await database.dispose()
