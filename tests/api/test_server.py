"""The broker over a real socket (tests/api/server.py): ``python -m app`` on 127.0.0.1, as dev/run.sh runs it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.spec import TERMINAL_STATES
from tests.api.conftest import job_body, write_factories
from tests.api.server import Server, lab_factories, serving, start_server


@pytest.fixture
def api_only_server(tmp_path: Path, sqlite_copy: Path) -> Iterator[Server]:
    with serving(tmp_path, sqlite_copy, write_factories(tmp_path), run_loops=False, ready_timeout_s=30) as server:
        yield server


def test_a_job_posted_over_http_is_readable_at_once(api_only_server: Server) -> None:
    with api_only_server.client() as client:
        created = client.post("/v1/jobs", json=job_body())
        assert created.status_code == 201, created.text
        read = client.get(created.headers["location"])
        assert read.status_code == 200
        assert read.json()["id"] == created.json()["id"]
        assert read.json()["state"] == "queued"


@pytest.mark.lab
def test_a_job_runs_on_slurm_to_its_end_with_exit_code_and_output(tmp_path: Path, sqlite_copy: Path) -> None:
    """End to end: broker -> dispatcher -> slurmrestd on the lab's alpha -> reconciler -> output over HTTP."""
    server = start_server(tmp_path, sqlite_copy, lab_factories(tmp_path), run_loops=True)
    try:
        server.wait_ready(timeout_s=60)
        body = job_body(
            command=["bash", "-c", "echo hello from conveyor; echo oops >&2; exit 3"],
            resources={"time_limit_min": 5},
            placement={"factory": "alpha"},
        )
        with server.client() as client:
            created = client.post("/v1/jobs", json=body)
            assert created.status_code == 201, created.text
            location = created.headers["location"]
            deadline = time.monotonic() + 120
            job = client.get(location).json()
            while job["state"] not in {str(state) for state in TERMINAL_STATES}:
                assert time.monotonic() < deadline, f"job not finished in 120 s: {job}\n{server.log.read_text()}"
                time.sleep(0.2)  # poll interval
                job = client.get(location).json()
            assert (job["state"], job["exit_code"]) == ("failed", 3), job
            assert job["factory"] == "alpha"
            assert job["site_user"] == "alice"
            assert isinstance(job["slurm_job_id"], int)
            stdout = client.get(f"{location}/output")
            assert stdout.status_code == 200, stdout.text
            assert "hello from conveyor" in stdout.json()["content"]
            stderr = client.get(f"{location}/output", params={"stream": "stderr"})
            assert "oops" in stderr.json()["content"]
            kinds = [e["kind"] for e in client.get(f"{location}/events").json()["items"]]
            assert kinds[0] == "created"
            assert "attempt_started" in kinds
    finally:
        server.stop()
