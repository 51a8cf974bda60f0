#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine or a warm one: install, lint, type-check, test.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
dev/install.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
if [ $# -gt 0 ]; then
    .venv/bin/pytest "$@"
else
    # The tests that stop or restart a shared service alone (and those xdist cannot tell apart), then the rest in
    # two streams (tests/conftest.py).
    rc=0
    .venv/bin/pytest -m "exclusive or serial" || rc=$?
    .venv/bin/pytest -m "not exclusive and not serial" -n 2 --dist loadgroup || rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "dev/test.sh: tests failed after $(( $(date +%s) - start )) s" >&2
        exit "$rc"
    fi
fi
echo "dev/test.sh: whole suite took $(( $(date +%s) - start )) s"
