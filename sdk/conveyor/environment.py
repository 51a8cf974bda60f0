"""Environment variables a job spec may set: the names, the reserved prefixes and the bounds, in one place."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import StringConstraints

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Read by Slurm and its launchers, SPANK plugins, PMI/PMIx and container runtimes (as slurm_adapters.safety).
RESERVED_ENV_PREFIXES = (
    "SLURM_", "SBATCH_", "SALLOC_", "SRUN_", "SPANK_", "PMI_", "PMIX_", "SLURMD_", "APPTAINER", "SINGULARITY",
)  # fmt: skip

EnvName = Annotated[str, StringConstraints(max_length=256)]
"""An environment variable's name, bounded here; its grammar is :func:`check_environment` with a clear message."""
EnvValue = Annotated[str, StringConstraints(max_length=32_768)]


def check_environment(environment: dict[str, str]) -> dict[str, str]:
    """``environment`` if a job may set every entry of it: refuses a bad name, one of Slurm's or the container
    runtime's (:data:`RESERVED_ENV_PREFIXES`), or a value with a NUL byte."""
    for name, text in environment.items():
        if not _ENV_NAME.match(name):
            raise ValueError(f"invalid environment variable name {name!r}")
        if name.upper().startswith(RESERVED_ENV_PREFIXES):
            raise ValueError(
                f"environment variable {name!r} is reserved for Slurm, its launchers and container runtimes"
            )
        if "\x00" in text:
            raise ValueError(f"environment variable {name!r} contains a NUL byte")
    return environment


__all__ = ["RESERVED_ENV_PREFIXES", "EnvName", "EnvValue", "check_environment"]
