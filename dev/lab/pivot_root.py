"""Enter a lab root (a chroot cluster's tree) through a private mount namespace and pivot_root, not chroot.

A process whose root was set with chroot(2) may not create user namespaces (the kernel refuses them: unprivileged
Apptainer cannot start a container there). The same tree made the root of a private mount namespace with
pivot_root(2) can. The lab installs one small script, ``$LAB/bin/enter-root`` (:func:`install_enter_script`);
``enter-root [--src DIR] ROOT COMMAND...``:

1. re-executes itself under ``unshare --mount --propagation private``: a mount namespace of its own, so nothing
   it mounts leaks out, and everything it mounted goes when its last process ends;
2. bind-mounts the root (recursively, so its /proc and /dev come along) onto itself: pivot_root needs a mount;
3. with ``--src``, bind-mounts DIR read-only at ``/src`` (the repository, for code the lab runs there);
4. ``pivot_root`` into the tree and unmounts the old root (lazily): the host's files are out of reach;
5. ``exec COMMAND`` with the caller's environment. Every step execs, so the caller's PID is COMMAND's own.

Chroot clusters' daemons and Slurm commands run behind ``[enter-root, ROOT]`` (:func:`enter_prefix`); the lab's
pyslurm agent and the runs of this repository's code in a root (:func:`run_python`: the pyslurm conformance
module, the pyslurm benchmark) behind :func:`enter_root_argv`. A slurmctld such a run restarts stays in the
root's namespace. Only util-linux and /bin/sh are used (Debian 12 and 13 hosts). This module uses the standard
library only: ``python3 -m dev.lab`` runs it with the system Python.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
INSIDE_REPO = "/src"  # where the repository is seen in a root entered with --src
INSIDE_LAB_JSON = "/slurmlab/lab.json"  # a root's own view of the lab (dev/LAB-DESCRIPTION.md)

OLD_ROOT = ".pivot-old"  # inside the root: where pivot_root puts the host's tree until it is unmounted
_NS_MARK = "CONVEYOR_ENTER_ROOT_NS"  # set to the script's PID for its own re-execution under unshare

ENTER_SCRIPT = f"""#!/bin/sh
# enter-root [--src DIR] ROOT COMMAND [ARG...]: COMMAND with ROOT as its root, entered through a private mount
# namespace and pivot_root (DIR read-only at {INSIDE_REPO}). Written by the Conveyor lab (dev/lab/pivot_root.py).
set -eu
if [ "${{{_NS_MARK}:-}}" != "$$" ]; then
    {_NS_MARK}=$$ exec unshare --mount --propagation private "$0" "$@"
fi
unset {_NS_MARK}
src=
if [ "${{1:-}}" = --src ]; then src=$2; shift 2; fi
root=$1; shift
mkdir -p "$root/{OLD_ROOT}"
mount --rbind "$root" "$root"
if [ -n "$src" ]; then
    mkdir -p "$root{INSIDE_REPO}"
    mount --bind "$src" "$root{INSIDE_REPO}"
    mount -o remount,ro,bind "$root{INSIDE_REPO}"
fi
cd "$root"
pivot_root . "{OLD_ROOT}"
cd /
umount -l "/{OLD_ROOT}"
exec "$@"
"""


def enter_script(lab_root: Path) -> Path:
    return lab_root / "bin" / "enter-root"


def install_enter_script(lab_root: Path) -> Path:
    """Write the script (mode 0755) unless it is already there as this checkout would write it."""
    path = enter_script(lab_root)
    if not path.exists() or path.read_text() != ENTER_SCRIPT:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.write_text(ENTER_SCRIPT)
        partial.chmod(0o755)
        os.replace(partial, path)
    return path


def enter_prefix(lab_root: Path, root: Path) -> list[str]:
    """The exec prefix of a command that runs inside ``root``."""
    return [str(enter_script(lab_root)), str(root)]


def enter_root_argv(lab_root: Path, root: Path, argv: Sequence[str], repo: Path = REPO) -> list[str]:
    """The command that runs ``argv`` inside ``root`` with ``repo`` read-only at /src."""
    return [str(install_enter_script(lab_root)), "--src", str(repo), str(root), *argv]


def inside_path(root: Path, host_path: Path) -> str:
    """Where a file under ``root`` (a host path) is seen from inside the root."""
    return "/" + str(host_path.relative_to(root))


def run_python(
    lab_root: Path, root: Path, python: str, args: Sequence[str], *, extra_env: Mapping[str, str], timeout_s: float
) -> subprocess.CompletedProcess[str]:
    """``python args...`` inside ``root`` with the repository on PYTHONPATH and a clean environment; output
    captured."""
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONPATH": INSIDE_REPO,
        "CONVEYOR_LAB_JSON": INSIDE_LAB_JSON,
        **extra_env,
    }
    return subprocess.run(
        enter_root_argv(lab_root, root, [python, *args]),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
        cwd="/",
    )
