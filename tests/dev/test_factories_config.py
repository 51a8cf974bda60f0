"""The broker's Factory config written from the live lab: it loads, and real Slurm agrees with every fact in it."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.factories.registry import load_factories
from dev.lab.factories_config import write_factories
from slurm_adapters.factory import build_adapter
from tests.lab import load_lab
from tests.unit.test_factories import assert_matches_lab

pytestmark = pytest.mark.lab


async def test_the_factory_config_of_the_live_lab_matches_what_slurm_reports(tmp_path: Path) -> None:
    lab = load_lab()
    registry = load_factories(write_factories(lab, tmp_path / "factories.yaml"))
    assert_matches_lab(registry, lab)
    for factory in registry:
        if lab["clusters"][factory.id]["expendable"]:
            continue  # fault tests may have its slurmctld down right now
        adapter = build_adapter(factory.adapter)  # exactly as the broker will reach it
        try:
            health = await adapter.health()
            assert health.ok, (factory.id, health.detail)
            info = await adapter.cluster_info()
        finally:
            await adapter.aclose()
        nodes = {node.name: node for node in info.nodes}
        reported = {partition.name: partition for partition in info.partitions}
        assert set(reported) == {partition.name for partition in factory.partitions}, factory.id
        for partition in factory.partitions:
            actual = reported[partition.name]
            assert (actual.max_time_min, actual.default_time_min) == (
                partition.max_time_min,
                partition.default_time_min,
            )
            assert len(actual.nodes) == partition.nodes
            for name in actual.nodes:
                assert nodes[name].cpus >= partition.cpus_per_node, (factory.id, name)
                assert nodes[name].memory_mb >= partition.memory_mb_per_node, (factory.id, name)
                for gpu_type, count in partition.gpus_per_node.items():
                    assert nodes[name].gpus.get(gpu_type, 0) >= count, (factory.id, name)
