"""Run a lab process (the quickstart's broker) as root that cannot open anything under some directories.

The quickstart's broker reaches charlie and delta only through their agents; this makes it unable to do
otherwise. :func:`confined_argv` returns the command that, in a private mount namespace, mounts an empty
read-only tmpfs over each directory and then execs ``argv`` without the capabilities that would undo or go
around that: CAP_SYS_ADMIN (unmount, mount), CAP_SYS_PTRACE (another process's root through /proc/PID/root),
CAP_DAC_READ_SEARCH (open_by_handle_at), dropped from the bounding set so no child regains them. Each step
execs, so the PID the caller holds is argv's own. A production broker runs as a user of its own instead; this is
the lab's way to show the separation while the broker still reads the direct clusters' keys as root.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dev.lab.view import Cluster

DROPPED = ("sys_admin", "sys_ptrace", "dac_read_search")

_CONFINE = """set -eu
count=$1; shift
while [ "$count" -gt 0 ]; do
    mount -t tmpfs -o ro,mode=000,size=4k conveyor-hidden "$1"
    shift; count=$((count - 1))
done
exec setpriv --inh-caps={drop} --bounding-set={drop} -- "$@"
""".replace("{drop}", ",".join(f"-{cap}" for cap in DROPPED))


def confined_argv(hidden: Sequence[Path], argv: Sequence[str]) -> list[str]:
    """The command that runs ``argv`` unable to open anything under the ``hidden`` directories."""
    return [
        "unshare", "--mount", "--propagation", "private",
        "/bin/sh", "-c", _CONFINE, "confine", str(len(hidden)), *map(str, hidden), *argv,
    ]  # fmt: skip


def private_dirs(cluster: Cluster) -> list[Path]:
    """What the site keeps to itself, as the host sees it: the whole root of a chroot cluster (its Slurm, keys,
    homes and scratch), else the cluster's own directory."""
    if cluster.raw.get("chroot"):
        return [Path(cluster.raw["chroot"])]
    return [cluster.host_path(cluster.raw["cluster_dir"])]
