"""A broker job as the Slurm job an adapter submits: pure, so a dry run shows exactly what dispatch sends.

The wire spec says what the user wants; the placement says where; the Factory says whom it runs as and where
its files go. Nothing here calls Slurm or reads the database.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from broker.factories import working_roots
from broker.factories.registry import Factory
from broker.jobs import launch
from conveyor.spec import JobSpec
from slurm_adapters.records import SlurmJobSpec

if TYPE_CHECKING:  # placement translates to check an agent's features: no import cycle at run time
    from broker.factories.placement import Placement

# An output pattern's placeholders in Slurm's filename patterns (a chain's segment is the broker's to fill in).
_SLURM_PATTERNS = {"{job_id}": "%j", "{array_index}": "%a"}


class TranslationError(ValueError):
    """The job cannot be expressed for this Factory (e.g. no working directory anywhere); the user must act."""


def container_problem(spec: JobSpec, factory: Factory, user: str | None) -> str | None:
    """Why the job's container cannot run on ``factory`` for site user ``user`` (None: some user), or None."""
    if spec.container is None:
        return None
    if factory.containers is None:
        return "runs no containers"
    return factory.containers.problem(spec.container, factory.allowed_roots, user)


def site_user(factory: Factory) -> str:
    """The site user jobs run as on ``factory`` unless a mapping says otherwise (broker.tenancy.site_accounts)."""
    return factory.mapping.default_user


def output_file(pattern: str, segment: int = 0) -> str:
    """An output pattern of the spec (``/runs/train-{job_id}.out``) as Slurm's (``/runs/train-%j.out``).

    The spec's alphabet has no ``%`` or backslash, so nothing else in the path is a Slurm pattern."""
    for placeholder, slurm in _SLURM_PATTERNS.items():
        pattern = pattern.replace(placeholder, slurm)
    return pattern.replace("{segment}", str(segment))


def _check_output(label: str, pattern: str, factory: Factory, site: str) -> None:
    directory = str(PurePosixPath(pattern).parent)
    if not factory.allows_directory(directory, site):
        raise TranslationError(
            f"{label} {pattern} is outside the directories Factory {factory.id} lets jobs of site user {site} "
            f"write in: {working_roots.listing(factory.allowed_roots)}"
        )


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
    secrets: Mapping[str, str] | None = None,
) -> SlurmJobSpec:
    """The adapter's job spec for broker job ``job_id`` placed by ``placement`` on ``factory``.

    The tag is the broker's job id: the only way to find the Slurm job again after a crash. ``account`` and
    ``user`` are the site account and user mapped for the job (broker.tenancy.site_accounts); None: the
    Factory's defaults. ``secrets``: the values of the spec's ``secret_environment`` (the stored spec holds
    them redacted), added to the job's environment only; without them (a dry run) they are left out.
    """
    if placement.factory.id != factory.id:
        raise ValueError(f"placement is on {placement.factory.id!r}, not on {factory.id!r}")
    directory = working_directory(spec, factory, user)
    site = user or site_user(factory)
    resources = spec.resources
    log_stem = str(PurePosixPath(directory) / f"conveyor-{job_id}")
    for label, pattern in (("stdout", spec.stdout), ("stderr", spec.stderr)):
        if pattern is not None:
            _check_output(label, pattern, factory, site)
    if spec.container is not None:
        problem = container_problem(spec, factory, site)
        if problem is not None:
            raise TranslationError(f"Factory {factory.id} {problem}")
    return SlurmJobSpec(
        name=spec.name,
        script=launch.batch_script(spec, factory.containers, directory),
        working_directory=directory,
        tag=job_id,
        stdout=output_file(spec.stdout) if spec.stdout else f"{log_stem}.out",
        stderr=output_file(spec.stderr) if spec.stderr else f"{log_stem}.err",
        environment={**spec.environment, **(secrets or {})},
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
        requeue=spec.requeue,
    )


__all__ = [
    "TranslationError",
    "container_problem",
    "output_file",
    "site_user",
    "to_slurm_spec",
    "working_directory",
]
