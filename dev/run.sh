#!/usr/bin/env bash
# Run the broker locally in dev mode against the Slurm lab: install (idempotent), migrate the embedded SQLite
# database, then serve on 127.0.0.1:8000 (Ctrl-C stops it). charlie and delta are reached through their
# Factory agents (slurmrestd inside charlie's, pyslurm inside delta's, which runs in the sid root), started once
# the broker is ready and stopped by PID with it; the other lab clusters are direct (dev/lab/agents.py). The
# broker itself runs unable to open any file under charlie's or delta's directories (dev/lab/confine.py).
# The dev token is generated once, printed once, and kept (mode 0600) in the data dir for the next runs.
# The secrets key (jobs' secret_environment) is made by the broker itself on first start: <data dir>/secrets-key.
set -euo pipefail
cd "$(dirname "$0")/.."

dev/install.sh

export CONVEYOR_DATA_DIR="${CONVEYOR_DATA_DIR:-/var/lib/conveyor}"
export CONVEYOR_DEV_MODE=true
export CONVEYOR_HOST=127.0.0.1
export CONVEYOR_PORT="${CONVEYOR_PORT:-8000}"
unset CONVEYOR_DATABASE_URL  # the embedded SQLite default in the data dir

install -d -m 0700 "$CONVEYOR_DATA_DIR"
agents_dir="$CONVEYOR_DATA_DIR/agents"
install -d -m 0700 "$agents_dir"
with_agents=no  # a Factory file of one's own (CONVEYOR_FACTORIES_FILE) runs without the lab's agents
if [ -z "${CONVEYOR_FACTORIES_FILE:-}" ]; then
    with_agents=yes
    export CONVEYOR_FACTORIES_FILE="$CONVEYOR_DATA_DIR/factories.yaml"
    .venv/bin/python -m dev.lab.agents factories --out "$CONVEYOR_FACTORIES_FILE"
fi
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

base_url="http://$CONVEYOR_HOST:$CONVEYOR_PORT"
launcher=()  # with the agents: the broker cannot open any file of charlie's or delta's (dev/lab/confine.py)
[ "$with_agents" = yes ] && launcher=(.venv/bin/python -m dev.lab.agents confined --)
CONVEYOR_DEV_TOKEN="$(cat "$token_file")" "${launcher[@]}" .venv/bin/python -m app &
broker_pid=$!
stop_all() {
    .venv/bin/python -m dev.lab.agents stop --state-dir "$agents_dir" || true
    kill -TERM "$broker_pid" 2>/dev/null || true
    wait "$broker_pid" 2>/dev/null || true
}
trap stop_all EXIT
trap 'exit 130' INT TERM
if [ "$with_agents" = yes ]; then  # once the broker is ready: keys registered, agents connected
    .venv/bin/python -m dev.lab.agents start --broker "$base_url" --token-file "$token_file" --state-dir "$agents_dir"
fi

echo "Conveyor on $base_url (API docs: /docs); Factories from $CONVEYOR_FACTORIES_FILE"
echo "try: curl -H \"Authorization: Bearer \$(cat $token_file)\" $base_url/v1/factories"
wait "$broker_pid"
