"""Running Slurm's client tools inside a lab cluster's filesystem, with a clean environment."""

from __future__ import annotations

import subprocess
from pathlib import Path

from dev.lab.layout import ClusterLayout

READY_TIMEOUT_S = 60.0


def passwd_ids(fs_root: Path, user: str) -> tuple[int, int]:
    """uid and gid of ``user`` in the passwd file of a cluster's filesystem (host or chroot)."""
    for line in (fs_root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return int(fields[2]), int(fields[3])
    raise SystemExit(f"user {user!r} is missing from {fs_root}/etc/passwd")


def client_env(site: ClusterLayout) -> dict[str, str]:
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SLURM_CONF": str(site.slurm_conf), "TZ": "UTC"}


def run_in(site: ClusterLayout, argv: list[str], timeout_s: float = 15.0) -> subprocess.CompletedProcess[str]:
    """Run a Slurm client command inside the cluster's filesystem, with a clean environment."""
    return subprocess.run(
        [*site.exec_prefix, *argv],
        env=client_env(site),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def slurm_release(site: ClusterLayout) -> str:
    """The full Slurm version of the cluster's packages, e.g. "22.05.8" (asks dpkg: needs no config)."""
    out = run_in(site, ["dpkg-query", "-W", "-f=${Version}", "slurm-client"]).stdout.strip()
    return out.split(":")[-1].split("-")[0]
