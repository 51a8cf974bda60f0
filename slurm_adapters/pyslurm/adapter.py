"""The pyslurm adapter: libslurm through pyslurm 25.11's object API, in a worker process per adapter.

libslurm binds one slurm.conf per process (read at ``import pyslurm``; a missing config is fatal there),
every call blocks, and pyslurm never releases the GIL around it: measured on the lab's 26.05, a call to an
unreachable slurmctld freezes its whole process, event loop included, for about 10 s. So this process never
imports pyslurm. Each adapter starts its own worker (:mod:`slurm_adapters.pyslurm.worker`) on first use, with
a clean environment holding that cluster's ``SLURM_CONF``, and talks to it over newline-delimited JSON
(:mod:`slurm_adapters.pyslurm.protocol`). Consequences:

* any number of clusters per broker process, one worker each;
* every call has a real deadline (``timeout_s``): a worker that has not answered is killed (SIGKILL) and
  the call raises :class:`ClusterUnavailable` (``maybe_applied`` for a submit already sent); the next
  call starts a fresh worker;
* jobs never inherit the broker's environment: the worker starts with PATH, SLURM_CONF, PYTHONPATH and
  PYTHONDONTWRITEBYTECODE only, and drops SLURM_CONF once libslurm has read it (pyslurm copies SLURM_*
  into every job; slurmd sets the job's own SLURM_CONF).

Calls are serialized (one request in flight per worker; the deadline includes the wait for earlier calls).
:meth:`render` and the safety checks stay here and need no worker. Jobs are submitted with
``user_id``/``group_id``, which slurmctld honours only from root or SlurmUser: the adapter runs as root on a
login node (in the lab: inside the sid chroot, with a LAB-ONLY build of pyslurm, see
dev/lab/pyslurm_build.py).
"""

from __future__ import annotations

import asyncio
import os
import pwd
import site
import socket
import sys
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, TypeVar

import slurm_adapters
from slurm_adapters.codec import (
    ProtocolError,
    cluster_info_from_json,
    health_from_json,
    int_from_json,
    output_chunk_from_json,
    record_from_json,
    records_from_json,
    str_from_json,
)
from slurm_adapters.errors import ClusterUnavailable, SlurmError
from slurm_adapters.fencing import check_submit_window
from slurm_adapters.interface import SlurmAdapter
from slurm_adapters.pyslurm.mapping import submit_kwargs
from slurm_adapters.pyslurm.process import WorkerFailed, WorkerProcess
from slurm_adapters.records import (
    MAX_OUTPUT_CHUNK_BYTES,
    ClusterInfo,
    Health,
    JobRecord,
    OutputChunk,
    OutputStream,
    Rendering,
    SlurmJobSpec,
    SubmitContext,
)
from slurm_adapters.safety import SitePolicy, check_chunk_request, check_spec

T = TypeVar("T")

WORKER_MODULE = "slurm_adapters.pyslurm.worker"
# The worker's PATH (libslurm runs no helpers for the calls used here; this is root's usual PATH).
WORKER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Below libslurm's own ~10 s MessageTimeout, so that a hung slurmctld is this adapter's call to make.
DEFAULT_TIMEOUT_S = 8.0
CLOSE_GRACE_S = 2.0


def package_root() -> str:
    """The directory that holds the ``slurm_adapters`` package, for the worker's PYTHONPATH."""
    return str(Path(slurm_adapters.__file__).resolve().parent.parent)


def worker_environment(slurm_conf: str) -> dict[str, str]:
    """The worker's complete environment: nothing of this process's own is passed on.

    PYTHONPATH is set only where the package is not already in the interpreter's site-packages (a
    checkout, the lab's read-only /src); PYTHONDONTWRITEBYTECODE keeps a root worker from writing
    __pycache__ into a user's checkout.
    """
    env = {"PATH": WORKER_PATH, "SLURM_CONF": slurm_conf, "PYTHONDONTWRITEBYTECODE": "1"}
    root = package_root()
    if root not in {os.path.realpath(path) for path in site.getsitepackages()}:
        env["PYTHONPATH"] = root
    return env


