"""Run one Slurm client command: argv only, a clean environment, a hard deadline.

Slurm's clients retry an unreachable slurmctld for a long time (about MessageTimeout per attempt), so a
hung controller would hang the broker. Every command therefore runs in its own process group that is
killed at the deadline, and the deadline becomes :class:`ClusterUnavailable`.

Privilege: the environment of every process in the chain (the exec prefix, ``runuser``) is built here
from fixed values and never carries user data. A job's environment travels as data, through an
anonymous in-memory file that sbatch reads with ``--export-file=FD``: a user's ``PATH`` or
``LD_PRELOAD`` must not reach the programs that run as root.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from slurm_adapters.errors import ClusterUnavailable, SiteError

# Where Slurm's clients and runuser are looked up (root's PATH on Debian, plus /usr/local).
TOOL_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The argv element that becomes ``--export-file=<fd>`` once the descriptor exists.
EXPORT_FILE_PLACEHOLDER = "--export-file={fd}"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one command did. ``returncode`` is the command's own (the chain passes it through)."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


@dataclass(frozen=True, slots=True)
class Runner:
    """Runs commands in one cluster's filesystem, optionally as another user.

    ``as_root``: the adapter runs as root, so a command for a user goes through ``runuser -m -u USER --``
    placed after ``exec_prefix`` (inside the chroot, where the user's account is the cluster's own).
    ``-m`` keeps the clean environment instead of adding the target user's HOME and SHELL.
    """

    cluster: str
    slurm_conf: str
    exec_prefix: tuple[str, ...] = ()
    as_root: bool = False
    timeout_s: float = 8.0
    tool_path: str = TOOL_PATH

    def argv(self, command: Sequence[str], user: str | None = None) -> list[str]:
        chain = list(self.exec_prefix)
        if user is not None and self.as_root and user != "root":
            chain += ["runuser", "-m", "-u", user, "--"]
        return chain + list(command)

    def environment(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The complete environment of the chain. TZ=UTC makes scontrol print UTC timestamps."""
        env = {"PATH": self.tool_path, "SLURM_CONF": self.slurm_conf, "TZ": "UTC", "LC_ALL": "C"}
        env.update(extra or {})
        return env

    async def run(
        self,
        command: Sequence[str],
        *,
        user: str | None = None,
        stdin: bytes = b"",
        export_file: bytes | None = None,
        extra_env: Mapping[str, str] | None = None,
        maybe_applied: bool = False,
    ) -> Outcome:
        """Run ``command``; ``export_file`` is handed over on a descriptor for ``--export-file``.

        ``maybe_applied`` marks commands that change Slurm's state (sbatch, scancel): if they time out the
        change may have happened, which the :class:`ClusterUnavailable` says.
        """
        argv = self.argv(command, user)
        fd = _memfd(export_file) if export_file is not None else None
        if fd is not None:
            argv = [f"--export-file={fd}" if arg == EXPORT_FILE_PLACEHOLDER else arg for arg in argv]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self.environment(extra_env),
                cwd="/",
                pass_fds=(fd,) if fd is not None else (),
                start_new_session=True,  # its own process group: the deadline kills the whole chain
            )
        except OSError as exc:
            raise SiteError(f"cannot run {argv[0]!r}: {exc}", cluster=self.cluster) from exc
        finally:
            if fd is not None:
                os.close(fd)
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin), self.timeout_s)
        except TimeoutError:
            await _kill(proc)
            raise ClusterUnavailable(
                f"{command[0]} did not finish within {self.timeout_s:g} s (slurmctld unreachable or hung)",
                cluster=self.cluster,
                maybe_applied=maybe_applied,
            ) from None
        except BaseException:  # cancelled: never leave the chain running
            await _kill(proc)
            raise
        return Outcome(
            argv=tuple(argv),
            returncode=proc.returncode if proc.returncode is not None else -1,
            stdout=out.decode("utf-8", errors="replace"),
            stderr=err.decode("utf-8", errors="replace"),
        )


def _memfd(data: bytes) -> int:
    """An anonymous file holding ``data``, rewound, inheritable by the child only via ``pass_fds``."""
    fd = os.memfd_create("conveyor-export")
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


async def _kill(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    await proc.wait()
