"""The environment a batch job starts with: the one sbatch gives it, whichever adapter submits it.

A user at a login shell runs ``sbatch`` with HOME, USER, LOGNAME and SHELL set by the login, and sbatch
exports that environment with variables of its own for the options given (SLURM_CPUS_PER_TASK,
SLURM_NTASKS_PER_NODE, SLURM_SUBMIT_DIR, ...; from 24.05 on also hints that make MPI launchers start their
processes through Slurm). slurmrestd and libslurm set none of these, so the rest and pyslurm adapters add
them here; the CLI adapter runs sbatch itself, which sets its own. The job's variables are laid over the
login's, and sbatch's over both (a user may not set SLURM_*, see :mod:`slurm_adapters.safety`).
Measured against sbatch-submitted twins on 22.05, 24.11 and 26.05 (tests/adapters/test_sbatch_twins.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from slurm_adapters.records import SlurmJobSpec

# The PATH every job starts with; the spec's variables are laid over it.
BASE_ENVIRONMENT: Mapping[str, str] = {"PATH": "/usr/local/bin:/usr/bin:/bin"}

# sbatch exports these from 24.05 on, so that mpirun and mpiexec start their processes with srun.
LAUNCHER_HINTS_SINCE = (24, 5)
MPI_LAUNCHER_HINTS: Mapping[str, str] = {
    "HYDRA_BOOTSTRAP": "slurm",
    "HYDRA_LAUNCHER_EXTRA_ARGS": "--external-launcher",
    "I_MPI_HYDRA_BOOTSTRAP": "slurm",
    "I_MPI_HYDRA_BOOTSTRAP_EXEC_EXTRA_ARGS": "--external-launcher",
    "OMPI_MCA_plm_slurm_args": "--external-launcher",
    "PRTE_MCA_plm_slurm_args": "--external-launcher",
}


@dataclass(frozen=True, slots=True)
class Login:
    """What a login sets for ``user``: the name, and the home and shell of its passwd entry (None: unknown)."""

    user: str
    home: str | None = None
    shell: str | None = None

    def variables(self) -> dict[str, str]:
        found = {"HOME": self.home, "USER": self.user, "LOGNAME": self.user, "SHELL": self.shell}
        return {name: value for name, value in found.items() if value}


def sbatch_variables(spec: SlurmJobSpec, *, release: tuple[int, int], submit_host: str) -> dict[str, str]:
    """What sbatch of ``release`` exports for ``spec``'s options when run in the job's working directory."""
    variables = {
        "SLURM_JOB_NAME": spec.name,
        "SLURM_CPUS_PER_TASK": str(spec.cpus_per_task),
        "SLURM_SUBMIT_DIR": spec.working_directory,
        "SLURM_SUBMIT_HOST": submit_host,
        "SLURM_PRIO_PROCESS": "0",  # sbatch's own nice value, which its job's steps inherit
    }
    if spec.tasks_per_node is not None:
        variables["SLURM_NTASKS_PER_NODE"] = str(spec.tasks_per_node)
    if release >= LAUNCHER_HINTS_SINCE:
        variables["SLURM_TRES_PER_TASK"] = f"cpu={spec.cpus_per_task}"
    return variables


def batch_environment(
    spec: SlurmJobSpec,
    login: Login,
    *,
    sbatch: Mapping[str, str] | None = None,
    release: tuple[int, int] | None = None,
) -> dict[str, str]:
    """The job's complete environment: the base PATH, the login's variables, sbatch's launcher hints for
    ``release``, the spec's variables over those, and ``sbatch``'s own variables last."""
    hints = MPI_LAUNCHER_HINTS if release is not None and release >= LAUNCHER_HINTS_SINCE else {}
    return {**BASE_ENVIRONMENT, **login.variables(), **hints, **spec.environment, **(sbatch or {})}


__all__ = [
    "BASE_ENVIRONMENT",
    "LAUNCHER_HINTS_SINCE",
    "MPI_LAUNCHER_HINTS",
    "Login",
    "batch_environment",
    "sbatch_variables",
]
