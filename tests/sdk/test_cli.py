"""The ``conveyor`` CLI end to end: ``python -m conveyor`` as a subprocess against a live broker (one per module,
SQLite) in front of the lab's bravo; and the pure parts (argument types, exit codes, completion) in-process.

The subprocess gets its URL and token from CONVEYOR_URL/CONVEYOR_TOKEN only, with HOME and XDG_CONFIG_HOME in
the test's directory, so no real config file is ever read. Every ``--json`` answer is read back with the SDK's
own models: that is the contract scripts rely on.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import TypeAdapter, ValidationError

import conveyor
from conveyor import cli
from conveyor.cli import Exit, exit_code_for, main, parse_memory, parse_time
from conveyor.completion import SCRIPTS
from conveyor.config import ConfigError
from conveyor.models import DryRun, FactoryView, Job, JobEvent, JobOutputChunk, Me, NewToken, TokenView
from conveyor.problems import Problem, error_from_problem
from conveyor.spec import JobSpec, JobState
from dev.lab.images import TEST_IMAGE
from tests.api.conftest import TOKEN
from tests.api.server import REPO, Server, lab_factories, serving

PROJECT = "EHPC-AIF-2026PG01-1147"
ON_BRAVO = ["--project", PROJECT, "--factory", "bravo", "--time", "5"]
JOBS, EVENTS = TypeAdapter(list[Job]), TypeAdapter(list[JobEvent])


# --- the CLI as a user runs it ------------------------------------------------------------------------------


@dataclass
class Run:
    code: int
    out: str
    err: str


@dataclass
class Cli:
    """Runs ``python -m conveyor`` with a clean environment: the broker's URL and a token, nothing else."""

    home: Path
    url: str
    token: str | None = TOKEN

    def env(self, token: str | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
        env |= {"HOME": str(self.home), "XDG_CONFIG_HOME": str(self.home / ".config"), "CONVEYOR_URL": self.url}
        return env | ({"CONVEYOR_TOKEN": token} if token else {})

    def __call__(self, *args: str, token: str | None = "", timeout_s: float = 60) -> Run:
        chosen = self.token if token == "" else token
        done = subprocess.run([sys.executable, "-m", "conveyor", *args], env=self.env(chosen), cwd=self.home,
                              capture_output=True, text=True, timeout=timeout_s, check=False)  # fmt: skip
        return Run(done.returncode, done.stdout, done.stderr)

    def ok(self, *args: str, **options: Any) -> Run:
        run = self(*args, **options)
        assert run.code == 0, f"conveyor {' '.join(args)} exited {run.code}:\n{run.out}\n{run.err}"
        return run

    def submit(self, *args: str) -> Job:
        return Job.model_validate_json(self.ok("submit", "--json", *ON_BRAVO, *args).out)


@dataclass
class Broker:
    server: Server
    admin_token: str


async def _first_admin(url: str) -> str:
    from broker.db.engine import create_database
    from broker.identity.service import IdentityService

    database = create_database(url)
    try:
        _, issued = await IdentityService(database).create_first_admin("ops")
    finally:
        await database.dispose()
    return issued.text


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, migrated_sqlite_template: Path) -> Iterator[Broker]:
    """One broker for the module, with its loops, in front of the lab's bravo and delta (which runs containers),
    with the dev token and a real admin."""
    directory = tmp_path_factory.mktemp("cli-broker")
    database = directory / "conveyor.db"
    shutil.copyfile(migrated_sqlite_template, database)
    url = f"sqlite+aiosqlite:///{database}"
    admin_token = asyncio.run(_first_admin(url))
    factories = lab_factories(directory, only=["bravo", "delta"])
    with serving(directory, database, factories, run_loops=True, env={"CONVEYOR_DATABASE_URL": url}) as server:
        yield Broker(server, admin_token)


@pytest.fixture
def run(broker: Broker, tmp_path: Path) -> Cli:
    (tmp_path / ".config").mkdir()
    return Cli(tmp_path, broker.server.base_url)


# --- live: the lab's bravo ------------------------------------------------------------------------------------


