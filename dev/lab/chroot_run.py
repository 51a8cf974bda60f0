"""Run this repository's code inside a lab chroot: the repo bind-mounted read-only at /src, a clean env."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
INSIDE_REPO = "/src"
INSIDE_LAB_JSON = "/slurmlab/lab.json"  # the chroot's own view of the lab (dev/LAB-DESCRIPTION.md)


@contextlib.contextmanager
def repo_mounted(chroot: Path) -> Iterator[None]:
    src = chroot / INSIDE_REPO.lstrip("/")
    src.mkdir(exist_ok=True)
    subprocess.run(["mount", "--bind", str(REPO), str(src)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(src)], check=True)
        yield
    finally:
        subprocess.run(["umount", str(src)], check=True)


def run_python(
    chroot: Path, python: str, args: Sequence[str], extra_env: Mapping[str, str], timeout_s: float
) -> subprocess.CompletedProcess[str]:
    """``python args...`` inside the chroot with the repo on PYTHONPATH; output captured."""
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONPATH": INSIDE_REPO,
        "CONVEYOR_LAB_JSON": INSIDE_LAB_JSON,
        **extra_env,
    }
    with repo_mounted(chroot):
        return subprocess.run(
            ["chroot", str(chroot), python, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            cwd="/",
        )
