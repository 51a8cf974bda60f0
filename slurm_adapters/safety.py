"""Checks every adapter applies before anything reaches Slurm.

A broker that submits on behalf of others is a privilege boundary: it must never submit as root, as
Slurm's own user or as a system account, never let a user set Slurm's own variables, and never let a user
string turn into a batch directive.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import pwd
import re
import stat
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from slurm_adapters.environment import Login
from slurm_adapters.errors import InvalidRequest, UnsafeRequest
from slurm_adapters.records import MAX_OUTPUT_CHUNK_BYTES, OutputChunk, SlurmJobSpec

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Read by Slurm and its launchers, SPANK plugins, PMI/PMIx and container runtimes: a user's value would steer them.
_RESERVED_ENV_PREFIXES = (
    "SLURM_", "SBATCH_", "SALLOC_", "SRUN_", "SPANK_", "PMI_", "PMIX_", "SLURMD_", "APPTAINER", "SINGULARITY",
)  # fmt: skip
_USER_NAME = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

DEFAULT_SHEBANG = "#!/bin/bash"
# Placed right after the shebang: sbatch stops reading #SBATCH lines at the first command, so nothing the
# user wrote below can act as a directive. The spec, not the script, says what the job gets.
DIRECTIVE_FENCE = ": conveyor - the job spec sets all options; #SBATCH lines below are not read"


def is_user_name(name: str) -> bool:
    """A plausible POSIX account name (what ``check_user`` accepts before any look-up)."""
    return _USER_NAME.match(name) is not None


# Never a job's uid, whatever a site's uid_ranges say: root, nobody and the 16-bit overflow uid, and
# (uid_t)-2 / (uid_t)-1 (nfsnobody, "no uid").
ALWAYS_REFUSED_UIDS: tuple[tuple[int, int], ...] = ((0, 0), (65534, 65535), (4294967294, 4294967295))
DEFAULT_UID_MIN = 1000
MAX_UID = 4294967295
# Shells that say "this account does not log in": daemons and service accounts.
NO_LOGIN_SHELLS = frozenset({"nologin", "false"})

UidRange = tuple[int, int]


def default_uid_ranges(uid_min: int) -> tuple[UidRange, ...]:
    """People's uids on a Debian-like site: UID_MIN up to Debian's package-allocated range (60000-64999) and
    the reserved 65000-65535, then everything above (LDAP) short of (uid_t)-2."""
    return ((uid_min, 59999), (65536, 4294967293))


_UID_MIN_READ: dict[Path, tuple[tuple[int, int, int], int]] = {}  # path -> ((inode, mtime_ns, size), UID_MIN)


def login_defs_uid_min(path: Path | None) -> int:
    """UID_MIN from a login.defs (the first uid of people, not daemons); 1000 where it cannot be read. Read again
    whenever the file changes (its inode, mtime or size), not on every submit."""
    if path is None:
        return DEFAULT_UID_MIN
    try:
        facts = path.stat()
    except OSError:
        return DEFAULT_UID_MIN
    version = (facts.st_ino, facts.st_mtime_ns, facts.st_size)
    known = _UID_MIN_READ.get(path)
    if known is not None and known[0] == version:
        return known[1]
    uid_min = _read_uid_min(path)
    _UID_MIN_READ[path] = (version, uid_min)
    return uid_min


def _read_uid_min(path: Path) -> int:
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return DEFAULT_UID_MIN
    for line in lines:
        words = line.split()
        if len(words) >= 2 and words[0] == "UID_MIN" and words[1].isdigit():
            return max(int(words[1]), 1)
    return DEFAULT_UID_MIN


@dataclass(frozen=True, slots=True)
class PasswdEntry:
    """One account as the site's passwd (or NSS) describes it."""

    name: str
    uid: int
    home: str
    shell: str


