"""Enter a lab root (the sid tree) through a private mount namespace and pivot_root instead of chroot.

A process whose root was set with chroot(2) may not create user namespaces (the kernel refuses them: unprivileged
Apptainer cannot start a container there). The same tree made the root of a private mount namespace with
pivot_root(2) can. :func:`enter_root_argv` returns the command that does it and then execs ``argv`` inside:

1. ``unshare --mount --propagation private``: a mount namespace of its own; nothing it mounts leaks out, and
   everything it mounted goes when its last process ends;
2. the root bind-mounted (recursively, so its /proc and /dev come along) onto itself: pivot_root needs a mount;
3. the repository bind-mounted read-only at ``/src`` (the code the lab runs there, never a copy);
4. ``pivot_root`` into the tree, the old root unmounted (lazily): the host's files are out of reach;
5. ``exec argv`` with the caller's environment. The PID the caller holds is argv's own (each step execs).

Only util-linux (unshare, mount, pivot_root, umount) and /bin/sh are used, all present on Debian 12 and 13 hosts
and in the sid tree.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dev.lab.chroot_run import INSIDE_REPO, REPO

OLD_ROOT = ".pivot-old"  # inside the root: where pivot_root puts the host's tree until it is unmounted

_ENTER = f"""set -eu
root=$1; repo=$2; inside_repo=$3; shift 3
mount --rbind "$root" "$root"
mount --bind "$repo" "$root$inside_repo"
mount -o remount,ro,bind "$root$inside_repo"
cd "$root"
pivot_root . "$root/{OLD_ROOT}"
cd /
umount -l "/{OLD_ROOT}"
exec "$@"
"""


def enter_root_argv(root: Path, argv: Sequence[str], repo: Path = REPO) -> list[str]:
    """The command that runs ``argv`` with ``root`` as its root (pivot_root in a private mount namespace) and
    ``repo`` read-only at /src. Makes the two mount points in the tree if missing (as root, on the host)."""
    for directory in (root / OLD_ROOT, root / INSIDE_REPO.lstrip("/")):
        directory.mkdir(mode=0o755, exist_ok=True)
    return [
        "unshare", "--mount", "--propagation", "private",
        "/bin/sh", "-c", _ENTER, "enter-root", str(root), str(repo), INSIDE_REPO, *argv,
    ]  # fmt: skip


def inside_path(root: Path, host_path: Path) -> str:
    """Where a file under ``root`` (a host path) is seen from inside the root."""
    return "/" + str(host_path.relative_to(root))
