"""The pyslurm column of the conformance matrix: the same test module, run inside the sid chroot.

The only Slurm this pyslurm builds against is sid's, so the module runs there, with the chroot's venv (built
by the lab) and the repository bind-mounted read-only at /src.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from dev.lab.pivot_root import run_python
from tests.lab import load_lab

pytestmark = pytest.mark.lab

# The report property carrying the inner run's counts to the terminal summary (tests/conftest.py), also from an
# xdist worker.
INNER_RESULTS = "inner results"


def test_conformance_module_passes_for_pyslurm_inside_the_sid_chroot(
    record_property: Callable[[str, object], None],
) -> None:
    status = load_lab().get("pyslurm", {})
    if status.get("status") not in {"built", "cached"}:
        pytest.skip(f"pyslurm is not available in this lab: {status.get('reason') or status}")
    chroot = Path(status["chroot"])
    args = [
        "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs", "--rootdir=/src", "-c", "/src/pyproject.toml",
        "/src/tests/adapters/test_conformance.py",
    ]  # fmt: skip
    lab_root = Path(load_lab()["lab_root"])
    result = run_python(
        lab_root, chroot, status["venv_python"], args, extra_env={"CONVEYOR_ADAPTERS": "pyslurm"}, timeout_s=900
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else "(no output)"
    record_property(INNER_RESULTS, f"pyslurm conformance inside the {chroot.name} chroot: {summary}")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in summary
