"""Nodes from JSON (22.05 ``sinfo --json``, 23.02+ ``scontrol show node --json``) and partitions from
``scontrol show partition -o``.

Both node sources list one object per node with the same keys (``name``, ``cpus``, ``alloc_cpus``,
``real_memory``, ``partitions``, ``gres``, ``gres_used``); only ``state`` differs: a lower-case string plus
``state_flags`` on 22.05, a list of upper-case words on 23.02+. Partition membership and GPU totals come
from the nodes' side, so no hostlist expression (``gn[1-4]``) needs expanding.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from slurm_adapters.base import NodeInfo, PartitionInfo
from slurm_adapters.cli.jobs import number, text
from slurm_adapters.convert import parse_duration_min, parse_gres, parse_key_values


def _words(value: Any) -> list[str]:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, Sequence):
        return [str(item) for item in value if str(item)]
    return []


def node_state(raw: Mapping[str, Any]) -> str:
    """``IDLE``, ``MIXED+DRAIN``, ...: the base state and its flags, upper case, as on every release."""
    words = [word.upper() for word in _words(raw.get("state")) + _words(raw.get("state_flags"))]
    return "+".join(dict.fromkeys(words)) or "UNKNOWN"


def nodes_from_json(body: Mapping[str, Any]) -> list[NodeInfo]:
    nodes: list[NodeInfo] = []
    for raw in body.get("nodes") or ():
        if not isinstance(raw, Mapping) or not text(raw.get("name")):
            continue
        gpus = parse_gres(text(raw.get("gres")))
        # 22.05 reports "gpu:0" as GresUsed of a node without GPUs: not a GPU type of its own.
        used = {kind: n for kind, n in parse_gres(text(raw.get("gres_used"))).items() if n or kind in gpus}
        nodes.append(
            NodeInfo(
                name=str(raw["name"]),
                state=node_state(raw),
                cpus=number(raw.get("cpus")) or 0,
                alloc_cpus=number(raw.get("alloc_cpus")) or 0,
                memory_mb=number(raw.get("real_memory")) or 0,
                partitions=tuple(_words(raw.get("partitions"))),
                gpus=gpus,
                gpus_used=used,
            )
        )
    return nodes


def partitions_from_key_values(output: str, nodes: Iterable[NodeInfo]) -> list[PartitionInfo]:
    """Every line of ``scontrol show partition -o``; ``nodes`` give membership and GPU totals."""
    nodes = list(nodes)
    partitions: list[PartitionInfo] = []
    for line in output.splitlines():
        kv = parse_key_values(line.strip())
        name = kv.get("PartitionName")
        if not name:
            continue
        members = [node for node in nodes if name in node.partitions]
        gpus: dict[str, int] = {}
        for node in members:
            for gpu_type, count in node.gpus.items():
                gpus[gpu_type] = gpus.get(gpu_type, 0) + count
        total_cpus = kv.get("TotalCPUs", "")
        partitions.append(
            PartitionInfo(
                name=name,
                default=kv.get("Default", "NO").upper() == "YES",
                state=kv.get("State", "UNKNOWN").upper(),
                max_time_min=parse_duration_min(kv.get("MaxTime")),
                default_time_min=parse_duration_min(kv.get("DefaultTime")),
                nodes=tuple(node.name for node in members),
                total_cpus=int(total_cpus) if total_cpus.isdigit() else sum(n.cpus for n in members),
                total_gpus=gpus,
            )
        )
    return partitions
