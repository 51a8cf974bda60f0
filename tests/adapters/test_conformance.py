"""Adapter conformance: ONE module, run for every (adapter x Slurm release) pair the lab has.

On the host it covers the slurmrestd and CLI adapters on every lab cluster, and the agent path: the broker's
``AgentAdapter``, whose calls become orders that a real broker process (run as an unprivileged user, holding
no Slurm key) hands to a real ``conveyor-agent`` (tests/adapters/agent_fleet.py), with slurmrestd inside on
every cluster (kind ``agent``) and with the CLI inside on one cluster of each release the CLI is reached
through an agent on (kind ``agent-cli``: 22.05 and 24.11).
Inside the sid chroot (see tests/adapters/test_pyslurm_in_chroot.py) the very same module runs for the pyslurm
adapter. Every claim is checked against real daemons, and every field is read back through the test's own
``scontrol``, never only through the adapter under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from dev.lab import procs
from dev.lab.commands import munged_argv
from dev.lab.view import adapter_config
from slurm_adapters.cli.cluster import boot_time
from slurm_adapters.convert import parse_duration_min, parse_gres
from slurm_adapters.errors import (
    AccountingUnavailable,
    AuthenticationError,
    ClusterUnavailable,
    InvalidRequest,
    JobNotFound,
    OutputUnavailable,
    UnsafeRequest,
)
from slurm_adapters.interface import SlurmAdapter
from slurm_adapters.records import MAX_OUTPUT_CHUNK_BYTES, SlurmJobSpec, SlurmJobState, SubmitContext
from tests.lab import (
    AGENT_INSIDE,
    SUBMIT_USER,
    Cluster,
    clusters,
    job_dir,
    kinds_on,
    make_adapter,
    new_tag,
    wait_for_job,
    wait_until,
)

if TYPE_CHECKING:  # the agent kind's fleet needs the broker, which the sid chroot's venv (pyslurm) lacks
    from tests.adapters.agent_fleet import AgentFleet

pytestmark = pytest.mark.lab

OTHER_USER = "bob"  # the lab's second person: a user the site policy accepts, but not the job's owner

KINDS = os.environ.get("CONVEYOR_ADAPTERS", "rest,cli,agent,agent-cli,agent-pyslurm").split(",")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker
        wanted = [
            c
            for c in clusters()
            if (c.raw["expendable"] or not marker("expendable_only"))
            and (c.raw["accounting"] or not marker("accounting_only"))
        ]
        cases = [(kind, c) for c in wanted for kind in kinds_on(KINDS, c)]
        ids = [f"{kind}-{c.name}-{c.short_release}" for kind, c in cases]
        metafunc.parametrize("case", cases, ids=ids)


@pytest.fixture
async def adapter(case: tuple[str, Cluster], request: pytest.FixtureRequest) -> AsyncIterator[SlurmAdapter]:
    kind, cluster = case
    if kind in AGENT_INSIDE:
        fleet: AgentFleet = request.getfixturevalue("agent_fleet")
        factory_id = fleet.factory_id(cluster, AGENT_INSIDE[kind])
        fleet.wait_connected(factory_id)  # a test before may have made the agent reconnect
        async with fleet.link() as link:
            instance: SlurmAdapter = link.adapter(factory_id, fleet.adapter_config(cluster))
            yield instance
            await instance.aclose()
        return
    instance = make_adapter(kind, cluster)
    yield instance
    await instance.aclose()


def site_kind(case: tuple[str, Cluster]) -> str:
    """The adapter that talks to Slurm: the kind itself, or the one inside the agent."""
    kind, _ = case
    return AGENT_INSIDE.get(kind, kind)


def cancel_tag(adapter: SlurmAdapter, spec: SlurmJobSpec) -> str | None:
    """An agent cancels only by Slurm id AND tag (ids are re-issued after a controller crash); the direct
    adapters are checked cancelling by id alone."""
    return spec.tag if adapter.kind == "agent" else None


@pytest.fixture
def cluster(case: tuple[str, Cluster]) -> Cluster:
    return case[1]


def simple_spec(cluster: Cluster, script: str, label: str = "t", **overrides: Any) -> SlurmJobSpec:
    tag = new_tag(label)
    workdir = job_dir(cluster, tag)
    spec = SlurmJobSpec(
        name=f"conformance-{label}",
        script=script,
        working_directory=workdir,
        stdout=f"{workdir}/out.txt",
        stderr=f"{workdir}/err.txt",
        tag=tag,
        partition=cluster.cpu_partition["name"],
        time_limit_min=5,
    )
    return replace(spec, **overrides)


async def test_job_completes_and_output_is_readable(adapter: SlurmAdapter, cluster: Cluster) -> None:
    spec = simple_spec(cluster, "echo conformance-says-hello\necho to-stderr >&2\n", "ok")
    job_id = await adapter.submit(spec, SUBMIT_USER)
    record = await wait_for_job(adapter, job_id, {SlurmJobState.COMPLETED})
    assert record.state is SlurmJobState.COMPLETED, record
    assert record.exit_code == 0
    assert record.tag == spec.tag
    assert record.user == SUBMIT_USER
    assert record.submit_time is not None
    assert record.start_time is not None
    assert record.end_time is not None
    assert record.nodes
    assert record.allocated_tres.get("cpu"), record.allocated_tres
    assert "conformance-says-hello" in await adapter.read_output(job_id, "stdout")
    assert "to-stderr" in await adapter.read_output(job_id, "stderr")


async def test_failing_job_ends_failed_with_its_exit_code(adapter: SlurmAdapter, cluster: Cluster) -> None:
    job_id = await adapter.submit(simple_spec(cluster, "echo about-to-fail\nexit 3\n", "fail"), SUBMIT_USER)
    record = await wait_for_job(adapter, job_id, {SlurmJobState.FAILED})
    assert record.state is SlurmJobState.FAILED, record
    assert record.exit_code == 3
    independent = cluster.show_job(job_id)
    assert independent["JobState"] == "FAILED"
    assert independent["ExitCode"] == "3:0"


async def test_every_spec_field_reaches_slurm(adapter: SlurmAdapter, cluster: Cluster) -> None:
    script = 'echo "FOO=$FOO"\necho "BAR=$BAR"\necho "PWD=$(pwd)"\necho "TASKS=$SLURM_NTASKS"\n'
    spec = simple_spec(
        cluster,
        script,
        "fields",
        environment={"FOO": "foo value with spaces", "BAR": "b=a=r"},
        nodes=1,
        tasks=2,
        tasks_per_node=2,
        cpus_per_task=1,
        memory_mb=600,
        time_limit_min=7,
        account=(cluster.raw["accounts"] or ["ehpc-aif-test"])[0],
        qos=(cluster.raw["qos"] or [None])[0],
    )
    job_id = await adapter.submit(spec, SUBMIT_USER)
    shown = cluster.show_job(job_id)
    assert shown["JobName"] == spec.name
    assert shown["WorkDir"] == spec.working_directory
    assert shown["StdOut"] == spec.stdout
    assert shown["StdErr"] == spec.stderr
    assert shown["Partition"] == spec.partition
    assert shown["Account"] == spec.account
    if spec.qos:  # only slurmdbd clusters track QOS
        assert shown["QOS"] == spec.qos
    assert shown["NumNodes"].split("-")[0] == "1"
    assert shown["NumTasks"] == "2"
    assert shown["NtasksPerN:B:S:C"].split(":")[0] == "2"
    assert shown["CPUs/Task"] == "1"
    assert shown["MinMemoryNode"] == "600M"
    assert parse_duration_min(shown["TimeLimit"]) == 7
    assert shown["Comment"] == spec.tag
    assert shown["UserId"].startswith(f"{SUBMIT_USER}(")

    record = await wait_for_job(adapter, job_id, {SlurmJobState.COMPLETED})
    assert record.state is SlurmJobState.COMPLETED, record
    output = await adapter.read_output(job_id)
    assert "FOO=foo value with spaces" in output
    assert "BAR=b=a=r" in output
    assert f"PWD={spec.working_directory}" in output
    assert "TASKS=2" in output


async def test_gpu_request_lands_on_a_gpu_node(adapter: SlurmAdapter, cluster: Cluster) -> None:
    partition = cluster.gpu_partition
    if partition is None:
        pytest.skip(f"{cluster.name} has no GPU partition")
    gpu_type = next(iter(partition["gpus"]))
    spec = simple_spec(
        cluster,
        'echo "CVD=$CUDA_VISIBLE_DEVICES"\necho "NODE=$SLURMD_NODENAME"\n',
        "gpu",
        partition=partition["name"],
        gpus_per_node=2,
        gpu_type=gpu_type,
    )
    job_id = await adapter.submit(spec, SUBMIT_USER)
    shown = cluster.show_job(job_id)
    assert parse_gres(shown.get("TresPerNode")) == {gpu_type: 2}, shown.get("TresPerNode")
    record = await wait_for_job(adapter, job_id, {SlurmJobState.COMPLETED})
    assert record.state is SlurmJobState.COMPLETED, record
    assert record.nodes in partition["nodes"]
    output = await adapter.read_output(job_id)
    assert "CVD=0,1" in output, output
    assert f"NODE={record.nodes}" in output


@pytest.mark.accounting_only
async def test_unknown_account_is_rejected_where_associations_are_enforced(
    adapter: SlurmAdapter, cluster: Cluster
) -> None:
    with pytest.raises(InvalidRequest):
        await adapter.submit(simple_spec(cluster, "true\n", "acct", account="no-such-account"), SUBMIT_USER)


@pytest.mark.accounting_only
async def test_accounting_keeps_finished_jobs_with_tag_and_tres(adapter: SlurmAdapter, cluster: Cluster) -> None:
    """slurmdbd's record (read with the test's own sacct) outlives MinJobAge; the broker will rely on it."""
    spec = simple_spec(cluster, "true\n", "sacct", gpus_per_node=0)
    job_id = await adapter.submit(spec, SUBMIT_USER)
    await wait_for_job(adapter, job_id, {SlurmJobState.COMPLETED})

    def recorded() -> list[str]:
        out = cluster.slurm("sacct", "-X", "-n", "-P", "-j", str(job_id), "-o", "State,Comment,AllocTRES")
        return out.strip().split("|")

    wait_until(lambda: recorded()[0] == "COMPLETED", 30, "sacct to record the job")
    _, comment, tres = recorded()
    assert comment == spec.tag
    assert "cpu=" in tres

    # The adapter reads the same record, by id and by submit time, once slurmdbd has it.
    by_id = await adapter.accounted_jobs(job_ids=[job_id])
    assert [(r.job_id, r.tag, r.state, r.user) for r in by_id] == [
        (job_id, spec.tag, SlurmJobState.COMPLETED, SUBMIT_USER)
    ]
    assert by_id[0].elapsed_s is not None
    assert by_id[0].allocated_tres == dict(item.split("=", 1) for item in tres.split(","))
    submitted = by_id[0].submit_time
    assert submitted is not None
    # slurmdbd's time-window query lags its by-id answer by a second or two after a job ends (measured).
    deadline = time.monotonic() + 30
    since = await adapter.accounted_jobs(submitted_after=submitted)
    while job_id not in {r.job_id for r in since}:
        assert time.monotonic() < deadline, "slurmdbd's time-window query never listed the job"
        await asyncio.sleep(0.2)
        since = await adapter.accounted_jobs(submitted_after=submitted)
    assert all(r.submit_time is not None and r.submit_time >= submitted for r in since)
    assert await adapter.accounted_jobs(job_ids=[job_id + 100_000]) == []


async def test_accounting_lookups_say_when_there_is_no_slurmdbd(adapter: SlurmAdapter, cluster: Cluster) -> None:
    if cluster.raw["accounting"]:
        pytest.skip(f"{cluster.name} has slurmdbd (see test_accounting_keeps_finished_jobs_with_tag_and_tres)")
    with pytest.raises(AccountingUnavailable):
        await adapter.accounted_jobs(job_ids=[1])


async def test_health_says_since_when_slurmctld_has_run(adapter: SlurmAdapter, cluster: Cluster) -> None:
    """The dispatcher trusts "not listed" only if slurmctld has not restarted since the attempt."""
    first = await adapter.health()
    assert first.up_since is not None
    assert first.up_since <= datetime.now(UTC)
    assert first.accounting_backlog == 0
    assert (await adapter.health()).up_since == first.up_since  # stable while slurmctld runs


async def test_health_vouches_from_slurmctlds_boot_where_the_adapter_can_read_it(
    case: tuple[str, Cluster], adapter: SlurmAdapter, cluster: Cluster
) -> None:
    """cli and pyslurm read slurmctld's boot time, which Slurm's daily statistics reset (midnight UTC) does not
    move; slurmrestd serves no boot time, so rest vouches only from the statistics' start, never earlier."""
    health = await adapter.health()
    booted = boot_time(cluster.slurm("scontrol", "show", "config"))
    assert booted is not None
    assert health.up_since is not None
    if site_kind(case) == "rest":
        assert health.up_since >= booted
    else:
        assert health.up_since == booted


