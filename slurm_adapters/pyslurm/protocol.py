"""The wire format between :class:`~slurm_adapters.pyslurm.adapter.PyslurmAdapter` and its worker process.

Newline-delimited JSON, one request then one response, over the worker's stdin and stdout:

* request: ``{"op": "get_job", "args": {"job_id": 7}}``
* response: ``{"ok": true, "result": ...}`` or
  ``{"ok": false, "error": {"type": "JobNotFound", "message": ..., "errors": [...], "maybe_applied": false}}``

The worker's first line, before any request, is a response whose result is :data:`HELLO` fields
(``{"protocol": 1, "pyslurm": "25.11.2", "pid": ...}``), or the typed error that kept it from starting.

Error types travel by name and are re-created only from :data:`ERROR_TYPES` (the contract's own classes),
so the parent raises exactly what the worker would have raised in-process. Results are the contract's
dataclasses, encoded field by field; every decoder checks what it reads and raises :class:`ProtocolError`
on anything malformed. No pyslurm here: both sides import this module.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from slurm_adapters.errors import (
    AccountingUnavailable,
    AuthenticationError,
    ClusterUnavailable,
    InvalidRequest,
    JobError,
    JobNotFound,
    OutputUnavailable,
    SiteError,
    SlurmError,
    UnsafeRequest,
)
from slurm_adapters.records import ClusterInfo, Health, JobRecord, NodeInfo, PartitionInfo, SlurmJobState

PROTOCOL: Final = 1
# One response is one line: a list_jobs over tens of thousands of jobs is tens of MB, so the reader's
# line limit is large; anything above it is treated as a broken worker.
MAX_LINE_BYTES: Final = 256 * 1024 * 1024

OPS: Final = frozenset({"submit", "get_job", "list_jobs", "cancel", "read_output", "cluster_info", "health"})

ERROR_TYPES: Final[Mapping[str, type[SlurmError]]] = {
    cls.__name__: cls
    for cls in (
        SlurmError,
        JobError,
        InvalidRequest,
        UnsafeRequest,
        SiteError,
        AuthenticationError,
        ClusterUnavailable,
        JobNotFound,
        OutputUnavailable,
        AccountingUnavailable,
    )
}


class ProtocolError(Exception):
    """A line that is not valid protocol: the other side is broken (or not the program we expect)."""


@dataclass(frozen=True, slots=True)
class Request:
    op: str
    args: dict[str, Any]


# ---------------------------------------------------------------------------------------------------
# Lines
# ---------------------------------------------------------------------------------------------------


def _line(document: Mapping[str, Any]) -> bytes:
    # ensure_ascii: the wire is pure ASCII whatever the locale; a job's "\u2028" cannot split a line.
    return json.dumps(document, ensure_ascii=True, separators=(",", ":")).encode("ascii") + b"\n"


def _document(line: bytes) -> dict[str, Any]:
    if not line.endswith(b"\n"):
        raise ProtocolError(f"incomplete line ({len(line)} bytes, no newline): {_preview(line)}")
    try:
        document = json.loads(line)
    except ValueError as error:
        raise ProtocolError(f"not JSON ({error}): {_preview(line)}") from error
    if not isinstance(document, dict):
        raise ProtocolError(f"expected a JSON object: {_preview(line)}")
    return document


def _preview(line: bytes, limit: int = 200) -> str:
    text = line[:limit].decode("utf-8", errors="replace")
    return repr(text) + ("..." if len(line) > limit else "")


def encode_request(op: str, args: Mapping[str, Any] | None = None) -> bytes:
    if op not in OPS:
        raise ValueError(f"unknown operation {op!r}")
    return _line({"op": op, "args": dict(args or {})})


def decode_request(line: bytes) -> Request:
    document = _document(line)
    op, args = document.get("op"), document.get("args", {})
    if op not in OPS:
        raise ProtocolError(f"unknown operation {op!r}")
    if not isinstance(args, dict):
        raise ProtocolError(f"args of {op} must be an object, not {type(args).__name__}")
    return Request(op=str(op), args=args)


def encode_result(result: Any) -> bytes:
    """A success line; ``result`` must already be JSON data (see the ``*_to_json`` functions)."""
    return _line({"ok": True, "result": result})


def encode_error(error: SlurmError) -> bytes:
    payload: dict[str, Any] = {
        "type": type(error).__name__ if type(error).__name__ in ERROR_TYPES else _nearest_type(error),
        "message": error.message,
        "errors": list(error.errors),
    }
    if isinstance(error, ClusterUnavailable):
        payload["maybe_applied"] = error.maybe_applied
    return _line({"ok": False, "error": payload})


def _nearest_type(error: SlurmError) -> str:
    """The closest contract class for a subclass defined elsewhere (e.g. a private refinement)."""
    for cls in type(error).__mro__:
        if cls.__name__ in ERROR_TYPES and ERROR_TYPES[cls.__name__] is cls:
            return cls.__name__
    return SlurmError.__name__


def decode_response(line: bytes, *, cluster: str | None = None) -> Any:
    """The result of a success line; for an error line, RAISE the typed error it carries.

    ``cluster`` is set on the raised error (the worker does not need to know its cluster's name).
    """
    document = _document(line)
    ok = document.get("ok")
    if ok is True:
        if "result" not in document:
            raise ProtocolError("success without a result")
        return document["result"]
    if ok is not False:
        raise ProtocolError(f"response without a boolean 'ok': {_preview(line)}")
    raise decode_error(document.get("error"), cluster=cluster)


def decode_error(payload: object, *, cluster: str | None = None) -> SlurmError:
    if not isinstance(payload, dict):
        raise ProtocolError(f"error payload must be an object, not {type(payload).__name__}")
    name, message, errors = payload.get("type"), payload.get("message"), payload.get("errors", [])
    if not isinstance(message, str) or not isinstance(errors, list) or not all(isinstance(e, str) for e in errors):
        raise ProtocolError(f"malformed error payload: {payload!r:.300}")
    cls = ERROR_TYPES.get(name) if isinstance(name, str) else None
    if cls is None:
        # Never instantiate a class named by the other side; keep what it said.
        text = f"pyslurm worker raised unknown error type {name!r}: {message}"
        return SiteError(text, cluster=cluster, errors=errors)
    if cls is ClusterUnavailable:
        return ClusterUnavailable(
            message, cluster=cluster, errors=errors, maybe_applied=payload.get("maybe_applied") is True
        )
    return cls(message, cluster=cluster, errors=errors)


# ---------------------------------------------------------------------------------------------------
# The contract's dataclasses as JSON data
# ---------------------------------------------------------------------------------------------------


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def record_to_json(record: JobRecord) -> dict[str, Any]:
    return {
        "job_id": record.job_id,
        "tag": record.tag,
        "state": record.state.value,
        "raw_state": record.raw_state,
        "reason": record.reason,
        "exit_code": record.exit_code,
        "signal": record.signal,
        "submit_time": _time(record.submit_time),
        "start_time": _time(record.start_time),
        "end_time": _time(record.end_time),
        "nodes": record.nodes,
        "user": record.user,
        "name": record.name,
        "partition": record.partition,
        "time_limit_min": record.time_limit_min,
        "stdout": record.stdout,
        "stderr": record.stderr,
        "allocated_tres": dict(record.allocated_tres),
    }


def node_to_json(node: NodeInfo) -> dict[str, Any]:
    return {
        "name": node.name,
        "state": node.state,
        "cpus": node.cpus,
        "alloc_cpus": node.alloc_cpus,
        "memory_mb": node.memory_mb,
        "partitions": list(node.partitions),
        "gpus": dict(node.gpus),
        "gpus_used": dict(node.gpus_used),
    }


def partition_to_json(part: PartitionInfo) -> dict[str, Any]:
    return {
        "name": part.name,
        "default": part.default,
        "state": part.state,
        "max_time_min": part.max_time_min,
        "default_time_min": part.default_time_min,
        "nodes": list(part.nodes),
        "total_cpus": part.total_cpus,
        "total_gpus": dict(part.total_gpus),
    }


def cluster_info_to_json(info: ClusterInfo) -> dict[str, Any]:
    return {
        "cluster": info.cluster,
        "release": info.release,
        "partitions": [partition_to_json(part) for part in info.partitions],
        "nodes": [node_to_json(node) for node in info.nodes],
    }


def health_to_json(health: Health) -> dict[str, Any]:
    return {
        "ok": health.ok,
        "detail": health.detail,
        "release": health.release,
        "up_since": _time(health.up_since),
        "accounting_backlog": health.accounting_backlog,
    }


class _Reader:
    """Typed field access on one decoded object; every mismatch is a :class:`ProtocolError`."""

    def __init__(self, data: object, what: str) -> None:
        if not isinstance(data, dict):
            raise ProtocolError(f"{what}: expected an object, got {type(data).__name__}")
        self.data = data
        self.what = what

    def _get(self, key: str, types: type | tuple[type, ...], optional: bool) -> Any:
        if key not in self.data:
            raise ProtocolError(f"{self.what}: missing {key!r}")
        value = self.data[key]
        if value is None and optional:
            return None
        # bool is an int subclass: True must not pass for a count, nor 1 for a flag.
        wrong_bool = isinstance(value, bool) and types is not bool
        if wrong_bool or not isinstance(value, types):
            raise ProtocolError(f"{self.what}.{key}: unexpected {type(value).__name__} {value!r:.80}")
        return value

    def text(self, key: str) -> str:
        value: str = self._get(key, str, optional=False)
        return value

    def opt_text(self, key: str) -> str | None:
        value: str | None = self._get(key, str, optional=True)
        return value

    def integer(self, key: str) -> int:
        value: int = self._get(key, int, optional=False)
        return value

    def opt_integer(self, key: str) -> int | None:
        value: int | None = self._get(key, int, optional=True)
        return value

    def flag(self, key: str) -> bool:
        value: bool = self._get(key, bool, optional=False)
        return value

    def opt_time(self, key: str) -> datetime | None:
        text = self.opt_text(key)
        if text is None:
            return None
        try:
            return datetime.fromisoformat(text)
        except ValueError as error:
            raise ProtocolError(f"{self.what}.{key}: not an ISO time: {text!r:.80}") from error

    def strs(self, key: str) -> tuple[str, ...]:
        items = self._get(key, list, optional=False)
        if not all(isinstance(item, str) for item in items):
            raise ProtocolError(f"{self.what}.{key}: expected a list of strings")
        return tuple(items)

    def str_map(self, key: str) -> dict[str, str]:
        mapping = self._get(key, dict, optional=False)
        if not all(isinstance(value, str) for value in mapping.values()):
            raise ProtocolError(f"{self.what}.{key}: expected string values")
        return dict(mapping)

    def int_map(self, key: str) -> dict[str, int]:
        mapping = self._get(key, dict, optional=False)
        if not all(isinstance(value, int) and not isinstance(value, bool) for value in mapping.values()):
            raise ProtocolError(f"{self.what}.{key}: expected integer values")
        return dict(mapping)

    def objects(self, key: str) -> list[object]:
        items: list[object] = self._get(key, list, optional=False)
        return items


def record_from_json(data: object) -> JobRecord:
    r = _Reader(data, "JobRecord")
    state = r.text("state")
    if state not in SlurmJobState.__members__:
        raise ProtocolError(f"JobRecord.state: unknown state {state!r:.80}")
    return JobRecord(
        job_id=r.integer("job_id"),
        tag=r.opt_text("tag"),
        state=SlurmJobState(state),
        raw_state=r.text("raw_state"),
        reason=r.opt_text("reason"),
        exit_code=r.opt_integer("exit_code"),
        signal=r.opt_integer("signal"),
        submit_time=r.opt_time("submit_time"),
        start_time=r.opt_time("start_time"),
        end_time=r.opt_time("end_time"),
        nodes=r.opt_text("nodes"),
        user=r.opt_text("user"),
        name=r.opt_text("name"),
        partition=r.opt_text("partition"),
        time_limit_min=r.opt_integer("time_limit_min"),
        stdout=r.opt_text("stdout"),
        stderr=r.opt_text("stderr"),
        allocated_tres=r.str_map("allocated_tres"),
    )


def records_from_json(data: object) -> list[JobRecord]:
    if not isinstance(data, list):
        raise ProtocolError(f"expected a list of jobs, got {type(data).__name__}")
    return [record_from_json(item) for item in data]


def node_from_json(data: object) -> NodeInfo:
    r = _Reader(data, "NodeInfo")
    return NodeInfo(
        name=r.text("name"),
        state=r.text("state"),
        cpus=r.integer("cpus"),
        alloc_cpus=r.integer("alloc_cpus"),
        memory_mb=r.integer("memory_mb"),
        partitions=r.strs("partitions"),
        gpus=r.int_map("gpus"),
        gpus_used=r.int_map("gpus_used"),
    )


def partition_from_json(data: object) -> PartitionInfo:
    r = _Reader(data, "PartitionInfo")
    return PartitionInfo(
        name=r.text("name"),
        default=r.flag("default"),
        state=r.text("state"),
        max_time_min=r.opt_integer("max_time_min"),
        default_time_min=r.opt_integer("default_time_min"),
        nodes=r.strs("nodes"),
        total_cpus=r.integer("total_cpus"),
        total_gpus=r.int_map("total_gpus"),
    )


def cluster_info_from_json(data: object) -> ClusterInfo:
    r = _Reader(data, "ClusterInfo")
    return ClusterInfo(
        cluster=r.text("cluster"),
        release=r.opt_text("release"),
        partitions=tuple(partition_from_json(item) for item in r.objects("partitions")),
        nodes=tuple(node_from_json(item) for item in r.objects("nodes")),
    )


def health_from_json(data: object) -> Health:
    r = _Reader(data, "Health")
    return Health(
        ok=r.flag("ok"),
        detail=r.text("detail"),
        release=r.opt_text("release"),
        up_since=r.opt_time("up_since"),
        accounting_backlog=r.opt_integer("accounting_backlog"),
    )


def int_from_json(data: object, what: str) -> int:
    if not isinstance(data, int) or isinstance(data, bool):
        raise ProtocolError(f"{what}: expected an integer, got {type(data).__name__}")
    return data


def str_from_json(data: object, what: str) -> str:
    if not isinstance(data, str):
        raise ProtocolError(f"{what}: expected a string, got {type(data).__name__}")
    return data


@dataclass(frozen=True, slots=True)
class Hello:
    """The worker's first line: which protocol it speaks, which pyslurm it loaded, its pid."""

    protocol: int
    pyslurm: str
    pid: int


def hello_to_json(hello: Hello) -> dict[str, Any]:
    return {"protocol": hello.protocol, "pyslurm": hello.pyslurm, "pid": hello.pid}


def hello_from_json(data: object) -> Hello:
    r = _Reader(data, "Hello")
    return Hello(protocol=r.integer("protocol"), pyslurm=r.text("pyslurm"), pid=r.integer("pid"))
