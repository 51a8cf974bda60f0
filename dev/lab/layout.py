"""Where each cluster's files live, on the host and as its daemons see them.

A host cluster lives in ``$LAB/<name>``. A chroot cluster lives in ``/slurmlab/<name>`` inside its chroot,
i.e. ``$LAB/chroots/<suite>/slurmlab/<name>`` on the host. Every path the daemons read is the inside one;
every file this lab writes goes to the host one.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

from dev.lab.pivot_root import enter_prefix
from dev.lab.topology import Cluster, chroot_suites, cluster_suite

DEFAULT_LAB_ROOT = Path("/var/lib/conveyor-lab")


def lab_root() -> Path:
    return Path(os.environ.get("CONVEYOR_LAB_DIR", str(DEFAULT_LAB_ROOT)))


def host_suite() -> str:
    """bookworm or trixie, from /etc/os-release."""
    info = platform.freedesktop_os_release()
    suite = info.get("VERSION_CODENAME", "")
    if suite not in {"bookworm", "trixie"}:
        raise SystemExit(f"the lab supports Debian 12 (bookworm) and 13 (trixie) hosts, not {suite!r}")
    return suite


def chroot_dir(suite: str) -> Path:
    return lab_root() / "chroots" / suite


@dataclass(frozen=True)
class ClusterLayout:
    cluster: Cluster
    suite: str
    chroot: Path | None  # host path of the chroot, None for a host cluster

    @property
    def fs_root(self) -> Path:
        return self.chroot or Path("/")

    @property
    def inside_dir(self) -> Path:
        """The cluster's directory as its daemons see it."""
        if self.chroot is None:
            return lab_root() / self.cluster.name
        return Path("/slurmlab") / self.cluster.name

    def host(self, inside: Path) -> Path:
        """The host path of a path inside the cluster's filesystem."""
        if self.chroot is None:
            return inside
        return self.chroot / inside.relative_to("/")

    @property
    def host_dir(self) -> Path:
        return self.host(self.inside_dir)

    @property
    def exec_prefix(self) -> list[str]:
        """What runs a command in the cluster's filesystem: nothing on the host; for a chroot cluster the lab's
        ``enter-root`` (pivot_root in a private mount namespace, :mod:`dev.lab.pivot_root`), not chroot."""
        return [] if self.chroot is None else enter_prefix(lab_root(), self.chroot)

    def inside(self, name: str) -> Path:
        return self.inside_dir / name

    @property
    def slurm_conf(self) -> Path:
        return self.inside("slurm.conf")

    @property
    def munge_socket(self) -> Path:
        return self.inside("munge/munge.socket")

    @property
    def jwt_key(self) -> Path:
        return self.inside("jwt_hs256.key")

    @property
    def scratch(self) -> Path:
        return self.inside("scratch")

    def inside_pid_file(self, daemon: str) -> Path:
        """Where the lab records the PID of one of this cluster's daemons, as seen inside its filesystem.

        Inside, so that a test running in the chroot can restart a daemon and the host lab still finds it.
        """
        return self.inside_dir.parent / "run" / f"{self.cluster.name}-{daemon}.pid"

    def pid_file(self, daemon: str) -> Path:
        return self.host(self.inside_pid_file(daemon))


def layout(cluster: Cluster, suite_of_host: str) -> ClusterLayout:
    suite = cluster_suite(cluster, suite_of_host)
    chroot = None if suite == suite_of_host else chroot_dir(suite)
    return ClusterLayout(cluster, suite, chroot)


def all_chroots(suite_of_host: str) -> list[Path]:
    return [chroot_dir(s) for s in chroot_suites(suite_of_host)]
