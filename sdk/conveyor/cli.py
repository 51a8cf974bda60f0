"""``conveyor``: the command line, a thin layer over the SDK client (argparse and the stdlib only).

::

    conveyor submit --project EHPC-AIF-2026PG01-1147 --gpus 4 --gpu-type h100 --time 2h -- python train.py
    conveyor submit train.sh --wait          # a batch script file; wait for its end
    conveyor wait job_3k7vq2mzx4d5f6g7hqjw
    conveyor output job_3k7vq2mzx4d5f6g7hqjw

Where to connect and with which token: ``--url``/``--profile``, else ``CONVEYOR_URL``/``CONVEYOR_TOKEN``/
``CONVEYOR_PROFILE``, else the config file (see :mod:`conveyor.config`). Every command takes ``--json``: the
answer exactly as the SDK models serialize it (``status --json`` is ``Job.model_dump_json()``), so a script
reads it back with ``Job.model_validate_json``. An error is one line on stderr, ``conveyor: <code>: <detail>``
(and, with ``--json``, the problem details as JSON on stdout); ``wait`` always prints the job as last seen.

Exit codes:

    0  success (for wait and submit --wait: the job completed)
    1  unexpected error
    2  usage error (bad arguments)
    3  authentication or permission (401/403, or no token configured)
    4  not found
    5  refused request (422 validation or placement, 409 conflict)
    6  broker unavailable after retries (429/502/503/504, connection errors)
    7  wait timed out
    8  the job ended but not completed (failed, cancelled, timeout, rejected, lost)
  130  interrupted (Ctrl-C); the job itself goes on
"""

from __future__ import annotations

import argparse
import enum
import math
import os
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any, TextIO

import httpx
from pydantic import BaseModel, ValidationError

from conveyor import calls
from conveyor import cli_format as fmt
from conveyor.calls import WaitTimeout
from conveyor.client import Client, RemoteJob
from conveyor.completion import SCRIPTS
from conveyor.config import ConfigError
from conveyor.models import Job
from conveyor.problems import (
    AuthError,
    Conflict,
    ConveyorError,
    NotFound,
    PlacementFailed,
    Problem,
    RateLimited,
    Unavailable,
    ValidationFailed,
    field_errors,
)
from conveyor.spec import MAX_TIME_LIMIT_MIN, TERMINAL_STATES, JobSpec, JobState

PROG = "conveyor"
PROJECT_ENV = "CONVEYOR_PROJECT"
DEBUG_ENV = "CONVEYOR_DEBUG"  # set to 1 for a traceback on unexpected errors


class Exit(enum.IntEnum):
    """The documented exit codes (module docstring, ``--help`` epilog, docs/sdk.md)."""

    OK = 0
    ERROR = 1
    USAGE = 2
    AUTH = 3
    NOT_FOUND = 4
    REFUSED = 5
    UNAVAILABLE = 6
    WAIT_TIMEOUT = 7
    JOB_NOT_COMPLETED = 8
    INTERRUPTED = 130


EXIT_MEANINGS: dict[Exit, str] = {
    Exit.OK: "success (for wait and submit --wait: the job completed)",
    Exit.ERROR: "unexpected error",
    Exit.USAGE: "usage error (bad arguments)",
    Exit.AUTH: "authentication or permission (401/403, or no token configured)",
    Exit.NOT_FOUND: "not found",
    Exit.REFUSED: "refused request (422 validation or placement, 409 conflict)",
    Exit.UNAVAILABLE: "broker unavailable after retries (429/502/503/504, connection errors)",
    Exit.WAIT_TIMEOUT: "wait timed out",
    Exit.JOB_NOT_COMPLETED: "the job ended but not completed (failed, cancelled, timeout, rejected, lost)",
    Exit.INTERRUPTED: "interrupted (Ctrl-C); the job itself goes on",
}


class UsageError(Exception):
    """A mistake in the arguments found after parsing (e.g. a script file that cannot be read): exit 2."""


# --- argument types: each raises ArgumentTypeError, so argparse reports a usage error (exit 2) -----------