@pytest.mark.lab
def test_submit_a_command_wait_for_it_and_read_its_output_and_events(run: Cli) -> None:
    job = run.submit("--label", "suite=cli", "--", "hostname")
    assert job.state is JobState.QUEUED
    assert job.name == "hostname"
    assert job.spec.command == ["hostname"]
    assert job.labels == {"suite": "cli"}

    waited = run("wait", "--json", "--timeout", "60", job.id)
    assert waited.code == Exit.OK, waited.err
    done = Job.model_validate_json(waited.out)
    assert (done.id, done.state, done.factory, done.exit_code) == (job.id, JobState.COMPLETED, "bravo", 0)

    # The lab's nodes run on this host: Slurm's NodeHostname is this machine's name.
    assert run.ok("output", job.id).out.strip() == socket.gethostname()
    # From a byte offset: the bytes from there to the end; --max-bytes of them; past the end, nothing.
    text = socket.gethostname() + "\n"
    assert run.ok("output", "--offset", "1", job.id).out == text[1:]
    assert run.ok("output", "--offset", "1", "--max-bytes", "1", job.id).out == text[1:2]
    assert run.ok("output", "--offset", "100000", job.id).out == ""
    chunk = JobOutputChunk.model_validate_json(run.ok("output", "--json", "--offset", "0", job.id).out)
    assert (chunk.offset, chunk.data, chunk.eof) == (0, text.encode(), True)
    refused = run("output", "--offset", "-1", job.id)
    assert refused.code != Exit.OK
    assert "0 or more" in refused.err

    events = EVENTS.validate_json(run.ok("events", "--json", job.id).out)
    assert [e.job_id for e in events] == [job.id] * len(events)
    assert events[-1].to_state is JobState.COMPLETED
    assert "completed" in run.ok("events", job.id).out

    shown = run.ok("status", job.id).out
    assert job.id in shown
    assert "completed (exit code 0)" in shown
    assert Job.model_validate_json(run.ok("status", "--json", job.id).out) == done


@pytest.mark.lab
def test_a_dry_run_shows_placement_and_the_slurm_rendering_and_submits_nothing(run: Cli) -> None:
    name = f"dry-{uuid.uuid4().hex[:8]}"
    answer = DryRun.model_validate_json(run.ok("submit", "--json", "--dry-run", "--name", name, *ON_BRAVO,
                                               "--", "hostname").out)  # fmt: skip
    assert (answer.factory, answer.time_limit_min) == ("bravo", 5)
    assert "hostname" in answer.rendering.script
    human = run.ok("submit", "--dry-run", "--name", name, *ON_BRAVO, "--", "hostname").out
    assert "--- batch script ---" in human
    assert "bravo" in human
    assert name not in {job.name for job in JOBS.validate_json(run.ok("list", "--json").out)}