async def test_gpu_type_the_cluster_lacks_is_rejected(adapter: SlurmAdapter, cluster: Cluster) -> None:
    partition = cluster.gpu_partition or cluster.cpu_partition
    spec = simple_spec(cluster, "true\n", "nogpu", partition=partition["name"], gpus_per_node=1, gpu_type="mi250x")
    with pytest.raises(InvalidRequest) as caught:
        await adapter.submit(spec, SUBMIT_USER)
    assert caught.value.message


async def test_time_over_max_time(adapter: SlurmAdapter, cluster: Cluster) -> None:
    """Rejected at once under EnforcePartLimits=ALL; otherwise accepted and reported as never starting."""
    partition = cluster.cpu_partition
    spec = simple_spec(cluster, "true\n", "maxtime", time_limit_min=partition["max_time_min"] + 30)
    if cluster.enforces_part_limits:
        with pytest.raises(InvalidRequest):
            await adapter.submit(spec, SUBMIT_USER)
        return
    job_id = await adapter.submit(spec, SUBMIT_USER)
    try:
        wait_until(lambda: cluster.show_job(job_id).get("Reason") == "PartitionTimeLimit", 30, "PartitionTimeLimit")
        record = await adapter.get_job(job_id)
        assert record.state is SlurmJobState.PENDING
        assert record.reason == "PartitionTimeLimit"
        assert record.never_starts
    finally:
        await adapter.cancel(job_id, SUBMIT_USER, tag=cancel_tag(adapter, spec))


