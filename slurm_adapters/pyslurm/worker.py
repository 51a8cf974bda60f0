"""The pyslurm worker: the one process that loads libslurm for one cluster and serves its adapter.

Started by :class:`~slurm_adapters.pyslurm.adapter.PyslurmAdapter` as
``python -m slurm_adapters.pyslurm.worker --cluster NAME --fs-root DIR`` with a clean environment whose
``SLURM_CONF`` names the cluster's slurm.conf (libslurm reads it once, at ``import pyslurm``). It answers
one newline-delimited JSON request at a time on stdin/stdout (:mod:`slurm_adapters.pyslurm.protocol`) and
exits at end of input. libslurm blocks and keeps the GIL, so all of that is done here, where the parent can
kill it on a deadline, and never in the broker's own process.

Privilege: the worker runs as root (or SlurmUser) so that slurmctld honours ``user_id``/``group_id`` on a
submit. libslurm cannot impersonate anyone for a cancel, so the worker checks the job's owner itself; and it
reads output files only when the job's own uid owns them. A cancel that names the broker's tag cancels only a
job that still carries it (slurmctld re-issues ids after a crash).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import time
from collections.abc import Callable, Iterator, MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from slurm_adapters.codec import (
    ProtocolError,
    cluster_info_to_json,
    health_to_json,
    output_chunk_to_json,
    record_to_json,
)
from slurm_adapters.errors import (
    ClusterUnavailable,
    InvalidRequest,
    OutputUnavailable,
    SiteError,
    SlurmError,
    UnsafeRequest,
)
from slurm_adapters.fencing import check_cancel_target
from slurm_adapters.pyslurm.mapping import job_record, map_error, node_info, partition_infos, with_gpus_in_use
from slurm_adapters.pyslurm.protocol import (
    PROTOCOL,
    Hello,
    Request,
    decode_request,
    encode_error,
    encode_result,
    hello_to_json,
)
from slurm_adapters.records import MAX_OUTPUT_CHUNK_BYTES, ClusterInfo, Health
from slurm_adapters.safety import read_owned_chunk, read_owned_tail, site_path

# ---------------------------------------------------------------------------------------------------
# Loading libslurm
# ---------------------------------------------------------------------------------------------------


def load_pyslurm(environ: MutableMapping[str, str], module_name: str = "pyslurm") -> Any:
    """``import pyslurm`` (its slurm_init reads ``$SLURM_CONF``), then drop every SLURM_* variable.

    A missing config is refused first: libslurm would call fatal() and exit without a word on the wire.
    The variables go afterwards because pyslurm copies each SLURM_* variable of this process into every job
    it submits, even with an explicit environment; slurm_init has already read what it needs. A job that names
    no profile is submitted as sbatch submits it (:func:`profile_unset_as_sbatch`).
    """
    conf = environ.get("SLURM_CONF")
    if not conf or not Path(conf).is_file():
        raise ClusterUnavailable(f"SLURM_CONF {conf!r} is not a readable file; not loading libslurm")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise SiteError(f"pyslurm cannot be imported here: {error}") from error
    for name in [name for name in environ if name.startswith("SLURM_")]:
        del environ[name]
    profile_unset_as_sbatch(module_name)
    return module


PROFILE_NOT_SET = 0  # ACCT_GATHER_PROFILE_NOT_SET: what sbatch sends without --profile (the site's default)


def profile_unset_as_sbatch(module_name: str) -> bool:
    """Make pyslurm send "profile not set" for a job that names no profile types; True if it had to.

    pyslurm 25.11 converts no profile types to NO_VAL (0xfffffffe), which slurmctld reads as a bit field:
    Energy, Lustre, Network and Task profiling asked for, SLURM_PROFILE set in the job. Its submission module
    looks the converter up among its globals at each call, so the one bound there is wrapped.
    """
    try:
        submission = importlib.import_module(f"{module_name}.core.job.submission")
    except ImportError:
        return False  # another pyslurm layout (or a stand-in): nothing to correct
    convert = getattr(submission, "acctg_profile_list_to_int", None)
    if convert is None or convert(None) == PROFILE_NOT_SET:
        return False

    def types_or_not_set(types: object) -> int:
        return int(convert(types)) if types else PROFILE_NOT_SET

    setattr(submission, "acctg_profile_list_to_int", types_or_not_set)  # noqa: B010 (a module of no stubs)
    return True


# ---------------------------------------------------------------------------------------------------
# The operations
# ---------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _output_errors(where: str, cluster: str) -> Iterator[None]:
    """OS errors of reading a job's output file as :class:`OutputUnavailable`."""
    try:
        yield
    except FileNotFoundError as error:
        raise OutputUnavailable(f"{where} does not exist (yet)", cluster=cluster) from error
    except OSError as error:  # PermissionError for a file the job's user does not own
        raise OutputUnavailable(f"cannot read {where}: {error}", cluster=cluster) from error


def _int_arg(args: dict[str, Any], name: str) -> int:
    value = args.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolError(f"argument {name!r} must be an integer, not {value!r:.80}")
    return value


