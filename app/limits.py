"""The HTTP edge's limits, enforced before any route reads or parses a request: a pure ASGI middleware.

A body larger than ``max_body_bytes`` is refused 413: on its Content-Length before a byte of it is read, or
while it is read (chunked), at the first message past the limit. So no request ever holds more than the limit,
however many arrive at once. A refusal is a problem (``application/problem+json``) and closes the connection:
the rest of that request is never read.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.problems import problem_response
from broker.settings import Settings
from conveyor.problems import PAYLOAD_TOO_LARGE, Problem


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    """What one request may be at most, in bytes."""

    max_body_bytes: int

    @classmethod
    def from_settings(cls, settings: Settings) -> EdgeLimits:
        return cls(max_body_bytes=settings.max_body_bytes)


class RequestLimits:
    """Refuses a request beyond ``limits`` with a problem; hands every other one on, its body read once (and
    never past the limit) and replayed to the app as one message."""

    def __init__(self, app: ASGIApp, limits: EdgeLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        problem = self._refusal_of_head(scope)
        if problem is not None:
            await _refuse(problem, scope, receive, send)
            return
        try:
            body = await _read_body(receive, self.limits.max_body_bytes)
        except _TooLarge:
            await _refuse(self._too_large(scope), scope, receive, send)
            return
        except _Disconnected:
            return  # the client went away mid-body: there is no one to answer
        await self.app(scope, _replay(body, receive), send)

    def _refusal_of_head(self, scope: Scope) -> Problem | None:
        declared = _content_length(Headers(scope=scope))
        if declared is not None and declared > self.limits.max_body_bytes:
            return self._too_large(scope)
        return None

    def _too_large(self, scope: Scope) -> Problem:
        limit = self.limits.max_body_bytes
        detail = f"the request body is larger than this broker's limit of {limit} bytes; nothing was read or stored"
        return PAYLOAD_TOO_LARGE.problem(detail, instance=scope["path"], limit_bytes=limit)


class _TooLarge(Exception):
    """The body went past the limit while it was read."""


class _Disconnected(Exception):
    """The client disconnected before its body was complete."""


def _content_length(headers: Headers) -> int | None:
    value = headers.get("content-length")
    return int(value) if value is not None and value.isdigit() else None


async def _read_body(receive: Receive, limit: int) -> bytes:
    """The whole body; :class:`_TooLarge` at the first message that takes it past ``limit`` bytes."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        body += message.get("body", b"")
        if len(body) > limit:
            raise _TooLarge
        if not message.get("more_body", False):
            return bytes(body)


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


async def _refuse(problem: Problem, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer ``problem`` and close the connection: what is left of the request is never read."""
    await problem_response(problem, {"Connection": "close"})(scope, receive, send)
