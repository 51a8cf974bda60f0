"""A broker job as the Slurm job an adapter submits: pure, so a dry run shows exactly what dispatch sends.

The wire spec says what the user wants; the placement says where; the Factory says whom it runs as and where
its files go. Nothing here calls Slurm or reads the database.
"""

from __future__ import annotations

import shlex
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from broker.factories import working_roots
from broker.factories.registry import Factory
from conveyor.spec import JobSpec
from slurm_adapters.records import SlurmJobSpec

if TYPE_CHECKING:  # placement translates to check an agent's features: no import cycle at run time
    from broker.factories.placement import Placement

DEFAULT_SHELL = "#!/bin/bash"


class TranslationError(ValueError):
    """The job cannot be expressed for this Factory (e.g. no working directory anywhere); the user must act."""


def site_user(factory: Factory) -> str:
    """The site user jobs run as on ``factory`` unless a mapping says otherwise (broker.tenancy.site_accounts)."""
    return factory.mapping.default_user


def batch_script(spec: JobSpec) -> str:
    """The batch script: the user's own, or an ``exec`` of the command with every argument shell-quoted.

    ``exec`` keeps the command's exit status as the job's; quoting with :func:`shlex.join` means an argument
    is never interpreted by the shell. A script without an interpreter line gets bash's, which sbatch needs.
    """
    if spec.command is not None:
        return f"{DEFAULT_SHELL}\nexec {shlex.join(spec.command)}\n"
    assert spec.script is not None  # the spec guarantees exactly one of the two
    script = spec.script if spec.script.endswith("\n") else spec.script + "\n"
    return script if script.startswith("#!") else f"{DEFAULT_SHELL}\n{script}"


def working_directory(spec: JobSpec, factory: Factory, user: str | None = None) -> str:
    """The spec's working directory, else the Factory's ``job_root``; the spec's must lie within what the
    Factory allows for ``user``, the site user the job runs as (None: the Factory's default user)."""
    directory = spec.working_directory or factory.job_root
    if directory is None:
        raise TranslationError(
            f"the job names no working_directory and Factory {factory.id!r} has no default job directory; "
            "set working_directory"
        )
    site = user or site_user(factory)
    if spec.working_directory is not None and not factory.allows_directory(directory, site):
        raise TranslationError(
            f"working_directory {directory} is outside the directories Factory {factory.id} lets jobs of site "
            f"user {site} work in: {working_roots.listing(factory.allowed_roots)}"
        )
    return directory


def to_slurm_spec(
    job_id: str,
    spec: JobSpec,
    placement: Placement,
    factory: Factory,
    *,
    account: str | None = None,
    user: str | None = None,
) -> SlurmJobSpec:
    """The adapter's job spec for broker job ``job_id`` placed by ``placement`` on ``factory``.

    The tag is the broker's job id: the only way to find the Slurm job again after a crash. ``account`` and
    ``user`` are the site account and user mapped for the job (broker.tenancy.site_accounts); None: the
    Factory's defaults.
    """
    if placement.factory.id != factory.id:
        raise ValueError(f"placement is on {placement.factory.id!r}, not on {factory.id!r}")
    directory = working_directory(spec, factory, user)
    resources = spec.resources
    log_stem = str(PurePosixPath(directory) / f"conveyor-{job_id}")
    return SlurmJobSpec(
        name=spec.name,
        script=batch_script(spec),
        working_directory=directory,
        tag=job_id,
        stdout=f"{log_stem}.out",
        stderr=f"{log_stem}.err",
        environment=dict(spec.environment),
        partition=placement.partition.name,
        account=account or factory.mapping.default_account,
        nodes=resources.nodes,
        tasks=resources.tasks_per_node * resources.nodes,
        tasks_per_node=resources.tasks_per_node,
        cpus_per_task=resources.cpus_per_task,
        memory_mb=resources.memory_mb,
        gpus_per_node=resources.gpus_per_node,
        gpu_type=resources.gpu_type,
        time_limit_min=placement.time_limit_min,
    )


__all__ = ["TranslationError", "batch_script", "site_user", "to_slurm_spec", "working_directory"]