@pytest.mark.lab
def test_a_dry_run_shows_the_compiled_container_script_and_refuses_where_no_factory_runs_it(
    run: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = f"hf_{uuid.uuid4().hex}"
    monkeypatch.setenv("HF_TOKEN", secret)  # --secret-env reads it from the CLI's own environment
    scratch = "/slurmlab/delta/scratch"
    args = ["submit", "--dry-run", "--project", PROJECT, "--time", "5", "--image", TEST_IMAGE,
            "--mount", f"{scratch}:/data:ro", "--container-env", "A=b c", "--launcher", "srun",
            "--secret-env", "HF_TOKEN", "--stdout", f"{scratch}/o-{{job_id}}.out"]  # fmt: skip
    command = ["--", "sh", "-c", "echo $A"]
    human = run.ok(*args, *command).out
    assert "delta" in human
    assert 'conveyor_apptainer_env HF_TOKEN "$HF_TOKEN"' in human
    assert secret not in human
    assert secret not in run.ok(*args, "--json", *command).out
    assert f"apptainer exec --containall --bind {scratch} --pwd {scratch}" in human
    assert f"--bind {scratch}:/data:ro {TEST_IMAGE} sh -c 'echo $A'" in human
    assert "conveyor_apptainer_env A 'b c'" in human
    refused = run("submit", "--json", *ON_BRAVO, "--image", TEST_IMAGE, "--", "true")
    assert refused.code != 0
    problem = Problem.model_validate_json(refused.out or refused.err)
    assert problem.code == "placement_failed.container_not_allowed"
    assert "Factory bravo runs no containers" in (problem.detail or "")


@pytest.mark.lab
def test_submit_a_script_file_and_wait_in_the_same_command(run: Cli) -> None:
    script = run.home / "train.sh"
    script.write_text("#!/bin/bash\necho from-the-script\n")
    waited = run("submit", "--json", *ON_BRAVO, "--wait", "--timeout", "60", str(script))
    assert waited.code == Exit.OK, waited.err
    job = Job.model_validate_json(waited.out)
    assert (job.name, job.state, job.spec.script) == ("train.sh", JobState.COMPLETED, script.read_text())
    assert "from-the-script" in run.ok("output", job.id).out


@pytest.mark.lab
def test_a_job_that_fails_makes_wait_exit_8(run: Cli) -> None:
    job = run.submit("--", "false")
    waited = run("wait", job.id, "--timeout", "60")
    assert waited.code == Exit.JOB_NOT_COMPLETED, waited.err
    assert "failed" in waited.out
    assert f"job {job.id} ended failed" in waited.err


@pytest.mark.lab
def test_wait_times_out_with_7_then_the_job_is_cancelled(run: Cli) -> None:
    job_id = run.ok("submit", *ON_BRAVO, "--", "sleep", "60").out.strip()  # without --json: the id alone
    assert job_id.startswith("job_")
    waited = run("wait", "--json", "--timeout", "1", job_id)
    assert waited.code == Exit.WAIT_TIMEOUT, waited.err
    assert not Job.model_validate_json(waited.out).state.is_terminal  # the job as last seen
    assert "wait_timeout" in waited.err

    cancelled = Job.model_validate_json(run.ok("cancel", "--json", job_id).out)
    assert cancelled.cancel_requested
    ended = run("wait", "--json", "--timeout", "30", job_id)
    assert ended.code == Exit.JOB_NOT_COMPLETED, ended.err
    assert Job.model_validate_json(ended.out).state is JobState.CANCELLED


@pytest.mark.lab
def test_list_as_json_and_as_a_table_with_filters(run: Cli) -> None:
    tag = uuid.uuid4().hex[:8]
    ids = [run.submit("--label", f"batch={tag}", "--", "true").id for _ in range(2)]
    listed = JOBS.validate_json(run.ok("list", "--json", "--label", f"batch={tag}").out)
    assert [job.id for job in listed] == ids[::-1]  # newest first
    assert len(JOBS.validate_json(run.ok("list", "--json", "--limit", "1").out)) == 1
    table = run.ok("list", "--label", f"batch={tag}", "--project", PROJECT).out.splitlines()
    assert table[0].split() == ["ID", "STATE", "FACTORY", "NAME", "PROJECT", "CREATED"]
    assert [line.split()[0] for line in table[1:]] == ids[::-1]
    none = JOBS.validate_json(run.ok("list", "--json", "--label", f"batch={tag}", "--state", "lost").out)
    assert none == []


@pytest.mark.lab
def test_factories_whoami_and_tokens(run: Cli, broker: Broker) -> None:
    factories = TypeAdapter(list[FactoryView]).validate_json(run.ok("factories", "--json").out)
    assert [f.id for f in factories] == ["bravo", "delta"]
    assert "bravo" in run.ok("factories").out
    assert Me.model_validate_json(run.ok("whoami", "--json").out).id
    assert broker.server.base_url in run.ok("whoami").out

    admin = broker.admin_token
    made = NewToken.model_validate_json(
        run.ok("tokens", "create", "ci", "--scope", "read", "--days", "1", "--json", token=admin).out
    )
    assert made.scopes == ["read"]
    assert Me.model_validate_json(run.ok("whoami", "--json", token=made.token).out).scopes == ["read"]
    listed = TypeAdapter(list[TokenView]).validate_json(run.ok("tokens", "list", "--json", token=admin).out)
    assert made.id in {t.id for t in listed}
    run.ok("tokens", "revoke", made.id, token=admin)
    assert run("whoami", token=made.token).code == Exit.AUTH


@pytest.mark.lab
def test_errors_have_their_exit_codes_and_one_line_each(run: Cli) -> None:
    missing = run("status", "--json", "job_doesnotexist0000")
    assert missing.code == Exit.NOT_FOUND
    assert Problem.model_validate_json(missing.out).code == "not_found"
    assert missing.err.count("\n") == 1
    assert missing.err.startswith("conveyor: not_found: ")

    refused = run("submit", *ON_BRAVO, "--gpus", "64", "--", "true")  # bravo has no node with 64 GPUs
    assert refused.code == Exit.REFUSED, refused.err
    assert "placement_failed" in refused.err

    assert run("whoami", token=None).code == Exit.AUTH  # no token configured at all
    assert run("whoami", token="not-a-valid-token-0123456789").code == Exit.AUTH

    bad_time = run("submit", *ON_BRAVO, "--time", "soon", "--", "true")
    assert bad_time.code == Exit.USAGE
    assert "invalid time 'soon'" in bad_time.err


def test_completion_scripts_name_every_command(tmp_path: Path) -> None:
    cli_run = Cli(tmp_path, "http://127.0.0.1:9", token=None)  # completion needs no broker and no token
    bash = cli_run.ok("completion", "bash").out
    for command in ("submit", "status", "list", "wait", "cancel", "events", "output", "factories", "whoami",
                    "tokens", "completion", "--dry-run", "--idempotency-key", "revoke"):  # fmt: skip
        assert command in bash
    assert "compdef _conveyor conveyor" in cli_run.ok("completion", "zsh").out


# --- pure parts: no broker ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "minutes"),
    [("90", 90), ("90m", 90), ("2h", 120), ("1h30m", 90), ("1d", 1440), ("45s", 1), ("1-00:00:00", 1440),
     ("01:30:00", 90), ("00:00:30", 1), ("2-12", 3600), ("1-02:03", 1563), ("2H", 120)],
)  # fmt: skip
def test_time_limits_in_every_accepted_form(text: str, minutes: int) -> None:
    assert parse_time(text) == minutes


