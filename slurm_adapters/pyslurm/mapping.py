"""pyslurm's objects and errors to and from the adapter contract, without importing pyslurm.

Used on both sides of the process boundary: :mod:`slurm_adapters.pyslurm.adapter` renders the submit
description with :func:`submit_kwargs`, :mod:`slurm_adapters.pyslurm.worker` converts pyslurm's objects and
errors. Every function here reads pyslurm objects by attribute name only (pyslurm 25.11's ``Job``, ``Node``,
``Partition``, ``RPCError``), so it can be tested on any host, and the one place that knows those names
stays small.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

from slurm_adapters.convert import expand_output_path, from_epoch, gpu_counts
from slurm_adapters.environment import Login, batch_environment, sbatch_variables
from slurm_adapters.errors import (
    AuthenticationError,
    ClusterUnavailable,
    InvalidRequest,
    JobNotFound,
    SiteError,
    SlurmError,
)
from slurm_adapters.records import JobRecord, NodeInfo, PartitionInfo, SlurmJobSpec, SlurmJobState
from slurm_adapters.safety import fenced_script

# The Slurm release pyslurm 25.11 is made for (lab builds against 26.05 only bypass its version check).
PYSLURM_RELEASE = (25, 11)

# ---------------------------------------------------------------------------------------------------
# SlurmJobSpec -> JobSubmitDescription keyword arguments
# ---------------------------------------------------------------------------------------------------


def submit_kwargs(spec: SlurmJobSpec, login: Login, gid: int | None, submit_host: str) -> dict[str, Any]:
    """Every SlurmJobSpec field as pyslurm 25.11 ``JobSubmitDescription`` keywords, for ``login.user``.

    ``environment`` is always a dict, and the one sbatch would give the job (slurm_adapters.environment):
    left out, pyslurm would export the adapter process's own (root's) environment into the job.
    ``time_limit`` stays an int (pyslurm rejects digit strings). ``user_id`` makes slurmctld run the job as
    the user; libslurm only honours it from root or SlurmUser.
    """
    exported = sbatch_variables(spec, release=PYSLURM_RELEASE, submit_host=submit_host)
    kwargs: dict[str, Any] = {
        "name": spec.name,
        "script": fenced_script(spec.script),
        "working_directory": spec.working_directory,
        "environment": batch_environment(spec, login, sbatch=exported, release=PYSLURM_RELEASE),
        "comment": spec.tag,
        "nodes": spec.nodes,
        "ntasks": spec.tasks,
        "cpus_per_task": spec.cpus_per_task,
        "user_id": login.user,
    }
    if gid is not None:
        kwargs["group_id"] = gid
    optional: dict[str, Any] = {
        "standard_output": spec.stdout,
        "standard_error": spec.stderr,
        "partitions": spec.partition,
        "account": spec.account,
        "qos": spec.qos,
        "ntasks_per_node": spec.tasks_per_node,
        "memory_per_node": spec.memory_mb,
        "time_limit": spec.time_limit_min,
    }
    kwargs.update({key: value for key, value in optional.items() if value is not None})
    if spec.requeue is not None:
        kwargs["is_requeueable"] = spec.requeue
    if spec.gpus_per_node:
        gres = f"gpu:{spec.gpu_type}" if spec.gpu_type else "gpu"
        kwargs["gres_per_node"] = {gres: spec.gpus_per_node}
    return kwargs


# ---------------------------------------------------------------------------------------------------
# pyslurm objects -> normalized records
# ---------------------------------------------------------------------------------------------------


def _text(value: object) -> str | None:
    """pyslurm gives None, "" or the string "None" for unset text fields."""
    if value is None:
        return None
    text = str(value)
    return None if text in {"", "None", "(null)"} else text


def _int(value: object) -> int | None:
    """Minutes and counts: pyslurm gives ints, None, or "UNLIMITED"."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def tres_mapping(tres: Any) -> dict[str, str]:
    """pyslurm's ``TrackableResources`` (or None) as ``{"cpu": "2", "mem": "1000", "gres/gpu:a100": "1"}``.

    pyslurm parses ``tres_alloc_str`` into objects; flattening them back gives Slurm's own TRES names.
    """
    if tres is None:
        return {}
    try:
        flat = tres.to_dict(flatten_limits=True)
    except (AttributeError, TypeError):
        return {}
    out: dict[str, str] = {}
    for name, value in flat.items():
        count = getattr(value, "count", value)
        if count is None or isinstance(count, Mapping):
            continue
        out[str(name)] = str(count)
    return out


