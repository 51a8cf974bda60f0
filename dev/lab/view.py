"""The running lab as code sees it: lab.json entries, adapters built from them, and Slurm seen directly.

Tests and benchmarks share this. The direct view (``scontrol show job -o`` run by the caller itself) is
what proves that a field reached Slurm: an adapter must never be checked only through its own eyes.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dev.lab import procs
from dev.lab.commands import Slurmd, restart_ctld, run_slurm
from slurm_adapters.convert import parse_key_values
from slurm_adapters.factory import AdapterConfig, CliConfig, PyslurmConfig, RestConfig, build_adapter
from slurm_adapters.interface import SlurmAdapter
from slurm_adapters.records import JobRecord, SlurmJobState
from slurm_adapters.safety import SitePolicy, passwd_lookup

DEFAULT_LAB_JSON = Path(os.environ.get("CONVEYOR_LAB_DIR", "/var/lib/conveyor-lab")) / "lab.json"
SUBMIT_USER = "alice"


def lab_json_path() -> Path:
    """lab.json as seen from here: ``CONVEYOR_LAB_JSON`` (the in-chroot view) or the lab root's."""
    return Path(os.environ.get("CONVEYOR_LAB_JSON", str(DEFAULT_LAB_JSON)))


def read_lab(path: Path | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((path or lab_json_path()).read_text())
    return doc


@dataclass(frozen=True)
class Cluster:
    """One lab.json cluster entry, with the few derived facts tests need."""

    raw: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.raw["name"])

    @property
    def release(self) -> str:
        return str(self.raw["release"])

    @property
    def short_release(self) -> str:
        return ".".join(self.release.split(".")[:2])

    @property
    def exec_prefix(self) -> list[str]:
        return list(self.raw["exec_prefix"])

    @property
    def slurm_conf(self) -> str:
        return str(self.raw["slurm_conf"])

    @property
    def fs_root(self) -> Path:
        return Path(self.raw["fs_root"])

    def host_path(self, inside: str | Path) -> Path:
        return self.fs_root / str(inside).lstrip("/")

    @property
    def enforces_part_limits(self) -> bool:
        return bool(self.raw["enforce_part_limits"] == "ALL")

    def partition(self, name: str) -> dict[str, Any]:
        for part in self.raw["partitions"]:
            if part["name"] == name:
                return dict(part)
        raise KeyError(name)

    @property
    def gpu_partition(self) -> dict[str, Any] | None:
        return next((p for p in self.raw["partitions"] if p["gpus"]), None)

    @property
    def cpu_partition(self) -> dict[str, Any]:
        return next(p for p in self.raw["partitions"] if not p["gpus"])

    def policy(self) -> SitePolicy:
        return SitePolicy(
            slurm_user=self.raw["slurm_user"],
            lookup=passwd_lookup(self.fs_root),
            login_defs=self.fs_root / "etc/login.defs",
        )

    def slurm(self, *argv: str, timeout_s: float = 15.0) -> str:
        """Run a Slurm command in the cluster's filesystem (the test's own path to Slurm); return stdout."""
        result = run_slurm(self.exec_prefix, self.slurm_conf, argv, timeout_s)
        if result.returncode != 0:
            raise AssertionError(f"{argv} failed on {self.name}: {result.stderr.strip()}")
        return result.stdout

    def show_job(self, job_id: int) -> dict[str, str]:
        """``scontrol show job -o`` as root: the independent read-back."""
        return parse_key_values(self.slurm("scontrol", "show", "job", "-o", str(job_id)).strip())

    def kill_ctld(self) -> int | None:
        return procs.kill(Path(self.host_path_of_pid_file()))

    def start_ctld(self) -> None:
        """slurmctld back on its saved state, with fresh slurmds (see :func:`dev.lab.commands.restart_ctld`)."""
        log = self.host_path(f"{self.raw['cluster_dir']}/log/slurmctld.out")
        restart_ctld(self.exec_prefix, self.slurm_conf, self.host_path_of_pid_file(), log, self.slurmds())

    def slurmds(self) -> list[Slurmd]:
        """Each node's slurmd as the lab records it: PID files beside slurmctld's, output in the cluster's log."""
        pid_dir = self.host_path_of_pid_file().parent
        log_dir = self.host_path(f"{self.raw['cluster_dir']}/log")
        return [
            Slurmd(
                node["name"], pid_dir / f"{self.name}-slurmd-{node['name']}.pid", log_dir / f"slurmd-{node['name']}.out"
            )
            for node in self.raw["nodes"]
        ]

    def host_path_of_pid_file(self) -> Path:
        # lab.json already gives pid files as seen from wherever that lab.json is read.
        return Path(self.raw["slurmctld"]["pid_file"])


def clusters_of(doc: dict[str, Any]) -> list[Cluster]:
    return [Cluster(entry) for entry in doc["clusters"].values()]


def new_tag(label: str = "t") -> str:
    return f"cvy-test-{label}-{uuid.uuid4().hex[:12]}"


def job_dir(cluster: Cluster, tag: str) -> str:
    """A fresh working directory for one test job, writable by the submit user; returns the inside path."""
    inside = f"{cluster.raw['scratch_dir']}/{tag}"
    host = cluster.host_path(inside)
    host.mkdir(parents=True, exist_ok=True)
    host.chmod(0o777)
    return inside


def adapter_config(kind: str, cluster: Cluster) -> AdapterConfig:
    """The config of the adapter of ``kind`` for one lab cluster, taken only from lab.json.

    Users are resolved from the cluster's own passwd file (the lab can read every cluster's filesystem).
    """
    raw = cluster.raw
    name, slurm_user, fs_root = cluster.name, str(raw["slurm_user"]), str(cluster.fs_root)
    if kind == "rest":
        return RestConfig(
            cluster=name,
            url=raw["rest"]["url"],
            jwt_key_file=raw["jwt_key_file"],
            operator_user=raw["operator_user"],
            slurm_user=slurm_user,
            fs_root=fs_root,
            user_lookup="passwd",
        )
    if kind == "cli":
        return CliConfig(
            cluster=name,
            slurm_conf=cluster.slurm_conf,
            exec_prefix=tuple(cluster.exec_prefix),
            slurm_user=slurm_user,
            fs_root=fs_root,
            user_lookup="passwd",
        )
    if kind == "pyslurm":
        return PyslurmConfig(
            cluster=name, slurm_conf=cluster.slurm_conf, slurm_user=slurm_user, fs_root=fs_root, user_lookup="passwd"
        )
    raise ValueError(f"unknown adapter kind {kind!r}")


def make_adapter(kind: str, cluster: Cluster) -> SlurmAdapter:
    """The adapter of ``kind`` for one lab cluster, built the way the broker builds its adapters."""
    return build_adapter(adapter_config(kind, cluster))


async def wait_for_job(
    adapter: SlurmAdapter,
    job_id: int,
    states: Collection[SlurmJobState],
    timeout_s: float = 60.0,
) -> JobRecord:
    """Poll the adapter until the job reaches one of ``states`` (or any terminal state); no fixed sleeps."""
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    while True:
        record = await adapter.get_job(job_id)
        if record.state in states or record.state.is_terminal:
            return record
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {record.state} ({record.reason}) after {timeout_s} s")
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 0.5)
