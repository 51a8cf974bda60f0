"""Checks every adapter applies before anything reaches Slurm.

A broker that submits on behalf of others is a privilege boundary: it must never submit as root, as
Slurm's own user or as a system account, never let a user set Slurm's own variables, and never let a user
string turn into a batch directive.
"""

from __future__ import annotations

import errno
import os
import posixpath
import pwd
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from slurm_adapters.errors import UnsafeRequest
from slurm_adapters.records import SlurmJobSpec

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RESERVED_ENV_PREFIXES = ("SLURM_", "SBATCH_", "SALLOC_", "SRUN_")
_USER_NAME = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# The environment every job starts from; the spec's variables are laid over it.
BASE_ENVIRONMENT: Mapping[str, str] = {"PATH": "/usr/local/bin:/usr/bin:/bin"}

DEFAULT_SHEBANG = "#!/bin/bash"
# Placed right after the shebang: sbatch stops reading #SBATCH lines at the first command, so nothing the
# user wrote below can act as a directive. The spec, not the script, says what the job gets.
DIRECTIVE_FENCE = ": conveyor - the job spec sets all options; #SBATCH lines below are not read"


def is_user_name(name: str) -> bool:
    """A plausible POSIX account name (what ``check_user`` accepts before any look-up)."""
    return _USER_NAME.match(name) is not None


def local_uid(user: str) -> int | None:
    """The uid of ``user`` on this host, or None where the host does not know it."""
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


def passwd_resolver(fs_root: str | Path) -> Callable[[str], int | None]:
    """Look users up in the passwd file of another filesystem root (a chroot, a mounted login node image)."""
    passwd = Path(fs_root) / "etc/passwd"

    def resolve(user: str) -> int | None:
        for line in passwd.read_text().splitlines():
            fields = line.split(":")
            if len(fields) > 2 and fields[0] == user:
                return int(fields[2])
        return None

    return resolve


@dataclass(frozen=True)
class SitePolicy:
    """Who an adapter may submit as on one cluster.

    ``resolve_uid`` looks a user up where the cluster's accounts are visible (the lab, a login node);
    None where they are not (a remote slurmrestd), in which case only the names are checked and Slurm
    itself refuses users it does not know.
    """

    slurm_user: str = "slurm"
    forbidden_users: frozenset[str] = frozenset()
    min_uid: int = 1000
    resolve_uid: Callable[[str], int | None] | None = field(default=local_uid)

    def check_user(self, user: str, *, cluster: str | None = None) -> None:
        if not is_user_name(user):
            raise UnsafeRequest(f"{user!r} is not a valid site user name", cluster=cluster)
        if user in {"root", self.slurm_user} | self.forbidden_users:
            raise UnsafeRequest(f"refusing to submit as privileged user {user!r}", cluster=cluster)
        if self.resolve_uid is not None:
            uid = self.resolve_uid(user)
            if uid is None:
                raise UnsafeRequest(f"site user {user!r} does not exist", cluster=cluster)
            if uid == 0 or uid < self.min_uid:
                raise UnsafeRequest(
                    f"refusing to submit as system account {user!r} (uid {uid} < {self.min_uid})",
                    cluster=cluster,
                )


def check_environment(environment: Mapping[str, str], *, cluster: str | None = None) -> None:
    for name, value in environment.items():
        if not _ENV_NAME.match(name):
            raise UnsafeRequest(f"invalid environment variable name {name!r}", cluster=cluster)
        if name.upper().startswith(_RESERVED_ENV_PREFIXES):
            raise UnsafeRequest(
                f"environment variable {name!r} is reserved for Slurm (SLURM_*, SBATCH_*, SALLOC_*, SRUN_*)",
                cluster=cluster,
            )
        if "\x00" in value:
            raise UnsafeRequest(f"environment variable {name!r} contains a NUL byte", cluster=cluster)


def check_spec(spec: SlurmJobSpec, *, cluster: str | None = None) -> None:
    """Refuse user strings that could smuggle options: control characters in names and paths."""
    for label, value in (
        ("name", spec.name),
        ("tag", spec.tag),
        ("working_directory", spec.working_directory),
        ("stdout", spec.stdout),
        ("stderr", spec.stderr),
        ("partition", spec.partition),
        ("account", spec.account),
        ("qos", spec.qos),
        ("gpu_type", spec.gpu_type),
    ):
        if value is not None and _CONTROL.search(value):
            raise UnsafeRequest(f"{label} contains a control character (newline, tab, ...)", cluster=cluster)
    if not spec.working_directory.startswith("/"):
        raise UnsafeRequest("working_directory must be an absolute path", cluster=cluster)
    if spec.gpus_per_node < 0 or spec.nodes < 1 or spec.tasks < 1 or spec.cpus_per_task < 1:
        raise UnsafeRequest("nodes, tasks and cpus_per_task must be >= 1, GPUs >= 0", cluster=cluster)
    if spec.gpu_type is not None and spec.gpus_per_node == 0:
        raise UnsafeRequest("gpu_type given without gpus_per_node", cluster=cluster)
    check_environment(spec.environment, cluster=cluster)


def job_environment(spec: SlurmJobSpec) -> dict[str, str]:
    """The full environment the job starts with: the base one with the spec's variables over it."""
    return {**BASE_ENVIRONMENT, **spec.environment}


def fenced_script(script: str) -> str:
    """The script as Slurm receives it: a shebang, then the fence that ends directive parsing."""
    lines = script.splitlines()
    if lines and lines[0].startswith("#!"):
        shebang, body = lines[0], lines[1:]
    else:
        shebang, body = DEFAULT_SHEBANG, lines
    return "\n".join([shebang, DIRECTIVE_FENCE, *body]) + "\n"


def site_path(fs_root: str | Path, cluster_path: str) -> Path:
    """A path of the cluster's filesystem as seen from here: normalized first, so it never leaves ``fs_root``."""
    relative = posixpath.normpath("/" + cluster_path).lstrip("/")
    return Path(fs_root) / relative


def read_owned_tail(path: Path, max_bytes: int, *, owner_uid: int) -> str:
    """The last ``max_bytes`` of a regular file that ``owner_uid`` owns, decoded leniently.

    Output paths are the user's choice and adapters read them privileged: the final component is opened
    without following a symlink (O_NOFOLLOW) and every check runs on the open descriptor, so nothing swapped
    in after a check is read; a FIFO does not block (O_NONBLOCK) and is refused. Root-owned files never are
    read. Failures raise :class:`OSError` (``PermissionError`` for a refused file).
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PermissionError(f"{path} is not a regular file (a symbolic link)") from None
        raise
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise PermissionError(f"{path} is not a regular file")
        if owner_uid == 0 or info.st_uid != owner_uid:
            raise PermissionError(f"{path} is not owned by the job's uid {owner_uid} (its owner: uid {info.st_uid})")
        size = handle.seek(0, 2)
        handle.seek(max(size - max_bytes, 0))
        return handle.read().decode("utf-8", errors="replace")
