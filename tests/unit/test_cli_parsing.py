"""The CLI adapter's pure logic: sbatch argv, stderr -> typed errors, and parsing of real recorded output.

Everything under data/cli/ was recorded from the lab's real clusters (22.05.8 on the host, 24.11.5 and
26.05.5 in chroots) with five jobs each: exit 0, exit 3 with its own stdout/stderr, cancelled while running,
running with 2 GPUs, pending on Resources.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from slurm_adapters.cli import CliAdapter
from slurm_adapters.cli.adapter import parse_release, release_text
from slurm_adapters.cli.cluster import boot_time, partitions_from_key_values, sdiag_facts
from slurm_adapters.cli.errors import classify, error_lines
from slurm_adapters.cli.jobs import CliJob, from_key_values, jobs_from_json
from slurm_adapters.cli.render import export_file, parse_submit, sbatch_argv
from slurm_adapters.cli.runner import EXPORT_FILE_PLACEHOLDER, Outcome, Runner
from slurm_adapters.convert import parse_key_values
from slurm_adapters.errors import (
    AuthenticationError,
    ClusterUnavailable,
    InvalidRequest,
    JobNotFound,
    OutputUnavailable,
    SiteError,
    UnsafeRequest,
)
from slurm_adapters.formats import RecordFormat, for_release, v0038, v0042
from slurm_adapters.records import ClusterInfo, SlurmJobSpec, SlurmJobState
from slurm_adapters.safety import DIRECTIVE_FENCE
from tests.unit.captures import cli_json, cli_text
from tests.unit.sites import policy_of

DATA = Path(__file__).parent / "data" / "cli"
POLICY = policy_of({"alice": 1001, "bob": 1002})
LOGIN_ENV = {"HOME": "/home/alice", "USER": "alice", "LOGNAME": "alice", "SHELL": "/bin/bash"}


def json_format(name: str) -> RecordFormat:
    """A recording's format, from the release in its name (the adapter takes it from sbatch --version)."""
    major, minor = name.removesuffix(".json").rsplit("-", 1)[1].split(".")
    return for_release((int(major), int(minor)))


def kv_jobs() -> dict[int, CliJob]:
    lines = (DATA / "scontrol-job-22.05.txt").read_text().splitlines()
    jobs = [from_key_values(parse_key_values(line.strip())) for line in lines if line.strip()]
    return {job.record.job_id: job for job in jobs}


def json_jobs(name: str) -> dict[int, CliJob]:
    return {job.record.job_id: job for job in jobs_from_json(cli_json(name), json_format(name))}


def spec(**overrides: Any) -> SlurmJobSpec:
    fields: dict[str, Any] = {
        "name": "train",
        "script": "#!/bin/bash\n#SBATCH --partition=evil\necho hi\n",
        "working_directory": "/scratch/alice",
        "tag": "cvy-0001",
    }
    fields.update(overrides)
    return SlurmJobSpec(**fields)


def adapter(**overrides: Any) -> CliAdapter:
    options: dict[str, Any] = {
        "slurm_conf": "/etc/slurm/slurm.conf",
        "policy": POLICY,
        "as_root": True,
        "fs_root": "/",
    }
    options.update(overrides)
    return CliAdapter("test", **options)


# ---------------------------------------------------------------------------------------------------
# sbatch argv, script and environment
# ---------------------------------------------------------------------------------------------------


def test_every_spec_field_becomes_one_option() -> None:
    full = spec(
        stdout="out-%j.txt",
        stderr="err-%j.txt",
        partition="gpu",
        account="proj1",
        qos="high",
        nodes=2,
        tasks=8,
        tasks_per_node=4,
        cpus_per_task=4,
        memory_mb=16000,
        gpus_per_node=4,
        gpu_type="a100",
        time_limit_min=90,
        requeue=False,
    )
    assert sbatch_argv(full) == [
        "sbatch",
        "--parsable",
        "--export=ALL",
        EXPORT_FILE_PLACEHOLDER,
        "--job-name=train",
        "--chdir=/scratch/alice",
        "--comment=cvy-0001",
        "--output=out-%j.txt",
        "--error=err-%j.txt",
        "--partition=gpu",
        "--account=proj1",
        "--qos=high",
        "--nodes=2",
        "--ntasks=8",
        "--ntasks-per-node=4",
        "--cpus-per-task=4",
        "--mem=16000M",
        "--gres=gpu:a100:4",
        "--time=90",
        "--no-requeue",
    ]
    assert sbatch_argv(dataclasses.replace(full, requeue=True))[-1] == "--requeue"


