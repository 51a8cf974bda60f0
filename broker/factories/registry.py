"""The Factories this broker serves, as declared in a reviewable config file, and the registry that holds them.

A Factory's static facts live here: where it is, how to reach its Slurm cluster, whom jobs run as, and each
partition's limits, so that placement needs no Slurm call. Whether a Factory is healthy or drained is not
config: it changes at run time and lives in the database (placement takes it as a parameter).

Example (YAML; JSON works too)::

    factories:
      - id: it4lia
        name: IT4LIA
        country: IT
        site: CINECA
        adapter: {kind: rest, cluster: leonardo, url: "https://slurmrest.example:6820",
                  jwt_key_file: /etc/conveyor/keys/leonardo.jwt, operator_user: conveyor,
                  allowed_users: "[a-z][a-z0-9-]{2,31}"}  # no uid look-up here: who jobs may run as
        mapping: {default_user: conveyor-jobs, default_account: EUHPC_A01_001}
        enforce_part_limits: ALL
        job_root: /leonardo_scratch/conveyor      # jobs without a working directory run (and log) here
        working_roots: [/leonardo_scratch/conveyor, "/leonardo/home/userexternal/{user}", /leonardo_work]
        accounting: true                           # slurmdbd keeps finished jobs
        min_job_age_s: 300                         # Slurm's MinJobAge
        message_timeout_s: 10                      # Slurm's MessageTimeout
        clock_skew_s: 10                           # how far its clock and the broker's may disagree
        partitions:
          - {name: boost_usr_prod, default: true, max_time_min: 1440, default_time_min: 60, nodes: 3456,
             cpus_per_node: 32, memory_mb_per_node: 491520, gpus_per_node: {a100: 4}}
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from broker.config_files import ConfigFileError, Location, dotted, explain_all, read_document
from broker.factories import working_roots
from broker.factories.containers import ContainerRuntime
from conveyor.spec import MAX_TIME_LIMIT_MIN, Country, FactoryId, GpuType
from slurm_adapters.errors import UnsafeRequest
from slurm_adapters.factory import AdapterConfig, site_policy
from slurm_adapters.safety import is_user_name

PartitionName = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
AccountName = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
Text = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]
JobRoot = Annotated[str, StringConstraints(min_length=2, max_length=1024, pattern=r"^/[^\x00-\x1f\x7f]*$")]
WorkingRoot = Annotated[JobRoot, AfterValidator(working_roots.check_root)]
_ADAPTER_KINDS = {"rest", "cli", "pyslurm", "agent"}
# The time a dispatcher may take between committing an attempt (its started_at) and starting the adapter's
# call: the commit's return, the adapter's own preparation (rendering, a first version negotiation). A
# call that would start later is refused by the submit fence (SubmitContext.not_after), never made late.
SUBMIT_SLACK_S = 5.0


def _site_user(name: str) -> str:
    if not is_user_name(name):
        raise ValueError(f"{name!r} is not a site user name")
    return name


SiteUser = Annotated[str, AfterValidator(_site_user)]


class _FieldError(ValueError):
    """A cross-field rule broken at one field; the loader reports it at that field."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Partition(_Strict):
    """One Slurm partition and the limits placement checks. Nodes are described by what EVERY node has."""

    name: PartitionName
    default: bool = False
    max_time_min: int = Field(ge=1, le=MAX_TIME_LIMIT_MIN, description="Slurm's MaxTime; required: never infinite")
    default_time_min: int | None = Field(None, ge=1, description="Slurm's DefaultTime; None: jobs must give one")
    nodes: int = Field(ge=1, description="how many nodes the partition has")
    cpus_per_node: int = Field(ge=1)
    memory_mb_per_node: int = Field(ge=1)
    gpus_per_node: dict[GpuType, Annotated[int, Field(ge=1, le=64)]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _default_within_max(self) -> Self:
        if self.default_time_min is not None and self.default_time_min > self.max_time_min:
            raise _FieldError(
                "default_time_min",
                f"{self.default_time_min} min is above the partition's max_time_min ({self.max_time_min} min)",
            )
        return self

    @property
    def has_gpus(self) -> bool:
        return bool(self.gpus_per_node)

    def gpus_of(self, gpu_type: str | None) -> int:
        """GPUs per node of ``gpu_type`` (None: of any type, as Slurm counts an untyped request)."""
        if gpu_type is None:
            return sum(self.gpus_per_node.values())
        return self.gpus_per_node.get(gpu_type, 0)


class UserMapping(_Strict):
    """Whom jobs run as on this Factory and which account they charge (per-user mappings: issue #4)."""

    default_user: SiteUser
    default_account: AccountName | None = None


class Factory(_Strict):
    """One AI Factory: one Slurm cluster at one site."""

    id: FactoryId
    name: Text
    country: Country
    site: Text = Field(description="the hosting site, e.g. CINECA")
    adapter: Annotated[AdapterConfig, Field(discriminator="kind")]
    mapping: UserMapping
    partitions: tuple[Partition, ...] = Field(min_length=1, max_length=256)
    enforce_part_limits: Literal["ALL", "ANY", "NO"] | None = Field(
        None, description="Slurm's EnforcePartLimits; NO (Slurm's default): an over-limit job pends for ever"
    )
    job_root: JobRoot | None = Field(
        None, description="where jobs run and write their output when the spec names no working directory"
    )
    working_roots: tuple[WorkingRoot, ...] | None = Field(
        None,
        max_length=64,
        description="the directories jobs may work in (and below); '{user}' as a segment is the site user the job "
        "runs as; None: job_root alone",
    )
    accounting: bool = Field(False, description="the cluster keeps finished jobs in slurmdbd (sacct works)")
    min_job_age_s: int = Field(
        300, ge=0, description="Slurm's MinJobAge: how long slurmctld still lists a finished job"
    )
    message_timeout_s: float = Field(
        10.0,
        ge=1,
        le=3600,
        description="Slurm's MessageTimeout: how long a request may still travel to slurmctld after the broker "
        "gave up on it; nobody settles a submit in doubt before its start + the submit window + this + the "
        "clock skew",
    )
    containers: ContainerRuntime | None = Field(
        None, description="how jobs run in containers here; None: this Factory runs no container jobs"
    )
    clock_skew_s: float = Field(
        10.0,
        ge=1,
        le=3600,
        description="how far this cluster's clock and the broker's may disagree (at least 1: Slurm's times are "
        "whole seconds); settling a submit in doubt allows this much, always in the safe direction",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        names = [partition.name for partition in self.partitions]
        for name in names:
            if names.count(name) > 1:
                raise _FieldError("partitions", f"partition {name!r} is declared {names.count(name)} times")
        defaults = [partition.name for partition in self.partitions if partition.default]
        if len(defaults) > 1:
            raise _FieldError("partitions", f"only one partition may be the default, not {', '.join(defaults)}")
        if self.job_root is not None and not self.allows_directory(self.job_root, None):
            raise _FieldError("job_root", f"{self.job_root} is outside working_roots: {', '.join(self.allowed_roots)}")
        # The refusal the adapter applies at submit, found when the file is loaded (names only: the site's
        # accounts need not exist where the broker runs).
        try:
            site_policy(self.adapter).check_name(self.mapping.default_user)
        except UnsafeRequest as exc:
            raise _FieldError("mapping.default_user", exc.message) from None
        return self

    @property
    def allowed_roots(self) -> tuple[str, ...]:
        """The directories jobs may work in: ``working_roots``, else ``job_root`` alone (else none)."""
        if self.working_roots is not None:
            return self.working_roots
        return () if self.job_root is None else (self.job_root,)

    def allows_directory(self, path: str, user: str | None) -> bool:
        """Whether jobs of site user ``user`` (None: of some user) may work in ``path`` (normalized)."""
        return working_roots.allows(self.allowed_roots, path, user)

    @property
    def default_partition(self) -> Partition | None:
        return next((partition for partition in self.partitions if partition.default), None)

    def partition(self, name: str) -> Partition:
        for partition in self.partitions:
            if partition.name == name:
                return partition
        raise KeyError(f"Factory {self.id!r} has no partition {name!r}")

    @property
    def gpu_types(self) -> frozenset[str]:
        return frozenset(gpu_type for partition in self.partitions for gpu_type in partition.gpus_per_node)

    @property
    def submit_window_s(self) -> float:
        """How long after its attempt is committed a submit's call may still be running, whatever the adapter
        kind: the adapter's call deadline + :data:`SUBMIT_SLACK_S`. The dispatcher hands each submit
        ``not_after`` = the attempt's start + this, and the adapter's fence never starts a call that could
        run past it."""
        return self.adapter.timeout_s + SUBMIT_SLACK_S


class _FactoriesFile(_Strict):
    factories: list[Factory] = Field(min_length=1)


class FactoryConfigError(ConfigFileError):
    """A Factory file that cannot be loaded. ``issues``: (Factory id or #position, or None; field path; message)."""

    def __init__(self, source: str, issues: Iterable[tuple[str | None, str, str]]) -> None:
        self.issues = tuple(issues)
        super().__init__(source, [_issue_text(*issue) for issue in self.issues])


def _issue_text(factory: str | None, field_path: str, message: str) -> str:
    where = f"factory {factory}: " if factory is not None else ""
    return f"{where}{field_path}: {message}"


class FactoryRegistry:
    """The configured Factories, looked up by id and iterated in config order (placement's order)."""

    def __init__(self, factories: Iterable[Factory]) -> None:
        self._factories: dict[str, Factory] = {}
        for factory in factories:
            if factory.id in self._factories:
                raise ValueError(f"Factory {factory.id!r} is declared twice")
            self._factories[factory.id] = factory

    def __iter__(self) -> Iterator[Factory]:
        return iter(self._factories.values())

    def __len__(self) -> int:
        return len(self._factories)

    def __contains__(self, factory_id: object) -> bool:
        return factory_id in self._factories

    def __getitem__(self, factory_id: str) -> Factory:
        return self._factories[factory_id]

    def get(self, factory_id: str) -> Factory | None:
        return self._factories.get(factory_id)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(self._factories)


def _factory_label(raw: Any, index: int) -> str:
    """How an issue names its Factory: its id when the entry has a usable one, else its position."""
    if isinstance(raw, list) and index < len(raw) and isinstance(raw[index], dict):
        factory_id = raw[index].get("id")
        if isinstance(factory_id, str) and factory_id:
            shared = sum(isinstance(entry, dict) and entry.get("id") == factory_id for entry in raw) > 1
            return f"{factory_id} (#{index + 1})" if shared else factory_id
    return f"#{index + 1}"


def _issue(document: Any, location: Location, message: str) -> tuple[str | None, str, str]:
    if len(location) >= 2 and location[0] == "factories" and isinstance(location[1], int):
        entries = document.get("factories") if isinstance(document, dict) else None
        rest = location[2:]
        if len(rest) >= 2 and rest[0] == "adapter" and rest[1] in _ADAPTER_KINDS:
            rest = (rest[0], *rest[2:])  # pydantic names the union member; the author wrote no such level
        return _factory_label(entries, location[1]), dotted(rest), message
    return None, dotted(location), message


def parse_factories(document: Any, *, source: str = "<factories>") -> FactoryRegistry:
    """Validate a parsed Factory document (a mapping with a ``factories`` list) into a registry.

    Validated as JSON in strict mode: ``"8"`` is not 8, and lists are accepted where tuples are declared.
    """
    try:
        text = json.dumps(document)
    except (TypeError, ValueError) as exc:
        raise FactoryConfigError(source, [(None, "(top level)", f"not JSON-compatible data: {exc}")]) from None
    try:
        parsed = _FactoriesFile.model_validate_json(text, strict=True)
    except ValidationError as exc:
        raise FactoryConfigError(source, [_issue(document, loc, msg) for loc, msg in explain_all(exc)]) from None
    seen: dict[str, int] = {}
    duplicates = []
    for index, factory in enumerate(parsed.factories):
        if factory.id in seen:
            duplicates.append(
                (factory.id, "id", f"declared again: entries #{seen[factory.id] + 1} and #{index + 1} share it")
            )
        seen.setdefault(factory.id, index)
    if duplicates:
        raise FactoryConfigError(source, duplicates)
    return FactoryRegistry(parsed.factories)


def load_factories(path: str | Path) -> FactoryRegistry:
    """The registry declared in a YAML or JSON file; every problem is reported with file, Factory and field."""
    file = Path(path)
    return parse_factories(read_document(file), source=str(file))


__all__ = [
    "SUBMIT_SLACK_S",
    "Factory",
    "FactoryConfigError",
    "FactoryRegistry",
    "Partition",
    "UserMapping",
    "load_factories",
    "parse_factories",
]