def job_record(job: Any) -> JobRecord:
    """A pyslurm ``Job`` as the broker's :class:`JobRecord`."""
    raw_state = _text(job.state) or "UNKNOWN"
    state = SlurmJobState.parse(raw_state)
    name = _text(job.name)
    user = _text(job.user_name)
    nodes = _text(job.allocated_nodes)
    job_id = int(job.id)

    def path(value: object) -> str | None:
        text = _text(value)
        return expand_output_path(text, job_id, user, name, nodes) if text else None

    return JobRecord(
        job_id=job_id,
        tag=_text(job.comment),
        state=state,
        raw_state=raw_state,
        reason=_text(job.state_reason),
        exit_code=_int(job.exit_code) if state.is_terminal else None,
        signal=_int(job.exit_code_signal) if state.is_terminal else None,
        submit_time=from_epoch(_int(job.submit_time)),
        start_time=from_epoch(_int(job.start_time)),
        end_time=from_epoch(_int(job.end_time)),
        nodes=nodes,
        user=user,
        name=name,
        partition=_text(job.partition),
        time_limit_min=_int(job.time_limit),
        stdout=path(job.standard_output),
        stderr=path(job.standard_error),
        allocated_tres=tres_mapping(job.allocated_tres),
    ).observed()


def node_info(node: Any) -> NodeInfo:
    return NodeInfo(
        name=str(node.name),
        state=_text(node.state) or "UNKNOWN",
        cpus=_int(node.total_cpus) or 0,
        alloc_cpus=_int(node.allocated_cpus) or 0,
        memory_mb=_int(node.real_memory) or 0,
        partitions=tuple(node.partitions or ()),
        gpus=gpu_counts(node.configured_gres or {}),
        gpus_used=gpu_counts(node.allocated_gres or {}),
    )


_HOLDS_NODES = frozenset({SlurmJobState.RUNNING, SlurmJobState.SUSPENDED, SlurmJobState.COMPLETING})


def with_gpus_in_use(
    nodes: tuple[NodeInfo, ...], jobs: Iterable[Any], expand: Callable[[str], list[str]]
) -> tuple[NodeInfo, ...]:
    """Fill ``gpus_used`` from the jobs holding nodes, for sites whose TRES do not track gres/gpu.

    A node's allocated TRES only list GPUs when AccountingStorageTRES includes gres/gpu (which needs
    slurmdbd), and pyslurm does not expose the node's own ``gres_used``. Counts come from each job's
    per-node GRES request, capped at what the node has; ``expand`` turns a hostlist into names.
    """
    used: dict[str, dict[str, int]] = {}
    for job in jobs:
        if SlurmJobState.parse(_text(job.state)) not in _HOLDS_NODES or not _text(job.allocated_nodes):
            continue
        per_node = gpu_counts(job.gres_per_node or {})
        if not per_node:
            continue
        for name in expand(str(job.allocated_nodes)):
            counts = used.setdefault(name, {})
            for gpu_type, count in per_node.items():
                counts[gpu_type] = counts.get(gpu_type, 0) + count
    result = []
    for node in nodes:
        counts = used.get(node.name, {})
        capped = {gpu_type: min(count, node.gpus.get(gpu_type, count)) for gpu_type, count in counts.items()}
        result.append(replace(node, gpus_used=capped) if capped else node)
    return tuple(result)


