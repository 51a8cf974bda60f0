"""How a job runs (launcher, output path, container), read back from Slurm against its sbatch twin.

Per Slurm release and adapter, as tests/adapters/test_sbatch_twins.py: a job whose command carries shell
metacharacters, started once per task by ``srun`` across every node of the cluster's CPU partition, writing to
output and error patterns with ``{job_id}``, and on the cluster whose root has Apptainer, inside the lab's image
with a read-only mount and an environment variable of its own. Its twin is
the same compiled script given to plain ``sbatch`` by the same user. Slurm's stored batch scripts must be the
same (the broker's carries the adapters' directive fence, nothing else), the output paths Slurm records must be
the patterns expanded, and each task must have printed every argument exactly as given.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

import pytest

from broker.jobs.launch import MASTER_PORT_BASE, MASTER_PORT_SPAN
from conveyor.spec import JobSpec
from dev.lab.images import APPTAINER_SUITE, TEST_IMAGE
from slurm_adapters.records import SlurmJobSpec, SlurmJobState
from slurm_adapters.safety import fenced_script
from tests.adapters.test_sbatch_twins import (
    KINDS,
    PROJECT,
    agent_fleet_if_needed,
    broker_rendering,
    open_adapter,
    release_clusters,
    show_job_dd,
    submit_twin,
)
from tests.lab import SUBMIT_USER, Cluster, job_dir, kinds_on, new_tag, wait_for_job, wait_until
from tests.stub_torchrun import install_stub_torchrun

pytestmark = pytest.mark.lab

# No newline inside an argument here: each task prints one line, so that the tasks' lines, which srun passes on
# a line at a time, never mix (tests/unit/test_launch.py covers newlines, through a real bash).
ARGUMENTS = ["a b", "$(touch pwned)", "it's", "; rm -rf /", "`id`", "\\n", "*", "$HOME", "%s %%", "\t"]
# Each task prints the arguments, the container's NOTE and what the container sees at /in (nothing outside one).
PRINT_ARGUMENTS = [
    "sh", "-c", 'printf "%s|" "$@" "${NOTE-}"; if [ -d /in ]; then cat /in/marker; touch /in/w 2>/dev/null || '
    "printf ' (ro)'; fi; echo", "sh", *ARGUMENTS,
]  # fmt: skip
NOTE = "x y 'z' $(touch pwned-too) \\"
MARKER = "mounted"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" in metafunc.fixturenames:
        cases = [(kind, cluster) for cluster in release_clusters() for kind in kinds_on(KINDS, cluster)]
        ids = [f"{kind}-{cluster.name}-{cluster.short_release}" for kind, cluster in cases]
        metafunc.parametrize("case", cases, ids=ids)


def workload_spec(cluster: Cluster) -> JobSpec:
    partition = cluster.cpu_partition
    directory = job_dir(cluster, new_tag("workload"))
    fields: dict[str, Any] = {
        "name": "workload-twin",
        "project": PROJECT,
        "command": PRINT_ARGUMENTS,
        "launcher": "srun",
        "resources": {"nodes": len(partition["nodes"]), "tasks_per_node": 1, "time_limit_min": 3},
        "working_directory": directory,
        "stdout": f"{directory}/out-{{job_id}}.txt",
        "stderr": f"{directory}/err-{{job_id}}.txt",
        "placement": {"factory": cluster.name},
    }
    if cluster.raw.get("suite") == APPTAINER_SUITE:
        mount = {"source": directory, "target": "/in", "read_only": True}
        fields["container"] = {"image": TEST_IMAGE, "mounts": [mount], "env": {"NOTE": NOTE}}
    cluster.host_path(f"{directory}/marker").write_text(MARKER)
    return JobSpec.model_validate(fields)


def stored_script(cluster: Cluster, job_id: int) -> str:
    return cluster.slurm("scontrol", "write", "batch_script", str(job_id), "-")


async def completed_twins(
    case: tuple[str, Cluster], spec: JobSpec, request: pytest.FixtureRequest
) -> tuple[SlurmJobSpec, int, int]:
    """``spec`` as the broker renders it, through the case's adapter and by plain sbatch, both completed: (the
    rendering, the broker's job id, the twin's). Slurm stored the same script for both (the broker's with the
    adapters' directive fence, nothing else) and the same layout."""
    kind, cluster = case
    rendered = broker_rendering(cluster, spec)
    async with open_adapter(kind, cluster, agent_fleet_if_needed(request, [kind])) as adapter:
        broker_id = await adapter.submit(rendered, SUBMIT_USER)
        twin_id = submit_twin(cluster, rendered, spec)
        for job_id in (broker_id, twin_id):
            record = await wait_for_job(adapter, job_id, {SlurmJobState.COMPLETED}, timeout_s=120)
            assert record.state is SlurmJobState.COMPLETED, (record, cluster.host_path(rendered.working_directory))
    assert stored_script(cluster, broker_id) == fenced_script(stored_script(cluster, twin_id))
    broker, twin = show_job_dd(cluster, broker_id), show_job_dd(cluster, twin_id)
    for field in ("NumNodes", "NumTasks", "Partition", "TimeLimit"):
        assert broker.get(field) == twin.get(field), field
    return rendered, broker_id, twin_id


async def test_launcher_output_path_and_container_are_the_twins(
    case: tuple[str, Cluster], request: pytest.FixtureRequest
) -> None:
    _, cluster = case
    spec = workload_spec(cluster)
    rendered, broker_id, _ = await completed_twins(case, spec, request)
    directory = rendered.working_directory
    broker = show_job_dd(cluster, broker_id)
    assert broker.get("StdOut") == f"{directory}/out-{broker_id}.txt"
    assert broker.get("StdErr") == f"{directory}/err-{broker_id}.txt"
    if spec.container is not None:
        assert f"apptainer exec --containall --bind {directory} --pwd {directory} " in rendered.script
        assert f" {TEST_IMAGE} sh -c " in rendered.script
    assert shlex.join(PRINT_ARGUMENTS) in rendered.script
    inside = spec.container is not None
    line = "".join(f"{argument}|" for argument in ARGUMENTS) + (f"{NOTE}|{MARKER} (ro)\n" if inside else "|\n")
    broker_out = cluster.host_path(f"{directory}/out-{broker_id}.txt")
    lines = line * spec.resources.nodes  # one per task, in any order
    wait_until(lambda: broker_out.exists() and len(broker_out.read_text()) >= len(lines), 10, "the job's output")
    assert broker_out.read_text() == lines
    assert cluster.host_path(f"{directory}/twin.out").read_text() == lines
    assert not cluster.host_path(f"{directory}/pwned").exists()
    assert not cluster.host_path(f"{directory}/pwned-too").exists()
    assert cluster.host_path(f"{directory}/err-{broker_id}.txt").read_text() == ""


def torchrun_spec(cluster: Cluster) -> JobSpec:
    nodes = len(cluster.cpu_partition["nodes"])
    directory = job_dir(cluster, new_tag("torchrun"))
    return JobSpec.model_validate(
        {
            "name": "torchrun-twin",
            "project": PROJECT,
            "command": ["/bin/echo", "step", "$RANK-not-expanded"],
            "launcher": "torchrun",
            "resources": {"nodes": nodes, "tasks_per_node": 2, "cpus_per_task": 1, "time_limit_min": 3},
            "working_directory": directory,
            "environment": {"PATH": install_stub_torchrun(cluster, directory)},
            "stdout": f"{directory}/train-{{job_id}}.out",
            "placement": {"factory": cluster.name},
        }
    )


def rendezvous(cluster: Cluster, job_id: int, world: int) -> str:
    """The line the stub prints when ``world`` ranks met at the job's first node's NodeAddr and derived port."""
    nodes = show_job_dd(cluster, job_id).fields["NodeList"]
    first = cluster.slurm("scontrol", "show", "hostnames", nodes).split()[0]
    address = re.search(r"NodeAddr=(\S+)", cluster.slurm("scontrol", "show", "node", first))
    assert address is not None
    port = MASTER_PORT_BASE + job_id % MASTER_PORT_SPAN
    return f"rendezvous {address[1]}:{port} id {job_id}: {world} ranks joined\n"


async def test_torchrun_meets_at_the_first_nodes_address_as_its_twin_does(
    case: tuple[str, Cluster], request: pytest.FixtureRequest
) -> None:
    _, cluster = case
    spec = torchrun_spec(cluster)
    rendered, broker_id, twin_id = await completed_twins(case, spec, request)
    directory = rendered.working_directory
    assert show_job_dd(cluster, broker_id).get("StdOut") == f"{directory}/train-{broker_id}.out"
    world = spec.resources.nodes * spec.resources.tasks_per_node
    for job_id, out in ((broker_id, f"train-{broker_id}.out"), (twin_id, "twin.out")):
        output = cluster.host_path(f"{directory}/{out}").read_text()
        assert rendezvous(cluster, job_id, world) in output, output
        assert output.count("step $RANK-not-expanded\n") == world, output  # one per rank, unexpanded