async def test_running_job_is_cancelled(adapter: SlurmAdapter, cluster: Cluster) -> None:
    spec = simple_spec(cluster, "echo started\nsleep 300\n", "cancel")
    job_id = await adapter.submit(spec, SUBMIT_USER)
    running = await wait_for_job(adapter, job_id, {SlurmJobState.RUNNING})
    assert running.state is SlurmJobState.RUNNING, running
    if adapter.kind == "agent":
        with pytest.raises(InvalidRequest, match="only by Slurm id and tag"):
            await adapter.cancel(job_id, SUBMIT_USER)
        assert cluster.show_job(job_id)["JobState"] == "RUNNING"
    await adapter.cancel(job_id, SUBMIT_USER, tag=cancel_tag(adapter, spec))
    record = await wait_for_job(adapter, job_id, {SlurmJobState.CANCELLED}, timeout_s=30)
    assert record.state is SlurmJobState.CANCELLED
    assert cluster.show_job(job_id)["JobState"] == "CANCELLED"
    await adapter.cancel(job_id, SUBMIT_USER, tag=cancel_tag(adapter, spec))  # a finished job: not an error


def submit_context(spec: SlurmJobSpec, not_after: datetime) -> SubmitContext:
    return SubmitContext(f"{spec.tag}/1", not_after, requester_user="user:conformance", requester_project="EHPC-T-1")


