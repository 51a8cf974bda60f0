#!/usr/bin/env bash
# Install everything Conveyor needs on a fresh Debian 12 or 13 machine (as root), then start the Slurm lab.
# Idempotent: a second run only checks. Used by the README's quickstart, by dev/test.sh and so by CI.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "dev/install.sh must run as root (it installs Debian packages and starts Slurm daemons)" >&2
    exit 2
fi

need=()
for pkg in python3 python3-venv python3-dev gcc ca-certificates; do
    dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null | grep -qx installed || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

# Debian's own Python, so the venv is the same on every Debian machine (not whatever pyenv is first on PATH).
PY=/usr/bin/python3
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    rm -rf .venv
    "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(cat pyproject.toml sdk/pyproject.toml | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -e ./sdk -e '.[dev]'
    rm -f .venv/.installed-*
    touch "$stamp"
fi

# PostgreSQL of our own (127.0.0.1:5433, under the lab dir) for the tests that run on both databases;
# it writes its URL to /var/lib/conveyor-lab/postgres/url.
"$PY" -m dev.postgres start

# The Slurm lab: packages, users, chroots for the other Slurm releases, pyslurm (lab-only), every cluster.
"$PY" -m dev.lab start
