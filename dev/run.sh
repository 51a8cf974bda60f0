#!/usr/bin/env bash
# Run the broker locally in dev mode against the Slurm lab: install (idempotent), migrate the embedded SQLite
# database, then serve on 127.0.0.1:8000 in the foreground (Ctrl-C stops it).
# The dev token is generated once, printed once, and kept (mode 0600) in the data dir for the next runs.
set -euo pipefail
cd "$(dirname "$0")/.."

dev/install.sh

export CONVEYOR_DATA_DIR="${CONVEYOR_DATA_DIR:-/var/lib/conveyor}"
export CONVEYOR_FACTORIES_FILE="${CONVEYOR_FACTORIES_FILE:-${CONVEYOR_LAB_DIR:-/var/lib/conveyor-lab}/factories.yaml}"
export CONVEYOR_DEV_MODE=true
export CONVEYOR_HOST=127.0.0.1
export CONVEYOR_PORT="${CONVEYOR_PORT:-8000}"
unset CONVEYOR_DATABASE_URL  # the embedded SQLite default in the data dir

install -d -m 0700 "$CONVEYOR_DATA_DIR"
token_file="$CONVEYOR_DATA_DIR/dev-token"
if [ ! -s "$token_file" ]; then
    (umask 077 && .venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(32))' >"$token_file")
    echo "dev token (shown once; kept in $token_file):"
    echo "    $(cat "$token_file")"
else
    echo "dev token: in $token_file"
fi

# Migrations are a step of their own: the broker refuses to start on an old schema, it never migrates itself.
.venv/bin/alembic upgrade head

echo "Conveyor on http://$CONVEYOR_HOST:$CONVEYOR_PORT (API docs: /docs); Factories from $CONVEYOR_FACTORIES_FILE"
echo "try: curl -H \"Authorization: Bearer \$(cat $token_file)\" http://$CONVEYOR_HOST:$CONVEYOR_PORT/v1/factories"
CONVEYOR_DEV_TOKEN="$(cat "$token_file")" exec .venv/bin/python -m app