def test_unset_options_are_left_to_slurm() -> None:
    argv = sbatch_argv(spec())
    assert not [arg for arg in argv if arg.startswith(("--gres", "--mem", "--time", "--partition", "--output"))]
    assert sbatch_argv(spec(gpus_per_node=2))[-1] == "--gres=gpu:2"  # untyped GPUs


def test_hostile_strings_stay_single_argv_elements() -> None:
    """A name full of sbatch syntax is one argv element: it cannot add an option or a directive."""
    name = "x #SBATCH --partition=evil --uid=0; rm -rf /"
    rendering = adapter().render(spec(name=name, partition="-p", account="--qos=evil"), "alice")
    argv = rendering.payload["argv"]
    assert f"--job-name={name}" in argv
    assert "--partition=-p" in argv
    assert "--account=--qos=evil" in argv
    assert not [arg for arg in argv if arg.startswith(("--uid", "--partition=evil", "--qos"))]
    # the script's own #SBATCH line comes after the fence, where sbatch no longer reads directives
    lines = rendering.script.splitlines()
    assert lines[:2] == ["#!/bin/bash", DIRECTIVE_FENCE]
    assert lines.index("#SBATCH --partition=evil") > 1


@pytest.mark.parametrize(
    "overrides",
    [
        {"name": "train\n#SBATCH --uid=0"},
        {"name": "a\rb"},
        {"tag": "cvy\n1"},
        {"working_directory": "/scratch\n/alice"},
        {"working_directory": "relative/dir"},
        {"stdout": "out\t.txt"},
        {"environment": {"SLURM_CONF": "/tmp/evil.conf"}},
        {"environment": {"BAD NAME": "x"}},
    ],
)
def test_unsafe_specs_are_refused_before_sbatch(overrides: dict[str, Any]) -> None:
    with pytest.raises(UnsafeRequest):
        adapter().render(spec(**overrides), "alice")


@pytest.mark.parametrize("user", ["root", "slurm", "daemon", "nobody-here", "Alice;id"])
def test_privileged_or_unknown_users_are_refused(user: str) -> None:
    with pytest.raises(UnsafeRequest):
        adapter().render(spec(), user)


def test_root_adapter_switches_user_inside_the_exec_prefix() -> None:
    argv = adapter(exec_prefix=["chroot", "/srv/trixie"]).render(spec(), "alice").payload["argv"]
    assert argv[:7] == ["chroot", "/srv/trixie", "runuser", "-m", "-u", "alice", "--"]
    plain = adapter(as_root=False).render(spec(), "alice").payload["argv"]
    assert plain[0] == "env"


def test_sbatch_runs_in_the_jobs_directory_with_nothing_of_the_chains_environment() -> None:
    """As a user runs it: SLURM_SUBMIT_DIR is the job's directory, and --export=ALL exports only the file."""
    argv = adapter(fs_root=None, exec_prefix=["chroot", "/srv/trixie"]).render(spec(), "alice").payload["argv"]
    assert argv[7:12] == ["env", "-i", "--chdir=/scratch/alice", "SLURM_CONF=/etc/slurm/slurm.conf", "sbatch"]
    assert argv[12:15] == ["--parsable", "--export=ALL", EXPORT_FILE_PLACEHOLDER]


def test_sbatch_is_looked_up_in_the_clusters_filesystem(tmp_path: Path) -> None:
    (tmp_path / "opt/slurm/bin").mkdir(parents=True)
    (tmp_path / "opt/slurm/bin/sbatch").write_text("")
    found = adapter(fs_root=tmp_path, tool_path="/usr/bin:/opt/slurm/bin")
    assert found.sbatch == "/opt/slurm/bin/sbatch"
    assert adapter(fs_root=tmp_path / "empty", tool_path="/usr/bin").sbatch == "sbatch"  # env's default path