def call_deadline_s(case: tuple[str, Cluster]) -> float:
    """The adapter's own call deadline, as the lab configures it (the submit fence measures with it)."""
    _, cluster = case
    return adapter_config(site_kind(case), cluster).timeout_s


async def test_cancel_by_tag_cancels_only_the_job_that_still_carries_it(
    case: tuple[str, Cluster], adapter: SlurmAdapter, cluster: Cluster
) -> None:
    """Slurm re-issues ids after a controller crash: a cancel naming the tag cancels only our own job."""
    spec = simple_spec(cluster, "echo started\nsleep 300\n", "tagcancel")
    roomy = submit_context(spec, datetime.now(UTC) + timedelta(seconds=call_deadline_s(case) + 60))
    job_id = await adapter.submit(spec, SUBMIT_USER, roomy)  # a context with room: submitted as without one
    try:
        running = await wait_for_job(adapter, job_id, {SlurmJobState.RUNNING})
        assert running.state is SlurmJobState.RUNNING, running
        with pytest.raises(JobNotFound, match="its tag is") as caught:
            await adapter.cancel(job_id, SUBMIT_USER, tag=new_tag("another-job"))
        assert "its user" not in caught.value.message
        assert cluster.show_job(job_id)["JobState"] == "RUNNING"
        with pytest.raises(JobNotFound, match="its user is") as caught:
            await adapter.cancel(job_id, OTHER_USER, tag=spec.tag)
        assert "its tag" not in caught.value.message
        assert cluster.show_job(job_id)["JobState"] == "RUNNING"
        await adapter.cancel(job_id, SUBMIT_USER, tag=spec.tag)
        record = await wait_for_job(adapter, job_id, {SlurmJobState.CANCELLED}, timeout_s=30)
        assert record.state is SlurmJobState.CANCELLED
        assert cluster.show_job(job_id)["JobState"] == "CANCELLED"
        await adapter.cancel(job_id, SUBMIT_USER, tag=spec.tag)  # a finished job: still not an error
    finally:
        cluster.slurm("scancel", str(job_id))  # never leave it running if an assertion failed


async def test_a_submit_that_could_outlast_not_after_never_reaches_slurm(
    case: tuple[str, Cluster], adapter: SlurmAdapter, cluster: Cluster
) -> None:
    """The submit fence: with less than its call deadline left before ``not_after``, nothing is sent."""
    spec = simple_spec(cluster, "true\n", "fence")
    too_close = submit_context(spec, datetime.now(UTC) + timedelta(seconds=call_deadline_s(case) - 1))
    with pytest.raises(ClusterUnavailable, match="not started") as caught:
        await adapter.submit(spec, SUBMIT_USER, too_close)
    assert caught.value.maybe_applied is False
    assert await adapter.list_jobs(tags={spec.tag}) == []
    comments = cluster.slurm("squeue", "--all", "--states=all", "--noheader", "--format=%k").split()
    assert spec.tag not in comments


