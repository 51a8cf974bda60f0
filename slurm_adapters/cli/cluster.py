"""Partitions from ``scontrol show partition -o`` and controller facts from ``sdiag`` and ``scontrol show config``
(every release).

Nodes come as JSON (22.05 ``sinfo --json``, 23.02+ ``scontrol show node --json``), read by the release's
record format (:func:`slurm_adapters.formats.common.parse_nodes`); partition membership and GPU totals come
from the nodes' side (:func:`slurm_adapters.formats.common.partition_info`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime

from slurm_adapters.convert import from_epoch, parse_duration_min, parse_key_values
from slurm_adapters.formats.common import partition_info
from slurm_adapters.records import NodeInfo, PartitionInfo


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


_DATA_SINCE = re.compile(r"^Data since\s.*\((\d+)\)\s*$", re.MULTILINE)
_DBD_QUEUE = re.compile(r"^DBD Agent queue size:\s*(\d+)\s*$", re.MULTILINE)


def sdiag_facts(output: str) -> tuple[datetime | None, int | None]:
    """From ``sdiag``'s text (the same on 22.05 to 26.05): "Data since ... (epoch)", when slurmctld's
    statistics began (at its start, or at a later reset), and its backlog of messages for slurmdbd."""
    since = _DATA_SINCE.search(output)
    queue = _DBD_QUEUE.search(output)
    return (from_epoch(int(since.group(1))) if since else None, int(queue.group(1)) if queue else None)


_BOOT_TIME = re.compile(r"^BOOT_TIME\s*=\s*(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\s*$", re.MULTILINE)


def boot_time(config_output: str) -> datetime | None:
    """When slurmctld started, from ``scontrol show config`` run with ``TZ=UTC`` (as the runner does).

    Unlike sdiag's "Data since", which Slurm also resets at midnight UTC and on ``sdiag --reset``, this moves
    only when slurmctld restarts (measured on 22.05: unchanged by ``scontrol reconfigure`` and by a reset).
    """
    found = _BOOT_TIME.search(config_output)
    return datetime.fromisoformat(found.group(1)).replace(tzinfo=UTC) if found else None
