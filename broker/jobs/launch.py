"""The batch script a job runs: its command or script, in its container, through its launcher, compiled for
the runtime its Factory declares. Pure, so a dry run shows exactly the script Slurm stores.

Every word that comes from a user is shell-quoted (:func:`shlex.quote`) after the spec's strict grammar has
admitted it; the only unquoted expansions are the few this module writes itself (``$MASTER_ADDR``,
``$SLURM_JOB_ID``, a secret's ``$NAME``). Secret values never appear here: they travel in the job's
environment, and a container that cleans its environment gets them by reference (``"$NAME"``).
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from broker.factories.containers import ContainerRuntime
from conveyor.spec import BASH_INTERPRETER_LINES, JobSpec
from conveyor.workload import Container, Launcher

DEFAULT_SHELL = "#!/bin/bash"
# torchrun's rendezvous port: derived from the job id, so two jobs on one first node do not collide.
MASTER_PORT_BASE = 20000
MASTER_PORT_SPAN = 20000
# The first node's address as Slurm records it (NodeAddr), and a port of this job's own.
TORCHRUN_PRELUDE = (
    'MASTER_ADDR="$(sinfo -h -N -o %o -n "$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)" | head -n 1)"',
    f"MASTER_PORT=$(({MASTER_PORT_BASE} + SLURM_JOB_ID % {MASTER_PORT_SPAN}))",
    "export MASTER_ADDR MASTER_PORT",
)
_HEREDOC_STEM = "CONVEYOR_SCRIPT"
# Apptainer evaluates an APPTAINERENV_ value as the inside of a double-quoted string ($(...) runs, a trailing
# backslash breaks its injection script; measured with 1.4.5, docs/containers-lab.md): this bash function
# escapes \, $ and ` so that the container gets the value byte for byte. Secrets pass through it by reference.
APPTAINER_ENV_FUNCTION = (
    r'conveyor_apptainer_env() { local v=${2//\\/\\\\}; v=${v//\$/\\\$}; export "APPTAINERENV_$1=${v//\`/\\\`}"; }'
)
# A cleaned environment (--containall) loses Slurm's CUDA_VISIBLE_DEVICES: each task hands its own value in.
GPUS_INTO_CLEAN_CONTAINER = (
    "/bin/sh",
    "-c",
    'export APPTAINERENV_CUDA_VISIBLE_DEVICES="$CUDA_VISIBLE_DEVICES"; exec "$@"',
    "conveyor-gpus",
)


class LaunchError(ValueError):
    """The job's container cannot run on this Factory (it declares no runtime); placement checks first."""


def _quoted(words: Sequence[str]) -> str:
    return " ".join(shlex.quote(word) for word in words)


def _apptainer_words(
    container: Container, runtime: ContainerRuntime, spec: JobSpec, directory: str
) -> tuple[list[str], list[str]]:
    """(environment lines, the words that start the container) for Apptainer."""
    gpus = spec.resources.gpus_per_node > 0
    words = [*(GPUS_INTO_CLEAN_CONTAINER if gpus and runtime.containall else ()), runtime.executable, "exec"]
    if gpus:
        words.append("--nv")
    if runtime.containall:
        # No home, host /tmp or environment: the working directory must be bound to be worked in.
        words += ["--containall", "--bind", directory, "--pwd", directory]
    for bind in runtime.binds:
        words += ["--bind", f"{bind}:{bind}:ro"]
    for mount in container.mounts:
        words += ["--bind", f"{mount.source}:{mount.inside}" + (":ro" if mount.read_only else "")]
    env = [f"conveyor_apptainer_env {name} {shlex.quote(value)}" for name, value in sorted(container.env.items())]
    if runtime.containall:  # the cleaned environment gets the secrets by reference, never by value
        env += [f'conveyor_apptainer_env {name} "${name}"' for name in sorted(spec.secret_environment)]
    return ([APPTAINER_ENV_FUNCTION, *env] if env else []), [*words, container.image]


def _pyxis_options(container: Container, spec: JobSpec, directory: str) -> tuple[list[str], list[str]]:
    """(environment lines, srun's Pyxis options): Pyxis' options exist only on srun, so they live in the script."""
    options = [f"--container-image={container.image}", f"--container-workdir={directory}"]
    if container.mounts:
        mounts = ",".join(
            f"{mount.source}:{mount.inside}" + (":ro" if mount.read_only else "") for mount in container.mounts
        )
        options.append(f"--container-mounts={mounts}")
    names = sorted({*container.env, *spec.secret_environment})
    if names:
        options.append(f"--container-env={','.join(names)}")
    env = [f"export {name}={shlex.quote(value)}" for name, value in sorted(container.env.items())]
    return env, options


