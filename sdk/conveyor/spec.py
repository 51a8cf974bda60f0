"""The job spec: what a user asks Conveyor to run, identical for the server, the SDK and the CLI.

Strict by design: unknown fields are refused (a typo must not be silently dropped), numbers must be JSON
numbers (``true`` or ``"2"`` is not a node count), and features that are planned but not built yet (job
arrays, dependencies) are refused by name, so a user never believes they were honoured. How the job runs
(container, launcher, output files) is :mod:`conveyor.workload`.
"""

from __future__ import annotations

import enum
import re
from typing import Annotated, Any, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
    field_validator,
    model_validator,
)

from conveyor.environment import EnvName, EnvValue, check_environment
from conveyor.workload import Container, Launcher, OutputPattern, site_path

_NOT_YET = {
    "array": "job arrays",
    "dependency": "job dependencies",
    "dependencies": "job dependencies",
}
# Names users reach for that the spec spells otherwise: refused with the right name, never ignored.
_SPELLED_OTHERWISE = {"image": "container.image", "container_image": "container.image"}
BASH_INTERPRETER_LINES = frozenset({"/bin/bash", "/usr/bin/bash", "/usr/bin/env bash"})
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

Name = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")]
ProjectId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
FactoryId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_-]*$")]
GpuType = Annotated[str, StringConstraints(min_length=1, max_length=32, pattern=r"^[a-z0-9][a-z0-9_.-]*$")]
Country = Annotated[str, StringConstraints(min_length=2, max_length=2, pattern=r"^[A-Z]{2}$")]
LabelKey = Annotated[str, StringConstraints(min_length=1, max_length=63, pattern=r"^[a-z0-9]([a-z0-9._/-]*[a-z0-9])?$")]
LabelValue = Annotated[str, StringConstraints(max_length=256, pattern=r"^[^\x00-\x1f\x7f]*$")]


WorkingDirectory = Annotated[
    str,
    StringConstraints(max_length=4096, pattern=r"^/[^\x00-\x1f\x7f]*$"),
    AfterValidator(site_path),
]

MAX_SCRIPT_BYTES = 1024 * 1024
MAX_TIME_LIMIT_MIN = 366 * 24 * 60


