"""How a training job runs at its Factory: its container, its launcher and where its output goes.

Part of the job spec (:mod:`conveyor.spec`). Every string here ends up in a batch script, so each has a strict
grammar: image references, mount paths and output patterns take only the characters they need (never a shell
metacharacter, a comma or a colon inside a path), and the broker still shell-quotes every word it renders.
Whether a Factory runs containers at all, and which images and directories it allows, is the Factory's say.
"""

from __future__ import annotations

import enum
import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StringConstraints, field_validator

from conveyor.environment import EnvName, EnvValue, check_environment

# A site path: absolute, in a portable file-name alphabet (POSIX's, plus '+' and '@').
_PATH = r"^/[A-Za-z0-9._/+@-]*$"
# A registry reference the Factory pulls itself: docker://host/repo:tag@sha256:..., oras://...
_REGISTRY = r"^(docker|oras)://[A-Za-z0-9][A-Za-z0-9._/:@+-]*$"
# Placeholders an output pattern may use in its file name, and what each stands for.
OUTPUT_PLACEHOLDERS = {
    "{job_id}": "Slurm's job id",
    "{array_index}": "the task's index in its job array",
    "{segment}": "the segment's number in a chain across walltime limits (0 for a job of one segment)",
}
_PLACEHOLDER = re.compile(r"\{[^{}]*\}")
MAX_MOUNTS = 32


def site_path(path: str) -> str:
    """``path`` normalized (no ``.``, empty or trailing segments); ``..`` is refused, never resolved."""
    segments = path.split("/")
    if ".." in segments:
        raise ValueError("must not contain '..' segments")
    return "/" + "/".join(segment for segment in segments if segment not in {"", "."})


SitePath = Annotated[str, StringConstraints(min_length=1, max_length=1024, pattern=_PATH), AfterValidator(site_path)]
"""An absolute path at the site in a strict alphabet: no space, quote, colon, comma or shell metacharacter."""


def _image_reference(reference: str) -> str:
    if re.match(_REGISTRY, reference):
        return reference
    if re.match(_PATH, reference):
        return site_path(reference)
    raise ValueError(
        "container.image must be an absolute path at the Factory (a .sif file or a sandbox directory) or a "
        "docker:// or oras:// reference, in letters, digits and . _ / + @ - (and : after the scheme)"
    )


ImageReference = Annotated[str, StringConstraints(min_length=2, max_length=1024), AfterValidator(_image_reference)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Mount(_Strict):
    """A directory of the site made visible inside the container (``target`` None: at the same path)."""

    source: SitePath
    target: SitePath | None = None
    read_only: StrictBool = False

    @property
    def inside(self) -> str:
        """Where the container sees it."""
        return self.target or self.source


class Container(_Strict):
    """The image the job runs in, what it sees of the site, and environment set inside it only.

    ``image`` is a path at the Factory (an Apptainer ``.sif`` file or sandbox directory, a Pyxis squashfs) or,
    where the Factory pulls images itself, a ``docker://``/``oras://`` reference. Which are allowed is the
    Factory's list; that list steers placement and is no security boundary (the site's runtime config is).
    """

    image: ImageReference
    mounts: list[Mount] = Field(default_factory=list, max_length=MAX_MOUNTS)
    env: dict[EnvName, EnvValue] = Field(
        default_factory=dict, max_length=256, description="set inside the container only"
    )

    @field_validator("env")
    @classmethod
    def _env_entries(cls, value: dict[str, str]) -> dict[str, str]:
        return check_environment(value)

    @field_validator("mounts")
    @classmethod
    def _one_mount_per_target(cls, value: list[Mount]) -> list[Mount]:
        targets = [mount.inside for mount in value]
        for target in targets:
            if targets.count(target) > 1:
                raise ValueError(f"{targets.count(target)} mounts target {target}")
        return value


class Launcher(enum.StrEnum):
    """What starts the command on the job's nodes. None (no launcher): the batch script runs it once.

    ``srun``: once per task. ``torchrun``: one torchrun per node (``srun --ntasks-per-node=1``), each starting
    a process per GPU (else per task) and meeting the others at the first node (c10d rendezvous).
    """

    SRUN = "srun"
    TORCHRUN = "torchrun"


def _output_pattern(pattern: str) -> str:
    directory, _, name = site_path(pattern).rpartition("/")
    if _PLACEHOLDER.search(directory):
        raise ValueError("placeholders may appear only in the file name, not in its directories")
    unknown = sorted(set(_PLACEHOLDER.findall(name)) - set(OUTPUT_PLACEHOLDERS))
    if unknown or "{" in _PLACEHOLDER.sub("", name) or "}" in _PLACEHOLDER.sub("", name):
        raise ValueError(f"unknown placeholder in {name!r}; the file name may use {', '.join(OUTPUT_PLACEHOLDERS)}")
    if not name:
        raise ValueError("names a directory, not a file")
    return f"{directory}/{name}"


OutputPattern = Annotated[
    str,
    StringConstraints(min_length=2, max_length=1024, pattern=r"^/[A-Za-z0-9._/+@{}-]*$"),
    AfterValidator(_output_pattern),
]
"""An output file at the site: an absolute path in the site path alphabet whose file name may hold
:data:`OUTPUT_PLACEHOLDERS` (``/scratch/runs/train-{job_id}.out``)."""


__all__ = [
    "MAX_MOUNTS",
    "OUTPUT_PLACEHOLDERS",
    "Container",
    "ImageReference",
    "Launcher",
    "Mount",
    "OutputPattern",
    "SitePath",
    "site_path",
]
