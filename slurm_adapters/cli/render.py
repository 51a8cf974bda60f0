"""A SlurmJobSpec as sbatch's argv, the job's environment as an ``--export-file``, and sbatch's answer.

Every field of the spec becomes one ``--option=value`` argv element: no shell ever sees it, a value that
starts with ``-`` cannot become an option, and the script (read from stdin) is fenced so that no
``#SBATCH`` line in it is read. Nothing of the job is taken from the chain's environment.

The environment: sbatch runs as a user would run it, ``--export=ALL`` in the job's working directory, but
under ``env -i`` with nothing but ``SLURM_CONF``: it exports its own environment over ``--export-file``
(NUL-separated ``NAME=value``, so values may hold commas, ``=`` and newlines), so the chain's PATH, TZ and
LC_ALL never reach the job and the job's variables never reach the chain. sbatch then adds its variables for
the options given (SLURM_CPUS_PER_TASK, SLURM_SUBMIT_DIR ...), as for any user. A filter export
(``--export=NAMES``) would instead make the node run the user's login shell and lay its whole environment
under the job's (SLURM_GET_USER_ENV=1); the login's HOME, USER, LOGNAME and SHELL come in the export file.
Measured against plain sbatch on 22.05, 24.11 and 26.05.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from slurm_adapters.cli.runner import EXPORT_FILE_PLACEHOLDER
from slurm_adapters.convert import gres_request
from slurm_adapters.records import SlurmJobSpec


def submit_argv(spec: SlurmJobSpec, slurm_conf: str, sbatch: str = "sbatch") -> list[str]:
    """The command that submits ``spec``: ``sbatch`` (a path, or a name found on env's default path) in the
    job's working directory with no environment but ``SLURM_CONF``."""
    return ["env", "-i", f"--chdir={spec.working_directory}", f"SLURM_CONF={slurm_conf}", *sbatch_argv(spec, sbatch)]


def sbatch_argv(spec: SlurmJobSpec, sbatch: str = "sbatch") -> list[str]:
    """sbatch's argv for ``spec`` (the script goes to stdin, the environment to the export file)."""
    options: list[tuple[str, str | int | None]] = [
        ("job-name", spec.name),
        ("chdir", spec.working_directory),
        ("comment", spec.tag),
        ("output", spec.stdout),
        ("error", spec.stderr),
        ("partition", spec.partition),
        ("account", spec.account),
        ("qos", spec.qos),
        ("nodes", spec.nodes),
        ("ntasks", spec.tasks),
        ("ntasks-per-node", spec.tasks_per_node),
        ("cpus-per-task", spec.cpus_per_task),
        ("mem", f"{spec.memory_mb}M" if spec.memory_mb is not None else None),
        ("gres", gres_request(spec.gpus_per_node, spec.gpu_type)),
        ("time", spec.time_limit_min),
    ]
    argv = [sbatch, "--parsable", "--export=ALL", EXPORT_FILE_PLACEHOLDER]
    argv += [f"--{option}={value}" for option, value in options if value is not None]
    if spec.requeue is not None:
        argv.append("--requeue" if spec.requeue else "--no-requeue")
    return argv


def tool_path_in(fs_root: Path | None, name: str, tool_path: str) -> str:
    """``name``'s absolute path in the cluster's filesystem (``fs_root``; None: unknown), at the first of
    ``tool_path``'s directories that has it; else ``name`` itself."""
    if fs_root is None:
        return name
    for directory in tool_path.split(":"):
        if directory.startswith("/") and (fs_root / directory.lstrip("/") / name).is_file():
            return f"{directory.rstrip('/')}/{name}"
    return name


def export_file(environment: Mapping[str, str]) -> bytes:
    """``NAME=value`` entries, each NUL-terminated (sbatch drops an unterminated last entry)."""
    return b"".join(f"{name}={value}".encode() + b"\0" for name, value in environment.items())


def parse_submit(stdout: str) -> int | None:
    """``--parsable`` prints ``jobid`` or ``jobid;cluster``; warnings go to stderr."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    if not lines:
        return None
    head = lines[-1].split(";", 1)[0]
    return int(head) if head.isdigit() else None
