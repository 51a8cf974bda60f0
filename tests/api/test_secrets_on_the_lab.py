"""A job's secret environment end to end over HTTP: a real uvicorn (tests/api/server.py, dev mode: its secrets key
made in its data dir on first start) in front of the real Slurm lab, on SQLite and PostgreSQL.

The job prints its secret (``printenv HF_TOKEN``) on two releases' slurmrestd (alpha 22.05, v0.0.38; delta 26.05,
v0.0.42): its output, read back through the broker, is the value, so it reached the job's environment. Nothing
else the broker keeps or says holds it: no answer (the job, listings, events, a dry run, /metrics), no column of
any table, no byte of the SQLite files, no line of the broker's log.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from broker.jobs.secrets import REDACTED
from conveyor.spec import TERMINAL_STATES
from tests.api.conftest import job_body
from tests.api.server import Server, lab_factories, serving
from tests.db.plaintext import columns_holding_at, sqlite_files_holding

pytestmark = pytest.mark.lab

SECRET = "hf_lab-secret-3b9d71e0"
FACTORIES = ("alpha", "delta")
TERMINAL = {str(state) for state in TERMINAL_STATES}
POLL_S = 0.2  # a poll interval, not a wait for something to happen


@pytest.fixture
def server(tmp_path: Path, sqlite_copy: Path, database_url: str) -> Iterator[Server]:
    """The broker with its loops on, in front of alpha and delta, on SQLite and on PostgreSQL."""
    env = {"CONVEYOR_DATABASE_URL": database_url}
    with serving(tmp_path, sqlite_copy, lab_factories(tmp_path, FACTORIES), run_loops=True, env=env) as server:
        yield server


def secret_job(factory: str) -> dict[str, Any]:
    return job_body(
        name=f"secret-{factory}", command=["printenv", "HF_TOKEN"], secret_environment={"HF_TOKEN": SECRET},
        environment={"PLAIN": "visible"}, resources={"time_limit_min": 5}, placement={"factory": factory},
    )  # fmt: skip


def quiet(response: httpx.Response) -> httpx.Response:
    assert SECRET not in response.text, response.text
    return response


def wait_ended(client: httpx.Client, job_id: str, timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        job: dict[str, Any] = quiet(client.get(f"/v1/jobs/{job_id}")).json()
        if job["state"] in TERMINAL:
            return job
        assert time.monotonic() < deadline, f"job {job_id} not ended within {timeout_s} s: {job}"
        time.sleep(POLL_S)


def test_the_secret_reaches_the_jobs_environment_and_nothing_the_broker_keeps_or_says(
    server: Server, database_url: str
) -> None:
    with server.client() as client:
        for factory in FACTORIES:
            dry = quiet(client.post("/v1/jobs", params={"dry_run": "true"}, json=secret_job(factory)))
            assert dry.status_code == 200, dry.text
            # slurmrestd's body has the name with the marker: HF_TOKEN=<redacted>, or "HF_TOKEN":"<redacted>"
            assert re.search(rf'HF_TOKEN(=|":\s*"){re.escape(REDACTED)}"', dry.text), dry.text
        created = [quiet(client.post("/v1/jobs", json=secret_job(factory))) for factory in FACTORIES]
        assert [answer.status_code for answer in created] == [201, 201], [answer.text for answer in created]
        for answer, factory in zip(created, FACTORIES, strict=True):
            job = wait_ended(client, answer.json()["id"])
            assert (job["state"], job["factory"]) == ("completed", factory), job
            assert job["spec"]["secret_environment"] == {"HF_TOKEN": REDACTED}
            output = client.get(f"/v1/jobs/{job['id']}/output")  # the job's own output: its secret, delivered
            assert output.status_code == 200, output.text
            assert output.json()["content"] == f"{SECRET}\n"
            quiet(client.get(f"/v1/jobs/{job['id']}/events"))
        quiet(client.get("/v1/jobs"))
        quiet(client.get("/metrics"))
    assert columns_holding_at(database_url, SECRET) == []
    assert sqlite_files_holding(database_url, SECRET) == []
    assert SECRET not in server.log.read_text(errors="replace")
