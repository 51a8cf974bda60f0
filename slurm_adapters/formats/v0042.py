"""``data_parser/v0.0.42`` and its successors: Slurm 24.11 and 26.05's JSON, as slurmrestd serves it
under ``/slurm/v0.0.42`` and as ``scontrol ... --json`` and ``squeue --json`` print it (v0.0.42 on 24.11,
v0.0.45 on 26.05: the same shapes for everything read here).

Wire facts (measured on 24.11.5 and 26.05.5):

* numbers are wrapped as ``{"set", "infinite", "number"}`` (see :func:`wrapped` for the way back);
* ``job_state`` is a list of flags (a COMPLETING flag wins, as in scontrol and in 22.05's one-string state);
  ``exit_code`` is ``{"status", "return_code", "signal": {"id", "name"}}``;
* slurmrestd's v0.0.42 expands output paths, 26.05's ``--json`` (v0.0.45) leaves ``%j`` in them;
* nodes have a ``state`` list of upper-case words and no ``state_flags``;
* partitions nest their limits (``maximums.time``, ``defaults.time``, ``cpus.total``, ``partition.state``)
  and carry no "default" flag in v0.0.42 (v0.0.45's ``flags`` do, see
  :func:`slurm_adapters.formats.common.default_partition_names`);
* the release is in ``meta.slurm.release``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from slurm_adapters.formats import common
from slurm_adapters.formats.common import Json
from slurm_adapters.records import JobRecord, NodeInfo, PartitionInfo, SlurmJobState

__all__ = [
    "exit_status",
    "parse_accounted_jobs",
    "parse_job",
    "parse_jobs",
    "parse_nodes",
    "parse_partitions",
    "release",
    "wrapped",
]

# Nodes, and slurmdbd's job records, are the same in every format.
parse_nodes = common.parse_nodes
parse_accounted_jobs = common.parse_accounted_jobs


def wrapped(value: int) -> dict[str, Any]:
    """An int in the no-value struct that :func:`~slurm_adapters.formats.common.number` unwraps, as request
    schemas declare it."""
    return {"set": True, "infinite": False, "number": value}


def exit_status(raw: Any) -> tuple[int | None, int | None]:
    """``exit_code`` as (exit code, signal); (None, None) when Slurm has none."""
    if not isinstance(raw, Mapping):
        return None, None
    code = common.number(raw.get("return_code"))
    signal_raw = raw.get("signal")
    signal = common.number(signal_raw.get("id")) if isinstance(signal_raw, Mapping) else None
    if code is None and signal is None:
        return None, None
    return code or 0, signal or 0


def parse_job(raw: Json) -> JobRecord:
    """One entry of a ``jobs`` array."""
    flags = list(common.words(raw.get("job_state")))
    # ["CANCELLED", "COMPLETING"]: as scontrol and 22.05 say, the job is still COMPLETING; its exit
    # code is not final until the flag clears (measured: 0:0 while completing, then 0:15).
    return common.job_record(
        raw,
        raw_state=",".join(flags),
        state=SlurmJobState.parse(flags or None),
        exit_status=exit_status(raw.get("exit_code")),
    )


def parse_jobs(body: Json) -> list[JobRecord]:
    """Every job of a ``jobs`` array."""
    return common.parse_each(body, "jobs", parse_job, named_by="job_id")


def _mapping(raw: Json, key: str) -> Json:
    value = raw.get(key)
    return value if isinstance(value, Mapping) else {}


def parse_partitions(body: Json, nodes: Sequence[NodeInfo]) -> list[PartitionInfo]:
    """A ``partitions`` array; ``nodes`` supply membership and GPU totals. ``default`` is None: v0.0.42
    cannot tell."""

    def partition(raw: Json) -> PartitionInfo:
        return common.partition_info(
            str(raw["name"]),
            nodes,
            default=None,
            state="+".join(common.words(_mapping(raw, "partition").get("state"))) or "UNKNOWN",
            max_time_min=common.number(_mapping(raw, "maximums").get("time")),
            default_time_min=common.number(_mapping(raw, "defaults").get("time")),
            total_cpus=common.number(_mapping(raw, "cpus").get("total")) or 0,
        )

    return common.parse_each(body, "partitions", partition, named_by="name")


def release(body: Json) -> str | None:
    """The Slurm release from an answer's ``meta``."""
    return common.release_in(body.get("meta"), "slurm")
