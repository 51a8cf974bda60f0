"""``python -m app``: the broker on one uvicorn worker, at the settings' host and port.

It does not migrate: run ``alembic upgrade head`` first (dev/run.sh does); the broker refuses to start on an
old schema. One worker, because the embedded SQLite database has one writer per process (PostgreSQL
deployments scale with more replicas behind a load balancer, each one process).
"""

from __future__ import annotations

import uvicorn

from app.main import create_app
from broker.settings import Settings


def main() -> None:
    settings = Settings()
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        workers=1,
        lifespan="on",
        proxy_headers=False,
        server_header=False,
        log_level="info",
    )


if __name__ == "__main__":
    main()
