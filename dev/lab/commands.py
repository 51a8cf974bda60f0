"""Running Slurm's tools inside a lab cluster's filesystem, with a clean environment.

These take plain values (argv prefix, config path) rather than a layout, so tests that only hold a lab.json
entry, even from inside a chroot, can use them too.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

from dev.lab import procs
from dev.lab.layout import ClusterLayout

READY_TIMEOUT_S = 60.0


def passwd_ids(fs_root: Path, user: str) -> tuple[int, int]:
    """uid and gid of ``user`` in the passwd file of a cluster's filesystem (host or chroot)."""
    for line in (fs_root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return int(fields[2]), int(fields[3])
    raise SystemExit(f"user {user!r} is missing from {fs_root}/etc/passwd")


def slurm_env(slurm_conf: str | Path) -> dict[str, str]:
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SLURM_CONF": str(slurm_conf), "TZ": "UTC"}


def run_slurm(
    exec_prefix: Sequence[str], slurm_conf: str | Path, argv: Sequence[str], timeout_s: float = 15.0
) -> subprocess.CompletedProcess[str]:
    """Run a Slurm client command inside a cluster's filesystem, with a clean environment."""
    return subprocess.run(
        [*exec_prefix, *argv],
        env=slurm_env(slurm_conf),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def client_env(site: ClusterLayout) -> dict[str, str]:
    return slurm_env(site.slurm_conf)


def run_in(site: ClusterLayout, argv: list[str], timeout_s: float = 15.0) -> subprocess.CompletedProcess[str]:
    return run_slurm(site.exec_prefix, site.slurm_conf, argv, timeout_s)


def slurm_release(site: ClusterLayout) -> str:
    """The full Slurm version of the cluster's packages, e.g. "22.05.8" (asks dpkg: needs no config)."""
    out = run_in(site, ["dpkg-query", "-W", "-f=${Version}", "slurm-client"]).stdout.strip()
    return out.split(":")[-1].split("-")[0]


def munged_argv(exec_prefix: Sequence[str], socket: Path, *, num_threads: int | None = None) -> list[str]:
    """munged in the foreground as the munge user, its key, PID, log and seed files beside ``socket``.

    Shared by the lab's own munged and the conformance suite's rogue one, so the two cannot drift apart.
    """
    state = socket.parent
    return [
        *exec_prefix,
        "setpriv", "--reuid=munge", "--regid=munge", "--init-groups",
        "munged", "-F", f"--socket={socket}", f"--key-file={state}/munge.key",
        f"--pid-file={state}/munged.pid", f"--log-file={state}/munged.log", f"--seed-file={state}/munged.seed",
        *([f"--num-threads={num_threads}"] if num_threads is not None else []),
    ]  # fmt: skip


def launch_ctld(exec_prefix: Sequence[str], slurm_conf: str | Path, pid_file: Path, log: Path, *, fresh: bool) -> None:
    """Start slurmctld and wait until it answers ``scontrol ping``; ``fresh`` ignores missing state."""
    argv = [*exec_prefix, "slurmctld", "-D", *(["-i"] if fresh else []), "-f", str(slurm_conf)]
    procs.spawn(pid_file, argv, log, slurm_env(slurm_conf))

    def pinged() -> bool:
        return "is UP" in run_slurm(exec_prefix, slurm_conf, ["scontrol", "ping"]).stdout

    if not procs.wait_ready(pid_file, pinged, READY_TIMEOUT_S):
        raise SystemExit(f"slurmctld ({slurm_conf}) did not answer ping; see {log}")