def local_lookup(user: str) -> PasswdEntry | None:
    """``user``'s entry as this host's NSS answers (a login node: LDAP and sssd included), or None."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return None
    return PasswdEntry(entry.pw_name, entry.pw_uid, entry.pw_dir, entry.pw_shell)


def passwd_lookup(fs_root: str | Path) -> Callable[[str], PasswdEntry | None]:
    """Look users up in the passwd file of another filesystem root (a chroot, a mounted login node image),
    read again at every look-up."""
    passwd = Path(fs_root) / "etc/passwd"

    def lookup(user: str) -> PasswdEntry | None:
        for line in passwd.read_text().splitlines():
            fields = line.split(":")
            if len(fields) >= 7 and fields[0] == user and fields[2].isdigit():
                return PasswdEntry(user, int(fields[2]), fields[5], fields[6])
        return None

    return lookup


def _in_ranges(uid: int, ranges: tuple[UidRange, ...]) -> bool:
    return any(low <= uid <= high for low, high in ranges)


def _ranges_text(ranges: tuple[UidRange, ...]) -> str:
    return ", ".join(f"{low}-{high}" for low, high in ranges) or "none"


@dataclass(frozen=True)
class SitePolicy:
    """Who an adapter may submit as on one cluster: people, never root, SlurmUser or a daemon.

    ``lookup`` finds an account where the cluster's accounts are visible (the lab, a login node) and runs
    at every check; its uid must lie in ``uid_ranges`` (None: UID_MIN from ``login_defs``, default 1000,
    to 59999, and 65536 to 4294967293), never in :data:`ALWAYS_REFUSED_UIDS`, never be SlurmUser's, and its
    shell must not be nologin or false. Without a ``lookup`` (a remote slurmrestd) the names alone are
    checked, so ``allowed_users`` (a full-match pattern, checked whenever given) is then required.
    """

    slurm_user: str = "slurm"
    forbidden_users: frozenset[str] = frozenset()
    lookup: Callable[[str], PasswdEntry | None] | None = field(default=local_lookup)
    uid_ranges: tuple[UidRange, ...] | None = None
    login_defs: Path | None = Path("/etc/login.defs")
    allowed_users: re.Pattern[str] | None = None

    def login(self, user: str) -> Login:
        """``user``'s login (HOME, SHELL) where the accounts are visible; elsewhere only the name."""
        entry = self.lookup(user) if self.lookup is not None else None
        if entry is None:
            return Login(user=user)
        return Login(user=user, home=entry.home or None, shell=entry.shell or None)

    def __post_init__(self) -> None:
        if self.lookup is None and self.allowed_users is None:
            raise ValueError("a site policy that cannot look users up needs an allowed_users pattern")

    def allowed_uid_ranges(self) -> tuple[UidRange, ...]:
        """The uids jobs may run as here (ALWAYS_REFUSED_UIDS are refused on top of these)."""
        if self.uid_ranges is not None:
            return self.uid_ranges
        return default_uid_ranges(login_defs_uid_min(self.login_defs))

    def check_name(self, user: str, *, cluster: str | None = None) -> None:
        """The checks that need no look-up: a valid name, not a privileged one, one the site allows."""
        if not is_user_name(user):
            raise UnsafeRequest(f"{user!r} is not a valid site user name", cluster=cluster)
        if user in {"root", self.slurm_user} | self.forbidden_users:
            raise UnsafeRequest(f"refusing to submit as privileged user {user!r}", cluster=cluster)
        if self.allowed_users is not None and self.allowed_users.fullmatch(user) is None:
            raise UnsafeRequest(
                f"site user {user!r} does not match this cluster's allowed_users {self.allowed_users.pattern!r}",
                cluster=cluster,
            )

    def check_user(self, user: str, *, cluster: str | None = None) -> None:
        self.check_name(user, cluster=cluster)
        if self.lookup is None:
            return
        entry = self.lookup(user)
        if entry is None:
            raise UnsafeRequest(f"site user {user!r} does not exist", cluster=cluster)
        self._check_account(entry, cluster)

    def _check_account(self, entry: PasswdEntry, cluster: str | None) -> None:
        assert self.lookup is not None
        ranges = self.allowed_uid_ranges()
        name, uid = entry.name, entry.uid
        if _in_ranges(uid, ALWAYS_REFUSED_UIDS) or not _in_ranges(uid, ranges):
            raise UnsafeRequest(
                f"refusing to submit as system account {name!r}: uid {uid} is not a person's "
                f"(allowed uids: {_ranges_text(ranges)})",
                cluster=cluster,
            )
        slurm_account = self.lookup(self.slurm_user)
        if slurm_account is not None and slurm_account.uid == uid:
            raise UnsafeRequest(
                f"refusing to submit as privileged user {name!r} (SlurmUser's uid {uid})", cluster=cluster
            )
        if PurePosixPath(entry.shell).name in NO_LOGIN_SHELLS:
            raise UnsafeRequest(
                f"refusing to submit as system account {name!r}: its shell {entry.shell} allows no login",
                cluster=cluster,
            )