def test_job_environment_travels_as_data_never_in_the_chain() -> None:
    """LD_PRELOAD or PATH from a user must not reach chroot/runuser running as root."""
    environment = {"PATH": "/home/alice/bin", "LD_PRELOAD": "/tmp/evil.so", "FOO": "a,b=c\nd"}
    rendering = adapter().render(spec(environment=environment), "alice")
    chain_env = rendering.payload["env"]
    assert chain_env["PATH"] != "/home/alice/bin"
    assert "LD_PRELOAD" not in chain_env
    assert "FOO" not in chain_env
    assert chain_env["SLURM_CONF"] == "/etc/slurm/slurm.conf"
    # PATH from the spec wins over the base one
    assert rendering.payload["export"] == {**LOGIN_ENV, **environment, "SLURM_JOB_NAME": "train"}
    blob = export_file({"PATH": "/home/alice/bin", "FOO": "a,b=c\nd"})
    assert blob == b"PATH=/home/alice/bin\0FOO=a,b=c\nd\0"


def test_default_environment_has_a_path_and_the_login() -> None:
    export = adapter().render(spec(), "alice").payload["export"]
    assert export == {"PATH": "/usr/local/bin:/usr/bin:/bin", **LOGIN_ENV, "SLURM_JOB_NAME": "train"}


@pytest.mark.parametrize(
    ("stdout", "expected"),
    [("4242\n", 4242), ("4242;alpha\n", 4242), ("\n17\n", 17), ("", None), ("Submitted batch job 9\n", None)],
)
def test_parse_submit(stdout: str, expected: int | None) -> None:
    assert parse_submit(stdout) == expected


def test_release_parsing() -> None:
    assert parse_release("slurm-wlm 22.05.8\n") == (22, 5, 8)
    assert parse_release("slurm 26.05.5") == (26, 5, 5)
    assert parse_release("sbatch: fatal: Could not establish a configuration source") is None
    assert release_text((22, 5, 8)) == "22.05.8"


# ---------------------------------------------------------------------------------------------------
# stderr -> typed errors (messages recorded from the lab's clusters)
# ---------------------------------------------------------------------------------------------------

INVALID_PARTITION = (
    "sbatch: error: invalid partition specified: nope\n"
    "sbatch: error: Batch job submission failed: Invalid partition name specified\n"
)
MUNGE_DOWN = (
    "sbatch: error: If munged is up, restart with --num-threads=10\n"
    'sbatch: error: Munge encode failed: Failed to access "/run/munge/munge.socket.2": No such file or '
    "directory (Did you start munged?)\n"
    "sbatch: error: slurm_send_node_msg: auth_g_create: REQUEST_SUBMIT_BATCH_JOB has authentication error\n"
    "sbatch: error: Batch job submission failed: Protocol authentication error\n"
)


@pytest.mark.parametrize(
    ("stderr", "needle"),
    [
        (INVALID_PARTITION, "Invalid partition name specified"),
        (
            "sbatch: error: Batch job submission failed: Requested time limit is invalid "
            "(missing or exceeds some limit)\n",
            "Requested time limit is invalid",
        ),
        (
            "sbatch: error: Batch job submission failed: Requested node configuration is not available\n",
            "Requested node configuration is not available",
        ),
        (
            "sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified\n",
            "Invalid account",
        ),
        ("sbatch: error: Batch job submission failed: Invalid qos specification\n", "Invalid qos"),
        (
            "sbatch: error: Batch job submission failed: Invalid generic resource (gres) specification\n",
            "Invalid generic resource",
        ),
        (
            "sbatch: error: Batch job submission failed: More processors requested than permitted\n",
            "More processors requested",
        ),
    ],
)
def test_refusals_of_the_job_are_invalid_requests_with_slurms_words(stderr: str, needle: str) -> None:
    error = classify(stderr, cluster="c", tool="sbatch", maybe_applied=True, job_error_default=True)
    assert type(error) is InvalidRequest
    assert needle in str(error)
    assert error.cluster == "c"
    assert any(needle in message for message in error.errors)


@pytest.mark.parametrize(
    "stderr",
    [
        "sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)\n",
        "squeue: error: Connection refused\n",
        "sbatch: fatal: Could not establish a configuration source\n",
        "sbatch: error: Batch job submission failed: Rate limit exceeded, please retry momentarily\n",
        "sbatch: error: Batch job submission failed: Rate limit exceeded, please retry later\n",
    ],
)
def test_unreachable_controller_is_cluster_unavailable_and_not_applied(stderr: str) -> None:
    error = classify(stderr, cluster="c", tool="sbatch", maybe_applied=True, job_error_default=True)
    assert isinstance(error, ClusterUnavailable)
    assert error.maybe_applied is False


