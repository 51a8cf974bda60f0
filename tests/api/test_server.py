"""The broker over a real socket: ``python -m app`` as a subprocess on 127.0.0.1, exactly as dev/run.sh runs it.

Waits are deadlines on polled conditions, never fixed sleeps. The server is stopped by its PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conveyor.spec import TERMINAL_STATES
from tests.api.conftest import TOKEN, job_body, write_factories

REPO = Path(__file__).resolve().parents[2]
LAB_FACTORIES = Path(os.environ.get("CONVEYOR_LAB_DIR", "/var/lib/conveyor-lab")) / "factories.yaml"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    def __init__(self, process: subprocess.Popen[bytes], base_url: str, log: Path) -> None:
        self.process = process
        self.base_url = base_url
        self.log = log

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the broker exited with {self.process.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)  # a poll interval, not a wait for something to happen
        pytest.fail(f"/readyz not ready within {timeout_s} s:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()


def start_server(tmp_path: Path, database: Path, factories: Path, *, run_loops: bool) -> Server:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")},
        "CONVEYOR_DATA_DIR": str(tmp_path),
        "CONVEYOR_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
        "CONVEYOR_FACTORIES_FILE": str(factories),
        "CONVEYOR_DEV_MODE": "true",
        "CONVEYOR_DEV_TOKEN": TOKEN,
        "CONVEYOR_HOST": "127.0.0.1",
        "CONVEYOR_PORT": str(port),
        "CONVEYOR_RUN_LOOPS": "true" if run_loops else "false",
        "CONVEYOR_DISPATCHER_INTERVAL_S": "0.2",
        "CONVEYOR_RECONCILER_INTERVAL_S": "0.5",
    }
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "app"], cwd=REPO, env=env, stdout=out, stderr=out)
    return Server(process, f"http://127.0.0.1:{port}", log)


@pytest.fixture
def sqlite_copy(tmp_path: Path, migrated_sqlite_template: Path) -> Path:
    path = tmp_path / "conveyor.db"
    shutil.copyfile(migrated_sqlite_template, path)
    return path


@pytest.fixture
def api_only_server(tmp_path: Path, sqlite_copy: Path) -> Iterator[Server]:
    server = start_server(tmp_path, sqlite_copy, write_factories(tmp_path), run_loops=False)
    try:
        server.wait_ready(timeout_s=30)
        yield server
    finally:
        server.stop()


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
    if not LAB_FACTORIES.exists():
        pytest.fail(f"no Slurm lab: {LAB_FACTORIES} is missing. Start it with `python3 -m dev.lab start` (as root).")
    server = start_server(tmp_path, sqlite_copy, LAB_FACTORIES, run_loops=True)
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
