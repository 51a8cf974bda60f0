"""How every Conveyor HTTP service runs: one uvicorn worker, no proxy headers trusted, no Server header.

One worker, because the embedded SQLite database has one writer per process (PostgreSQL deployments scale
with more replicas behind a load balancer, each one process). The broker, the Antenna gateway and the
benchmarks' naive app are all served this way, so they compare like with like.
"""

from __future__ import annotations

from typing import Any

import uvicorn


def serve(app: Any, *, host: str, port: int, log_level: str = "info") -> None:
    """Serve ``app`` (an ASGI application) until interrupted."""
    uvicorn.run(
        app,
        host=host,
        port=port,
        workers=1,
        lifespan="on",
        proxy_headers=False,
        server_header=False,
        log_level=log_level,
    )


__all__ = ["serve"]