def test_timeout_after_sending_may_have_submitted() -> None:
    stderr = "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation\n"
    submit = classify(stderr, cluster="c", tool="sbatch", maybe_applied=True, job_error_default=True)
    read = classify(stderr, cluster="c", tool="squeue")
    assert isinstance(submit, ClusterUnavailable)
    assert submit.maybe_applied is True
    assert isinstance(read, ClusterUnavailable)
    assert read.maybe_applied is False


@pytest.mark.parametrize(
    "stderr",
    [
        MUNGE_DOWN,
        "sbatch: error: Batch job submission failed: Zero Bytes were transmitted or received\n",
        "scontrol: error: Invalid user id\n",
        "slurm_load_partitions error: Protocol authentication error\n",
    ],
)
def test_auth_failures_win_over_everything_else(stderr: str) -> None:
    error = classify(stderr, cluster="c", tool="sbatch", job_error_default=True)
    assert isinstance(error, AuthenticationError)


def test_unknown_job_id() -> None:
    error = classify("slurm_load_jobs error: Invalid job id specified\n", cluster="c", tool="scontrol")
    assert isinstance(error, JobNotFound)


def test_unrecognised_failures_default_by_tool() -> None:
    stderr = "sbatch: error: something nobody has seen before\n"
    assert type(classify(stderr, cluster="c", tool="sbatch", job_error_default=True)) is InvalidRequest
    read = classify(stderr, cluster="c", tool="squeue")
    assert type(read) is SiteError
    assert read.errors == ("something nobody has seen before",)


def test_warnings_are_not_errors() -> None:
    stderr = "sbatch: warning: can't run 1 processes on 50 nodes, setting nnodes to 1\n"
    assert error_lines(stderr) == []
    assert error_lines(MUNGE_DOWN)[-1] == "Batch job submission failed: Protocol authentication error"


# ---------------------------------------------------------------------------------------------------
# Job records from real output
# ---------------------------------------------------------------------------------------------------


def test_scontrol_key_values_22_05() -> None:
    jobs = kv_jobs()
    assert sorted(jobs) == [25, 26, 27, 28, 29]
    ok, fail, cancelled, running, pending = (jobs[i].record for i in (25, 26, 27, 28, 29))
    assert (ok.state, ok.exit_code, ok.signal, ok.tag) == (SlurmJobState.COMPLETED, 0, 0, "cv-fx-ok")
    assert ok.submit_time == datetime(2026, 11, 25, 17, 58, 22, tzinfo=UTC)  # printed in UTC (TZ=UTC)
    assert (fail.state, fail.reason, fail.exit_code, fail.signal) == (SlurmJobState.FAILED, "NonZeroExitCode", 3, 0)
    assert fail.stdout == "/var/lib/conveyor-lab/bravo/scratch/fx-26.out"
    assert fail.stderr == "/var/lib/conveyor-lab/bravo/scratch/fx-26.err"
    assert ok.stderr == ok.stdout == "/var/lib/conveyor-lab/bravo/scratch/slurm-25.out"
    assert cancelled.state is SlurmJobState.CANCELLED
    assert (running.state, running.nodes, running.end_time) == (SlurmJobState.RUNNING, "hn1", None)
    assert running.exit_code is None  # not finished: no exit code yet
    assert running.allocated_tres["cpu"] == "8"
    assert (pending.state, pending.reason, pending.start_time, pending.nodes) == (
        SlurmJobState.PENDING,
        "Resources",
        None,
        None,
    )
    assert pending.allocated_tres == {}
    assert (ok.user, jobs[25].uid, ok.partition, ok.time_limit_min, ok.name) == (
        "alice",
        1001,
        "cpu",
        5,
        "fx-ok",
    )


def test_squeue_json_22_05_says_exactly_what_scontrol_says() -> None:
    """Two formats of the same five jobs (recorded together) must give identical records."""
    from_json = json_jobs("squeue-22.05.json")
    from_text = kv_jobs()
    assert sorted(from_json) == sorted(from_text)
    for job_id, job in from_json.items():
        assert job.record == from_text[job_id].record, job_id
        assert job.uid == from_text[job_id].uid


