"""``python -m app``: the broker on one uvicorn worker, at the settings' host and port.

It does not migrate: run ``alembic upgrade head`` first (dev/run.sh does); the broker refuses to start on an
old schema. How it is served (one worker): :mod:`app.serving`.
"""

from __future__ import annotations

from app.main import create_app
from app.serving import serve
from broker.settings import Settings


def main() -> None:
    settings = Settings()
    serve(create_app(settings), host=settings.host, port=settings.port)


if __name__ == "__main__":
    main()
