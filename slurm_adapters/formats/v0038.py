"""``openapi/v0.0.38``: Slurm 22.05's JSON, as slurmrestd serves it under ``/slurm/v0.0.38`` and as
``squeue --json`` and ``sinfo --json`` print it.

Wire facts (measured on 22.05.8 and read from its plugin source):

* ``job_state`` is one string; ``exit_code`` is the raw ``wait()`` status; numbers are plain, unset ones
  ``null`` or 0, and -1 stands for INFINITE in limits;
* ``standard_output`` comes back unexpanded (``%j``) and empty when the job took sbatch's default;
* nodes have a lower-case ``state`` and a ``state_flags`` list;
* partitions report ``max_time_limit`` -1 for INFINITE and a ``flags`` list with "default"; some 22.05
  sources write DefMemPerCPU into ``default_time_limit``, but 22.05.8 reports DefaultTime there (measured);
* the release is in ``meta.Slurm.release`` (capital S).
"""

from __future__ import annotations

from collections.abc import Sequence

from slurm_adapters.convert import split_wait_status
from slurm_adapters.formats import common
from slurm_adapters.formats.common import Json
from slurm_adapters.records import JobRecord, NodeInfo, PartitionInfo, SlurmJobState

__all__ = ["parse_accounted_jobs", "parse_job", "parse_jobs", "parse_nodes", "parse_partitions", "release"]

# Nodes, and slurmdbd's job records, are the same in every format.
parse_nodes = common.parse_nodes
parse_accounted_jobs = common.parse_accounted_jobs


def parse_job(raw: Json) -> JobRecord:
    """One entry of a ``jobs`` array."""
    raw_state = str(raw.get("job_state") or "")
    return common.job_record(
        raw,
        raw_state=raw_state,
        state=SlurmJobState.parse(raw_state or None),
        exit_status=split_wait_status(common.number(raw.get("exit_code"))),
    )


def parse_jobs(body: Json) -> list[JobRecord]:
    """Every job of a ``jobs`` array."""
    return common.parse_each(body, "jobs", parse_job, named_by="job_id")


def parse_partitions(body: Json, nodes: Sequence[NodeInfo]) -> list[PartitionInfo]:
    """A ``partitions`` array; ``nodes`` supply membership and GPU totals."""

    def partition(raw: Json) -> PartitionInfo:
        return common.partition_info(
            str(raw["name"]),
            nodes,
            default=common.flagged_default(raw),
            state=str(raw.get("state") or "UNKNOWN").upper(),
            max_time_min=common.number(raw.get("max_time_limit")),
            default_time_min=common.number(raw.get("default_time_limit")),
            total_cpus=common.number(raw.get("total_cpus")) or 0,
        )

    return common.parse_each(body, "partitions", partition, named_by="name")


def release(body: Json) -> str | None:
    """The Slurm release from an answer's ``meta``."""
    return common.release_in(body.get("meta"), "Slurm")