class JobState(enum.StrEnum):
    """Where a job is in its life. Only forward moves are allowed (see the broker's transition rules).

    ``queued``: accepted, not yet at Slurm. ``submitted``: in Slurm's queue. ``rejected``: could not be placed
    or submitted, with the reason. ``lost``: gone from Slurm before its end was seen.
    """

    QUEUED = "queued"
    SUBMITTED = "submitted"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    REJECTED = "rejected"
    LOST = "lost"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset(
    {JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.TIMEOUT, JobState.REJECTED, JobState.LOST}
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


class Resources(_Strict):
    """What the job needs, per node. ``time_limit_min`` None means the chosen partition's DefaultTime."""

    nodes: StrictInt = Field(1, ge=1, le=10_000)
    tasks_per_node: StrictInt = Field(1, ge=1, le=1024)
    cpus_per_task: StrictInt = Field(1, ge=1, le=1024)
    gpus_per_node: StrictInt = Field(0, ge=0, le=64)
    gpu_type: GpuType | None = None
    memory_mb: StrictInt | None = Field(None, ge=1, le=64 * 1024 * 1024, description="memory per node, MiB")
    time_limit_min: StrictInt | None = Field(
        None, ge=1, le=MAX_TIME_LIMIT_MIN, description="wall time in minutes; omitted: the partition's default"
    )

    @model_validator(mode="after")
    def _gpu_type_needs_gpus(self) -> Self:
        if self.gpu_type is not None and self.gpus_per_node == 0:
            raise ValueError("gpu_type given but gpus_per_node is 0")
        return self


class Placement(_Strict):
    """Where the job may run: one Factory by id, and/or the countries its data may go to."""

    factory: FactoryId | None = None
    countries: list[Country] = Field(default_factory=list, max_length=40)


class JobSpec(_Strict):
    """One training job. Exactly one of ``script`` (a batch script) or ``command`` (argv) is given."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "examples": [
                {
                    "name": "llama-finetune",
                    "project": "EHPC-AIF-2026PG01-1147",
                    "command": ["python", "train.py", "--epochs", "3"],
                    "resources": {"nodes": 1, "gpus_per_node": 4, "gpu_type": "a100", "time_limit_min": 120},
                    "environment": {"WANDB_MODE": "offline"},
                    "labels": {"team": "nlp"},
                    "placement": {"countries": ["IT", "FI"]},
                }
            ]
        },
    )

    name: Name
    project: ProjectId
    script: str | None = Field(None, max_length=MAX_SCRIPT_BYTES)
    command: list[Annotated[str, StringConstraints(max_length=4096)]] | None = Field(None, min_length=1, max_length=256)
    resources: Resources = Field(default_factory=Resources)
    environment: dict[EnvName, EnvValue] = Field(default_factory=dict, max_length=256)
    working_directory: WorkingDirectory | None = Field(
        None,
        description="where the job runs at its Factory: an absolute path, normalized, without '..', inside the "
        "directories the Factory allows (its working_roots)",
    )
    secret_environment: dict[EnvName, EnvValue] = Field(
        default_factory=dict,
        max_length=64,
        description="write-only environment (tokens): encrypted at rest, delivered to the job only, and shown "
        "redacted in every answer",
    )
    container: Container | None = None
    launcher: Launcher | None = Field(
        None, description="what starts the command on the job's nodes; none: the batch script runs it once"
    )
    stdout: OutputPattern | None = Field(
        None, description="the job's standard output file; none: conveyor-<job>.out in its working directory"
    )
    stderr: OutputPattern | None = Field(
        None, description="the job's standard error file; none: conveyor-<job>.err in its working directory"
    )
    requeue: StrictBool = Field(
        False,
        description="let Slurm requeue the job after a node failure or preemption, and so run it again under the "
        "same id: at-least-once (by default it is submitted with --no-requeue and runs at most once)",
    )
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict, max_length=64)
    placement: Placement = Field(default_factory=Placement)

    @model_validator(mode="before")
    @classmethod
    def _refuse_planned_features(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, feature in _NOT_YET.items():
                if key in data:
                    raise ValueError(f"{feature} ({key!r}) are not supported yet; remove the field")
            for key, spelling in _SPELLED_OTHERWISE.items():
                if key in data:
                    raise ValueError(f"{key!r} is not a field of the job spec: use {spelling}")
        return data

    @model_validator(mode="after")
    def _exactly_one_payload(self) -> Self:
        if (self.script is None) == (self.command is None):
            raise ValueError("give exactly one of 'script' or 'command'")
        if self.script is not None and not self.script.strip():
            raise ValueError("script is empty")
        return self

    @field_validator("script")
    @classmethod
    def _script_text(cls, value: str | None) -> str | None:
        if value is not None and "\x00" in value:
            raise ValueError("the script contains a NUL byte")
        return value

    @field_validator("command")
    @classmethod
    def _command_words(cls, value: list[str] | None) -> list[str] | None:
        for index, word in enumerate(value or []):
            if "\x00" in word:  # an argv word cannot carry one (C strings end there)
                raise ValueError(f"command word {index} contains a NUL byte")
        return value

    @field_validator("environment", "secret_environment")
    @classmethod
    def _environment_entries(cls, value: dict[str, str]) -> dict[str, str]:
        return check_environment(value)

    @model_validator(mode="after")
    def _runs_as_described(self) -> Self:
        both = sorted(set(self.environment) & set(self.secret_environment))
        if both:
            raise ValueError(f"{', '.join(both)} given in both environment and secret_environment")
        for label, pattern in (("stdout", self.stdout), ("stderr", self.stderr)):
            if pattern is not None and "{array_index}" in pattern:
                raise ValueError(f"{label}: {{array_index}} names a task of a job array, and this job is none")
        if self.launcher is not None and self.command is None:
            raise ValueError(f"launcher {self.launcher.value!r} starts a command: give 'command', not 'script'")
        if self.container is not None and self.script is not None and not self._script_runs_under_bash():
            raise ValueError(
                "in a container a script runs under the image's /bin/bash: drop its interpreter line, or give "
                "'command' for another interpreter"
            )
        return self

    def _script_runs_under_bash(self) -> bool:
        assert self.script is not None
        first = self.script.split("\n", 1)[0]
        return not first.startswith("#!") or first[2:].strip() in BASH_INTERPRETER_LINES