def partition_infos(partitions: Iterable[Any], nodes: Iterable[NodeInfo]) -> tuple[PartitionInfo, ...]:
    """Partitions with their member nodes taken from the nodes' own lists (no hostlist parsing needed)."""
    node_list = list(nodes)
    result = []
    for part in partitions:
        name = str(part.name)
        members = [node for node in node_list if name in node.partitions]
        gpus: dict[str, int] = {}
        for node in members:
            for gpu_type, count in node.gpus.items():
                gpus[gpu_type] = gpus.get(gpu_type, 0) + count
        result.append(
            PartitionInfo(
                name=name,
                default=bool(part.is_default),
                state=_text(part.state) or "UNKNOWN",
                max_time_min=_int(part.max_time),
                default_time_min=_int(part.default_time),
                nodes=tuple(node.name for node in members),
                total_cpus=_int(part.total_cpus) or sum(node.cpus for node in members),
                total_gpus=gpus,
            )
        )
    return tuple(result)


# ---------------------------------------------------------------------------------------------------
# pyslurm.RPCError -> typed errors
# ---------------------------------------------------------------------------------------------------

# Slurm's errno values (slurm_errno.h; stable across 22.05-26.05). Messages are matched first, since
# they are what pyslurm guarantees; the numbers catch the rest of each family.
_NOT_FOUND = {2017}  # ESLURM_INVALID_JOB_ID
# Nothing was sent, so a submit did not happen (111 is the OS's ECONNREFUSED, which libslurm passes on).
_CONNECT_FAILED = {1001, 1021, 1800, 111}
# The request may have reached slurmctld (104 ECONNRESET and 32 EPIPE, e.g. slurmctld killed mid-call).
_LOST_AFTER_SEND = {1002, 1003, 1004, 1022, 1023, 1801, 1802, 1803, 5003, 5004, 5005, 104, 32, 110}
_AUTH = {1007, 2010} | set(range(6000, 6100))
_NOT_FOUND_TEXT = ("invalid job id specified",)
_CONNECT_TEXT = ("unable to contact slurm controller", "connection refused", "connect failure")
_LOST_TEXT = (
    "socket timed out",
    "zero bytes were transmitted",
    "communication send failure",
    "connection reset by peer",
    "broken pipe",
    "connection timed out",
)
_AUTH_TEXT = ("authentication", "munge", "invalid user id", "credential")


_FAMILIES: tuple[tuple[str, frozenset[int], tuple[str, ...]], ...] = (
    ("not_found", frozenset(_NOT_FOUND), _NOT_FOUND_TEXT),
    ("connect", frozenset(_CONNECT_FAILED), _CONNECT_TEXT),
    ("lost", frozenset(_LOST_AFTER_SEND), _LOST_TEXT),
    ("auth", frozenset(_AUTH), _AUTH_TEXT),
)


def _family(number: int | None, message: str) -> str | None:
    lowered = message.lower()
    for family, numbers, texts in _FAMILIES:
        if number in numbers or any(text in lowered for text in texts):
            return family
    return None


def map_error(error: BaseException, *, cluster: str, submitting: bool = False) -> SlurmError:
    """The typed error for a pyslurm ``RPCError`` (or ``ValueError`` from its argument checks).

    While submitting, anything Slurm refuses that is not the site's fault is the job's
    (:class:`InvalidRequest`); a connection lost after sending may have created the job.
    """
    message = str(getattr(error, "msg", None) or error) or type(error).__name__
    errors = [message]
    if isinstance(error, ValueError):  # pyslurm's own validation of a description
        return InvalidRequest(f"pyslurm refused the job description: {message}", cluster=cluster, errors=errors)
    number = getattr(error, "errno", None)
    family = _family(number if isinstance(number, int) else None, message)
    if family == "not_found":
        return JobNotFound(message, cluster=cluster, errors=errors)
    if family in {"connect", "lost"}:
        applied = submitting and family == "lost"
        return ClusterUnavailable(message, cluster=cluster, errors=errors, maybe_applied=applied)
    if family == "auth":
        return AuthenticationError(message, cluster=cluster, errors=errors)
    cls = InvalidRequest if submitting else SiteError
    return cls(message, cluster=cluster, errors=errors)