def check_environment(environment: Mapping[str, str], *, cluster: str | None = None) -> None:
    for name, value in environment.items():
        if not _ENV_NAME.match(name):
            raise UnsafeRequest(f"invalid environment variable name {name!r}", cluster=cluster)
        if name.upper().startswith(_RESERVED_ENV_PREFIXES):
            raise UnsafeRequest(
                f"environment variable {name!r} is reserved for Slurm, its launchers and container runtimes "
                f"({', '.join(prefix + '*' for prefix in _RESERVED_ENV_PREFIXES)})",
                cluster=cluster,
            )
        if "\x00" in value:
            raise UnsafeRequest(f"environment variable {name!r} contains a NUL byte", cluster=cluster)


def check_spec(spec: SlurmJobSpec, *, cluster: str | None = None) -> None:
    """Refuse user strings that could smuggle options (control characters in names and paths) and paths that
    climb out of where they point (``..``)."""
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
    for label, path in (
        ("working_directory", spec.working_directory),
        ("stdout", spec.stdout),
        ("stderr", spec.stderr),
    ):
        if path is not None and ".." in path.split("/"):
            raise UnsafeRequest(f"{label} must not contain '..' segments", cluster=cluster)
    if spec.gpus_per_node < 0 or spec.nodes < 1 or spec.tasks < 1 or spec.cpus_per_task < 1:
        raise UnsafeRequest("nodes, tasks and cpus_per_task must be >= 1, GPUs >= 0", cluster=cluster)
    if spec.tasks_per_node is not None and spec.tasks_per_node * spec.nodes != spec.tasks:
        raise UnsafeRequest("tasks must be nodes x tasks_per_node when tasks_per_node is given", cluster=cluster)
    if spec.gpu_type is not None and spec.gpus_per_node == 0:
        raise UnsafeRequest("gpu_type given without gpus_per_node", cluster=cluster)
    check_environment(spec.environment, cluster=cluster)


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


@contextlib.contextmanager
def _owned_regular_file(path: Path, owner_uid: int) -> Iterator[tuple[BinaryIO, int]]:
    """``path`` open for reading, and its size, once every check has passed on the open descriptor.

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
        yield handle, info.st_size


def read_owned_tail(path: Path, max_bytes: int, *, owner_uid: int) -> str:
    """The last ``max_bytes`` of a regular file that ``owner_uid`` owns, decoded leniently (see
    :func:`_owned_regular_file` for what is refused)."""
    with _owned_regular_file(path, owner_uid) as (handle, _):
        size = handle.seek(0, 2)
        handle.seek(max(size - max_bytes, 0))
        return handle.read().decode("utf-8", errors="replace")


def check_chunk_request(offset: int, max_bytes: int, *, cluster: str | None = None) -> int:
    """``max_bytes`` capped at :data:`MAX_OUTPUT_CHUNK_BYTES`; a negative offset or a non-positive
    ``max_bytes`` is :class:`InvalidRequest`."""
    if offset < 0:
        raise InvalidRequest(f"offset must be >= 0, not {offset}", cluster=cluster)
    if max_bytes <= 0:
        raise InvalidRequest(f"max_bytes must be >= 1, not {max_bytes}", cluster=cluster)
    return min(max_bytes, MAX_OUTPUT_CHUNK_BYTES)


def read_owned_chunk(path: Path, offset: int, max_bytes: int, *, owner_uid: int) -> OutputChunk:
    """At most ``max_bytes`` (and :data:`MAX_OUTPUT_CHUNK_BYTES`) of a regular file that ``owner_uid`` owns,
    from ``offset``, never beyond the size it had when opened (the same refusals as
    :func:`_owned_regular_file`). An offset at or past the end gives no data and ``eof``."""
    if offset < 0 or max_bytes <= 0:
        raise ValueError(f"bad offset {offset} or max_bytes {max_bytes}")
    with _owned_regular_file(path, owner_uid) as (handle, size):
        if offset >= size:
            return OutputChunk(data=b"", offset=offset, size=size, eof=True)
        handle.seek(offset)
        data = handle.read(min(max_bytes, MAX_OUTPUT_CHUNK_BYTES, size - offset))
        return OutputChunk(data=data, offset=offset, size=size, eof=offset + len(data) >= size)