class PyslurmAdapter(SlurmAdapter):
    """One cluster through pyslurm in a worker process. ``fs_root``: where the cluster's "/" is, for outputs.

    ``slurm_conf`` and ``fs_root`` are paths as the worker (same host, same root) sees them. An adapter
    belongs to the event loop that first calls it; :meth:`aclose` ends its worker.
    """

    kind = "pyslurm"

    def __init__(
        self,
        cluster: str,
        slurm_conf: str | os.PathLike[str],
        *,
        fs_root: str | os.PathLike[str] = "/",
        policy: SitePolicy | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        super().__init__(cluster)
        self.slurm_conf = os.fspath(slurm_conf)
        self.fs_root = Path(fs_root)
        self.policy = policy or SitePolicy(slurm_user="root")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, not {timeout_s}")
        self.timeout_s = timeout_s
        if not Path(self.slurm_conf).is_file():
            raise ClusterUnavailable(f"no slurm.conf at {self.slurm_conf}", cluster=cluster)
        self._lock = asyncio.Lock()
        self._worker: WorkerProcess | None = None

    # -- the worker ----------------------------------------------------------------------------------

    def worker_argv(self) -> list[str]:
        """How the worker is started: this interpreter, the worker module, this adapter's cluster."""
        return [sys.executable, "-m", WORKER_MODULE, "--cluster", self.cluster, "--fs-root", os.fspath(self.fs_root)]

    def worker_env(self) -> dict[str, str]:
        return worker_environment(self.slurm_conf)

    @property
    def worker_pid(self) -> int | None:
        """The running worker's pid (None before the first call and after a failure or :meth:`aclose`)."""
        return self._worker.pid if self._worker is not None and self._worker.alive else None

    async def _running_worker(self) -> WorkerProcess:
        if self._worker is not None and self._worker.alive:
            return self._worker
        if self._worker is not None:  # died between calls (OOM killer, an operator): reap, start anew
            await self._discard(self._worker)
        self._worker = await WorkerProcess.spawn(self.worker_argv(), self.worker_env(), cluster=self.cluster)
        await self._worker.handshake()
        return self._worker

    async def _discard(self, worker: WorkerProcess | None) -> None:
        if worker is None:
            return
        if self._worker is worker:
            self._worker = None
        await worker.kill()

    def _unavailable(self, message: str, worker: WorkerProcess | None, *, maybe_applied: bool) -> ClusterUnavailable:
        tail = worker.stderr_tail() if worker is not None else []
        if tail:
            message += f"; its stderr ends: {tail[-1]}"
        return ClusterUnavailable(message, cluster=self.cluster, errors=tail, maybe_applied=maybe_applied)

    async def _call(
        self, op: str, args: Mapping[str, Any] | None, decode: Callable[[Any], T], *, submitting: bool = False
    ) -> T:
        """One request to the worker (started if need be) and its decoded answer, within ``timeout_s``.

        The deadline covers the wait behind earlier calls too: while a cluster hangs, every queued call
        fails within ``timeout_s`` instead of each waiting for all the ones before it.
        """
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        try:
            async with asyncio.timeout_at(deadline):
                await self._lock.acquire()
        except TimeoutError:
            raise ClusterUnavailable(
                f"{op} waited {self.timeout_s:g} s behind earlier calls to the pyslurm worker (slurmctld hung?)",
                cluster=self.cluster,
            ) from None
        try:
            return await self._exchange(op, args, decode, deadline, submitting=submitting)
        finally:
            self._lock.release()

    async def _exchange(
        self, op: str, args: Mapping[str, Any] | None, decode: Callable[[Any], T], deadline: float, *, submitting: bool
    ) -> T:
        """The request itself, under the lock; every failure of the worker as a process ends the worker."""
        try:
            async with asyncio.timeout_at(deadline):
                worker = await self._running_worker()
                result = await worker.request(op, args)
                return decode(result)
        except SlurmError:
            # The worker's typed answer. One that answered its greeting with an error is exiting.
            if self._worker is not None and self._worker.hello is None:
                await self._discard(self._worker)
            raise
        except TimeoutError:
            failed = self._worker
            sent = failed is not None and failed.sent
            await self._discard(failed)
            what = f"killed the pyslurm worker (pid {failed.pid})" if failed is not None else "no worker started"
            raise self._unavailable(
                f"no answer to {op} within {self.timeout_s:g} s (slurmctld unreachable or hung?): {what}",
                failed,
                maybe_applied=submitting and sent,
            ) from None
        except WorkerFailed as error:
            failed = self._worker
            await self._discard(failed)
            raise self._unavailable(
                f"the pyslurm worker {error}", failed, maybe_applied=submitting and error.sent
            ) from error
        except ProtocolError as error:  # a well-formed line whose result is not what `op` returns
            failed = self._worker
            await self._discard(failed)
            # Answered, so a submit did reach Slurm's client library: its outcome is unknown.
            raise self._unavailable(
                f"the pyslurm worker sent a malformed answer to {op}: {error}", failed, maybe_applied=submitting
            ) from error
        except BaseException:  # cancelled mid-request: the stream's state is unknown, end the worker
            await self._discard(self._worker)
            raise

    async def aclose(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            await worker.close(CLOSE_GRACE_S)

    # -- the contract --------------------------------------------------------------------------------

    def _gid(self, user: str) -> int | None:
        try:
            return pwd.getpwnam(user).pw_gid
        except KeyError:
            return None

    def render(self, spec: SlurmJobSpec, user: str) -> Rendering:
        self.policy.check_user(user, cluster=self.cluster)
        check_spec(spec, cluster=self.cluster)
        kwargs = submit_kwargs(spec, self.policy.login(user), self._gid(user), socket.gethostname())
        return Rendering(adapter=self.kind, user=user, script=kwargs["script"], payload=kwargs)

    async def submit(self, spec: SlurmJobSpec, user: str, context: SubmitContext | None = None) -> int:
        description = self.render(spec, user).payload
        # Here, not in the worker: the call's deadline (``timeout_s``, the wait behind earlier calls included)
        # starts in _call right after this check, and a late submit never reaches the worker.
        check_submit_window(context, self.timeout_s, cluster=self.cluster)
        return await self._call("submit", {"description": description}, _job_id, submitting=True)

    async def get_job(self, job_id: int) -> JobRecord:
        return await self._call("get_job", {"job_id": int(job_id)}, record_from_json)

    async def list_jobs(self, *, tags: Collection[str] | None = None, tag_prefix: str | None = None) -> list[JobRecord]:
        args = {"tags": sorted(tags) if tags is not None else None, "tag_prefix": tag_prefix}
        return await self._call("list_jobs", args, records_from_json)

    async def cancel(self, job_id: int, user: str, tag: str | None = None) -> None:
        """The worker reads the job once and checks its owner (and, with a ``tag``, its tag) before cancelling."""
        self.policy.check_user(user, cluster=self.cluster)
        await self._call("cancel", {"job_id": int(job_id), "user": user, "tag": tag}, _nothing)

    async def read_output(self, job_id: int, stream: OutputStream = "stdout", max_bytes: int = 65536) -> str:
        """The tail of the job's file; the worker reads it only if the job's own uid owns it."""
        args = {"job_id": int(job_id), "stream": stream, "max_bytes": int(max_bytes)}
        return await self._call("read_output", args, _text)

    async def read_output_chunk(
        self, job_id: int, stream: OutputStream = "stdout", offset: int = 0, max_bytes: int = MAX_OUTPUT_CHUNK_BYTES
    ) -> OutputChunk:
        """The worker reads the range only if the job's own uid owns the file (see :meth:`read_output`)."""
        max_bytes = check_chunk_request(offset, max_bytes, cluster=self.cluster)
        args = {"job_id": int(job_id), "stream": stream, "offset": int(offset), "max_bytes": max_bytes}
        return await self._call("read_output_chunk", args, output_chunk_from_json)

    async def cluster_info(self) -> ClusterInfo:
        return await self._call("cluster_info", None, cluster_info_from_json)

    async def health(self) -> Health:
        return await self._call("health", None, health_from_json)


def _job_id(data: object) -> int:
    return int_from_json(data, "submit")


def _text(data: object) -> str:
    return str_from_json(data, "read_output")


def _nothing(data: object) -> None:
    if data is not None:
        raise ProtocolError(f"expected no result, got {type(data).__name__}")
