"""Issue #3, what it must show, over HTTP: a real uvicorn (tests/api/server.py) in front of the real Slurm lab.

Every fact about Slurm is read with the cluster's own ``scontrol``/``squeue`` (the test's own path to Slurm),
never through the broker or its adapters. Waits are deadlines on polled conditions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conveyor.spec import TERMINAL_STATES
from tests.api.conftest import job_body
from tests.api.server import Server, lab_factories, serving
from tests.lab import Cluster, clusters

pytestmark = pytest.mark.lab

TERMINAL = {str(state) for state in TERMINAL_STATES}
POLL_S = 0.2  # a poll interval, not a wait for something to happen


def lab_cluster(name: str) -> Cluster:
    return next(cluster for cluster in clusters() if cluster.name == name)


@pytest.fixture
def server(tmp_path: Path, sqlite_copy: Path, database_url: str) -> Iterator[Server]:
    """The broker with its loops on, in front of every lab Factory, on SQLite and on PostgreSQL."""
    env = {"CONVEYOR_DATABASE_URL": database_url}
    with serving(tmp_path, sqlite_copy, lab_factories(tmp_path), run_loops=True, env=env) as server:
        yield server


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


def submit(client: httpx.Client, **changes: Any) -> dict[str, Any]:
    """POST a job; a 201 job must be readable at once (GET right after POST: 200, same job)."""
    created = client.post("/v1/jobs", json=job_body(**changes))
    assert created.status_code == 201, created.text
    read = client.get(created.headers["location"])
    assert read.status_code == 200, read.text
    assert read.json()["id"] == created.json()["id"]
    job: dict[str, Any] = read.json()
    return job


def wait_job(
    client: httpx.Client, job_id: str, done: Callable[[dict[str, Any]], bool], what: str, timeout_s: float = 120
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        answer = client.get(f"/v1/jobs/{job_id}")
        assert answer.status_code == 200, answer.text
        job: dict[str, Any] = answer.json()
        if done(job):
            return job
        assert job["state"] not in TERMINAL, f"job {job_id} ended {job['state']} before {what}: {job}"
        assert time.monotonic() < deadline, f"job {job_id} not {what} within {timeout_s} s: {job}"
        time.sleep(POLL_S)


def wait_running(client: httpx.Client, job_id: str) -> dict[str, Any]:
    return wait_job(client, job_id, lambda job: job["state"] == "running", "running")


def cancel_and_wait(client: httpx.Client, job_id: str) -> dict[str, Any]:
    answer = client.post(f"/v1/jobs/{job_id}/cancel")
    assert answer.status_code in {202, 409}, answer.text
    return wait_job(client, job_id, lambda job: job["state"] in TERMINAL, "ended after its cancel")


def slurm_state(cluster: Cluster, slurm_job_id: int, expected: str, timeout_s: float = 30) -> str:
    """Slurm's own JobState for the job, once it is ``expected`` (or the last one seen, at the deadline)."""
    deadline = time.monotonic() + timeout_s
    while (state := cluster.show_job(slurm_job_id)["JobState"]) != expected and time.monotonic() < deadline:
        time.sleep(POLL_S)
    return state


def test_a_gpu_job_lands_on_a_gpu_node_of_a_gpu_factory(client: httpx.Client) -> None:
    job = submit(
        client,
        name="gpu-e2e",
        command=["sleep", "300"],
        resources={"gpus_per_node": 1, "gpu_type": "a100", "time_limit_min": 10},
    )
    try:
        running = wait_running(client, job["id"])
        cluster = lab_cluster(running["factory"])
        gpu_partition = cluster.gpu_partition
        assert gpu_partition is not None, f"{cluster.name} has no GPU partition, yet the broker sent a GPU job there"
        assert "a100" in gpu_partition["gpus"]
        assert running["partition"] == gpu_partition["name"]
        shown = cluster.show_job(running["slurm_job_id"])
        assert shown["Comment"] == job["id"]
        assert shown["Partition"] == gpu_partition["name"]
        tres_per_node = shown.get("TresPerNode", "")
        assert "gpu:a100:1" in tres_per_node, f"TresPerNode={tres_per_node!r}"
        gpu_nodes = {node["name"] for node in cluster.raw["nodes"] if node["gpus"].get("a100", 0) > 0}
        assert shown["NodeList"] in gpu_nodes, f"{shown['NodeList']} is not one of {cluster.name}'s A100 nodes"
    finally:
        cancel_and_wait(client, job["id"])


def test_a_job_restricted_to_a_country_runs_only_on_that_countrys_factory(client: httpx.Client) -> None:
    finland = [c for c in clusters() if c.raw["country"] == "FI"]
    assert [c.name for c in finland] == ["charlie"]
    job = submit(client, name="fi-only", command=["sleep", "300"], placement={"countries": ["FI"]})
    try:
        running = wait_running(client, job["id"])
        assert running["factory"] == "charlie"
        charlie = finland[0]
        assert charlie.show_job(running["slurm_job_id"])["Comment"] == job["id"]
        for cluster in clusters():  # every job Slurm still knows of, on every cluster: the tag is on charlie only
            comments = cluster.slurm("squeue", "--noheader", "--states=all", "--format=%k").split()
            expected = 1 if cluster.name == "charlie" else 0
            assert comments.count(job["id"]) == expected, f"{cluster.name} has {comments.count(job['id'])}"
        events = client.get(f"/v1/jobs/{job['id']}/events").json()["items"]
        factories = {e["detail"].get("factory") for e in events if e["detail"].get("factory")}
        assert factories <= {"charlie"}, events
    finally:
        cancel_and_wait(client, job["id"])


def test_a_running_job_cancelled_over_http_ends_cancelled_in_the_broker_and_in_slurm(client: httpx.Client) -> None:
    job = submit(client, name="cancel-e2e", command=["sleep", "300"], placement={"factory": "bravo"})
    running = wait_running(client, job["id"])
    bravo = lab_cluster("bravo")
    assert bravo.show_job(running["slurm_job_id"])["JobState"] == "RUNNING"
    answer = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert answer.status_code == 202, answer.text
    assert answer.json()["cancel_requested"] is True
    ended = wait_job(client, job["id"], lambda j: j["state"] == "cancelled", "cancelled")
    assert ended["ended_at"] is not None
    assert slurm_state(bravo, running["slurm_job_id"], "CANCELLED") == "CANCELLED"
    again = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert again.status_code in {202, 409}, again.text  # asking again after the end is harmless or refused


def test_every_job_answered_201_is_readable_at_once_while_the_loops_run(client: httpx.Client) -> None:
    # The dispatcher picks each one up at once (it is woken by the commit): reads race its writes.
    ids = [submit(client, name=f"read-at-once-{n}", command=["true"])["id"] for n in range(20)]
    for job_id in ids:
        wait_job(client, job_id, lambda j: j["state"] in TERMINAL, "ended")
