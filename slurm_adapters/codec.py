"""The adapter contract's records and typed errors as JSON data: what crosses a process or network boundary.

Both wires use it: the pyslurm worker's pipe (:mod:`slurm_adapters.pyslurm.protocol`) and the Factory agent's
HTTPS link (:mod:`slurm_adapters.agent_protocol`). Encoders write plain JSON data field by field; every decoder
checks what it reads and raises :class:`ProtocolError` on anything malformed. Error types travel by name and
are re-created only from :data:`ERROR_TYPES` (the contract's own classes), never from a name the other side
made up. A job spec decodes strictly: a field this side does not know is refused, never dropped.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from collections.abc import Mapping
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
    SubmitWindowClosed,
    UnsafeRequest,
)
from slurm_adapters.records import (
    ClusterInfo,
    Health,
    JobRecord,
    NodeInfo,
    OutputChunk,
    PartitionInfo,
    SlurmJobSpec,
    SlurmJobState,
)

# A ``Final`` mapping of the contract's error classes by name.
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
        SubmitWindowClosed,
        JobNotFound,
        OutputUnavailable,
        AccountingUnavailable,
    )
}


class ProtocolError(Exception):
    """Data that is not valid protocol: the other side is broken (or not the program we expect)."""


def error_to_json(error: SlurmError) -> dict[str, Any]:
    """A typed error as data: its contract class (or the nearest one), message, Slurm's messages."""
    payload: dict[str, Any] = {
        "type": type(error).__name__ if type(error).__name__ in ERROR_TYPES else _nearest_type(error),
        "message": error.message,
        "errors": list(error.errors),
    }
    if isinstance(error, ClusterUnavailable):
        payload["maybe_applied"] = error.maybe_applied
    return payload


def _nearest_type(error: SlurmError) -> str:
    """The closest contract class for a subclass defined elsewhere (e.g. a private refinement)."""
    for cls in type(error).__mro__:
        if cls.__name__ in ERROR_TYPES and ERROR_TYPES[cls.__name__] is cls:
            return cls.__name__
    return SlurmError.__name__


def error_from_json(payload: object, *, cluster: str | None = None, source: str = "the other side") -> SlurmError:
    """The typed error ``payload`` describes; a type the contract lacks becomes a :class:`SiteError` saying so."""
    if not isinstance(payload, dict):
        raise ProtocolError(f"error payload must be an object, not {type(payload).__name__}")
    name, message, errors = payload.get("type"), payload.get("message"), payload.get("errors", [])
    if not isinstance(message, str) or not isinstance(errors, list) or not all(isinstance(e, str) for e in errors):
        raise ProtocolError(f"malformed error payload: {payload!r:.300}")
    cls = ERROR_TYPES.get(name) if isinstance(name, str) else None
    if cls is None:
        # Never instantiate a class named by the other side; keep what it said.
        text = f"{source} raised unknown error type {name!r}: {message}"
        return SiteError(text, cluster=cluster, errors=errors)
    if cls is ClusterUnavailable:
        return ClusterUnavailable(
            message, cluster=cluster, errors=errors, maybe_applied=payload.get("maybe_applied") is True
        )
    return cls(message, cluster=cluster, errors=errors)


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
        "elapsed_s": record.elapsed_s,
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


def output_chunk_to_json(chunk: OutputChunk) -> dict[str, Any]:
    """The chunk with its bytes as base64 (JSON carries text only)."""
    return {
        "data": base64.b64encode(chunk.data).decode("ascii"),
        "offset": chunk.offset,
        "size": chunk.size,
        "eof": chunk.eof,
    }


class FieldReader:
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

    def opt_flag(self, key: str) -> bool | None:
        value: bool | None = self._get(key, bool, optional=True)
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
    r = FieldReader(data, "JobRecord")
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
        # added after the others: a sender that predates it omits it, and so says nothing of the elapsed time
        elapsed_s=r.opt_integer("elapsed_s") if "elapsed_s" in r.data else None,
    )


def records_from_json(data: object) -> list[JobRecord]:
    if not isinstance(data, list):
        raise ProtocolError(f"expected a list of jobs, got {type(data).__name__}")
    return [record_from_json(item) for item in data]


def node_from_json(data: object) -> NodeInfo:
    r = FieldReader(data, "NodeInfo")
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
    r = FieldReader(data, "PartitionInfo")
    return PartitionInfo(
        name=r.text("name"),
        default=r.opt_flag("default"),  # None: the site's API cannot tell (see PartitionInfo)
        state=r.text("state"),
        max_time_min=r.opt_integer("max_time_min"),
        default_time_min=r.opt_integer("default_time_min"),
        nodes=r.strs("nodes"),
        total_cpus=r.integer("total_cpus"),
        total_gpus=r.int_map("total_gpus"),
    )