@pytest.mark.parametrize(("name", "first"), [("squeue-24.11.json", 17), ("squeue-26.05.json", 58)])
def test_squeue_json_data_parser_releases(name: str, first: int) -> None:
    jobs = json_jobs(name)
    assert sorted(jobs) == list(range(first, first + 5))
    ok, fail, cancelled, running, pending = (jobs[first + i].record for i in range(5))
    assert (ok.state, ok.raw_state, ok.exit_code, ok.signal) == (SlurmJobState.COMPLETED, "COMPLETED", 0, 0)
    assert (fail.state, fail.exit_code, fail.reason) == (SlurmJobState.FAILED, 3, "NonZeroExitCode")
    assert fail.stdout is not None
    assert fail.stdout.endswith(f"/scratch/fx-{first + 1}.out")  # 26.05 leaves %j in the JSON
    assert fail.stderr is not None
    assert fail.stderr.endswith(f"/scratch/fx-{first + 1}.err")
    assert (cancelled.state, cancelled.signal) == (SlurmJobState.CANCELLED, 15)
    assert (running.state, running.end_time, running.exit_code) == (SlurmJobState.RUNNING, None, None)
    assert running.start_time is not None
    assert (pending.state, pending.reason, pending.start_time) == (SlurmJobState.PENDING, "Resources", None)
    assert ok.tag == "cv-fx-ok"
    assert ok.time_limit_min == 5
    assert ok.submit_time is not None
    assert ok.submit_time.tzinfo is UTC
    assert jobs[first].uid == 1001


def test_scontrol_json_one_job_matches_the_listing() -> None:
    (job,) = jobs_from_json(cli_json("scontrol-job-24.11.json"), v0042)
    assert job.record == json_jobs("squeue-24.11.json")[18].record
    assert jobs_from_json(cli_json("scontrol-job-unknown-24.11.json"), v0042) == []


def test_projected_times_are_not_reported() -> None:
    """Backfill's expected start of a pending job and a running job's end at its limit are guesses."""
    future = {"set": True, "infinite": False, "number": 1795699999}
    pending = {"job_id": 1, "job_state": ["PENDING"], "start_time": future, "end_time": future}
    running = {"job_id": 2, "job_state": ["RUNNING"], "start_time": future, "end_time": future}
    first, second = (job.record for job in jobs_from_json({"jobs": [pending, running]}, v0042))
    assert (first.start_time, first.end_time) == (None, None)
    assert second.start_time is not None
    assert second.end_time is None


def test_22_05_exit_code_is_a_wait_status() -> None:
    raw = {"job_id": 1, "job_state": "FAILED", "exit_code": 0x0300 | 0, "user_id": 1001}
    assert jobs_from_json({"jobs": [raw]}, v0038)[0].record.exit_code == 3
    raw = {"job_id": 1, "job_state": "CANCELLED", "exit_code": 9}
    record = jobs_from_json({"jobs": [raw]}, v0038)[0].record
    assert (record.exit_code, record.signal) == (0, 9)


# ---------------------------------------------------------------------------------------------------
# Cluster description from real output
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("release", "nodes_file", "gpu", "cpu_max", "gpu_max"),
    [
        ("22.05", "sinfo-22.05.json", "h100", 30, 90),
        ("24.11", "scontrol-node-24.11.json", "h100", 45, 90),
        ("26.05", "scontrol-node-26.05.json", "a100", 60, 120),
    ],
)
def test_cluster_info(release: str, nodes_file: str, gpu: str, cpu_max: int, gpu_max: int) -> None:
    nodes = json_format(nodes_file).parse_nodes(cli_json(nodes_file))
    partitions = partitions_from_key_values((DATA / f"scontrol-partition-{release}.txt").read_text(), nodes)
    by_name = {p.name: p for p in partitions}
    assert (by_name["cpu"].default, by_name["gpu"].default) == (True, False)
    assert (by_name["cpu"].max_time_min, by_name["gpu"].max_time_min) == (cpu_max, gpu_max)
    assert by_name["cpu"].default_time_min is not None
    assert by_name["gpu"].total_gpus == {gpu: 2}
    assert by_name["cpu"].total_gpus == {}
    assert by_name["gpu"].total_cpus == 8
    gpu_node = next(node for node in nodes if node.gpus)
    assert gpu_node.partitions == ("gpu",)
    assert gpu_node.state == "ALLOCATED"  # the 2-GPU job was running when this was recorded
    assert gpu_node.gpus_used == {gpu: 2}
    cpu_node = next(node for node in nodes if not node.gpus)
    assert cpu_node.gpus_used == {}  # 22.05 says "gpu:0": not a GPU type
    info = ClusterInfo(cluster="c", release=release, partitions=tuple(partitions), nodes=tuple(nodes))
    assert info.gpu_totals() == {gpu: (2, 0)}


