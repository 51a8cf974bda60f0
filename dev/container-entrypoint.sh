#!/bin/sh
# Migrations first (the only way the schema changes), then the broker in the foreground.
set -eu
cd /app
alembic -c /app/alembic.ini upgrade head
exec python -m app "$@"
