"""The SDK against a live broker (``python -m app`` on 127.0.0.1) and the real lab, with the blocking and the
async client: submit, wait ending in each terminal state (one timed-out job shared by both), listing across
pages, cancel, events, output, a dry run. Retries with real mechanisms: a broker with a low request rate
answers 429, a broker whose PostgreSQL is stopped answers 503, and the client recovers once each clears."""

from __future__ import annotations

import asyncio
import collections
import shutil
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from broker.db.migrate import upgrade
from conveyor import AsyncClient, Backoff, Client, JobSpec, JobState, RetryPolicy, WaitTimeout
from tests.api.conftest import PROJECT, TOKEN
from tests.api.server import Server, lab_factories, start_server
from tests.db.conftest import PostgresDatabases
from tests.db.postgres_control import dev_postgres, ensure_postgres_up

pytestmark = [pytest.mark.lab, pytest.mark.timeout(300)]
RUN = uuid.uuid4().hex[:8]  # this module's jobs carry the label run=RUN
FAST = Backoff(first_s=0.2, cap_s=1.0)  # the lab's jobs take seconds: poll often


def spec(*command: str, minutes: int = 5, project: str = PROJECT, factory: str = "bravo", **labels: str) -> JobSpec:
    return JobSpec.model_validate({
        "name": f"sdk-{command[0]}", "project": project, "command": list(command),
        "resources": {"time_limit_min": minutes}, "placement": {"factory": factory},
        "labels": {"run": RUN, **labels},
    })  # fmt: skip


@dataclass
class Live:
    server: Server

    def client(self, **options: Any) -> Client:
        return Client(self.server.base_url, token=TOKEN, backoff=FAST, **options)

    def async_client(self, **options: Any) -> AsyncClient:
        return AsyncClient(self.server.base_url, token=TOKEN, backoff=FAST, **options)


def _broker(directory: Path, template: Path, **env: str) -> Server:
    database = directory / "conveyor.db"
    shutil.copyfile(template, database)
    return start_server(directory, database, lab_factories(directory, only=["alpha", "bravo"]), run_loops=True,
                        env={"CONVEYOR_DATABASE_URL": f"sqlite+aiosqlite:///{database}", **env})  # fmt: skip


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, migrated_sqlite_template: Path) -> Iterator[Live]:
    server = _broker(tmp_path_factory.mktemp("sdk-broker"), migrated_sqlite_template)
    try:
        server.wait_ready(timeout_s=60)
        yield Live(server)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def timed_out(live: Live) -> str:
    """One job that outlives its 1-minute limit, submitted first so its minute passes while others run."""
    with live.client() as client:
        return client.submit(spec("sleep", "600", minutes=1, case="timeout")).id


def test_the_blocking_client_from_submit_to_every_end(live: Live, timed_out: str) -> None:
    with live.client() as client:
        dry = client.dry_run(spec("echo", "dry"))
        assert (dry.factory, dry.rendering.site_user) == ("bravo", "alice")
        assert "echo dry" in dry.rendering.script

        done = client.submit(spec("echo", f"hello-sdk-{RUN}"))
        failed = client.submit(spec("false"))
        long = client.submit(spec("sleep", "600"))
        assert done.wait(timeout=120).state is JobState.COMPLETED
        assert f"hello-sdk-{RUN}" in done.output().content
        events = list(done.events())
        assert events[0].kind == "created"
        assert events[-1].to_state is JobState.COMPLETED
        assert failed.wait(timeout=120).state is JobState.FAILED

        assert long.wait(until={"running"}, timeout=120).state is JobState.RUNNING
        with pytest.raises(WaitTimeout):
            long.wait(until={"completed"}, timeout=0.5)
        long.cancel()
        assert long.wait(timeout=120).state is JobState.CANCELLED
        assert client.job(done.id).state is JobState.COMPLETED  # attach by id

        mine = [job.id for job in client.jobs.list(label={"run": RUN}, page_size=1)]  # a page per job
        assert {done.id, failed.id, long.id, timed_out} <= set(mine)
        assert len(mine) == len(set(mine))


async def test_the_async_client_from_submit_to_every_end(live: Live, timed_out: str) -> None:
    async with live.async_client() as client:
        done = await client.submit(spec("echo", f"hello-async-{RUN}", client="async"))
        failed = await client.submit(spec("false", client="async"))
        long = await client.submit(spec("sleep", "600", client="async"))
        ends = await asyncio.gather(done.wait(timeout=120), failed.wait(timeout=120),
                                    long.wait(until={"running"}, timeout=120))  # fmt: skip
        assert [job.state for job in ends] == [JobState.COMPLETED, JobState.FAILED, JobState.RUNNING]
        assert f"hello-async-{RUN}" in (await done.output()).content
        kinds = [event.kind async for event in done.events()]
        assert (kinds[0], kinds.count("created")) == ("created", 1)
        await long.cancel()
        assert (await long.wait(timeout=120)).state is JobState.CANCELLED
        listed = [job.id async for job in client.jobs.list(label={"client": "async"}, page_size=2)]
        assert sorted(listed) == sorted([done.id, failed.id, long.id])
        # The shared timed-out job, seen through this client too.
        assert (await (await client.job(timed_out)).wait(timeout=240)).state is JobState.TIMEOUT