@pytest.mark.parametrize("text", ["", "0", "1:30", "soon", "1h70x", "01:60:00", "400d", "-5", "1.5h"])
def test_bad_time_limits_are_usage_errors(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_time(text)


@pytest.mark.parametrize(
    ("text", "mib"),
    [("64G", 65536), ("64GB", 65536), ("64GiB", 65536), ("512M", 512), ("8000", 8000), ("1.5g", 1536),
     ("1T", 1048576), ("1536K", 2)],
)  # fmt: skip
def test_memory_sizes_as_slurm_reads_them(text: str, mib: int) -> None:
    assert parse_memory(text) == mib


def _error(status: int, code: str | None = None) -> BaseException:
    return error_from_problem(Problem(status=status, code=code))


def _validation_error() -> ValidationError:
    try:
        JobSpec.model_validate({"name": "x", "project": PROJECT})
    except ValidationError as exc:
        return exc
    raise AssertionError("a spec without script or command was accepted")


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (_error(401, "unauthorized"), Exit.AUTH), (_error(403), Exit.AUTH), (ConfigError("no token"), Exit.AUTH),
        (_error(404, "not_found"), Exit.NOT_FOUND), (_error(422, "validation_error"), Exit.REFUSED),
        (_error(422, "placement_failed.no_gpus"), Exit.REFUSED), (_error(409, "cancel_not_possible"), Exit.REFUSED),
        (_error(409, "idempotency_conflict"), Exit.REFUSED), (_validation_error(), Exit.REFUSED),
        (_error(429), Exit.UNAVAILABLE), (_error(502), Exit.UNAVAILABLE), (_error(503), Exit.UNAVAILABLE),
        (_error(504), Exit.UNAVAILABLE), (httpx.ConnectError("refused"), Exit.UNAVAILABLE),
        (_error(500, "internal_error"), Exit.ERROR), (RuntimeError("bug"), Exit.ERROR),
    ],
)  # fmt: skip
def test_every_error_maps_to_its_documented_exit_code(error: BaseException, code: Exit) -> None:
    assert exit_code_for(error) == code