# ---------------------------------------------------------------------------------------------------
# The adapter's decisions, with canned command outcomes
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CannedRunner(Runner):
    """Answers commands from a table; records what was run and as whom."""

    answers: Mapping[str, Outcome] = field(default_factory=dict)
    calls: list[tuple[tuple[str, ...], str | None]] = field(default_factory=list)

    async def run(
        self,
        command: Sequence[str],
        *,
        user: str | None = None,
        stdin: bytes = b"",
        export_file: bytes | None = None,
        extra_env: Mapping[str, str] | None = None,
        maybe_applied: bool = False,
    ) -> Outcome:
        self.calls.append((tuple(command), user))
        return self.answers[" ".join(command[:3])]


def outcome(stdout: str = "", stderr: str = "", returncode: int = 0) -> Outcome:
    return Outcome(argv=(), returncode=returncode, stdout=stdout, stderr=stderr)


def canned(version: str, answers: dict[str, Outcome]) -> tuple[CliAdapter, CannedRunner]:
    cli = adapter(operator_user="root")
    runner = CannedRunner(
        cluster="test",
        slurm_conf="/etc/slurm/slurm.conf",
        answers={"sbatch --version": outcome(f"slurm-wlm {version}\n"), **answers},
    )
    cli.runner = runner
    return cli, runner


async def test_empty_json_answer_is_not_found_only_without_errors() -> None:
    unknown = (DATA / "scontrol-job-unknown-24.11.json").read_text()
    cli, _ = canned("24.11.5", {"scontrol show job": outcome(unknown)})
    with pytest.raises(JobNotFound):
        await cli.get_job(999999)
    # 24.11 with a broken munge: the same empty answer and exit 0, but errors on stderr
    broken = "scontrol: error: Munge encode failed: Failed to access socket\n"
    cli, _ = canned("24.11.5", {"scontrol show job": outcome(unknown, broken)})
    with pytest.raises(AuthenticationError):
        await cli.get_job(999999)


async def test_22_05_uses_key_values_and_lists_with_plain_squeue_json() -> None:
    text = (DATA / "scontrol-job-22.05.txt").read_text().splitlines()[1] + "\n"
    listing = (DATA / "squeue-22.05.json").read_text()
    cli, runner = canned("22.05.8", {"scontrol show job": outcome(text), "squeue --json": outcome(listing)})
    assert (await cli.get_job(26)).exit_code == 3
    assert sorted(r.job_id for r in await cli.list_jobs(tags={"cv-fx-ok", "cv-fx-pend"})) == [25, 29]
    assert [r.job_id for r in await cli.list_jobs(tag_prefix="cv-fx-c")] == [27]
    commands = [command for command, _ in runner.calls]
    assert ("scontrol", "show", "job", "-o", "26") in commands
    assert ("squeue", "--json") in commands
    assert all(user == "root" for command, user in runner.calls if command[0] != "sbatch")


async def test_json_errors_with_exit_zero_fail_the_listing() -> None:
    body = json.dumps({"jobs": [], "errors": [{"error": "Unspecified error", "description": "Failed"}]})
    cli, _ = canned("22.05.8", {"squeue --json": outcome(body)})
    with pytest.raises(SiteError, match="Unspecified error"):
        await cli.list_jobs()


async def test_cancel_of_a_finished_job_runs_no_scancel() -> None:
    text = (DATA / "scontrol-job-22.05.txt").read_text().splitlines()[0] + "\n"  # COMPLETED
    cli, runner = canned("22.05.8", {"scontrol show job": outcome(text)})
    await cli.cancel(25, "alice")
    assert not [command for command, _ in runner.calls if command[0] == "scancel"]


