"""pytest's side of the lab: fail loudly when it is missing, and wait on conditions, never on sleeps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from dev.lab import procs
from dev.lab.view import (
    SUBMIT_USER,
    Cluster,
    clusters_of,
    job_dir,
    lab_json_path,
    make_adapter,
    new_tag,
    read_lab,
    wait_for_job,
)

__all__ = [
    "SUBMIT_USER",
    "Cluster",
    "clusters",
    "job_dir",
    "load_lab",
    "make_adapter",
    "new_tag",
    "wait_for_job",
    "wait_until",
]


def load_lab() -> dict[str, Any]:
    """The lab description; a missing lab fails loudly (a lab test that skips silently proves nothing)."""
    path = lab_json_path()
    if not path.exists():
        pytest.fail(f"no Slurm lab: {path} is missing. Start it with `python3 -m dev.lab start` (as root).")
    return read_lab(path)


def clusters() -> list[Cluster]:
    return clusters_of(load_lab())


CLI_IN_AGENT_RELEASES = ("22.05", "24.11")  # the releases whose CLI the adapter tests reach through an agent
# An agent kind of the adapter tests -> the adapter inside the agent.
AGENT_INSIDE = {"agent": "rest", "agent-cli": "cli", "agent-pyslurm": "pyslurm"}


def cli_agent_clusters() -> list[Cluster]:
    """The first lab cluster of each release in :data:`CLI_IN_AGENT_RELEASES`: the adapter tests' agents with the
    CLI adapter inside run on these (one per release is enough; every agent costs the suite time)."""
    first: dict[str, Cluster] = {}
    for cluster in clusters():
        if cluster.short_release in CLI_IN_AGENT_RELEASES:
            first.setdefault(cluster.short_release, cluster)
    return list(first.values())


def pyslurm_agent_clusters() -> list[Cluster]:
    """The lab clusters of the root the lab built pyslurm in (delta's sid root): the adapter tests' agents with
    pyslurm inside run there, entered with pivot_root (none if the lab has no pyslurm)."""
    status = load_lab().get("pyslurm", {})
    if status.get("status") not in {"built", "cached"}:
        return []
    return [cluster for cluster in clusters() if cluster.raw.get("chroot") == status["chroot"]]


def kinds_on(kinds: Sequence[str], cluster: Cluster) -> list[str]:
    """The adapter kinds of ``kinds`` the adapter tests run on ``cluster``: ``agent-cli`` and ``agent-pyslurm``
    only where such an agent runs (:func:`cli_agent_clusters`, :func:`pyslurm_agent_clusters`)."""
    where = {
        "agent-cli": {c.name for c in cli_agent_clusters()},
        "agent-pyslurm": {c.name for c in pyslurm_agent_clusters()},
    }
    return [kind for kind in kinds if kind not in where or cluster.name in where[kind]]


def wait_until(condition: Any, timeout_s: float, what: str) -> None:
    """Block until ``condition()`` is truthy; fail with ``what`` after ``timeout_s``."""
    if not procs.wait_for(condition, timeout_s):
        raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
