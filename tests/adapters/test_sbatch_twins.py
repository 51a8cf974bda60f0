"""Broker jobs against their sbatch twins, per Slurm release and adapter.

A conveyor JobSpec is placed and translated as dispatch does it (broker.jobs.translate) and submitted through
an adapter; its twin is the same job submitted by the same user with plain ``sbatch`` and the options a user
would type for it. Both run to their end, then Slurm itself is asked about each (``scontrol show job -dd``
and the environment the batch script dumped): the broker's job must be the twin in everything the spec
says (node layout, CPUs, GPUs, memory, time limit, environment, exit code and signal).

One cluster per release runs these: the one with the most nodes in its GPU partition (the only multi-node
one is 22.05's alpha; 24.11's and 26.05's GPU partitions have one node, so there the layout is one node's).
One pair per (adapter, cluster) serves the layout, resource and environment tests; the endings (failed,
killed, cancelled, timed out) run for every release and adapter at once, since a timeout takes Slurm a
minute and more (the module takes about 100 s, 90 of them that minute). Kinds ``agent`` and ``agent-cli`` are
the broker's AgentAdapter, through a real broker process and a real agent with slurmrestd inside, or with the
CLI inside on the 22.05 and 24.11 clusters (tests/adapters/agent_fleet.py).
The pyslurm adapter is not in this module (it runs only inside the sid chroot, whose venv has no broker);
test_conformance checks its layout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from broker.factories.placement import FactoryStatus, place
from broker.factories.registry import parse_factories
from broker.jobs.translate import to_slurm_spec
from conveyor.spec import JobSpec
from dev.lab.factories_config import allowed_users, factory_entry
from slurm_adapters.convert import parse_duration_min, parse_gres, parse_key_values
from slurm_adapters.interface import SlurmAdapter
from slurm_adapters.records import SlurmJobSpec, SlurmJobState
from tests.adapters.agent_fleet import AgentFleet
from tests.lab import (
    AGENT_INSIDE,
    SUBMIT_USER,
    Cluster,
    clusters,
    job_dir,
    kinds_on,
    load_lab,
    make_adapter,
    new_tag,
    wait_for_job,
    wait_until,
)

pytestmark = pytest.mark.lab

KINDS = os.environ.get("CONVEYOR_ADAPTERS", "rest,cli,agent,agent-cli,agent-pyslurm").split(",")
PROJECT = "EHPC-AIF-2026PG01-1147"
ENV_DUMP = "env.dump"


def release_clusters() -> list[Cluster]:
    """One cluster per Slurm release: the one whose GPU partition has the most nodes (never the expendable)."""
    best: dict[str, Cluster] = {}
    for cluster in clusters():
        if cluster.raw["expendable"] or cluster.gpu_partition is None:
            continue
        current = best.get(cluster.short_release)
        if current is None or len(cluster.gpu_partition["nodes"]) > len(current.gpu_partition["nodes"]):  # type: ignore[index]
            best[cluster.short_release] = cluster
    return [best[release] for release in sorted(best)]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" in metafunc.fixturenames:
        cases = [(kind, cluster) for cluster in release_clusters() for kind in kinds_on(KINDS, cluster)]
        ids = [f"{kind}-{cluster.name}-{cluster.short_release}" for kind, cluster in cases]
        metafunc.parametrize("case", cases, ids=ids)


# --- the two submissions ------------------------------------------------------------------------------


def job_spec(cluster: Cluster, script: str, **resources: Any) -> JobSpec:
    """A conveyor JobSpec for ``cluster``'s GPU partition, with a working directory of its own."""
    partition = cluster.gpu_partition
    assert partition is not None
    wanted: dict[str, Any] = {
        "nodes": len(partition["nodes"]),
        "tasks_per_node": 2,
        "cpus_per_task": 2,
        "gpus_per_node": 1,
        "gpu_type": next(iter(partition["gpus"])),
        "memory_mb": 700,
        "time_limit_min": 3,
    }
    wanted.update(resources)
    return JobSpec.model_validate(
        {
            "name": "twin",
            "project": PROJECT,
            "script": script,
            "resources": wanted,
            "environment": {"TWIN_PLAIN": "value", "TWIN_SPACES": "a b  c", "TWIN_EQUALS": "x=y=z"},
            "working_directory": job_dir(cluster, new_tag("twin")),
            "placement": {"factory": cluster.name},
        }
    )


