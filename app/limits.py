"""The HTTP edge's limits, enforced before any route reads or parses a request: a pure ASGI middleware.

- Header fields larger than ``max_header_field_bytes`` one by one or ``max_header_bytes`` together: 431.
- A Content-Encoding other than identity or a charset other than utf-8: 415 (app.plain_json).
- A body larger than ``max_body_bytes``: 413, on its Content-Length before a byte of it is read, or while it is
  read (chunked), at the first message past the limit. So no request ever holds more than the limit, however
  many arrive at once. A Factory agent's reports, listings and site states (``POST /v1/agent/sessions/{id}/``
  ``reports``, ``listing``, ``site``: a listing of every active job of its Factory is one body) may be up to
  ``max_report_body_bytes``, but at most :data:`LARGE_BODIES_AT_ONCE` bodies are read past ``max_body_bytes`` at
  a time (the others wait, held back by TCP), so memory stays bounded however many such requests arrive.
- A JSON body that is not plain UTF-8 JSON with one value per key: 400 (app.plain_json).

A refusal is a problem (``application/problem+json``); one made before the body was read closes the connection,
as the rest of that request is never read. The server's own parse limit (:func:`EdgeLimits.server_head_bytes`,
see app.serving) lies a little above the header limits, so that every head within them reaches this middleware.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.plain_json import body_problem, encoding_problem
from app.problems import problem_response
from broker.settings import Settings
from conveyor.problems import HEADERS_TOO_LARGE, MALFORMED_REQUEST, PAYLOAD_TOO_LARGE, Problem

# What the server's parse limit adds to the header limit: the request line (method, a target of up to ~8 KiB,
# version) and the blank line that ends the head.
REQUEST_LINE_BYTES = 8 * 1024
FIELD_OVERHEAD_BYTES = 4  # ": " and CRLF, as each field is sent

_AGENT_REPORTS = re.compile(r"^/v1/agent/sessions/[^/]+/(reports|listing|site)$")
LARGE_BODIES_AT_ONCE = 2

# The answers the edge may give to any request, for the OpenAPI document.
EDGE_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {
        "description": f"Not a valid HTTP/1.1 request ({MALFORMED_REQUEST.code}.http), or a JSON body that is not "
        "plain UTF-8 (a byte order mark, another encoding) or has a duplicate key",
        "model": Problem,
    },
    413: {"description": "The request body is larger than the broker's limit; nothing was read", "model": Problem},
    415: {"description": "A Content-Encoding other than identity, or a charset other than utf-8", "model": Problem},
    431: {"description": "A header field, or all of them, larger than the broker's limits", "model": Problem},
}


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    """What one request may be at most, in bytes; a field is never allowed more than the whole head."""

    max_body_bytes: int
    max_header_bytes: int
    max_header_field_bytes: int
    max_report_body_bytes: int = 0  # 0: the same as max_body_bytes

    @classmethod
    def from_settings(cls, settings: Settings) -> EdgeLimits:
        return cls(
            max_body_bytes=settings.max_body_bytes,
            max_header_bytes=settings.max_header_bytes,
            max_header_field_bytes=settings.max_header_field_bytes,
            max_report_body_bytes=settings.agent_max_report_bytes,
        )

    def body_limit(self, path: str) -> int:
        """The largest body a request to ``path`` may carry."""
        if _AGENT_REPORTS.match(path):
            return max(self.max_body_bytes, self.max_report_body_bytes)
        return self.max_body_bytes

    @property
    def server_head_bytes(self) -> int:
        """The server's parse limit for a request head: a little above the header limits, so that the app, not
        the server, answers every head that is only somewhat too large."""
        return self.max_header_bytes + REQUEST_LINE_BYTES


class RequestLimits:
    """Refuses a request beyond ``limits`` or not in plain JSON with a problem; hands every other one on, its
    body read once (never past the limit), checked, and replayed to the app as one message."""

    def __init__(self, app: ASGIApp, limits: EdgeLimits) -> None:
        self.app = app
        self.limits = limits
        self._large_bodies: asyncio.Semaphore | None = None  # made in the server's event loop, on first use

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        problem = self._refusal_of_head(scope)
        if problem is not None:
            await _refuse(problem, scope, receive, send, close=True)
            return
        try:
            body = await self._read_body(receive, scope["path"])
        except _TooLarge:
            await _refuse(self._too_large(scope), scope, receive, send, close=True)
            return
        except _Disconnected:
            return  # the client went away mid-body: there is no one to answer
        problem = body_problem(Headers(scope=scope), body, scope["path"])
        if problem is not None:
            await _refuse(problem, scope, receive, send, close=False)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read_body(self, receive: Receive, path: str) -> bytes:
        """The body, read up to the path's limit; past ``max_body_bytes`` only while holding a large-body slot."""
        limit, usual = self.limits.body_limit(path), self.limits.max_body_bytes
        body = bytearray()
        whole = await _read_into(body, receive, min(limit, usual))
        if whole and len(body) <= usual:
            return bytes(body)
        if limit <= usual:
            raise _TooLarge
        if self._large_bodies is None:
            self._large_bodies = asyncio.Semaphore(LARGE_BODIES_AT_ONCE)
        async with self._large_bodies:
            if not whole:
                await _read_into(body, receive, limit)
            if len(body) > limit:
                raise _TooLarge
            return bytes(body)

    def _refusal_of_head(self, scope: Scope) -> Problem | None:
        headers = Headers(scope=scope)
        problem = self._oversized_headers(scope) or encoding_problem(headers, scope["path"])
        if problem is not None:
            return problem
        declared = _content_length(headers)
        if declared is not None and declared > self.limits.body_limit(scope["path"]):
            return self._too_large(scope)
        return None

    def _oversized_headers(self, scope: Scope) -> Problem | None:
        field_limit, total, total_limit = self.limits.max_header_field_bytes, 0, self.limits.max_header_bytes
        for name, value in scope["headers"]:
            size = len(name) + len(value)
            if size > field_limit:
                detail = (
                    f"the header field {name[:64].decode('latin-1')!r} is {size} bytes, larger than this broker's "
                    f"limit of {field_limit} bytes for one field (name and value)"
                )
                code = f"{HEADERS_TOO_LARGE.code}.field"
                return HEADERS_TOO_LARGE.problem(detail, code=code, instance=scope["path"], limit_bytes=field_limit)
            total += size + FIELD_OVERHEAD_BYTES
        if total > total_limit:
            detail = f"the header fields take {total} bytes, more than this broker's limit of {total_limit} bytes"
            code = f"{HEADERS_TOO_LARGE.code}.total"
            return HEADERS_TOO_LARGE.problem(detail, code=code, instance=scope["path"], limit_bytes=total_limit)
        return None

    def _too_large(self, scope: Scope) -> Problem:
        limit = self.limits.body_limit(scope["path"])
        detail = f"the request body is larger than this broker's limit of {limit} bytes; nothing was read or stored"
        return PAYLOAD_TOO_LARGE.problem(detail, instance=scope["path"], limit_bytes=limit)


class _TooLarge(Exception):
    """The body went past the limit while it was read."""


class _Disconnected(Exception):
    """The client disconnected before its body was complete."""


def _content_length(headers: Headers) -> int | None:
    value = headers.get("content-length")
    return int(value) if value is not None and value.isdigit() else None


async def _read_into(body: bytearray, receive: Receive, until: int) -> bool:
    """Append the body's messages to ``body`` until it is whole (True) or longer than ``until`` (False: the rest
    is not read yet)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        body += message.get("body", b"")
        whole = not message.get("more_body", False)
        if whole or len(body) > until:
            return whole


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives ``body`` as one message, then whatever the server sends next (a disconnect)."""
    replayed = False

    async def receive_replayed() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive_replayed


async def _refuse(problem: Problem, scope: Scope, receive: Receive, send: Send, *, close: bool) -> None:
    """Answer ``problem``; ``close`` the connection when what is left of the request is never read."""
    await problem_response(problem, {"Connection": "close"} if close else None)(scope, receive, send)