def cluster_info_from_json(data: object) -> ClusterInfo:
    r = FieldReader(data, "ClusterInfo")
    return ClusterInfo(
        cluster=r.text("cluster"),
        release=r.opt_text("release"),
        partitions=tuple(partition_from_json(item) for item in r.objects("partitions")),
        nodes=tuple(node_from_json(item) for item in r.objects("nodes")),
    )


def health_from_json(data: object) -> Health:
    r = FieldReader(data, "Health")
    return Health(
        ok=r.flag("ok"),
        detail=r.text("detail"),
        release=r.opt_text("release"),
        up_since=r.opt_time("up_since"),
        accounting_backlog=r.opt_integer("accounting_backlog"),
    )


def output_chunk_from_json(data: object) -> OutputChunk:
    """A chunk as :func:`output_chunk_to_json` wrote it; strict base64, and a chunk consistent in itself."""
    r = FieldReader(data, "OutputChunk")
    try:
        raw = base64.b64decode(r.text("data"), validate=True)
    except (binascii.Error, ValueError) as error:
        raise ProtocolError(f"OutputChunk.data: not base64: {error}") from None
    chunk = OutputChunk(data=raw, offset=r.integer("offset"), size=r.integer("size"), eof=r.flag("eof"))
    end = chunk.offset + len(chunk.data)
    if chunk.offset < 0 or chunk.size < 0 or (chunk.data and end > chunk.size) or chunk.eof != (end >= chunk.size):
        raise ProtocolError(
            f"OutputChunk: inconsistent offset {chunk.offset}, {len(chunk.data)} bytes, size {chunk.size}, "
            f"eof {chunk.eof}"
        )
    return chunk


def int_from_json(data: object, what: str) -> int:
    if not isinstance(data, int) or isinstance(data, bool):
        raise ProtocolError(f"{what}: expected an integer, got {type(data).__name__}")
    return data


def str_from_json(data: object, what: str) -> str:
    if not isinstance(data, str):
        raise ProtocolError(f"{what}: expected a string, got {type(data).__name__}")
    return data


SPEC_VERSION: Final = 1
SPEC_FIELDS: Final = tuple(field.name for field in dataclasses.fields(SlurmJobSpec))


_SPEC_REQUIRED: Final = frozenset(
    field.name
    for field in dataclasses.fields(SlurmJobSpec)
    if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
)
_SPEC_DEFAULTS: Final = SlurmJobSpec(name="", script="", working_directory="", tag="")


def spec_fields_used(spec: SlurmJobSpec) -> tuple[str, ...]:
    """The fields ``spec`` uses: the required ones and every one whose value is not its default. Only these
    travel (:func:`spec_to_json`), so a receiver that does not know a field refuses only a spec that uses it."""
    return tuple(
        name for name in SPEC_FIELDS if name in _SPEC_REQUIRED or getattr(spec, name) != getattr(_SPEC_DEFAULTS, name)
    )


def spec_to_json(spec: SlurmJobSpec) -> dict[str, Any]:
    """A job spec as versioned data, with only the fields it uses (a missing field is its default);
    ``environment`` becomes a plain object."""
    data: dict[str, Any] = {"version": SPEC_VERSION}
    for name in spec_fields_used(spec):
        value = getattr(spec, name)
        data[name] = dict(value) if isinstance(value, Mapping) else value
    return data


def spec_from_json(data: object) -> SlurmJobSpec:
    """The job spec ``data`` describes. A field this side does not know is a :class:`ProtocolError`, never
    dropped: a newer sender's field (an array, a container) must not be silently run without."""
    if not isinstance(data, dict):
        raise ProtocolError(f"SlurmJobSpec: expected an object, got {type(data).__name__}")
    if data.get("version") != SPEC_VERSION:
        raise ProtocolError(f"SlurmJobSpec: version {data.get('version')!r:.20} is not {SPEC_VERSION}")
    unknown = sorted(set(data) - {"version", *SPEC_FIELDS})
    if unknown:
        raise ProtocolError(f"SlurmJobSpec: unknown fields {unknown[:10]}")
    r = FieldReader(data, "SlurmJobSpec")
    optional = {name for name in SPEC_FIELDS if name in _OPTIONAL_SPEC_TEXT}
    values: dict[str, Any] = {}
    for name in ("name", "script", "working_directory", "tag"):
        values[name] = r.text(name)
    for name in optional:
        values[name] = r.opt_text(name) if name in data else None
    for name in ("nodes", "tasks", "cpus_per_task", "gpus_per_node"):
        if name in data:
            values[name] = r.integer(name)
    for name in ("tasks_per_node", "memory_mb", "time_limit_min"):
        if name in data:
            values[name] = r.opt_integer(name)
    if "environment" in data:
        values["environment"] = r.str_map("environment")
    if "requeue" in data:
        values["requeue"] = r.opt_flag("requeue")
    try:
        return SlurmJobSpec(**values)
    except (TypeError, ValueError) as error:
        raise ProtocolError(f"SlurmJobSpec: {error}") from error


_OPTIONAL_SPEC_TEXT: Final = frozenset({"stdout", "stderr", "partition", "account", "qos", "gpu_type"})
