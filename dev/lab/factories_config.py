"""The broker's Factory config for the running lab: every lab cluster becomes a Factory.

Written as JSON (valid YAML, so the broker reads it like any hand-written factories.yaml) from lab.json
alone. Each Factory is reached through slurmrestd (the broker's default adapter; pyslurm cannot run on the
host), configured by the same :func:`dev.lab.view.adapter_config` the tests use, and maps jobs to the lab's
submit user ``alice`` and the first Slurm account of clusters that enforce accounts; jobs without a working
directory run in the cluster's scratch directory (its path inside the cluster), and jobs may work there or
in the site user's home (``working_roots``). The cluster whose root has Apptainer runs containers from the
lab's images (:func:`containers`). Each adapter declares the lab's
submit users as ``allowed_users``, the names a rest adapter may submit as even where it resolves no uid.

``python3 -m dev.lab.factories_config`` writes it next to lab.json.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path, PurePosixPath
from typing import Any

from dev.lab import images
from dev.lab.view import SUBMIT_USER, Cluster, adapter_config, lab_json_path, read_lab
from slurm_adapters.factory import config_to_dict

FILE_NAME = "factories.yaml"

# The broker and the lab share this host's clock; Slurm's times are whole seconds.
CLOCK_SKEW_S = 1.0


def _partition(partition: dict[str, Any], nodes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One partition with per-node facts that hold for EVERY node in it (the smallest, if they differ)."""
    members = [nodes[name] for name in partition["nodes"]]
    gpu_types = {gpu_type for node in members for gpu_type in node["gpus"]}
    gpus_per_node = {gpu_type: min(node["gpus"].get(gpu_type, 0) for node in members) for gpu_type in gpu_types}
    return {
        "name": partition["name"],
        "default": bool(partition["default"]),
        "max_time_min": partition["max_time_min"],
        "default_time_min": partition["default_time_min"],
        "nodes": len(members),
        "cpus_per_node": min(node["cpus"] for node in members),
        "memory_mb_per_node": min(node["memory_mb"] for node in members),
        "gpus_per_node": {gpu_type: count for gpu_type, count in sorted(gpus_per_node.items()) if count > 0},
    }


def allowed_users(lab_doc: dict[str, Any]) -> str:
    """The lab's submit users as a full-match pattern (``alice|bob``)."""
    return "|".join(re.escape(user) for user in sorted(lab_doc.get("submit_users") or [SUBMIT_USER]))


def working_roots(cluster: Cluster) -> list[str]:
    """Where the lab's jobs may work: the cluster's scratch directory (every test job's directory is below it)
    and the site user's home."""
    return [cluster.raw["scratch_dir"], "/home/{user}"]


def containers(cluster: Cluster) -> dict[str, Any] | None:
    """The container runtime of a cluster whose root has Apptainer: the lab's images, a clean environment, and
    the directory of the fake GPU device files bound in (at a site, ``--nv`` binds the real ones)."""
    if cluster.raw.get("suite") != images.APPTAINER_SUITE:
        return None
    return {
        "runtime": "apptainer",
        "images": [f"{PurePosixPath(images.TEST_IMAGE).parent}/*"],
        "containall": True,
        "binds": [f"{cluster.raw['cluster_dir']}/dev"],
    }


def factory_entry(cluster: Cluster, users: str) -> dict[str, Any]:
    """One lab cluster as a Factory of the broker's config; ``users``: the pattern of who jobs may run as."""
    raw = cluster.raw
    nodes = {node["name"]: node for node in raw["nodes"]}
    accounts = raw.get("accounts") or []
    return {
        "id": cluster.name,
        "name": f"Lab cluster {cluster.name} (Slurm {cluster.release})",
        "country": raw["country"],
        "site": "Conveyor lab, 127.0.0.1",
        "adapter": {**config_to_dict(adapter_config("rest", cluster)), "allowed_users": users},
        "mapping": {"default_user": SUBMIT_USER, "default_account": accounts[0] if accounts else None},
        "enforce_part_limits": raw["enforce_part_limits"],
        "job_root": raw["scratch_dir"],
        "working_roots": working_roots(cluster),
        "accounting": bool(raw["accounting"]),
        "min_job_age_s": int(raw["min_job_age_s"]),
        "message_timeout_s": float(raw["message_timeout_s"]),
        "clock_skew_s": CLOCK_SKEW_S,
        "partitions": [_partition(partition, nodes) for partition in raw["partitions"]],
        **({"containers": runtime} if (runtime := containers(cluster)) is not None else {}),
    }


def factories_document(lab_doc: dict[str, Any]) -> dict[str, Any]:
    users = allowed_users(lab_doc)
    return {"factories": [factory_entry(Cluster(entry), users) for entry in lab_doc["clusters"].values()]}


def write_factories(lab_doc: dict[str, Any], path: Path) -> Path:
    """Write the Factory config for ``lab_doc`` to ``path`` atomically (key paths only, never keys)."""
    text = json.dumps(factories_document(lab_doc), indent=2) + "\n"
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    partial.chmod(0o644)
    os.replace(partial, path)
    return path


def main() -> int:
    lab_json = lab_json_path()
    path = write_factories(read_lab(lab_json), lab_json.with_name(FILE_NAME))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