_UNIT_TIME = re.compile(r"^(?:(?P<d>\d+)d)?(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m(?:in)?)?(?:(?P<s>\d+)s)?$")
_SLURM_TIME = re.compile(r"^(?:(?P<d>\d+)-)?(?P<a>\d+)(?::(?P<b>\d+))?(?::(?P<c>\d+))?$")
_MEMORY = re.compile(r"^(?P<n>\d+(?:\.\d+)?)(?P<unit>[kmgt]?)(?:i?b)?$")
_MIB_PER_UNIT = {"": 1.0, "k": 1 / 1024, "m": 1.0, "g": 1024.0, "t": 1024.0 * 1024}


def _seconds_slurm(match: re.Match[str], text: str) -> int:
    """Slurm's forms with a day (D-HH, D-HH:MM, D-HH:MM:SS) or HH:MM:SS; MM:SS is refused as ambiguous."""
    days, parts = match["d"], [match[k] for k in "abc" if match[k] is not None]
    if days is None and len(parts) != 3:
        raise argparse.ArgumentTypeError(f"ambiguous time {text!r}: write 1h30m, 90 (minutes) or HH:MM:SS")
    hours, minutes, seconds = (int(p) for p in [*parts, "0", "0"][:3])
    if minutes >= 60 or seconds >= 60:
        raise argparse.ArgumentTypeError(f"invalid time {text!r}: minutes and seconds must be below 60")
    return ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds


def parse_time(text: str) -> int:
    """A wall time as whole minutes (seconds round up): ``90`` (minutes), ``90m``, ``2h``, ``1h30m``, ``1d``,
    ``HH:MM:SS`` or Slurm's ``D-HH[:MM[:SS]]``."""
    cleaned = text.strip().lower()
    if cleaned.isdigit():
        seconds = int(cleaned) * 60
    elif (slurm := _SLURM_TIME.match(cleaned)) and (":" in cleaned or "-" in cleaned):
        seconds = _seconds_slurm(slurm, text)
    elif cleaned and (units := _UNIT_TIME.match(cleaned)):
        seconds = sum(int(units[k] or 0) * size for k, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)))
    else:
        raise argparse.ArgumentTypeError(f"invalid time {text!r}: write e.g. 90m, 2h, 1h30m, 01:30:00 or 1-00:00:00")
    minutes = math.ceil(seconds / 60)
    if not 1 <= minutes <= MAX_TIME_LIMIT_MIN:
        raise argparse.ArgumentTypeError(f"invalid time {text!r}: must be from 1 minute to 366 days")
    return minutes


def parse_memory(text: str) -> int:
    """Memory per node in MiB, as Slurm reads ``--mem``: ``64G``, ``512M``, ``1.5T``; a bare number is MiB."""
    match = _MEMORY.match(text.strip().lower())
    mib = math.ceil(float(match["n"]) * _MIB_PER_UNIT[match["unit"]]) if match else 0
    if mib < 1:
        raise argparse.ArgumentTypeError(f"invalid memory {text!r}: write e.g. 64G, 512M or 8000 (MiB)")
    return mib


def key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def mount(text: str) -> dict[str, Any]:
    """``SOURCE[:TARGET][:ro]`` as a container mount (the paths' own grammar is the spec's to check)."""
    parts = text.split(":")
    read_only = parts[-1] == "ro" and len(parts) > 1
    paths = parts[:-1] if read_only else parts
    if not 1 <= len(paths) <= 2 or not all(paths):
        raise argparse.ArgumentTypeError(f"expected SOURCE[:TARGET][:ro], got {text!r}")
    return {"source": paths[0], "target": paths[1] if len(paths) == 2 else None, "read_only": read_only}


def country(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z]{2}", text):
        raise argparse.ArgumentTypeError(f"expected a two-letter country code (ISO 3166-1), got {text!r}")
    return text.upper()


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number of 0 or more, got {text!r}")
    return value


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"expected seconds (a number >= 0), got {text!r}")
    return value


# --- errors: the exit code and the one line that explain them ----------------------------------------------