async def test_list_finds_jobs_by_tag_finished_ones_included(adapter: SlurmAdapter, cluster: Cluster) -> None:
    finished = simple_spec(cluster, "true\n", "list-done")
    pending = simple_spec(cluster, "sleep 300\n", "list-live")
    finished_id = await adapter.submit(finished, SUBMIT_USER)
    live_id = await adapter.submit(pending, SUBMIT_USER)
    try:
        await wait_for_job(adapter, finished_id, {SlurmJobState.COMPLETED})
        listed = await adapter.list_jobs(tags={finished.tag, pending.tag})
        by_tag = {r.tag: r for r in listed}
        assert set(by_tag) == {finished.tag, pending.tag}
        assert by_tag[finished.tag].job_id == finished_id
        assert by_tag[finished.tag].state is SlurmJobState.COMPLETED
        assert by_tag[pending.tag].job_id == live_id
        prefixed = await adapter.list_jobs(tag_prefix="cvy-test-list-")
        assert {finished_id, live_id} <= {r.job_id for r in prefixed}
        assert all((r.tag or "").startswith("cvy-test-list-") for r in prefixed)
    finally:
        await adapter.cancel(live_id, SUBMIT_USER, tag=cancel_tag(adapter, pending))


async def test_unknown_job_id_is_not_found(adapter: SlurmAdapter) -> None:
    with pytest.raises(JobNotFound):
        await adapter.get_job(987_654_321)
    tag = new_tag("unknown") if adapter.kind == "agent" else None
    with pytest.raises(JobNotFound):
        await adapter.cancel(987_654_321, SUBMIT_USER, tag=tag)


async def test_privileged_and_system_users_are_refused(adapter: SlurmAdapter, cluster: Cluster) -> None:
    spec = simple_spec(cluster, "true\n", "root")
    for user in ("root", "daemon", "munge"):
        with pytest.raises(UnsafeRequest):
            await adapter.submit(spec, user)
        if adapter.kind != "agent":  # the broker renders nothing for an agent: the site refuses (above)
            with pytest.raises(UnsafeRequest):
                adapter.render(spec, user)


async def test_defect_02_daemon_accounts_are_refused_at_every_submit(adapter: SlurmAdapter, cluster: Cluster) -> None:
    spec = simple_spec(cluster, "true\n", "daemon")
    for user in ("slurm", "nobody"):
        if adapter.kind != "agent":  # the broker renders nothing for an agent: the site refuses (below)
            with pytest.raises(UnsafeRequest):
                adapter.render(spec, user)
        with pytest.raises(UnsafeRequest):
            await adapter.submit(spec, user)


async def test_reserved_environment_and_injection_are_refused(adapter: SlurmAdapter, cluster: Cluster) -> None:
    with pytest.raises(UnsafeRequest):
        await adapter.submit(simple_spec(cluster, "true\n", "env", environment={"SLURM_JOB_ID": "1"}), SUBMIT_USER)
    with pytest.raises(UnsafeRequest):
        await adapter.submit(simple_spec(cluster, "true\n", "env", environment={"SBATCH_ACCOUNT": "x"}), SUBMIT_USER)
    with pytest.raises(UnsafeRequest):
        await adapter.submit(simple_spec(cluster, "true\n", "inj", name="x\n#SBATCH --hold"), SUBMIT_USER)


async def test_directives_in_the_user_script_are_inert(adapter: SlurmAdapter, cluster: Cluster) -> None:
    """A user's ``#SBATCH --hold`` must not hold the job: the spec alone sets Slurm's options."""
    spec = simple_spec(cluster, "#!/bin/bash\n#SBATCH --hold\n#SBATCH --job-name=evil\necho ran\n", "fence")
    job_id = await adapter.submit(spec, SUBMIT_USER)
    record = await wait_for_job(adapter, job_id, {SlurmJobState.COMPLETED})
    assert record.state is SlurmJobState.COMPLETED, record
    assert record.name == spec.name
    assert "ran" in await adapter.read_output(job_id)


BIG_OUTPUT_BYTES = 10 * 1024 * 1024
SECRET = b"conformance-secret-root-only"


