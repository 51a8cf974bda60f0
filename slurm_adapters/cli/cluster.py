"""Partitions from ``scontrol show partition -o`` (every release).

Nodes come as JSON (22.05 ``sinfo --json``, 23.02+ ``scontrol show node --json``), read by the release's
record format (:func:`slurm_adapters.formats.common.parse_nodes`); partition membership and GPU totals come
from the nodes' side (:func:`slurm_adapters.formats.common.partition_info`).
"""

from __future__ import annotations

from collections.abc import Iterable

from slurm_adapters.base import NodeInfo, PartitionInfo
from slurm_adapters.convert import parse_duration_min, parse_key_values
from slurm_adapters.formats.common import partition_info


def partitions_from_key_values(output: str, nodes: Iterable[NodeInfo]) -> list[PartitionInfo]:
    """Every line of ``scontrol show partition -o``; ``nodes`` give membership and GPU totals."""
    nodes = list(nodes)
    partitions: list[PartitionInfo] = []
    for line in output.splitlines():
        kv = parse_key_values(line.strip())
        name = kv.get("PartitionName")
        if not name:
            continue
        total_cpus = kv.get("TotalCPUs", "")
        partitions.append(
            partition_info(
                name,
                nodes,
                default=kv.get("Default", "NO").upper() == "YES",
                state=kv.get("State", "UNKNOWN").upper(),
                max_time_min=parse_duration_min(kv.get("MaxTime")),
                default_time_min=parse_duration_min(kv.get("DefaultTime")),
                total_cpus=int(total_cpus) if total_cpus.isdigit() else None,
            )
        )
    return partitions
