"""Running Slurm's tools inside a lab cluster's filesystem, with a clean environment.

These take plain values (argv prefix, config path) rather than a layout, so tests that only hold a lab.json
entry, even from inside a chroot, can use them too.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from dev.lab import procs
from dev.lab.layout import ClusterLayout
from slurm_adapters.convert import parse_key_values

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


@dataclass(frozen=True)
class Slurmd:
    """One node's slurmd: its node name, where the lab records its PID, and its output file (host paths)."""

    node: str
    pid_file: Path
    log: Path


def launch_slurmds(exec_prefix: Sequence[str], slurm_conf: str | Path, slurmds: Sequence[Slurmd]) -> float:
    """Start every node's slurmd; returns the time just before, for :func:`nodes_registered_since`."""
    started = time.time()
    for slurmd in slurmds:
        argv = [*exec_prefix, "slurmd", "-D", "-N", slurmd.node, "-f", str(slurm_conf)]
        procs.spawn(slurmd.pid_file, argv, slurmd.log, slurm_env(slurm_conf))
    return started


def nodes_registered_since(exec_prefix: Sequence[str], slurm_conf: str | Path, nodes: int, since: float) -> bool:
    """Every one of ``nodes`` nodes registered after ``since`` and responds: sinfo's "idle" can come from saved
    state."""
    result = run_slurm(exec_prefix, slurm_conf, ["scontrol", "show", "node", "-o"])
    if result.returncode != 0:
        return False
    seen = 0
    for line in result.stdout.splitlines():
        fields = parse_key_values(line)
        stamp = fields.get("SlurmdStartTime", "None")
        if stamp in {"None", "Unknown", ""}:
            return False
        started = datetime.fromisoformat(stamp).replace(tzinfo=UTC).timestamp()
        if started < since - 1:  # SlurmdStartTime has whole seconds
            return False
        if "NOT_RESPONDING" in fields.get("State", "") or "*" in fields.get("State", ""):
            return False
        seen += 1
    return seen == nodes


def restart_ctld(
    exec_prefix: Sequence[str], slurm_conf: str | Path, pid_file: Path, log: Path, slurmds: Sequence[Slurmd]
) -> None:
    """slurmctld again on its saved state, with every slurmd started afresh; back when every node registered.

    A slurmd remembers the ids of the batch jobs it launched until slurmctld says they ended. A slurmctld that
    died (SIGKILL) saves its state asynchronously, so it may come back from state older than its last launches
    and hand those ids out again: the old slurmd would refuse them ("Job N already running, do not launch
    second copy") and slurmctld drain its node ("Duplicate jobid"). So each slurmd is ended first (by PID; the
    jobs' slurmstepds outlive it and keep running) and started again once slurmctld answers: the new one
    remembers nothing and reports the jobs still running, which slurmctld keeps or ends as its state says.
    """
    for slurmd in slurmds:
        procs.kill(slurmd.pid_file)
    launch_ctld(exec_prefix, slurm_conf, pid_file, log, fresh=False)
    since = launch_slurmds(exec_prefix, slurm_conf, slurmds)
    if not procs.wait_for(
        lambda: nodes_registered_since(exec_prefix, slurm_conf, len(slurmds), since), READY_TIMEOUT_S
    ):
        raise SystemExit(f"not every slurmd registered with the restarted slurmctld ({slurm_conf}); see {log.parent}")
