"""Containers, launchers, output paths and a secret over HTTP: a real uvicorn in front of the real Slurm lab.

Two container jobs on delta (Apptainer in the sid root) and two 2-node torchrun jobs on alpha run at once, each
held by a file the test creates once it has read Slurm's view of the running job (``scontrol show job -dd``), so
"at once" is a fact, not a timing. The torchrun here is a stub with torchrun's command line (no torch wheel is
installed): each node's copy connects its ranks to rank 0 at the rendezvous endpoint it was given, so a launcher
line that starts the wrong number of nodes or ranks, or names the wrong endpoint, never completes.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from broker.jobs.launch import MASTER_PORT_BASE, MASTER_PORT_SPAN
from dev.lab.images import TEST_IMAGE, TEST_IMAGE_ID
from tests.api.server import Server, lab_factories, serving
from tests.api.test_e2e_lab import submit, wait_job
from tests.lab import Cluster, clusters, job_dir, new_tag
from tests.stub_torchrun import install_stub_torchrun

pytestmark = pytest.mark.lab

POLL_S = 0.2  # a poll interval, not a wait for something to happen
TIMEOUT_S = 120.0
GRES_INDEX = re.compile(r"gpu(?::[a-z0-9]+)?:\d+\(IDX:([0-9,-]+)\)")


def lab_cluster(name: str) -> Cluster:
    for cluster in clusters():
        if cluster.name == name:
            return cluster
    pytest.skip(f"the lab has no cluster {name}")


@pytest.fixture
def server(tmp_path: Path, sqlite_copy: Path) -> Iterator[Server]:
    """The broker with its loops on, in front of alpha (multi-node) and delta (Apptainer)."""
    with serving(tmp_path, sqlite_copy, lab_factories(tmp_path, only=["alpha", "delta"]), run_loops=True) as server:
        yield server


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


def output_when(client: httpx.Client, job_id: str, wanted: str) -> str:
    """The job's stdout through the broker once it contains ``wanted``."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        answer = client.get(f"/v1/jobs/{job_id}/output")
        if answer.status_code == 200 and wanted in (content := str(answer.json()["content"])):
            return content
        assert answer.status_code in {200, 409}, answer.text
        assert time.monotonic() < deadline, f"job {job_id}'s output never held {wanted!r}: {answer.text}"
        time.sleep(POLL_S)


def completed(client: httpx.Client, job_id: str) -> dict[str, Any]:
    return wait_job(client, job_id, lambda job: job["state"] == "completed", "completed")


@pytest.fixture
def jobs(client: httpx.Client) -> Iterator[list[dict[str, Any]]]:
    """The jobs a test submits, cancelled at its end should it fail before they ended."""
    submitted: list[dict[str, Any]] = []
    yield submitted
    for job in submitted:
        client.post(f"/v1/jobs/{job['id']}/cancel")


def test_two_gpu_jobs_run_in_the_image_each_seeing_its_own_gpu_as_slurm_gave_it(
    client: httpx.Client, jobs: list[dict[str, Any]]
) -> None:
    delta = lab_cluster("delta")
    tag = new_tag("container")
    directory = job_dir(delta, tag)
    device_dir = f"{delta.raw['cluster_dir']}/dev"
    secret = f"hf_{new_tag('secret')}"
    inside = "cat /etc/os-release; echo CVD=$CUDA_VISIBLE_DEVICES; echo HF=$HF_TOKEN; ls {}; echo listed; "
    inside += "while [ ! -e go-{} ]; do sleep 0.1; done"
    jobs += [
        submit(
            client,
            name=f"container-{n}",
            command=["sh", "-c", inside.format(device_dir, n)],  # the clean environment has no SLURM_JOB_ID
            working_directory=directory,
            resources={"gpus_per_node": 1, "gpu_type": "a100", "time_limit_min": 5},
            container={"image": TEST_IMAGE},
            secret_environment={"HF_TOKEN": secret},
            placement={"factory": "delta"},
        )
        for n in range(2)
    ]
    indices = []
    for job in jobs:
        running = wait_job(client, job["id"], lambda job: job["state"] == "running", "running")
        shown = delta.slurm("scontrol", "show", "job", "-dd", str(running["slurm_job_id"]))
        (index,) = GRES_INDEX.findall(shown)
        indices.append(index)
        output = output_when(client, job["id"], "listed")
        assert f"ID={TEST_IMAGE_ID}" in output  # the image's own os-release, not the sid root's
        assert f"CVD={index}\n" in output
        assert f"HF={secret}\n" in output  # the clean environment got the secret, by reference
        assert secret not in str(running)
        node = re.search(r" NodeList=(\S+)", shown)
        assert node is not None
        assert f"{node[1]}-nvidia0" in output
        assert f"{node[1]}-nvidia1" in output
    assert sorted(indices) == ["0", "1"]  # both ran at once, on the two GPUs of one node
    for n, job in enumerate(jobs):
        (delta.host_path(directory) / f"go-{n}").touch()
        done = completed(client, job["id"])
    script = delta.slurm("scontrol", "write", "batch_script", str(done["slurm_job_id"]), "-")
    assert f"apptainer exec --nv --containall --bind {directory} --pwd {directory}" in script
    assert 'conveyor_apptainer_env HF_TOKEN "$HF_TOKEN"' in script
    assert secret not in script


def test_two_two_node_torchrun_jobs_meet_at_their_first_nodes_address(
    client: httpx.Client, jobs: list[dict[str, Any]]
) -> None:
    alpha = lab_cluster("alpha")
    tag = new_tag("torchrun")
    directory = job_dir(alpha, tag)
    path = install_stub_torchrun(alpha, directory)
    jobs += [
        submit(
            client,
            name=f"torchrun-{n}",
            command=["/bin/echo", "step", "$RANK-not-expanded"],
            working_directory=directory,
            resources={"nodes": 2, "tasks_per_node": 2, "cpus_per_task": 1, "time_limit_min": 5},
            launcher="torchrun",
            environment={"PATH": path, "STUB_TORCHRUN_HOLD": "go"},
            stdout=f"{directory}/train-{{job_id}}.out",
            placement={"factory": "alpha"},
        )
        for n in range(2)
    ]
    for job in jobs:
        running = wait_job(client, job["id"], lambda job: job["state"] == "running", "running")
        slurm_id = running["slurm_job_id"]
        shown = alpha.show_job(slurm_id)
        assert shown["NumNodes"] == "2"
        assert shown["StdOut"] == f"{directory}/train-{slurm_id}.out"
        first = alpha.slurm("scontrol", "show", "hostnames", shown["NodeList"]).split()[0]
        address = re.search(r"NodeAddr=(\S+)", alpha.slurm("scontrol", "show", "node", first))
        assert address is not None
        port = MASTER_PORT_BASE + slurm_id % MASTER_PORT_SPAN
        output_when(client, job["id"], f"rendezvous {address[1]}:{port} id {slurm_id}: 4 ranks joined")
    # Both jobs are running at once, each held at its rendezvous; now let them finish.
    for job in jobs:
        slurm_id = client.get(f"/v1/jobs/{job['id']}").json()["slurm_job_id"]
        (alpha.host_path(directory) / "go").touch()
        done = completed(client, job["id"])
        output = output_when(client, job["id"], "step")
        assert output.count("step $RANK-not-expanded\n") == 4, output  # one per rank, the argument unexpanded
        assert done["slurm_job_id"] == slurm_id
