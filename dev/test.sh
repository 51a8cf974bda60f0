#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine or a warm one: install, lint, type-check, test.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
dev/install.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/pytest "$@"
echo "dev/test.sh: whole suite took $(( $(date +%s) - start )) s"