def test_the_exit_codes_are_documented_in_the_docstring_the_help_and_the_docs() -> None:
    docs = " ".join((REPO / "docs" / "sdk.md").read_text().split())
    docstring = " ".join((cli.__doc__ or "").split())
    assert cli.EPILOG in cli.build_parser().format_help()
    for code, meaning in cli.EXIT_MEANINGS.items():
        assert f"{int(code)} {meaning}" in docstring
        assert f"| {int(code)} | {meaning} |" in docs, f"docs/sdk.md does not document exit code {int(code)}"


def test_usage_errors_exit_2_before_anything_is_sent(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["submit", "--project", PROJECT]) == Exit.USAGE  # neither a script nor a command
    assert main(["submit", "--project", PROJECT, "nosuch.sh", "--", "true"]) == Exit.USAGE
    assert main(["submit", "--time", "1:30", "--", "true"]) == Exit.USAGE
    assert main(["wait", "job_x", "--until", "done"]) == Exit.USAGE
    assert main(["submit", "--project", PROJECT, "--timeout", "5", "--", "true"]) == Exit.USAGE  # without --wait
    assert main([]) == Exit.USAGE
    err = capsys.readouterr().err
    assert "give a script file (conveyor submit train.sh) or a command after --" in err
    assert "not both (script: nosuch.sh)" in err
    assert "--until and --timeout apply to --wait" in err
    assert "ambiguous time '1:30'" in err


def test_everything_after_the_double_dash_is_the_jobs_command() -> None:
    args = cli.parse(cli.build_parser(), ["--json", "submit", "--gpus", "4", "--", "python", "train.py", "--json"])
    assert (args.command, args.json, args.gpus, args.script) == (["python", "train.py", "--json"], True, 4, None)
    spec = cli.build_spec(cli.parse(cli.build_parser(), [
        "submit", "--project", PROJECT, "--mem", "64G", "--time", "1h30m", "--factory", "any", "--country", "it",
        "--env", "A=b=c", "--label", "team=nlp", "--gpus", "2", "--gpu-type", "h100", "--", "/usr/bin/python", "x",
    ]))  # fmt: skip
    assert spec.name == "python"
    assert (spec.resources.memory_mb, spec.resources.time_limit_min, spec.resources.gpus_per_node) == (65536, 90, 2)
    assert (spec.placement.factory, spec.placement.countries) == (None, ["IT"])
    assert (spec.environment, spec.labels) == ({"A": "b=c"}, {"team": "nlp"})


def test_submit_has_a_flag_for_every_field_of_how_a_job_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_from_the_environment")
    spec = cli.build_spec(cli.parse(cli.build_parser(), [
        "submit", "--project", PROJECT, "--image", "/opt/images/pt.sif", "--nodes", "2", "--launcher", "torchrun",
        "--mount", "/scratch/data:/data:ro", "--mount", "/scratch/out", "--container-env", "NCCL_DEBUG=INFO",
        "--secret-env", "HF_TOKEN", "--stdout", "/scratch/runs/train-{job_id}.out",
        "--stderr", "/scratch/runs/train-{job_id}.err", "--", "train.py", "--epochs", "3",
    ]))  # fmt: skip
    assert spec.container is not None
    assert spec.container.image == "/opt/images/pt.sif"
    assert [(m.source, m.target, m.read_only) for m in spec.container.mounts] == [
        ("/scratch/data", "/data", True), ("/scratch/out", None, False)
    ]  # fmt: skip
    assert spec.container.env == {"NCCL_DEBUG": "INFO"}
    assert (spec.launcher, spec.resources.nodes, spec.command) == ("torchrun", 2, ["train.py", "--epochs", "3"])
    assert spec.secret_environment == {"HF_TOKEN": "hf_from_the_environment"}
    assert (spec.stdout, spec.stderr) == ("/scratch/runs/train-{job_id}.out", "/scratch/runs/train-{job_id}.err")


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["--secret-env", "NOT_SET_ANYWHERE"], "NOT_SET_ANYWHERE is not set"),
        (["--mount", "/data"], "--mount and --container-env need --image"),
        (["--image", "/x", "--mount", "a:b:c:d"], "expected SOURCE[:TARGET][:ro]"),
    ],
)
def test_bad_workload_flags_are_usage_errors(
    words: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["submit", "--project", PROJECT, *words, "--", "true"])
    assert code in {Exit.USAGE, 2}
    assert message in capsys.readouterr().err