def _srun_words(spec: JobSpec, launcher: Launcher | None) -> list[str]:
    resources = spec.resources
    if launcher is Launcher.TORCHRUN:
        per_node_cpus = resources.tasks_per_node * resources.cpus_per_task
        return [
            "srun",
            f"--nodes={resources.nodes}",
            f"--ntasks={resources.nodes}",
            "--ntasks-per-node=1",
            f"--cpus-per-task={per_node_cpus}",
        ]
    if launcher is Launcher.SRUN:
        return ["srun"]
    return ["srun", "--nodes=1", "--ntasks=1"]  # Pyxis without a launcher: one step runs the command once


def _torchrun_line(spec: JobSpec) -> str:
    resources = spec.resources
    per_node = resources.gpus_per_node or resources.tasks_per_node
    return (
        f"torchrun --nnodes {resources.nodes} --nproc-per-node {per_node} --rdzv-backend c10d "
        '--rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv-id="$SLURM_JOB_ID"'
    )


def _heredoc(script: str) -> tuple[str, str]:
    """(delimiter, body) feeding ``script`` to a shell on standard input; the delimiter is no line of it."""
    lines = set(script.splitlines())
    delimiter, n = _HEREDOC_STEM, 0
    while delimiter in lines:
        n += 1
        delimiter = f"{_HEREDOC_STEM}_{n}"
    return delimiter, script if script.endswith("\n") else script + "\n"


def _user_script_body(script: str) -> str:
    first, _, rest = script.partition("\n")
    if first.startswith("#!") and first[2:].strip() in BASH_INTERPRETER_LINES:
        return rest
    return script


def batch_script(spec: JobSpec, runtime: ContainerRuntime | None, directory: str) -> str:
    """The batch script for ``spec`` on a Factory whose container runtime is ``runtime``, working in ``directory``.

    Without a container or launcher: the user's script (bash's interpreter line added when it has none), or
    an ``exec`` of the command with every argument quoted, so the command's exit status is the job's.
    """
    container, launcher = spec.container, spec.launcher
    if container is None and launcher is None:
        if spec.command is not None:
            return f"{DEFAULT_SHELL}\nexec {shlex.join(spec.command)}\n"
        assert spec.script is not None  # the spec guarantees exactly one of the two
        script = spec.script if spec.script.endswith("\n") else spec.script + "\n"
        return script if script.startswith("#!") else f"{DEFAULT_SHELL}\n{script}"
    if container is not None and runtime is None:
        raise LaunchError("the job names a container, and this Factory declares no container runtime")
    lines = [DEFAULT_SHELL, "set -e"] if launcher is Launcher.TORCHRUN else [DEFAULT_SHELL]
    if launcher is Launcher.TORCHRUN:
        lines += TORCHRUN_PRELUDE
    start: list[str] = []  # the words before the program, as they are written (already quoted)
    pyxis = container is not None and runtime is not None and runtime.runtime == "pyxis"
    if launcher is not None or pyxis:
        srun = _srun_words(spec, launcher)
        if pyxis:
            assert container is not None
            env, options = _pyxis_options(container, spec, directory)
            lines += env
            srun += options
        start.append(_quoted(srun))
    if container is not None and runtime is not None and not pyxis:
        env, words = _apptainer_words(container, runtime, spec, directory)
        lines += env
        start.append(_quoted(words))
    if launcher is Launcher.TORCHRUN:
        start.append(_torchrun_line(spec))
    if spec.command is not None:
        lines.append(" ".join(["exec", *start, shlex.join(spec.command)]))
    else:
        assert spec.script is not None
        delimiter, body = _heredoc(_user_script_body(spec.script))
        lines.append(" ".join(["exec", *start, "/bin/bash", "-s", f"<<'{delimiter}'"]))
        lines.append(body + delimiter)
    return "\n".join(lines) + "\n"


__all__ = ["DEFAULT_SHELL", "TORCHRUN_PRELUDE", "LaunchError", "batch_script"]