async def test_cancel_runs_scancel_as_the_user_and_maps_refusals() -> None:
    text = (DATA / "scontrol-job-22.05.txt").read_text().splitlines()[3] + "\n"  # RUNNING
    denied = "scancel: error: Kill job error on job id 28: Access/permission denied\n"
    cli, runner = canned(
        "22.05.8", {"scontrol show job": outcome(text), "scancel 28": outcome(stderr=denied, returncode=1)}
    )
    with pytest.raises(InvalidRequest, match="Access/permission denied"):
        await cli.cancel(28, "bob")
    assert (("scancel", "28"), "bob") in runner.calls


async def test_read_output_refuses_without_fs_root() -> None:
    cli = adapter(fs_root=None)
    with pytest.raises(OutputUnavailable):
        await cli.read_output(1)


# ---------------------------------------------------------------------------------------------------
# The runner with real local processes (no Slurm involved)
# ---------------------------------------------------------------------------------------------------


async def test_runner_environment_is_exactly_the_clean_one() -> None:
    runner = Runner(cluster="c", slurm_conf="/x/slurm.conf")
    result = await runner.run(["env"], extra_env={"SLURM_EXPORT_ENV": "ALL"})
    seen = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert seen == {**runner.environment(), "SLURM_EXPORT_ENV": "ALL"}
    assert "HOME" not in seen


async def test_runner_hands_the_export_file_over_on_a_descriptor() -> None:
    runner = Runner(cluster="c", slurm_conf="/x/slurm.conf")
    reader = "import os, sys; fd = int(sys.argv[1].split('=')[1]); sys.stdout.buffer.write(os.read(fd, 4096))"
    data = b"FOO=a,b\nc\0PATH=/bin\0"
    result = await runner.run([sys.executable, "-c", reader, EXPORT_FILE_PLACEHOLDER], export_file=data)
    assert result.returncode == 0
    assert result.stdout.encode() == data


def alive_in_group(pgid: int) -> list[int]:
    """Processes of a process group that are still running (zombies do not count)."""
    alive = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(stat_file.parent.name))
    return alive


async def test_runner_kills_the_whole_chain_at_the_deadline(tmp_path: Path) -> None:
    runner = Runner(cluster="c", slurm_conf="/x/slurm.conf", timeout_s=0.5)
    pid_file = tmp_path / "pid"
    started = time.monotonic()
    with pytest.raises(ClusterUnavailable) as caught:
        await runner.run(["sh", "-c", f"echo $$ > {pid_file}; sleep 30 & wait"], maybe_applied=True)
    assert time.monotonic() - started < 5
    assert caught.value.maybe_applied is True
    pgid = int(pid_file.read_text())  # the chain's own process group (start_new_session)
    for _ in range(50):
        if not alive_in_group(pgid):
            break
        await asyncio.sleep(0.05)
    assert alive_in_group(pgid) == []  # the backgrounded grandchild died with it


async def test_runner_reports_a_missing_program_as_a_site_error() -> None:
    runner = Runner(cluster="c", slurm_conf="/x/slurm.conf", exec_prefix=("/nonexistent/chroot",))
    with pytest.raises(SiteError, match="cannot run"):
        await runner.run(["squeue"])


@pytest.mark.parametrize("release", ["22.05", "24.11"])
def test_sdiag_tells_since_when_slurmctld_statistics_run_and_the_slurmdbd_backlog(release: str) -> None:
    text = cli_text(f"sdiag-{release}.txt")
    since, backlog = sdiag_facts(text)
    lines = text.splitlines()
    epoch = int(next(line for line in lines if line.startswith("Data since")).rsplit("(", 1)[1][:-1])
    queued = int(next(line for line in lines if line.startswith("DBD Agent queue size:")).split(":")[1])
    assert since == datetime.fromtimestamp(epoch, UTC)
    assert backlog == queued
    assert sdiag_facts("sdiag: error: Unable to contact slurm controller") == (None, None)


def test_boot_time_is_read_from_scontrol_show_config_in_utc() -> None:
    text = "Configuration data as of 2026-12-07T00:06:12\nAccountingStorageBackupHost = (null)\n" + (
        "BOOT_TIME               = 2026-12-07T00:06:09\nBcastExclude            = /lib,/usr/lib\n"
    )
    assert boot_time(text) == datetime(2026, 12, 7, 0, 6, 9, tzinfo=UTC)
    assert boot_time("scontrol: error: Unable to contact slurm controller") is None