def broker_rendering(cluster: Cluster, spec: JobSpec) -> SlurmJobSpec:
    """The adapter's job spec exactly as dispatch makes it: placed on the lab's Factory, then translated."""
    registry = parse_factories({"factories": [factory_entry(cluster, allowed_users(load_lab()))]})
    factory = registry[cluster.name]
    placement = place(spec, registry, {cluster.name: FactoryStatus(healthy=True)})
    return to_slurm_spec(new_tag("broker"), spec, placement, factory)


@dataclass(frozen=True)
class Login:
    """The submit user's passwd entry, as the cluster's nodes see it."""

    home: str
    shell: str


def login_of(cluster: Cluster, user: str) -> Login:
    for line in cluster.host_path("/etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return Login(home=fields[5], shell=fields[6])
    raise AssertionError(f"{user} is not in {cluster.name}'s passwd")


def twin_environment(cluster: Cluster, spec: JobSpec) -> dict[str, str]:
    """What a user's clean login shell holds when it runs sbatch: the passwd defaults, a PATH, the cluster's
    SLURM_CONF, and the job's variables exported."""
    login = login_of(cluster, SUBMIT_USER)
    identity = {"HOME": login.home, "USER": SUBMIT_USER, "LOGNAME": SUBMIT_USER, "SHELL": login.shell}
    return {**identity, "PATH": "/usr/local/bin:/usr/bin:/bin", "SLURM_CONF": cluster.slurm_conf, **spec.environment}


def twin_options(rendered: SlurmJobSpec, spec: JobSpec) -> list[str]:
    """sbatch's options for ``spec``, as a user would write them (not the CLI adapter's rendering)."""
    res = spec.resources
    options = [
        f"--job-name={spec.name}",
        f"--chdir={rendered.working_directory}",
        f"--output={rendered.working_directory}/twin.out",
        f"--error={rendered.working_directory}/twin.err",
        f"--partition={rendered.partition}",
        f"--nodes={res.nodes}",
        f"--ntasks-per-node={res.tasks_per_node}",
        f"--cpus-per-task={res.cpus_per_task}",
        f"--time={rendered.time_limit_min}",
    ]
    if rendered.account:
        options.append(f"--account={rendered.account}")
    if res.memory_mb is not None:
        options.append(f"--mem={res.memory_mb}M")
    if res.gpus_per_node:
        typed = f"{res.gpu_type}:" if res.gpu_type else ""
        options.append(f"--gres=gpu:{typed}{res.gpus_per_node}")
    options.append("--requeue" if spec.requeue else "--no-requeue")
    return options


def submit_twin(cluster: Cluster, rendered: SlurmJobSpec, spec: JobSpec) -> int:
    """``sbatch --export=ALL`` as the submit user from a clean environment, in the job's directory."""
    environment = [f"{name}={value}" for name, value in twin_environment(cluster, spec).items()]
    argv = [
        *cluster.exec_prefix, "runuser", "-u", SUBMIT_USER, "--",
        "env", "-i", "-C", rendered.working_directory, *environment,
        "sbatch", "--parsable", "--export=ALL", *twin_options(rendered, spec),
    ]  # fmt: skip
    result = subprocess.run(argv, input=rendered.script, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    return int(result.stdout.strip().split(";")[0])


# --- what Slurm says about a job ------------------------------------------------------------------------


@dataclass(frozen=True)
class Shown:
    """``scontrol show job -dd``: the job's fields, and one (CPUs, memory MB, GRES) per allocated node."""

    fields: Mapping[str, str]
    nodes: tuple[tuple[int, str, str], ...]

    def get(self, key: str) -> str | None:
        return self.fields.get(key)


def count_ids(ids: str) -> int:
    """``0-2,5`` -> 4."""
    total = 0
    for part in ids.split(","):
        low, _, high = part.partition("-")
        total += int(high or low) - int(low) + 1
    return total


def show_job_dd(cluster: Cluster, job_id: int) -> Shown:
    fields: dict[str, str] = {}
    nodes: list[tuple[int, str, str]] = []
    for line in cluster.slurm("scontrol", "show", "job", "-dd", str(job_id)).splitlines():
        values = parse_key_values(line.strip())
        if line.strip().startswith("Nodes="):
            hosts = cluster.slurm("scontrol", "show", "hostnames", values["Nodes"]).split()
            per_node = (count_ids(values["CPU_IDs"]), values.get("Mem", ""), values.get("GRES", ""))
            nodes.extend([per_node] * len(hosts))
        else:
            fields.update(values)
    return Shown(fields=fields, nodes=tuple(sorted(nodes)))


# Per-node layout and resources: what must be the same for a job and its twin.
LAYOUT_FIELDS = ("NumNodes", "NumCPUs", "NumTasks", "CPUs/Task", "NtasksPerN:B:S:C", "MinCPUsNode")
RESOURCE_FIELDS = ("MinMemoryNode", "TimeLimit", "TresPerNode", "TresPerTask", "Partition", "Account", "Requeue")


@dataclass(frozen=True)
class Pair:
    """A broker job and its twin, both ended, as Slurm showed them."""

    cluster: Cluster
    kind: str
    spec: JobSpec
    rendered: SlurmJobSpec
    broker_id: int
    twin_id: int
    broker: Shown
    twin: Shown
    broker_env: Mapping[str, str]
    twin_env: Mapping[str, str]


def read_env(cluster: Cluster, directory: str, job_id: int) -> dict[str, str]:
    raw = cluster.host_path(f"{directory}/{ENV_DUMP}.{job_id}").read_bytes()
    entries = [entry.decode() for entry in raw.split(b"\0") if entry]
    return dict(entry.split("=", 1) for entry in entries)


DUMP_SCRIPT = f'#!/bin/bash\nenv -0 > "{ENV_DUMP}.$SLURM_JOB_ID"\n'
_PAIRS: dict[tuple[str, str], Pair] = {}


def agent_fleet_if_needed(request: pytest.FixtureRequest, kinds: list[str]) -> AgentFleet | None:
    """The session's agent fleet, started only when an agent kind is among ``kinds``."""
    return request.getfixturevalue("agent_fleet") if set(kinds) & set(AGENT_INSIDE) else None


@contextlib.asynccontextmanager
async def open_adapter(kind: str, cluster: Cluster, fleet: AgentFleet | None) -> AsyncIterator[SlurmAdapter]:
    """The adapter of ``kind`` for ``cluster``; an agent kind is the broker's AgentAdapter on ``fleet``."""
    async with contextlib.AsyncExitStack() as stack:
        if kind in AGENT_INSIDE:
            assert fleet is not None
            factory_id = fleet.factory_id(cluster, AGENT_INSIDE[kind])
            fleet.wait_connected(factory_id)
            link = await stack.enter_async_context(fleet.link())
            adapter: SlurmAdapter = link.adapter(factory_id, fleet.adapter_config(cluster))
        else:
            adapter = make_adapter(kind, cluster)
        stack.push_async_callback(adapter.aclose)
        yield adapter


async def run_pair(kind: str, cluster: Cluster, fleet: AgentFleet | None) -> Pair:
    """The dump job submitted through the adapter as the broker renders it, and by sbatch; both waited for."""
    spec = job_spec(cluster, DUMP_SCRIPT)
    rendered = broker_rendering(cluster, spec)
    async with open_adapter(kind, cluster, fleet) as adapter:
        broker_id = await adapter.submit(rendered, SUBMIT_USER)
        twin_id = submit_twin(cluster, rendered, spec)
        for job_id in (broker_id, twin_id):
            record = await wait_for_job(adapter, job_id, {SlurmJobState.COMPLETED}, timeout_s=120)
            assert record.state is SlurmJobState.COMPLETED, record
    directory = rendered.working_directory
    for job_id in (broker_id, twin_id):
        wait_until(lambda: cluster.host_path(f"{directory}/{ENV_DUMP}.{job_id}").exists(), 10, "the env dump")  # noqa: B023
    return Pair(
        cluster=cluster,
        kind=kind,
        spec=spec,
        rendered=rendered,
        broker_id=broker_id,
        twin_id=twin_id,
        broker=show_job_dd(cluster, broker_id),
        twin=show_job_dd(cluster, twin_id),
        broker_env=read_env(cluster, directory, broker_id),
        twin_env=read_env(cluster, directory, twin_id),
    )


@pytest.fixture
async def pair(case: tuple[str, Cluster], request: pytest.FixtureRequest) -> Pair:
    """One pair per (adapter, cluster), shared by the tests of this module."""
    kind, cluster = case
    key = (kind, cluster.name)
    if key not in _PAIRS:
        _PAIRS[key] = await run_pair(kind, cluster, agent_fleet_if_needed(request, [kind]))
    return _PAIRS[key]


def differences(pair: Pair, keys: tuple[str, ...]) -> dict[str, tuple[str | None, str | None]]:
    return {
        key: (pair.broker.get(key), pair.twin.get(key)) for key in keys if pair.broker.get(key) != pair.twin.get(key)
    }


# --- item 10: tasks per node --------------------------------------------------------------------------


async def test_defect_10_tasks_per_node_lay_out_as_sbatchs(pair: Pair) -> None:
    assert pair.spec.resources.tasks_per_node == 2
    assert differences(pair, LAYOUT_FIELDS) == {}
    assert (pair.broker.get("NtasksPerN:B:S:C") or "").split(":")[0] == "2"
    # Every node holds tasks_per_node x cpus_per_task CPUs, as on the twin (3+1 tasks was the defect).
    per_node = pair.spec.resources.tasks_per_node * pair.spec.resources.cpus_per_task
    assert [cpus for cpus, _, _ in pair.broker.nodes] == [per_node] * pair.spec.resources.nodes, pair.broker.nodes
    assert [cpus for cpus, _, _ in pair.broker.nodes] == [cpus for cpus, _, _ in pair.twin.nodes]


# --- item 11: the environment -------------------------------------------------------------------------

# Left out of the comparison, because they name this one job's ids, hosts, devices and times (two jobs can
# never share them) or belong to the shell that runs the script, not to Slurm.
PER_JOB_VARIABLES = frozenset(
    {
        "SLURM_JOB_ID", "SLURM_JOBID", "SLUID", "SLURM_JOB_SLUID", "SLURM_TASK_PID",
        "SLURM_JOB_START_TIME", "SLURM_JOB_END_TIME",
        "SLURM_SUBMIT_HOST", "SLURM_JOB_NODELIST", "SLURM_NODELIST", "SLURMD_NODENAME", "SLURM_TOPOLOGY_ADDR",
        "HOSTNAME",
        "SLURM_JOB_GPUS", "CUDA_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL", "ROCR_VISIBLE_DEVICES", "ZE_AFFINITY_MASK",
    }
)  # fmt: skip
SHELL_VARIABLES = frozenset({"PWD", "OLDPWD", "SHLVL", "_"})
LOGIN_VARIABLES = ("HOME", "USER", "LOGNAME", "SHELL")


def slurm_variables(pair: Pair) -> set[str]:
    """What Slurm put into either job: every SLURM_* variable, and whatever else the twin got that its
    submitter did not export (sbatch's and slurmd's own: ENVIRONMENT, TMPDIR, MPI launcher hints ...)."""
    given = set(twin_environment(pair.cluster, pair.spec))
    added = set(pair.twin_env) - given - SHELL_VARIABLES
    prefixed = {name for name in {*pair.broker_env, *pair.twin_env} if name.startswith(("SLURM_", "SLURMD_"))}
    return (added | prefixed) - PER_JOB_VARIABLES


async def test_defect_11_environment_is_the_sbatch_twins(pair: Pair) -> None:
    from slurm_adapters.environment import BASE_ENVIRONMENT

    broker, twin = pair.broker_env, pair.twin_env
    names = slurm_variables(pair)
    assert {"SLURM_CPUS_PER_TASK", "SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE", "SLURM_SUBMIT_DIR"} <= names
    unequal = {name: (broker.get(name), twin.get(name)) for name in sorted(names) if broker.get(name) != twin.get(name)}
    assert unequal == {}
    assert twin["SLURM_SUBMIT_DIR"] == pair.rendered.working_directory
    login = login_of(pair.cluster, SUBMIT_USER)
    expected_login = {"HOME": login.home, "USER": SUBMIT_USER, "LOGNAME": SUBMIT_USER, "SHELL": login.shell}
    assert {name: broker.get(name) for name in LOGIN_VARIABLES} == expected_login
    rest = {
        name: value
        for name, value in broker.items()
        if name not in names | PER_JOB_VARIABLES | SHELL_VARIABLES and name not in LOGIN_VARIABLES
    }
    assert rest == {**BASE_ENVIRONMENT, **pair.spec.environment}


# --- everything else the spec says: CPUs, GPUs, memory, time limit, requeue ----------------------------------


def allocated_tres(shown: Shown) -> str | None:
    """What the job holds: ``TRES=`` on 22.05, ``AllocTRES=`` from 23.02 on."""
    return shown.get("AllocTRES") or shown.get("TRES")


def requeue_ignored(pair: Pair) -> bool:
    """slurmrestd 22.05 ignores requeue (slurm_adapters/rest/v0038.py): the cluster's JobRequeue (1) holds."""
    return AGENT_INSIDE.get(pair.kind, pair.kind) == "rest" and pair.cluster.short_release == "22.05"


async def test_resources_are_the_twins(pair: Pair) -> None:
    found = differences(pair, RESOURCE_FIELDS)
    if requeue_ignored(pair):
        assert found.pop("Requeue", None) == ("1", "0")
    if AGENT_INSIDE.get(pair.kind, pair.kind) == "pyslurm":
        # pyslurm 25.11 builds tres_per_task from gpus_per_task alone: it cannot send "cpu=N" beside
        # cpus_per_task, as sbatch does from 24.05 on. The allocation is the same (checked below); only
        # scontrol's TresPerTask differs, and exactly so (should pyslurm ever send it, this fails: drop it).
        assert found.pop("TresPerTask", None) == (None, f"cpu={pair.rendered.cpus_per_task}")
    assert found == {}
    assert allocated_tres(pair.broker) == allocated_tres(pair.twin)
    assert pair.broker.nodes == pair.twin.nodes  # (CPUs, memory, GRES) on every node
    res = pair.spec.resources
    assert pair.broker.get("MinMemoryNode") == f"{res.memory_mb}M"
    assert parse_duration_min(pair.broker.get("TimeLimit")) == res.time_limit_min
    if not requeue_ignored(pair):
        assert pair.broker.get("Requeue") == "0"  # --no-requeue unless the spec asks (the lab's JobRequeue is 1)
    assert parse_gres(pair.broker.get("TresPerNode")) == {res.gpu_type: res.gpus_per_node}
    for env in (pair.broker_env, pair.twin_env):  # TRES count GPUs only with slurmdbd: ask the job itself
        assert len(env["CUDA_VISIBLE_DEVICES"].split(",")) == res.gpus_per_node, env.get("CUDA_VISIBLE_DEVICES")
    assert (pair.broker.get("JobState"), pair.broker.get("ExitCode")) == ("COMPLETED", "0:0")
    assert (pair.twin.get("JobState"), pair.twin.get("ExitCode")) == ("COMPLETED", "0:0")


# --- how jobs end: exit code and signal -----------------------------------------------------------------

# Each ending's script; the cancelled ones are cancelled while they run, the timed-out ones have a minute. The
# sleepers exec: Slurm signals every process of the step, and a shell whose child died first may exit 143 (143:0)
# before its own SIGTERM arrives instead of dying of it (0:15): a race inside Slurm (seen on 22.05), not the broker.
ENDINGS = {
    "failed": "exit 3\n",
    "signalled": "kill -KILL $$\n",
    "cancelled": "exec sleep 300\n",
    "timeout": "exec sleep 300\n",
}
SLURM_SAYS = {"failed": "3:0", "signalled": "0:9", "cancelled": "0:15", "timeout": "0:15"}
# A cancel of a job that was only just started may reach it as SIGKILL (0:9) rather than SIGTERM (0:15): seen once
# on 24.11 for one of two identical jobs. Either is Slurm's word; the broker must serve the one Slurm gives.
RACY_ENDINGS = {"cancelled": {"0:15", "0:9"}}


def cancel_twin(cluster: Cluster, job_id: int) -> None:
    argv = [*cluster.exec_prefix, "runuser", "-u", SUBMIT_USER, "--", "env", "-i", f"SLURM_CONF={cluster.slurm_conf}"]
    result = subprocess.run([*argv, "scancel", str(job_id)], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr


async def end_case(cluster: Cluster, ending: str, fleet: AgentFleet | None) -> list[dict[str, Any]]:
    """One ending on one cluster: the job through every adapter and once by sbatch; what each adapter,
    scontrol and the twin say."""
    spec = job_spec(
        cluster,
        f"#!/bin/bash\n{ENDINGS[ending]}",
        nodes=1,
        tasks_per_node=1,
        cpus_per_task=1,
        gpus_per_node=0,
        gpu_type=None,
        memory_mb=None,
        time_limit_min=1 if ending == "timeout" else 3,
    )
    rendered = broker_rendering(cluster, spec)
    opened = contextlib.AsyncExitStack()
    kinds = kinds_on(KINDS, cluster)
    adapters = {kind: await opened.enter_async_context(open_adapter(kind, cluster, fleet)) for kind in kinds}
    ids: dict[str, int] = {}
    twin_id = 0
    try:
        ids = {kind: await adapter.submit(rendered, SUBMIT_USER) for kind, adapter in adapters.items()}
        twin_id = submit_twin(cluster, rendered, spec)
        reader = adapters[kinds[0]]
        if ending == "cancelled":
            for kind, adapter in adapters.items():
                await wait_for_job(adapter, ids[kind], {SlurmJobState.RUNNING}, timeout_s=120)
                await adapter.cancel(ids[kind], SUBMIT_USER, tag=rendered.tag if kind in AGENT_INSIDE else None)
            await wait_for_job(reader, twin_id, {SlurmJobState.RUNNING}, timeout_s=120)
            cancel_twin(cluster, twin_id)
        records = {
            kind: await wait_for_job(adapter, ids[kind], set(), timeout_s=170) for kind, adapter in adapters.items()
        }
        await wait_for_job(reader, twin_id, set(), timeout_s=170)
    finally:
        await opened.aclose()
        if leftovers := [str(job_id) for job_id in (*ids.values(), twin_id) if job_id]:
            cluster.slurm("scancel", *leftovers)  # a failed wait must not leave sleepers holding the CPUs
    twin = cluster.show_job(twin_id)
    results = []
    for kind, record in records.items():
        shown = cluster.show_job(ids[kind])
        results.append(
            {
                "where": f"{kind}-{cluster.name}-{cluster.short_release}-{ending}",
                "ending": ending,
                "release": cluster.short_release,
                "adapter": (record.state.value, record.exit_code, record.signal),
                "slurm": (shown["JobState"], shown["ExitCode"]),
                "twin": (twin["JobState"], twin["ExitCode"]),
            }
        )
    return results


@pytest.mark.timeout(300)
async def test_every_end_is_the_twins(request: pytest.FixtureRequest) -> None:
    """Failed, killed by a signal, cancelled, then timed out (Slurm takes a minute and more): on every release
    at once, each adapter reports Slurm's exit code and signal, and they are the sbatch twin's."""
    assert {cluster.short_release for cluster in release_clusters()} >= {"22.05", "24.11", "26.05"}
    lab = [cluster for cluster in release_clusters() if kinds_on(KINDS, cluster)]  # CONVEYOR_ADAPTERS may narrow
    fleet = agent_fleet_if_needed(request, KINDS)
    quick = [end_case(cluster, ending, fleet) for cluster in lab for ending in ENDINGS if ending != "timeout"]
    results = [result for case in await asyncio.gather(*quick) for result in case]
    slow = [end_case(cluster, "timeout", fleet) for cluster in lab]
    results += [result for case in await asyncio.gather(*slow) for result in case]
    for result in results:
        state, exit_code, signal = result["adapter"]
        assert (state, f"{exit_code}:{signal}") == result["slurm"], result  # the broker serves what Slurm says
        if result["ending"] in RACY_ENDINGS:  # which kill ended it is Slurm's timing, for the broker's job and twin
            assert result["slurm"][0] == result["twin"][0] == "CANCELLED", result
            assert {result["slurm"][1], result["twin"][1]} <= RACY_ENDINGS[result["ending"]], result
            continue
        assert result["slurm"] == result["twin"], result
        assert result["slurm"][1] == SLURM_SAYS[result["ending"]], result
    assert {result["release"] for result in results} == {cluster.short_release for cluster in lab}
    assert len(results) == sum(len(kinds_on(KINDS, cluster)) for cluster in lab) * len(ENDINGS)