def test_global_options_count_before_or_after_the_command() -> None:
    parser = cli.build_parser()
    assert cli.parse(parser, ["status", "job_x", "--json", "--url", "http://b"]).url == "http://b"
    before = cli.parse(parser, ["--json", "--profile", "p", "status", "job_x"])
    assert (before.json, before.profile) == (True, "p")


def test_an_unavailable_broker_exits_6_after_the_retries_with_the_problem_as_json(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        body = {"status": 503, "code": "unavailable", "detail": "the database is down"}
        return httpx.Response(503, json=body, headers={"Retry-After": "0"})

    def client(args: argparse.Namespace) -> conveyor.Client:
        return conveyor.Client("http://broker.test", token="t", transport=httpx.MockTransport(answer),
                               retry=conveyor.RetryPolicy(attempts=3))  # fmt: skip

    monkeypatch.setattr(cli, "open_client", client)
    assert main(["--json", "status", "job_x"]) == Exit.UNAVAILABLE
    assert len(calls) == 3
    out, err = capsys.readouterr()
    assert Problem.model_validate_json(out).detail == "the database is down"
    assert err == "conveyor: unavailable: the database is down\n"


def _job(state: JobState, reason: str | None = None) -> Job:
    now = datetime.now(UTC).isoformat()
    return Job.model_validate({
        "id": "job_abc", "state": state, "state_reason": reason, "project": PROJECT, "name": "n", "owner": "dev",
        "spec": {"name": "n", "project": PROJECT, "command": ["true"]}, "created_at": now, "updated_at": now,
        "links": {"self": "/", "events": "/", "output": "/", "cancel": "/"},
    })  # fmt: skip


def test_wait_shows_each_state_change_once_and_only_on_a_terminal() -> None:
    shown = io.StringIO()
    watcher = cli.StateWatcher(shown, enabled=True)
    for state in (JobState.QUEUED, JobState.QUEUED, JobState.SUBMITTED, JobState.RUNNING, JobState.COMPLETED):
        watcher(_job(state))
    assert [line.split()[1:] for line in shown.getvalue().splitlines()] == [
        ["job_abc", s] for s in ("queued", "submitted", "running", "completed")
    ]
    piped = io.StringIO()
    cli.StateWatcher(piped)(_job(JobState.RUNNING))  # a StringIO is no terminal: scripts' stderr stays clean
    assert piped.getvalue() == ""


def test_bash_completion_completes_commands_options_and_choices(tmp_path: Path) -> None:
    script = tmp_path / "conveyor.bash"
    script.write_text(SCRIPTS["bash"](cli.build_parser(), files={"script"}))

    def complete(*words: str) -> list[str]:
        line = " ".join(f"'{w}'" for w in words)
        probe = f"source {script}; COMP_WORDS=(conveyor {line}); COMP_CWORD={len(words)}; _conveyor"
        probe += '; echo "${COMPREPLY[*]}"'
        return subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True).stdout.split()

    assert complete("tok") == ["tokens"]
    assert complete("tokens", "") == ["list", "create", "revoke"]
    assert complete("--json", "wait", "job_x", "--until", "r") == ["running", "rejected"]
    assert complete("submit", "--dry") == ["--dry-run"]
    assert complete("output", "job_x", "--stream", "") == ["stdout", "stderr"]
    assert complete("completion", "") == ["bash", "zsh"]
