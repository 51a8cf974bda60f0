"""Builders shared by the agent link's database tests: a registry of agent Factories, hellos and beats."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from broker.factories.registry import FactoryRegistry, parse_factories
from slurm_adapters.agent_protocol import FEATURES, Heartbeat, Hello
from tests.db.helpers import T0


def agent_factory(factory_id: str, *, kind: str = "agent") -> dict[str, Any]:
    adapter: dict[str, Any] = {"kind": "agent", "cluster": factory_id}
    if kind == "cli":
        adapter = {"kind": "cli", "cluster": factory_id, "slurm_conf": "/etc/slurm/slurm.conf"}
    return {
        "id": factory_id,
        "name": f"Test {factory_id}",
        "country": "IT",
        "site": "tests",
        "adapter": adapter,
        "mapping": {"default_user": "alice"},
        "job_root": f"/scratch/{factory_id}",
        "clock_skew_s": 3.0,
        "partitions": [
            {"name": "cpu", "max_time_min": 60, "default_time_min": 10, "nodes": 2, "cpus_per_node": 8,
             "memory_mb_per_node": 16000, "default": True}
        ],
    }  # fmt: skip


def agent_registry() -> FactoryRegistry:
    """alpha and bravo are reached through agents; charlie directly (cli)."""
    return parse_factories(
        {"factories": [agent_factory("alpha"), agent_factory("bravo"), agent_factory("charlie", kind="cli")]}
    )


def hello(agent_time: datetime = T0, version: str = "1.0.0") -> Hello:
    return Hello(agent_version=version, adapter="rest", slurm_release="24.11.1", features=list(FEATURES),
                 agent_time=agent_time)  # fmt: skip


def beat(agent_time: datetime = T0, *, paused: bool = False) -> Heartbeat:
    return Heartbeat(agent_time=agent_time, paused=paused)