def _str_arg(args: dict[str, Any], name: str, *, optional: bool = False) -> str | None:
    value = args.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ProtocolError(f"argument {name!r} must be a string, not {value!r:.80}")
    return value


class Operations:
    """Every protocol operation over one loaded pyslurm module (a fake one in the unit tests)."""

    def __init__(self, pyslurm: Any, *, cluster: str, fs_root: str | os.PathLike[str] = "/") -> None:
        self.pyslurm = pyslurm
        self.cluster = cluster
        self.fs_root = Path(fs_root)
        self._ops: dict[str, Callable[[dict[str, Any]], Any]] = {
            "submit": self.submit,
            "get_job": self.get_job,
            "list_jobs": self.list_jobs,
            "cancel": self.cancel,
            "read_output": self.read_output,
            "read_output_chunk": self.read_output_chunk,
            "cluster_info": self.cluster_info,
            "health": self.health,
        }

    def handle(self, line: bytes) -> bytes:
        """One request line in, one response line out; never raises for anything a request causes."""
        try:
            request = decode_request(line)
        except ProtocolError as error:
            return encode_error(SiteError(f"pyslurm worker: bad request: {error}", cluster=self.cluster))
        return self.run(request)

    def run(self, request: Request) -> bytes:
        submitting = request.op == "submit"
        try:
            result = self._ops[request.op](request.args)
        except SlurmError as error:
            error.cluster = error.cluster or self.cluster
            return encode_error(error)
        except ProtocolError as error:
            return encode_error(SiteError(f"pyslurm worker: bad {request.op} request: {error}", cluster=self.cluster))
        except (self.pyslurm.PyslurmError, ValueError) as error:
            return encode_error(map_error(error, cluster=self.cluster, submitting=submitting))
        except Exception as error:  # a pyslurm or worker bug: report it, keep serving
            message = f"pyslurm worker: {request.op} failed: {type(error).__name__}: {error}"
            return encode_error(SiteError(message, cluster=self.cluster))
        return encode_result(result)

    # -- the contract, one request each -------------------------------------------------------------

    def submit(self, args: dict[str, Any]) -> int:
        """``args["description"]`` is :func:`~slurm_adapters.pyslurm.mapping.submit_kwargs`'s output.

        The parent applied the site policy; the worker still refuses the two omissions that would turn a
        root process's submit into something else: no ``user_id`` (the job would run as root) and no
        ``environment`` dict (pyslurm would export this process's environment).
        """
        description = args.get("description")
        if not isinstance(description, dict):
            raise ProtocolError("argument 'description' must be an object")
        if description.get("user_id") in (None, "", "root", 0, "0"):
            raise UnsafeRequest("refusing a submit without a non-root user_id", cluster=self.cluster)
        if not isinstance(description.get("environment"), dict):
            raise UnsafeRequest("refusing a submit without an explicit environment", cluster=self.cluster)
        return int(self.pyslurm.JobSubmitDescription(**description).submit())

    def get_job(self, args: dict[str, Any]) -> dict[str, Any]:
        return record_to_json(job_record(self.pyslurm.Job.load(_int_arg(args, "job_id"))))

    def list_jobs(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        tags = args.get("tags")
        if tags is not None and not (isinstance(tags, list) and all(isinstance(tag, str) for tag in tags)):
            raise ProtocolError("argument 'tags' must be a list of strings or null")
        wanted = set(tags) if tags is not None else None
        prefix = _str_arg(args, "tag_prefix", optional=True)

        def keep(tag: str | None) -> bool:
            if wanted is not None and tag not in wanted:
                return False
            return prefix is None or (tag is not None and tag.startswith(prefix))

        jobs = self.pyslurm.Jobs.load(preload_passwd_info=True)  # the one RPC: every job in slurmctld
        # Filter on the raw comment before converting: cheap even with thousands of jobs.
        records = [job_record(job) for job in jobs.values() if keep(job.comment or None)]
        return [record_to_json(record) for record in sorted(records, key=lambda record: record.job_id)]

    def cancel(self, args: dict[str, Any]) -> None:
        """One read, then the cancel. With ``tag``: a job whose tag or owner differs is not found."""
        job_id = _int_arg(args, "job_id")
        user = _str_arg(args, "user")
        tag = _str_arg(args, "tag", optional=True)
        # pyslurm's cancel() ignores "Invalid job id" for SIGKILL: load first so an unknown id is an error.
        job = self.pyslurm.Job.load(job_id)
        if tag is not None:
            check_cancel_target(job_record(job), user=str(user), tag=tag, cluster=self.cluster)
        owner = job.user_name
        if owner != user:
            raise InvalidRequest(
                f"Access/permission denied: job {job_id} belongs to {owner!r}, not {user!r}", cluster=self.cluster
            )
        if not job_record(job).state.is_terminal:
            self.pyslurm.Job(job_id).cancel()  # ESLURM_ALREADY_DONE is not an error there

    def read_output(self, args: dict[str, Any]) -> str:
        """The tail of the job's file, read as root but only if the job's own uid owns it.

        Output paths are the user's choice: without the owner check a job naming /etc/shadow as its stdout
        would have this root process hand the file out. Without ``--error`` Slurm writes stderr into the
        stdout file, so that file answers for both streams.
        """
        max_bytes = _int_arg(args, "max_bytes")
        if max_bytes < 0:
            raise ProtocolError(f"bad max_bytes {max_bytes}")
        host_path, uid, where = self._output_file(args)
        with _output_errors(where, self.cluster):
            return read_owned_tail(host_path, max_bytes, owner_uid=uid)

    def read_output_chunk(self, args: dict[str, Any]) -> dict[str, Any]:
        """Bytes of the job's file from ``offset`` (base64 in the answer), with :meth:`read_output`'s checks."""
        offset, max_bytes = _int_arg(args, "offset"), _int_arg(args, "max_bytes")
        if offset < 0 or not 0 < max_bytes <= MAX_OUTPUT_CHUNK_BYTES:
            raise ProtocolError(f"bad offset {offset} or max_bytes {max_bytes}")
        host_path, uid, where = self._output_file(args)
        with _output_errors(where, self.cluster):
            return output_chunk_to_json(read_owned_chunk(host_path, offset, max_bytes, owner_uid=uid))

    def _output_file(self, args: dict[str, Any]) -> tuple[Path, int, str]:
        """The job's stream as Slurm records it (never the caller's path), its owner's uid, and its name."""
        job_id = _int_arg(args, "job_id")
        stream = _str_arg(args, "stream")
        if stream not in {"stdout", "stderr"}:
            raise ProtocolError(f"bad stream {stream!r}")
        job = self.pyslurm.Job.load(job_id)
        record = job_record(job)
        path = record.stdout if stream == "stdout" else (record.stderr or record.stdout)
        if path is None:
            raise OutputUnavailable(f"job {job_id} has no {stream} file", cluster=self.cluster)
        return site_path(self.fs_root, path), int(job.user_id), f"job {job_id}'s {stream} {path}"

    def cluster_info(self, args: dict[str, Any]) -> dict[str, Any]:
        pyslurm = self.pyslurm
        config = pyslurm.slurmctld.Config.load()
        nodes = tuple(node_info(node) for node in pyslurm.Nodes.load().values())
        if any(node.gpus for node in nodes) and not any(node.gpus_used for node in nodes):
            jobs = pyslurm.Jobs.load().values()
            nodes = with_gpus_in_use(nodes, jobs, pyslurm.utils.nodelist_from_range_str)
        partitions = partition_infos(pyslurm.Partitions.load().values(), nodes)
        info = ClusterInfo(
            cluster=str(config.cluster_name or self.cluster),
            release=str(config.version) if config.version else None,
            partitions=partitions,
            nodes=nodes,
        )
        return cluster_info_to_json(info)

    def health(self, args: dict[str, Any]) -> dict[str, Any]:
        started = time.monotonic()
        config = self.pyslurm.slurmctld.Config.load()  # an authenticated RPC, unlike ping
        millis = (time.monotonic() - started) * 1000
        release = str(config.version) if config.version else None
        detail = f"slurmctld of {config.cluster_name} answered in {millis:.0f} ms via libslurm"
        stats = self.pyslurm.slurmctld.diag()  # sdiag's figures: when its statistics began, slurmdbd backlog
        # slurmctld's start; its statistics' start (also reset at midnight UTC) only where pyslurm lacks it
        booted = getattr(config, "slurmctld_boot_time", None)
        since = int(booted) if booted else (int(stats.data_since) if stats.data_since else None)
        backlog = stats.dbd_agent_queue_size
        health = Health(
            ok=True,
            detail=detail,
            release=release,
            up_since=datetime.fromtimestamp(since, UTC) if since else None,
            accounting_backlog=int(backlog) if backlog is not None else None,
        )
        return health_to_json(health)


# ---------------------------------------------------------------------------------------------------
# The process
# ---------------------------------------------------------------------------------------------------


def claim_stdout() -> IO[bytes]:
    """The protocol's own copy of fd 1; fd 1 itself then points at stderr.

    libslurm (or a stray print) writing to stdout would otherwise corrupt the protocol stream.
    """
    sys.stdout.flush()
    wire = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return wire


def serve(wire: IO[bytes], requests: IO[bytes], operations: Operations) -> None:
    for line in requests:
        wire.write(operations.handle(line))
        wire.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m slurm_adapters.pyslurm.worker", description=__doc__)
    parser.add_argument("--cluster", required=True)
    parser.add_argument("--fs-root", default="/")
    options = parser.parse_args(argv)
    wire = claim_stdout()
    try:
        try:
            pyslurm = load_pyslurm(os.environ)
        except SlurmError as error:
            error.cluster = options.cluster
            wire.write(encode_error(error))
            return 1
        hello = Hello(protocol=PROTOCOL, pyslurm=str(getattr(pyslurm, "__version__", "unknown")), pid=os.getpid())
        wire.write(encode_result(hello_to_json(hello)))
        wire.flush()
        serve(wire, sys.stdin.buffer, Operations(pyslurm, cluster=options.cluster, fs_root=options.fs_root))
    except BrokenPipeError:  # the parent went away
        return 0
    finally:
        with contextlib.suppress(BrokenPipeError):
            wire.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
