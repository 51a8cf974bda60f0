"""The pyslurm column of the conformance matrix: the same test module, run inside the sid chroot.

libslurm binds one cluster per process and the only Slurm this pyslurm builds against is sid's, so the module
runs there, with the chroot's venv (built by the lab) and the repository bind-mounted read-only at /src.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab import load_lab

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
INNER_RESULTS: list[str] = []


@pytest.fixture
def sid_chroot() -> Iterator[tuple[Path, str]]:
    status = load_lab().get("pyslurm", {})
    if status.get("status") not in {"built", "cached"}:
        pytest.skip(f"pyslurm is not available in this lab: {status.get('reason') or status}")
    chroot = Path(status["chroot"])
    src = chroot / "src"
    src.mkdir(exist_ok=True)
    subprocess.run(["mount", "--bind", str(REPO), str(src)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(src)], check=True)
        yield chroot, str(status["venv_python"])
    finally:
        subprocess.run(["umount", str(src)], check=True)


def test_conformance_module_passes_for_pyslurm_inside_the_sid_chroot(sid_chroot: tuple[Path, str]) -> None:
    chroot, python = sid_chroot
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "CONVEYOR_ADAPTERS": "pyslurm",
        "CONVEYOR_LAB_JSON": "/slurmlab/lab.json",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONPATH": "/src",
    }
    argv = [
        "chroot", str(chroot), python, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs",
        "--rootdir=/src", "-c", "/src/pyproject.toml", "/src/tests/adapters/test_conformance.py",
    ]  # fmt: skip
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900, check=False, cwd="/")
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else "(no output)"
    INNER_RESULTS.append(f"pyslurm conformance inside {chroot.name} chroot: {summary}")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in summary
    assert os.environ.get("CONVEYOR_ADAPTERS") != "pyslurm"  # never recurse into ourselves