_EXIT_BY_ERROR: tuple[tuple[tuple[type[BaseException], ...], Exit], ...] = (
    ((WaitTimeout,), Exit.WAIT_TIMEOUT),
    ((UsageError,), Exit.USAGE),
    ((ConfigError, AuthError), Exit.AUTH),
    ((NotFound,), Exit.NOT_FOUND),
    ((ValidationFailed, PlacementFailed, Conflict, ValidationError), Exit.REFUSED),
    ((RateLimited, Unavailable, httpx.TransportError), Exit.UNAVAILABLE),
)
_LOCAL_PROBLEMS: tuple[tuple[type[BaseException], str, str], ...] = (
    (ConfigError, "config_error", "No usable configuration"),
    (WaitTimeout, "wait_timeout", "Timed out waiting for the job"),
    (UsageError, "usage_error", "Usage error"),
)


def exit_code_for(error: BaseException) -> Exit:
    """The documented exit code of an error the CLI reports (anything unforeseen: 1)."""
    return next((code for kinds, code in _EXIT_BY_ERROR if isinstance(error, kinds)), Exit.ERROR)


def problem_for(error: BaseException) -> Problem:
    """The broker's problem details, or the like made here for an error that never reached the broker."""
    if isinstance(error, ConveyorError):
        return error.problem
    if isinstance(error, ValidationError):
        count = error.error_count()
        return Problem(title="The job spec is invalid", code="validation_error",
                       detail=f"{count} field{'s are' if count > 1 else ' is'} invalid",
                       errors=field_errors(error.errors()))  # fmt: skip
    if isinstance(error, httpx.TransportError):
        where = f" {error.request.url}" if _has_request(error) else ""
        return Problem(title="The broker cannot be reached", code="unavailable",
                       detail=f"no answer from{where} after retries: {type(error).__name__}: {error}")  # fmt: skip
    for kind, code, title in _LOCAL_PROBLEMS:
        if isinstance(error, kind):
            return Problem(title=title, code=code, detail=str(error))
    return Problem(title="Unexpected error", code="cli_error", detail=f"{type(error).__name__}: {error}")


def _has_request(error: httpx.TransportError) -> bool:
    try:
        error.request  # noqa: B018 - the property raises when the error carries no request
    except RuntimeError:
        return False
    return True


def one_line(problem: Problem) -> str:
    """``<code>: <detail>``, with each invalid field or each ruled-out Factory, on one line."""
    code = problem.code or (str(problem.status) if problem.status else "error")
    text = problem.detail or problem.title or "error"
    extras = [f"{'.'.join(str(p) for p in e.loc)}: {e.msg}" for e in problem.errors or ()]
    for candidate in (problem.model_extra or {}).get("candidates") or ():
        if isinstance(candidate, dict) and candidate.get("reasons"):
            extras.append(f"{candidate.get('factory')}: {'; '.join(str(r) for r in candidate['reasons'])}")
    line = f"{code}: {text}" + (f" ({'; '.join(extras)})" if extras else "")
    return " ".join(line.split())


# --- output -------------------------------------------------------------------------------------------------


