"""The running lab itself: the releases it found, its description, and a teardown and rebuild."""

from __future__ import annotations

import base64
import os
import stat
import time
from pathlib import Path

import pytest

from broker.factories.registry import load_factories
from dev.lab import cluster as lab_cluster
from dev.lab import procs
from dev.lab.factories_config import write_factories
from dev.lab.layout import host_suite, layout
from dev.lab.topology import CLUSTERS
from tests.lab import Cluster, clusters, load_lab, wait_until

pytestmark = pytest.mark.lab


def test_the_lab_has_all_three_slurm_releases_and_pyslurm_on_26_05() -> None:
    releases = {c.short_release for c in clusters()}
    assert releases == {"22.05", "24.11", "26.05"}
    pyslurm = load_lab()["pyslurm"]
    assert pyslurm["status"] in {"built", "cached"}, pyslurm
    assert pyslurm["slurm_release"].startswith("26.05")


def test_every_slurmd_has_registered() -> None:
    for c in clusters():
        lines = c.slurm("scontrol", "show", "node", "-o").strip().splitlines()
        assert len(lines) == len(c.raw["nodes"]), c.name
        for line in lines:
            assert "SlurmdStartTime=None" not in line
            assert "NOT_RESPONDING" not in line, line
            assert "State=DOWN" not in line, line


def test_description_names_key_files_but_holds_no_key() -> None:
    text = Path(os.environ.get("CONVEYOR_LAB_JSON", "/var/lib/conveyor-lab/lab.json")).read_text()
    for c in clusters():
        key_file = Path(c.raw["jwt_key_file"])
        mode = stat.S_IMODE(key_file.stat().st_mode)
        assert mode == 0o600, f"{key_file} is {oct(mode)}"
        key = key_file.read_bytes()
        for encoded in (key.hex(), base64.b64encode(key).decode(), base64.urlsafe_b64encode(key).decode().rstrip("=")):
            assert encoded not in text


def _alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie (this sandbox's PID 1 may be slow to reap orphans)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.exclusive  # stops and rebuilds echo
def test_expendable_cluster_is_torn_down_by_pid_and_rebuilt() -> None:
    site = next(layout(c, host_suite()) for c in CLUSTERS if c.expendable)
    release = next(c.release for c in clusters() if c.name == site.cluster.name)
    pids = [procs.recorded_pid(site.pid_file(d)) for d in lab_cluster.daemon_names(site)]
    assert all(pids), pids
    lab_cluster.stop(site)
    assert all(not _alive(pid) for pid in pids if pid)
    started = time.monotonic()
    lab_cluster.start(site, release)
    assert lab_cluster.is_up(site)
    assert time.monotonic() - started < 60


def message_timeout_s(cluster: Cluster) -> int | None:
    """The MessageTimeout the cluster's running slurmctld uses (``scontrol show config``); None while it is down."""
    try:
        config = cluster.slurm("scontrol", "show", "config")
    except AssertionError:  # no slurmctld to ask
        return None
    for line in config.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "MessageTimeout":
            return int(value.split()[0])
    raise AssertionError(f"{cluster.name}: scontrol show config names no MessageTimeout")


def test_every_slurmctld_runs_the_message_timeout_its_factory_settles_by(tmp_path: Path) -> None:
    """The broker settles an attempt in doubt only after the Factory's message_timeout_s: Slurm must agree."""
    registry = load_factories(write_factories(load_lab(), tmp_path / "factories.yaml"))
    for c in clusters():
        # (a fault test may have echo's slurmctld down right now)
        wait_until(lambda c=c: message_timeout_s(c) is not None, 60, f"{c.name}'s slurmctld to answer")
        assert message_timeout_s(c) == registry[c.name].message_timeout_s == c.raw["message_timeout_s"], c.name