async def _until_exists(path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(path.exists):
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {path}"
        await asyncio.sleep(0.2)


async def test_output_read_in_chunks_joins_to_the_file_and_a_swapped_in_symlink_is_refused(
    adapter: SlurmAdapter, cluster: Cluster
) -> None:
    """A running job's 10 MB stdout, read in bounded chunks from Slurm's own path, joins to the file's exact
    bytes; past the end is empty and eof; bad ranges are refused; then the job's output is swapped for a
    symlink to a root-only file, and both reads refuse it without handing out a byte of it."""
    script = f"head -c {BIG_OUTPUT_BYTES} /dev/urandom\ntouch written\nexec sleep 300\n"
    spec = simple_spec(cluster, script, "chunks")
    assert spec.stdout is not None
    job_id = await adapter.submit(spec, SUBMIT_USER)
    try:
        await _until_exists(cluster.host_path(f"{spec.working_directory}/written"), 120)
        host_out = cluster.host_path(spec.stdout)
        expected = host_out.read_bytes()
        assert len(expected) == BIG_OUTPUT_BYTES

        pieces: list[bytes] = []
        offset, max_bytes = 0, 777_777  # then more than the cap: every chunk stays within it
        while True:
            chunk = await adapter.read_output_chunk(job_id, "stdout", offset, max_bytes)
            assert (chunk.offset, chunk.size) == (offset, BIG_OUTPUT_BYTES)
            assert 0 < len(chunk.data) <= min(max_bytes, MAX_OUTPUT_CHUNK_BYTES)
            pieces.append(chunk.data)
            offset += len(chunk.data)
            assert chunk.eof is (offset == BIG_OUTPUT_BYTES)
            if chunk.eof:
                break
            assert len(pieces) <= BIG_OUTPUT_BYTES // MAX_OUTPUT_CHUNK_BYTES + 1, "the reads do not advance"
            max_bytes = 3 * MAX_OUTPUT_CHUNK_BYTES
        assert b"".join(pieces) == expected

        past = await adapter.read_output_chunk(job_id, "stdout", BIG_OUTPUT_BYTES + 5)
        assert (past.data, past.offset, past.size, past.eof) == (b"", BIG_OUTPUT_BYTES + 5, BIG_OUTPUT_BYTES, True)
        empty = await adapter.read_output_chunk(job_id, "stderr", 0)  # err.txt: created, nothing written
        assert (empty.data, empty.size, empty.eof) == (b"", 0, True)
        for bad_offset, bad_max in ((-1, 10), (0, 0), (0, -5)):
            with pytest.raises(InvalidRequest):
                await adapter.read_output_chunk(job_id, "stdout", bad_offset, bad_max)

        # The job's user swaps its output for a symlink to a root-only file (relative: it resolves in any root).
        host_dir = cluster.host_path(spec.working_directory)
        secret = host_dir / "secret"
        secret.write_bytes(SECRET)
        secret.chmod(0o600)
        staged = host_dir / "out.link"
        os.symlink("secret", staged)
        owner = host_out.stat().st_uid
        os.lchown(staged, owner, owner)
        os.rename(staged, host_out)
        with pytest.raises(OutputUnavailable) as chunk_refused:
            await adapter.read_output_chunk(job_id, "stdout", 0)
        with pytest.raises(OutputUnavailable) as tail_refused:
            await adapter.read_output(job_id, "stdout")
        for refused in (chunk_refused, tail_refused):
            assert SECRET.decode() not in str(refused.value)
            assert "symbolic link" in str(refused.value), refused.value
    finally:
        await adapter.cancel(job_id, SUBMIT_USER, cancel_tag(adapter, spec))


async def test_render_shows_what_submit_sends(adapter: SlurmAdapter, cluster: Cluster) -> None:
    spec = simple_spec(cluster, "echo rendered\n", "render")
    rendering = adapter.render(spec, SUBMIT_USER)
    assert rendering.adapter == adapter.kind
    assert rendering.user == SUBMIT_USER
    assert "echo rendered" in rendering.script
    assert spec.tag in repr(rendering.payload)


async def test_cluster_info_matches_the_lab(case: tuple[str, Cluster], adapter: SlurmAdapter, cluster: Cluster) -> None:
    info = await adapter.cluster_info()
    assert info.cluster == cluster.name
    partitions = {p.name: p for p in info.partitions}
    for expected in cluster.raw["partitions"]:
        got = partitions[expected["name"]]
        assert got.max_time_min == expected["max_time_min"]
        assert got.default_time_min == expected["default_time_min"]
        if got.default is None:  # only slurmrestd's v0.0.40-42 cannot tell (Slurm 24.11 serves no newer one)
            assert (site_kind(case), cluster.short_release) == ("rest", "24.11")
        else:
            assert got.default == expected["default"]
        assert sorted(got.nodes) == sorted(expected["nodes"])
        assert dict(got.total_gpus) == expected["gpus"]
    assert {n.name for n in info.nodes} == {n["name"] for n in cluster.raw["nodes"]}
    totals = info.gpu_totals()
    assert set(totals) == set(cluster.raw["gpu_types"])
    health = await adapter.health()
    assert health.ok


async def test_wrong_credential_is_an_authentication_error(
    case: tuple[str, Cluster], cluster: Cluster, tmp_path: Path
) -> None:
    kind, _ = case
    if kind in AGENT_INSIDE:
        pytest.skip(
            "the broker holds no Slurm credential to get wrong: the agent's is its adapter's, checked under that "
            "kind; a wrong agent key is refused by the broker (tests/api/test_agent_auth.py)"
        )
    if kind == "rest":
        from slurm_adapters.rest import RestAdapter

        bad_key = tmp_path / "wrong.key"
        bad_key.write_bytes(secrets.token_bytes(32))
        bad_key.chmod(0o600)
        adapter = RestAdapter(
            cluster=cluster.name,
            base_url=cluster.raw["rest"]["url"],
            jwt_key_file=bad_key,
            operator_user=cluster.raw["operator_user"],
            policy=cluster.policy(),
        )
        try:
            with pytest.raises(AuthenticationError):
                await adapter.health()
            with pytest.raises(AuthenticationError):
                await adapter.submit(simple_spec(cluster, "true\n", "auth"), SUBMIT_USER)
        finally:
            await adapter.aclose()
        return
    # CLI and pyslurm authenticate with munge: give them a config whose munge daemon holds another key.
    with rogue_munge_conf(cluster) as conf:
        errors = probe_in_subprocess(kind, cluster, conf)
    assert errors == ["AuthenticationError", "AuthenticationError"], errors


@pytest.mark.expendable_only  # slurmctld is SIGKILLed only on a cluster of its own
@pytest.mark.exclusive
async def test_cluster_down_is_unavailable_then_recovers(adapter: SlurmAdapter, cluster: Cluster) -> None:
    assert cluster.kill_ctld() is not None
    try:
        for call in (adapter.health(), adapter.submit(simple_spec(cluster, "true\n", "down"), SUBMIT_USER)):
            started = time.monotonic()
            with pytest.raises(ClusterUnavailable):
                await call
            assert time.monotonic() - started < 10.0
    finally:
        restarted_at = datetime.now(UTC).replace(microsecond=0)
        cluster.start_ctld()
    health = await adapter.health()
    assert health.ok
    deadline = time.monotonic() + 15
    while health.up_since is None:  # unknown for a moment after the start, until slurmctld sets it
        assert time.monotonic() < deadline, "health never said since when slurmctld runs"
        await asyncio.sleep(0.2)
        health = await adapter.health()
    assert health.up_since >= restarted_at
    job_id = await adapter.submit(simple_spec(cluster, "true\n", "back"), SUBMIT_USER)
    assert (await wait_for_job(adapter, job_id, {SlurmJobState.COMPLETED})).state is SlurmJobState.COMPLETED


# --- helpers for the wrong-credential test ----------------------------------------------------------


@contextlib.contextmanager
def rogue_munge_conf(cluster: Cluster) -> Iterator[str]:
    """A munged with a freshly generated key, and a copy of the cluster's slurm.conf that points at it."""
    inside = Path(cluster.raw["scratch_dir"]) / f"rogue-munge-{secrets.token_hex(4)}"
    host = cluster.host_path(inside)
    host.mkdir(mode=0o755)
    uid, gid = _munge_ids(cluster)
    key = host / "munge.key"
    key.write_bytes(secrets.token_bytes(1024))
    for path in (host, key):
        os.chown(path, uid, gid)
    key.chmod(0o600)
    sock = inside / "munge.socket"
    argv = munged_argv(cluster.exec_prefix, sock)
    pid_file = host / "munged.pid.record"
    procs.spawn(pid_file, argv, host / "munged.out")
    try:
        wait_until(lambda: cluster.host_path(sock).exists(), 20, "the rogue munged socket")
        conf_dir = cluster.host_path(Path(cluster.slurm_conf).parent)
        for name in ("gres.conf", "cgroup.conf"):
            if (conf_dir / name).exists():
                (host / name).write_text((conf_dir / name).read_text())
        lines = (conf_dir / "slurm.conf").read_text().splitlines()
        rewired = [f"AuthInfo=socket={sock}" if line.startswith("AuthInfo=") else line for line in lines]
        (host / "slurm.conf").write_text("\n".join(rewired) + "\n")
        yield str(inside / "slurm.conf")
    finally:
        procs.stop(pid_file)


def _munge_ids(cluster: Cluster) -> tuple[int, int]:
    for line in cluster.host_path("/etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == "munge":
            return int(fields[2]), int(fields[3])
    raise AssertionError("no munge user")


_PROBE = """
import asyncio, sys
from tests.lab import Cluster, make_adapter, SUBMIT_USER
from tests.adapters.test_conformance import simple_spec
import json
raw = json.loads(sys.argv[2]); raw["slurm_conf"] = sys.argv[3]
cluster = Cluster(raw)
async def main():
    adapter = make_adapter(sys.argv[1], cluster)
    names = []
    for call in (adapter.health, lambda: adapter.submit(simple_spec(cluster, "true\\n", "auth"), SUBMIT_USER)):
        try:
            await call()
            names.append("no error")
        except Exception as exc:
            names.append(type(exc).__name__ + ": " + str(exc) if type(exc).__name__ != "AuthenticationError"
                         else "AuthenticationError")
    await adapter.aclose()
    print(json.dumps(names))
asyncio.run(main())
"""


def probe_in_subprocess(kind: str, cluster: Cluster, conf: str) -> list[str]:
    """Run health and submit with another slurm.conf in a fresh process (libslurm binds one per process)."""
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, kind, json.dumps(cluster.raw), conf],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert result.returncode == 0, result.stderr
    names: list[str] = json.loads(result.stdout.strip().splitlines()[-1])
    return names


async def test_through_an_agent_the_reconcilers_listing_is_the_pushed_view(
    case: tuple[str, Cluster], adapter: SlurmAdapter, cluster: Cluster, request: pytest.FixtureRequest
) -> None:
    """The reconciler's listing (jobs tagged with the broker's prefix) comes from the listing the agent pushed,
    one begun after the call: a job running before the call is in it as Slurm says, a job cancelled before the
    call is in it cancelled, and no listing order was sent for it."""
    if case[0] not in AGENT_INSIDE:
        pytest.skip("only an agent pushes its listings")
    from broker.jobs.ids import JOB_ID_PREFIX  # the broker: not in the sid chroot's venv (pyslurm)

    fleet: AgentFleet = request.getfixturevalue("agent_fleet")
    spec = simple_spec(cluster, "sleep 300\n", "pushed", tag=f"{JOB_ID_PREFIX}{new_tag('pushed')}")
    job_id = await adapter.submit(spec, SUBMIT_USER)
    try:
        await wait_for_job(adapter, job_id, {SlurmJobState.RUNNING})
        listed = await adapter.list_jobs(tag_prefix=spec.tag)
        assert [(r.job_id, r.tag, r.state, r.user) for r in listed] == [
            (job_id, spec.tag, SlurmJobState.RUNNING, SUBMIT_USER)
        ]
        assert cluster.show_job(job_id)["JobState"] == "RUNNING"
    finally:
        await adapter.cancel(job_id, SUBMIT_USER, tag=spec.tag)
    await wait_for_job(adapter, job_id, {SlurmJobState.CANCELLED}, timeout_s=30)
    listed = await adapter.list_jobs(tag_prefix=spec.tag)
    assert [(r.job_id, r.state) for r in listed] == [(job_id, SlurmJobState.CANCELLED)]
    ordered = [args for op, args in await read_orders(fleet.database_url) if op == "list_jobs"
               and args.get("tag_prefix") == spec.tag]  # fmt: skip
    assert ordered == [], fleet.agents[fleet.factory_id(cluster, AGENT_INSIDE[case[0]])].log_tail()


async def test_through_an_agent_health_and_cluster_info_are_the_pushed_site_state(
    case: tuple[str, Cluster], adapter: SlurmAdapter, cluster: Cluster, request: pytest.FixtureRequest
) -> None:
    """Health and cluster information come from the state the agent pushed after the call, as the lab's
    slurmctld says (its release, its partitions), without a read order."""
    if case[0] not in AGENT_INSIDE:
        pytest.skip("only an agent pushes its site's state")
    fleet: AgentFleet = request.getfixturevalue("agent_fleet")
    before = len(await read_orders(fleet.database_url))
    health = await adapter.health()
    info = await adapter.cluster_info()
    assert health.ok, health
    assert health.release == cluster.release
    assert info.release == cluster.release
    assert {p.name for p in info.partitions} == {p["name"] for p in cluster.raw["partitions"]}
    assert [op for op, _ in (await read_orders(fleet.database_url))[before:] if op in {"health", "cluster_info"}] == []


async def read_orders(database_url: str) -> list[tuple[str, dict[str, Any]]]:
    """(op, args) of every read order in the agent fleet's database, oldest first."""
    from sqlalchemy import select  # the broker's database: not in the sid chroot's venv (pyslurm)

    from broker.db.engine import create_database
    from broker.db.models import AgentOrder

    database = create_database(database_url)
    try:
        async with database.read() as session:
            payloads = (
                await session.scalars(
                    select(AgentOrder.payload).where(AgentOrder.kind == "read").order_by(AgentOrder.id)
                )
            ).all()
    finally:
        await database.dispose()
    return [(payload["op"], payload["args"]) for payload in payloads]
