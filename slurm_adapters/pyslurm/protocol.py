"""The wire format between :class:`~slurm_adapters.pyslurm.adapter.PyslurmAdapter` and its worker process.

Newline-delimited JSON, one request then one response, over the worker's stdin and stdout:

* request: ``{"op": "get_job", "args": {"job_id": 7}}``
* response: ``{"ok": true, "result": ...}`` or
  ``{"ok": false, "error": {"type": "JobNotFound", "message": ..., "errors": [...], "maybe_applied": false}}``

The worker's first line, before any request, is a response whose result is :data:`HELLO` fields
(``{"protocol": 1, "pyslurm": "25.11.2", "pid": ...}``), or the typed error that kept it from starting.

Results and errors are encoded by :mod:`slurm_adapters.codec`, so the parent raises exactly what the worker
would have raised in-process. No pyslurm here: both sides import this module.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from slurm_adapters.codec import FieldReader, ProtocolError, error_from_json, error_to_json
from slurm_adapters.errors import SlurmError

PROTOCOL: Final = 1
# One response is one line: a list_jobs over tens of thousands of jobs is tens of MB, so the reader's
# line limit is large; anything above it is treated as a broken worker.
MAX_LINE_BYTES: Final = 256 * 1024 * 1024

OPS: Final = frozenset(
    {"submit", "get_job", "list_jobs", "cancel", "read_output", "read_output_chunk", "cluster_info", "health"}
)


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
    return _line({"ok": False, "error": error_to_json(error)})


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
    return error_from_json(payload, cluster=cluster, source="pyslurm worker")


@dataclass(frozen=True, slots=True)
class Hello:
    """The worker's first line: which protocol it speaks, which pyslurm it loaded, its pid."""

    protocol: int
    pyslurm: str
    pid: int


def hello_to_json(hello: Hello) -> dict[str, Any]:
    return {"protocol": hello.protocol, "pyslurm": hello.pyslurm, "pid": hello.pid}


def hello_from_json(data: object) -> Hello:
    r = FieldReader(data, "Hello")
    return Hello(protocol=r.integer("protocol"), pyslurm=r.text("pyslurm"), pid=r.integer("pid"))
