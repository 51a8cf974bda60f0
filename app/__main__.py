"""``python -m app``: the broker on one uvicorn worker, at the settings' host and port.

It does not migrate: run ``alembic upgrade head`` first (dev/run.sh does); the broker refuses to start on an
old schema. How it is served (one worker, a parse limit a little above the app's header limits):
:mod:`app.serving`.
"""

from __future__ import annotations

from app.limits import EdgeLimits
from app.main import create_app, stop_notice
from app.serving import serve
from broker.settings import Settings


def main() -> None:
    settings = Settings()
    head_bytes = EdgeLimits.from_settings(settings).server_head_bytes
    app = create_app(settings)
    serve(app, host=settings.host, port=settings.port, max_head_bytes=head_bytes, on_exit=stop_notice(app))


if __name__ == "__main__":
    main()
