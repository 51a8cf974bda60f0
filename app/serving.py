"""How every Conveyor HTTP service runs: one uvicorn worker on h11, no proxy headers trusted, no Server header,
and a problem (``application/problem+json``) for every answer the server gives on its own.

One worker, because the embedded SQLite database has one writer per process (PostgreSQL deployments scale
with more replicas behind a load balancer, each one process). The broker, the Antenna gateway and the
benchmarks' naive app are all served this way, so they compare like with like.

``max_head_bytes`` is the server's parse limit: how much of a request head h11 buffers before the head is
complete. It bounds what a slow or endless head can take; a head that arrives whole within one read (up to
256 KiB) is parsed and left to the app's own header limits (app.limits), which is why the broker sets this a
little above those. A head beyond it, or one h11 cannot parse, is answered by the server itself: 431
``headers_too_large`` or 400 ``malformed_request.http``, as a problem rather than uvicorn's text/plain.
"""

from __future__ import annotations

import contextlib
import http
import json
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

import h11
import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.protocols.http.h11_impl import H11Protocol

from conveyor.problems import HEADERS_TOO_LARGE, MALFORMED_REQUEST, PROBLEM_MEDIA_TYPE, Problem

DEFAULT_MAX_HEAD_BYTES = 16 * 1024  # h11's own default


class ProblemH11Protocol(H11Protocol):
    """uvicorn's h11 protocol; a request it cannot parse gets a problem instead of a text/plain 400."""

    def send_400_response(self, msg: str) -> None:
        problem = self._unparsed_problem()
        body = json.dumps(problem.body()).encode()
        status = problem.status or 400
        headers = [
            (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        reason = http.HTTPStatus(status).phrase.encode()
        for event in (h11.Response(status_code=status, headers=headers, reason=reason), h11.Data(data=body)):
            self.transport.write(self.conn.send(event) or b"")
        self.transport.write(self.conn.send(h11.EndOfMessage()) or b"")
        self.transport.close()

    def _unparsed_problem(self) -> Problem:
        limit = self.config.h11_max_incomplete_event_size or DEFAULT_MAX_HEAD_BYTES
        buffered, _ = self.conn.trailing_data
        if len(buffered) > limit:
            detail = f"the request head is larger than this server parses ({limit} bytes); nothing was read"
            return HEADERS_TOO_LARGE.problem(detail, limit_bytes=limit)
        detail = "the request is not valid HTTP/1.1 (its request line, a header field or its framing)"
        return MALFORMED_REQUEST.problem(detail, code=f"{MALFORMED_REQUEST.code}.http")


class NoticingServer(uvicorn.Server):
    """uvicorn's server; ``on_exit`` is called once, from the signal handler, as it starts to stop (before it
    waits for the open requests to end)."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None] | None) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit and self._on_exit is not None:
            self._on_exit()
        super().handle_exit(sig, frame)


def serve(
    app: Any,
    *,
    host: str,
    port: int,
    max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES,
    log_level: str = "info",
    on_exit: Callable[[], None] | None = None,
) -> None:
    """Serve ``app`` (an ASGI application) until interrupted; ``on_exit`` as :class:`NoticingServer` says."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=ProblemH11Protocol,
        h11_max_incomplete_event_size=max_head_bytes,
        workers=1,
        lifespan="on",
        proxy_headers=False,
        server_header=False,
        log_level=log_level,
    )
    server = NoticingServer(config, on_exit)
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:  # as uvicorn.run: the app refused to start, or the port was taken
        sys.exit(STARTUP_FAILURE)


__all__ = ["DEFAULT_MAX_HEAD_BYTES", "NoticingServer", "ProblemH11Protocol", "serve"]