class Output:
    """Where answers go: stdout for results (JSON with ``--json``), stderr for notes and errors."""

    def __init__(self, as_json: bool, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.json = as_json
        self.out = out or sys.stdout
        self.err = err or sys.stderr

    def show(self, model: BaseModel, text: Callable[[], str]) -> None:
        """One answer: its JSON, or ``text()`` for people."""
        print(model.model_dump_json() if self.json else text(), file=self.out, flush=True)

    def show_all(self, models: Sequence[BaseModel], text: Callable[[], str]) -> None:
        """A listing: a JSON array of the models, or ``text()`` for people."""
        print(fmt.json_array(models) if self.json else text(), file=self.out, flush=True)

    def note(self, message: str) -> None:
        print(f"{PROG}: {message}", file=self.err, flush=True)

    def fail(self, error: BaseException) -> Exit:
        problem = problem_for(error)
        self.note(one_line(problem))
        if self.json:
            print(problem.model_dump_json(exclude_none=True), file=self.out, flush=True)
        return exit_code_for(error)


class StateWatcher:
    """Called on every poll of a wait; on a terminal, prints each state change to stderr as it happens."""

    def __init__(self, stream: TextIO, enabled: bool | None = None) -> None:
        self.stream = stream
        self.enabled = stream.isatty() if enabled is None else enabled
        self.last: tuple[JobState, str | None] | None = None

    def __call__(self, job: Job) -> None:
        seen = (job.state, job.state_reason)
        if not self.enabled or seen == self.last:
            return
        self.last = seen
        where = f" on {job.factory}" if job.factory and job.state is not JobState.QUEUED else ""
        slurm = f" (Slurm job {job.slurm_job_id})" if job.slurm_job_id is not None else ""
        reason = f": {job.state_reason}" if job.state_reason else ""
        clock = datetime.now(UTC).astimezone().strftime("%H:%M:%S")
        print(f"{clock} {job.id} {job.state.value}{where}{slurm}{reason}", file=self.stream, flush=True)


# --- the commands -------------------------------------------------------------------------------------------


def open_client(args: argparse.Namespace) -> Client:
    client = Client(args.url, profile=args.profile)
    if not client.connection.url.startswith(("http://", "https://")):
        client.close()
        raise UsageError(f"the broker URL must start with http:// or https://, not {client.connection.url!r}")
    return client


def build_spec(args: argparse.Namespace) -> JobSpec:
    """The JobSpec of ``submit``'s arguments; the SDK's own model checks it before anything is sent."""
    command: list[str] | None = args.command
    if args.script is None and command is None:
        raise UsageError("give a script file (conveyor submit train.sh) or a command after -- "
                         "(conveyor submit -- python train.py)")  # fmt: skip
    if args.script is not None and command is not None:
        raise UsageError(f"give a script file or a command after --, not both (script: {args.script})")
    if command is not None and not command:
        raise UsageError("no command after --")
    script = None
    if args.script is not None:
        try:
            script = Path(args.script).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read the script {args.script}: {exc}") from None
    project = args.project or os.environ.get(PROJECT_ENV)
    if not project:
        raise UsageError(f"no project: give --project or set {PROJECT_ENV}")
    name = args.name or (Path(args.script).name if command is None else Path(command[0]).name or command[0])
    resources = {"nodes": args.nodes, "gpus_per_node": args.gpus, "gpu_type": args.gpu_type,
                 "cpus_per_task": args.cpus_per_task, "tasks_per_node": args.tasks_per_node,
                 "memory_mb": args.mem, "time_limit_min": args.time}  # fmt: skip
    placement: dict[str, Any] = {"countries": args.country or []}
    if args.factory and args.factory != "any":
        placement["factory"] = args.factory
    return JobSpec.model_validate({
        "name": name, "project": project, "script": script, "command": command,
        "resources": {k: v for k, v in resources.items() if v is not None},
        "environment": dict(args.env or ()), "secret_environment": secret_environment(args.secret_env or ()),
        "labels": dict(args.label or ()), "working_directory": args.workdir, "placement": placement,
        "container": container(args), "launcher": args.launcher, "stdout": args.stdout, "stderr": args.stderr,
        "requeue": args.requeue,
    })  # fmt: skip


def container(args: argparse.Namespace) -> dict[str, Any] | None:
    """The spec's container from ``--image``, ``--mount`` and ``--container-env``; None without ``--image``."""
    if args.image is None:
        if args.mount or args.container_env:
            raise UsageError("--mount and --container-env need --image")
        return None
    return {"image": args.image, "mounts": args.mount or [], "env": dict(args.container_env or ())}


def secret_environment(names: Sequence[str]) -> dict[str, str]:
    """Each name's value from this process's environment: a secret never appears on a command line."""
    missing = [name for name in names if name not in os.environ]
    if missing:
        raise UsageError(f"--secret-env takes the value from your environment, and {', '.join(missing)} is not set")
    return {name: os.environ[name] for name in names}


def wait_outcome(job: Job, until: Sequence[JobState] | None, out: Output) -> Exit:
    """0 when the job got where it was awaited (by default: completed), 8 when it ended anywhere else."""
    if job.state is JobState.COMPLETED or (until and job.state in until):
        return Exit.OK
    if job.state.is_terminal:
        why = f": {job.state_reason}" if job.state_reason else ""
        code = f" (exit code {job.exit_code})" if job.exit_code is not None else ""
        out.note(f"job {job.id} ended {job.state.value}{code}{why}")
        return Exit.JOB_NOT_COMPLETED
    return Exit.OK


def follow(remote: RemoteJob, args: argparse.Namespace, out: Output) -> Exit:
    """Wait as ``wait`` does: live state on a terminal, then the job as last seen, and the exit code."""
    watcher = StateWatcher(out.err)
    watcher(remote.info)
    until: list[JobState] | None = args.until
    try:
        job = remote.wait(until=until or TERMINAL_STATES, timeout=args.timeout, on_poll=watcher)
    except WaitTimeout as timeout:
        last = timeout.job
        out.show(last, lambda: fmt.job_details(last))
        out.note(one_line(problem_for(timeout)))
        return Exit.WAIT_TIMEOUT
    out.show(job, lambda: fmt.job_details(job))
    return wait_outcome(job, until, out)


def cmd_submit(args: argparse.Namespace, out: Output) -> Exit:
    if (args.until or args.timeout is not None) and not args.wait:
        raise UsageError("--until and --timeout apply to --wait")
    if args.wait and args.dry_run:
        raise UsageError("--dry-run submits nothing, so there is nothing to --wait for")
    spec = build_spec(args)
    with open_client(args) as client:
        if args.dry_run:
            answer = client.dry_run(spec)
            out.show(answer, lambda: fmt.dry_run_details(answer))
            return Exit.OK
        remote = client.submit(spec, idempotency_key=args.idempotency_key)
        if args.wait:
            if not out.json:
                out.note(f"submitted {remote.id}")
            return follow(remote, args, out)
        out.show(remote.info, lambda: remote.id)
        return Exit.OK


def cmd_status(args: argparse.Namespace, out: Output) -> Exit:
    with open_client(args) as client:
        job = client.job(args.job).info
    out.show(job, lambda: fmt.job_details(job))
    return Exit.OK


def cmd_wait(args: argparse.Namespace, out: Output) -> Exit:
    with open_client(args) as client:
        return follow(client.job(args.job), args, out)


def cmd_cancel(args: argparse.Namespace, out: Output) -> Exit:
    with open_client(args) as client:
        job = client.run(calls.cancel(args.job))
    out.show(job, lambda: f"cancel requested for {job.id} (now {fmt.state_of(job)})")
    return Exit.OK


def cmd_list(args: argparse.Namespace, out: Output) -> Exit:
    filters: dict[str, Any] = {"state": args.state or [], "factory": args.factory, "project": args.project,
                               "label": dict(args.label or ())}  # fmt: skip
    page_size = min(args.limit, 500) if args.limit else 200
    with open_client(args) as client:
        jobs = list(islice(client.jobs.list(page_size=page_size, **filters), args.limit))
    out.show_all(jobs, lambda: fmt.jobs_table(jobs))
    return Exit.OK


def cmd_events(args: argparse.Namespace, out: Output) -> Exit:
    with open_client(args) as client:
        events = list(client.jobs.events(args.job))
    out.show_all(events, lambda: fmt.events_table(events))
    return Exit.OK


def cmd_output(args: argparse.Namespace, out: Output) -> Exit:
    if args.offset is not None:
        return _output_from(args, out)
    with open_client(args) as client:
        answer = client.run(calls.output(args.job, args.stream, args.max_bytes))
    if out.json:
        out.show(answer, str)
        return Exit.OK
    out.out.write(answer.content)
    if answer.content and not answer.content.endswith("\n") and out.out.isatty():
        out.out.write("\n")
    out.out.flush()
    if answer.truncated:
        size = f" of {answer.size_bytes}" if answer.size_bytes is not None else ""
        out.note(f"showing the last {len(answer.content.encode())} bytes{size} of {args.stream} (see --max-bytes)")
    return Exit.OK


def _output_from(args: argparse.Namespace, out: Output) -> Exit:
    """The stream's bytes from ``--offset`` to its end, or ``--max-bytes`` of them, as they are (output need not
    be text), chunk by chunk; with ``--json`` the one chunk the server answers."""
    offset, left = args.offset, args.max_bytes
    with open_client(args) as client:
        while True:
            chunk = client.run(calls.output_chunk(args.job, offset, args.stream, left))
            if out.json:
                out.show(chunk, str)
                return Exit.OK
            data = chunk.data
            _write_bytes(out.out, data)
            offset += len(data)
            left = None if left is None else left - len(data)
            if chunk.eof or not data:
                return Exit.OK
            if left == 0:
                out.note(f"stopped at byte {offset} of {chunk.size} of {args.stream} (--offset {offset} reads on)")
                return Exit.OK


def _write_bytes(stream: TextIO, data: bytes) -> None:
    """``data`` to ``stream`` as bytes where it has a byte buffer (a terminal, a pipe, a file), else decoded."""
    buffer = getattr(stream, "buffer", None)
    if buffer is not None:
        stream.flush()
        buffer.write(data)
        buffer.flush()
    else:
        stream.write(data.decode(errors="replace"))
        stream.flush()


def cmd_factories(args: argparse.Namespace, out: Output) -> Exit:
    with open_client(args) as client:
        factories = client.factories()
    out.show_all(factories, lambda: fmt.factories_table(factories))
    return Exit.OK


def cmd_whoami(args: argparse.Namespace, out: Output) -> Exit:
    with open_client(args) as client:
        me = client.me()
        out.show(me, lambda: fmt.me_details(me, client.connection))
    return Exit.OK


def cmd_tokens_list(args: argparse.Namespace, out: Output) -> Exit:
    with open_client(args) as client:
        tokens = client.tokens()
    out.show_all(tokens, lambda: fmt.tokens_table(tokens))
    return Exit.OK


def cmd_tokens_create(args: argparse.Namespace, out: Output) -> Exit:
    with open_client(args) as client:
        made = client.create_token(args.name, args.scope or ("read", "submit"), args.days)
    out.show(made, lambda: made.token)
    if not out.json:
        out.note(f"token {made.id} ({made.prefix}, {', '.join(made.scopes)}) expires {fmt.when(made.expires_at)}; "
                 "store it now: it is shown this once")  # fmt: skip
    return Exit.OK


def cmd_tokens_revoke(args: argparse.Namespace, out: Output) -> Exit:
    with open_client(args) as client:
        revoked = client.revoke_token(args.token_id)
    out.show(revoked, lambda: f"revoked {revoked.id} ({revoked.name})")
    return Exit.OK


def cmd_completion(args: argparse.Namespace, out: Output) -> Exit:
    out.out.write(SCRIPTS[args.shell](build_parser(), files={"script"}))
    return Exit.OK


# --- the parser ---------------------------------------------------------------------------------------------

EPILOG = "exit codes:\n" + "\n".join(f"  {int(code):>3}  {text}" for code, text in EXIT_MEANINGS.items())
STATES = list(JobState)


def nonnegative(text: str) -> int:
    return 0 if text.strip() == "0" else positive(text)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("conveyor-sdk")
    except PackageNotFoundError:
        return "unknown"


def _global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """On the top parser with defaults, and again on every subcommand with SUPPRESS (which keeps the top's
    value unless given there), so they may come before or after the command."""
    group = parser.add_argument_group("connection and output")
    unset = None if top else argparse.SUPPRESS
    group.add_argument(
        "--url", default=unset, help="the broker or an Antenna gateway (else CONVEYOR_URL or the profile's)"
    )
    group.add_argument("--profile", default=unset, help="a profile of the config file (else CONVEYOR_PROFILE)")
    group.add_argument("--json", action="store_true", default=False if top else argparse.SUPPRESS,
                       help="print JSON that parses back into the SDK's models; errors as problem JSON")  # fmt: skip


def _command(
    subs: argparse._SubParsersAction[argparse.ArgumentParser], name: str, handler: Callable[..., Exit] | None,
    summary: str, **extra: Any,
) -> argparse.ArgumentParser:  # fmt: skip
    parser = subs.add_parser(name, help=summary, description=summary, epilog=EPILOG,
                             formatter_class=argparse.RawDescriptionHelpFormatter, **extra)  # fmt: skip
    _global_options(parser, top=False)
    if handler is not None:
        parser.set_defaults(handler=handler)
    return parser


def _submit_options(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(command=None)
    parser.add_argument(
        "script", nargs="?", metavar="SCRIPT", help="a batch script file to run (or a command after --)"
    )
    job = parser.add_argument_group("the job")
    job.add_argument("--name", help="the job's name (default: the script's file name or the command's program)")
    job.add_argument("--project", help=f"the project charged (default: ${PROJECT_ENV})")
    job.add_argument("--nodes", type=positive, metavar="N", help="nodes (default 1)")
    job.add_argument("--gpus", type=nonnegative, metavar="N", help="GPUs per node (default 0)")
    job.add_argument("--gpu-type", metavar="TYPE", help="GPU type, e.g. h100 or a100")
    job.add_argument("--cpus-per-task", type=positive, metavar="N", help="CPUs per task (default 1)")
    job.add_argument("--tasks-per-node", type=positive, metavar="N", help="tasks per node (default 1)")
    job.add_argument("--mem", type=parse_memory, metavar="SIZE", help="memory per node: 64G, 512M (bare number: MiB)")
    job.add_argument("--time", type=parse_time, metavar="TIME",
                     help="wall time: 90 (minutes), 90m, 2h, 1h30m, HH:MM:SS or D-HH:MM:SS "
                          "(default: the partition's)")  # fmt: skip
    job.add_argument("--factory", metavar="ID", help="run on this Factory; 'any' (default) lets the broker choose")
    job.add_argument("--country", type=country, action="append", metavar="CC",
                     help="allowed country of the Factory, repeatable (e.g. --country IT --country FI)")  # fmt: skip
    job.add_argument("--env", type=key_value, action="append", metavar="KEY=VALUE", help="an environment variable")
    job.add_argument("--label", type=key_value, action="append", metavar="KEY=VALUE", help="a label, to list by")
    job.add_argument("--workdir", metavar="DIR", help="the working directory at the Factory (absolute)")
    job.add_argument("--secret-env", action="append", metavar="NAME",
                     help="pass environment variable NAME's value from your environment as a secret: encrypted at "
                     "the broker, delivered to the job only, never shown again")  # fmt: skip
    job.add_argument("--stdout", metavar="PATH", help="the job's output file at the Factory; {job_id} and {segment} "
                     "may appear in its name")  # fmt: skip
    job.add_argument("--stderr", metavar="PATH", help="the job's error file at the Factory, as --stdout")
    run = parser.add_argument_group("how it runs")
    run.add_argument("--image", metavar="IMAGE", help="run in this container image: a path at the Factory (.sif, "
                     "sandbox directory) or a docker:// or oras:// reference the Factory pulls")  # fmt: skip
    run.add_argument("--mount", type=mount, action="append", metavar="SRC[:DST][:ro]",
                     help="bind a directory of the Factory into the container")  # fmt: skip
    run.add_argument("--container-env", type=key_value, action="append", metavar="KEY=VALUE",
                     help="an environment variable set inside the container only")  # fmt: skip
    run.add_argument("--launcher", choices=["srun", "torchrun"],
                     help="start the command once per task (srun) or one torchrun per node (torchrun)")  # fmt: skip
    run.add_argument("--requeue", action="store_true",
                     help="let Slurm run the job again after a node failure or preemption (at-least-once; by "
                     "default it runs at most once)")  # fmt: skip
    how = parser.add_argument_group("submitting")
    how.add_argument("--idempotency-key", metavar="KEY",
                     help="makes re-running this command safe: the same key and spec answer the same job")  # fmt: skip
    how.add_argument("--dry-run", action="store_true",
                     help="show where the job would go and what Slurm would receive; submit nothing")  # fmt: skip
    how.add_argument("--wait", action="store_true", help="then wait for the job as `conveyor wait` does")
    _wait_options(how)


def _wait_options(group: argparse._ActionsContainer) -> None:
    group.add_argument("--until", type=JobState, choices=STATES, action="append", metavar="STATE",
                       help="wait until one of these states, repeatable (default: the job's end)")  # fmt: skip
    group.add_argument("--timeout", type=seconds, metavar="SECONDS", help="give up after this long (exit 7)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Submit and follow AI training jobs on the EuroHPC AI Factories through Conveyor.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    _global_options(parser, top=True)
    subs = parser.add_subparsers(dest="cmd", metavar="COMMAND", required=True)

    _submit_options(_command(subs, "submit", cmd_submit, "Submit a job: a batch script file, or a command after --.",
                             usage="%(prog)s [options] (SCRIPT | -- COMMAND [ARG ...])"))  # fmt: skip
    _command(subs, "status", cmd_status, "Show a job.").add_argument("job", metavar="JOB")

    listing = _command(subs, "list", cmd_list, "List your jobs, newest first.")
    listing.add_argument("--state", type=JobState, choices=STATES, action="append", metavar="STATE",
                         help="only jobs in this state, repeatable")  # fmt: skip
    listing.add_argument("--factory", metavar="ID", help="only jobs placed on this Factory")
    listing.add_argument("--project", help="only this project's jobs")
    listing.add_argument(
        "--label", type=key_value, action="append", metavar="KEY=VALUE", help="only jobs with this label"
    )
    listing.add_argument("--limit", type=positive, metavar="N", help="show at most N jobs (default: all)")

    waiting = _command(subs, "wait", cmd_wait, "Wait for a job's end (or --until a state); print the job.")
    waiting.add_argument("job", metavar="JOB")
    _wait_options(waiting)
    _command(subs, "cancel", cmd_cancel, "Request a job's cancellation.").add_argument("job", metavar="JOB")
    _command(subs, "events", cmd_events, "Show a job's history, oldest first.").add_argument("job", metavar="JOB")
    output = _command(subs, "output", cmd_output, "Show the tail of a job's stdout or stderr.")
    output.add_argument("job", metavar="JOB")
    output.add_argument(
        "--stream", choices=["stdout", "stderr"], default="stdout", help="which stream (default stdout)"
    )
    output.add_argument(
        "--max-bytes", type=positive, metavar="N",
        help="at most the last N bytes (default 65536); with --offset, at most N from there (default: to the end)",
    )  # fmt: skip
    output.add_argument(
        "--offset", type=non_negative, metavar="N",
        help="the bytes from byte N on, as they are, instead of the tail (the stream's first byte is 0)",
    )  # fmt: skip

    _command(subs, "factories", cmd_factories, "List the Factories, their health and free GPUs.")
    _command(subs, "whoami", cmd_whoami, "Show who the broker takes you for, and where you are connected.")

    tokens = _command(subs, "tokens", None, "Manage your personal access tokens.")
    token_subs = tokens.add_subparsers(dest="tokens_cmd", metavar="ACTION", required=True)
    _command(token_subs, "list", cmd_tokens_list, "List your tokens (never their secrets).")
    create = _command(token_subs, "create", cmd_tokens_create, "Make a token and print its secret, this once.")
    create.add_argument("name", metavar="NAME")
    create.add_argument("--scope", choices=["read", "submit", "admin"], action="append",
                        help="what it allows, repeatable (default: read and submit)")  # fmt: skip
    create.add_argument("--days", type=positive, metavar="N", help="days until it expires (default 90)")
    _command(token_subs, "revoke", cmd_tokens_revoke, "Revoke a token.").add_argument("token_id", metavar="ID")

    completion = _command(subs, "completion", cmd_completion, "Print a shell completion script.")
    completion.add_argument("shell", choices=sorted(SCRIPTS))
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """argparse, except that everything after ``submit ... --`` is the job's command, untouched."""
    if "--" in argv and "submit" in argv[: argv.index("--")]:
        cut = argv.index("--")
        args = parser.parse_args(argv[:cut])
        if args.cmd == "submit":
            args.command = argv[cut + 1 :]
            return args
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``conveyor`` entry point: the exit code (see the module docstring) rather than an exception."""
    parser = build_parser()
    try:
        args = parse(parser, list(sys.argv[1:] if argv is None else argv))
    except SystemExit as stop:  # --help, --version, or a usage error argparse already printed
        return stop.code if isinstance(stop.code, int) else Exit.USAGE
    out = Output(args.json)
    try:
        return int(args.handler(args, out))
    except KeyboardInterrupt:
        out.note("interrupted")
        return Exit.INTERRUPTED
    except BrokenPipeError:  # e.g. `conveyor list | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return Exit.ERROR
    except Exception as error:
        if os.environ.get(DEBUG_ENV):
            traceback.print_exc()
        return int(out.fail(error))