def test_a_job_slurm_refuses_ends_rejected_with_slurms_reason(live: Live) -> None:
    """alpha has slurmdbd and enforces accounts: a project mapped to an account Slurm does not know is refused."""
    project = "EHPC-SDK-REJECT-1"
    with httpx.Client(base_url=live.server.base_url, headers={"Authorization": f"Bearer {TOKEN}"}) as admin:
        made = admin.post("/v1/admin/projects", json={"id": project, "title": "refused by Slurm"})
        assert made.status_code == 201, made.text
        mapped = admin.put(f"/v1/factories/alpha/accounts/project/{project}",
                           json={"slurm_user": "alice", "slurm_account": "no-such-account"})  # fmt: skip
        assert mapped.status_code == 200, mapped.text
    with live.client() as client:
        job = client.submit(spec("true", project=project, factory="alpha")).wait(timeout=120)
    assert job.state is JobState.REJECTED
    assert "account" in (job.state_reason or "").lower(), job.state_reason


def test_the_timed_out_job_as_the_blocking_client_sees_it(live: Live, timed_out: str) -> None:
    with live.client() as client:
        job = client.job(timed_out).wait(timeout=240)
    assert job.state is JobState.TIMEOUT
    assert job.slurm_state == "TIMEOUT"


class Counting(httpx.HTTPTransport):
    """The real transport, counting the statuses it hands back (to prove the retries happened)."""

    def __init__(self) -> None:
        super().__init__()
        self.statuses: collections.Counter[int] = collections.Counter()
        self.first_503 = threading.Event()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        self.statuses[response.status_code] += 1
        if response.status_code == 503:
            self.first_503.set()
        return response


def test_both_clients_ride_out_429_from_a_rate_limited_broker(tmp_path: Path, migrated_sqlite_template: Path) -> None:
    server = _broker(tmp_path, migrated_sqlite_template, CONVEYOR_REQUESTS_PER_MINUTE="60", CONVEYOR_RUN_LOOPS="false")
    try:
        server.wait_ready(timeout_s=60)
        transport = Counting()
        with Client(server.base_url, token=TOKEN, transport=transport) as client:
            answers = [client.me().id for _ in range(64)]  # 60 in the burst, then one a second
        assert answers == ["dev"] * 64
        assert transport.statuses[429] >= 1, transport.statuses

        async def async_calls() -> list[str]:
            async with AsyncClient(server.base_url, token=TOKEN) as client:
                return [(await client.me()).id for _ in range(3)]  # the bucket is empty: each waits its turn

        assert asyncio.run(async_calls()) == ["dev"] * 3
    finally:
        server.stop()


@pytest.mark.postgresql
@pytest.mark.exclusive  # stops PostgreSQL
def test_the_client_rides_out_503_while_postgresql_is_stopped(
    tmp_path: Path, postgres_databases: PostgresDatabases
) -> None:
    url = postgres_databases.create()
    upgrade(url)
    server = start_server(tmp_path, tmp_path / "unused.db", lab_factories(tmp_path, only=["bravo"]), run_loops=False,
                          env={"CONVEYOR_DATABASE_URL": url})  # fmt: skip
    restarter: threading.Thread | None = None
    try:
        server.wait_ready(timeout_s=60)
        transport = Counting()
        retry = RetryPolicy(attempts=100, cap_s=2.0)
        with Client(server.base_url, token=TOKEN, transport=transport, retry=retry) as client:
            client.me()
            dev_postgres("stop")

            def start_again_once_refused() -> None:
                transport.first_503.wait(timeout=60)  # the client has met the outage
                dev_postgres("start")

            restarter = threading.Thread(target=start_again_once_refused)
            restarter.start()
            job = client.submit(spec("true", case="outage"))  # answered 503 until PostgreSQL is back
            restarter.join(timeout=120)
            assert transport.statuses[503] >= 1, transport.statuses
            assert [j.id for j in client.jobs.list(label={"case": "outage"})] == [job.id]  # exactly one
    finally:
        if restarter is not None:
            restarter.join(timeout=120)
        asyncio.run(ensure_postgres_up())
        server.stop()
