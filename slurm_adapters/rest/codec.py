"""What every slurmrestd API version has in common, and the shape each version's codec fills in.

A codec knows one version's paths and JSON; it never does I/O. The client picks one codec at first use and
stays version-agnostic: it sends what the codec renders and hands back what the codec parses.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from slurm_adapters.base import JobRecord, JobSpec, NodeInfo, PartitionInfo

Json = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class SlurmMessage:
    """One entry of a response's ``errors`` array (or of a v0.0.42 kill ``status`` entry)."""

    number: int | None
    error: str
    description: str = ""

    @property
    def text(self) -> str:
        """Slurm's own words: the short error, with the longer description when it adds something."""
        if self.error and self.description and self.description not in self.error:
            return f"{self.error} ({self.description})"
        return self.error or self.description or f"Slurm error {self.number}"


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def errors_of(body: Json) -> list[SlurmMessage]:
    """The response's ``errors`` entries. The number's key varies by release and endpoint."""
    raw = body.get("errors")
    if not isinstance(raw, list):
        return []
    messages: list[SlurmMessage] = []
    for entry in raw:
        if not isinstance(entry, Mapping):
            continue
        number = next(
            (n for key in ("error_number", "error_code", "errno") if (n := _as_int(entry.get(key))) is not None),
            None,
        )
        error = str(entry.get("error") or "").strip()
        description = str(entry.get("description") or "").strip()
        if number in (None, 0) and not error and not description:
            continue
        messages.append(SlurmMessage(number=number, error=error, description=description))
    return messages


def text_or_none(value: Any) -> str | None:
    """Slurm writes "" (and sometimes "(null)") for unset strings."""
    if value is None:
        return None
    text = str(value).strip()
    return None if text in {"", "(null)"} else text


def string_list(value: Any) -> tuple[str, ...]:
    """A list of strings, or a comma-separated string, as both appear across versions."""
    if isinstance(value, str):
        return tuple(item for item in (part.strip() for part in value.split(",")) if item)
    if isinstance(value, Sequence):
        return tuple(str(item) for item in value if str(item))
    return ()


def gres_request(spec: JobSpec) -> str | None:
    """``gpu[:type]:count`` per node, or None when the job wants no GPU."""
    if spec.gpus_per_node <= 0:
        return None
    if spec.gpu_type:
        return f"gpu:{spec.gpu_type}:{spec.gpus_per_node}"
    return f"gpu:{spec.gpus_per_node}"


def partitions_with_nodes(nodes: Sequence[NodeInfo], name: str) -> tuple[NodeInfo, ...]:
    """A partition's nodes, from the nodes' side (so no hostlist expression needs expanding)."""
    return tuple(node for node in nodes if name in node.partitions)


def used_gpus(configured: Mapping[str, int], used: Mapping[str, int]) -> dict[str, int]:
    """Drop the ``gpu:0`` that Slurm prints as "used" on nodes without any GPU."""
    return {kind: count for kind, count in used.items() if kind in configured or count}


def default_partition_names(body: Json) -> set[str]:
    """Partitions whose ``flags`` say DEFAULT (v0.0.38 writes "default", v0.0.43+ "DEFAULT")."""
    names: set[str] = set()
    for raw in body.get("partitions") or ():
        if isinstance(raw, Mapping) and "DEFAULT" in {flag.upper() for flag in string_list(raw.get("flags"))}:
            names.add(str(raw.get("name")))
    return names


def gpu_sum(nodes: Sequence[NodeInfo]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for node in nodes:
        for gpu_type, count in node.gpus.items():
            totals[gpu_type] = totals.get(gpu_type, 0) + count
    return totals


class Codec(abc.ABC):
    """One slurmrestd API version: its paths, its request body, its response shapes."""

    version: ClassVar[str]
    ping_path: ClassVar[str]
    diag_path: ClassVar[str]
    submit_path: ClassVar[str]
    jobs_path: ClassVar[str]
    nodes_path: ClassVar[str]
    partitions_path: ClassVar[str]
    # Query parameters for the one-call job listing (finished jobs must be included).
    jobs_params: ClassVar[Mapping[str, str]] = {}
    # Where the same daemon may tell the default partition when this version cannot (or None).
    partition_flags_path: ClassVar[str | None] = None

    @abc.abstractmethod
    def job_path(self, job_id: int) -> str:
        """GET (one job) and DELETE (cancel) path."""

    @abc.abstractmethod
    def render_submit(self, spec: JobSpec, script: str, environment: Mapping[str, str]) -> dict[str, Any]:
        """The submit body. ``script`` is already fenced, ``environment`` already complete."""

    @abc.abstractmethod
    def parse_job(self, raw: Json) -> JobRecord:
        """One entry of a ``jobs`` array."""

    @abc.abstractmethod
    def parse_nodes(self, body: Json) -> list[NodeInfo]:
        """A nodes response."""

    @abc.abstractmethod
    def parse_partitions(self, body: Json, nodes: Sequence[NodeInfo]) -> list[PartitionInfo]:
        """A partitions response; ``nodes`` supply membership and GPU totals."""

    @abc.abstractmethod
    def release(self, body: Json) -> str | None:
        """The Slurm release from a response's ``meta``."""

    def parse_jobs(self, body: Json) -> list[JobRecord]:
        raw = body.get("jobs")
        if not isinstance(raw, list):
            return []
        return [self.parse_job(job) for job in raw if isinstance(job, Mapping)]

    def parse_submit(self, body: Json) -> int | None:
        """The new job id, or None when the response carries none."""
        job_id = _as_int(body.get("job_id"))
        return job_id if job_id and job_id > 0 else None

    def signal_errors(self, body: Json) -> list[SlurmMessage]:
        """Per-job failures a cancel reports outside ``errors`` (v0.0.42's ``status`` array)."""
        return []
