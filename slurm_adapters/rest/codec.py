"""What every slurmrestd API version has in common, and the shape each version's codec fills in.

A codec knows one version's paths, request bodies and answers to requests; the records in its answers
(jobs, nodes, partitions) are read by its :attr:`Codec.records`, the format module that the CLI adapter
uses for the same release's ``--json`` output. A codec never does I/O. The client picks one codec at first
use and stays version-agnostic: it sends what the codec renders and reads what comes back with the codec.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any, ClassVar

from slurm_adapters.formats import RecordFormat
from slurm_adapters.formats.common import Json, SlurmMessage, int_or_none
from slurm_adapters.records import SlurmJobSpec


class Codec(abc.ABC):
    """One slurmrestd API version: its paths, its request body, its response shapes."""

    version: ClassVar[str]
    prefix: ClassVar[str]  # where this version's paths start
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
    # slurmdbd's routes (``/slurmdb/...``), where the daemon serves them; None: not supported here.
    accounting_prefix: ClassVar[str | None] = None
    # The jobs, nodes and partitions in this version's answers.
    records: ClassVar[RecordFormat]
    # The oldest Slurm release that serves this version: whose sbatch the job's environment is made like.
    sbatch_release: ClassVar[tuple[int, int]]

    def job_path(self, job_id: int) -> str:
        """GET (one job) and DELETE (cancel) path."""
        return f"{self.prefix}/job/{int(job_id)}"

    @abc.abstractmethod
    def render_submit(self, spec: SlurmJobSpec, script: str, environment: Mapping[str, str]) -> dict[str, Any]:
        """The submit body. ``script`` is already fenced, ``environment`` already complete."""

    @staticmethod
    def job_fields(spec: SlurmJobSpec, **version_fields: Any) -> dict[str, Any]:
        """The submit body's ``job``: the fields every version names and writes alike, then ``version_fields``;
        unset options are left out, for Slurm's defaults."""
        fields: dict[str, Any] = {
            "name": spec.name,
            "comment": spec.tag,
            "current_working_directory": spec.working_directory,
            "tasks": spec.tasks,
            "tasks_per_node": spec.tasks_per_node,
            "cpus_per_task": spec.cpus_per_task,
            "standard_output": spec.stdout,
            "standard_error": spec.stderr,
            "partition": spec.partition,
            "account": spec.account,
            "qos": spec.qos,
            "requeue": spec.requeue,
            **version_fields,
        }
        return {key: value for key, value in fields.items() if value is not None}

    def parse_submit(self, body: Json) -> int | None:
        """The new job id, or None when the response carries none."""
        job_id = int_or_none(body.get("job_id"))
        return job_id if job_id and job_id > 0 else None

    def signal_errors(self, body: Json) -> list[SlurmMessage]:
        """Per-job failures a cancel reports outside ``errors`` (v0.0.42's ``status`` array)."""
        return []
