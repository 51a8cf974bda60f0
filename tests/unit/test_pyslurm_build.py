"""The lab-only pyslurm build's decisions, on fake chroot trees (no build, no chroot processes)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from dev.lab import pyslurm_build
from dev.lab.pyslurm_build import RECIPES, ensure_pyslurm, header_release, series


def fake_chroot(root: Path, version_number: str | None, python: str = "3.14") -> Path:
    if version_number is not None:
        header = root / "usr/include/slurm/slurm_version.h"
        header.parent.mkdir(parents=True)
        header.write_text(f"#define SLURM_VERSION_NUMBER {version_number}\n")
    bin_dir = root / "usr/bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python3").symlink_to(f"python{python}")
    return root


def test_header_release(tmp_path: Path) -> None:
    assert header_release(fake_chroot(tmp_path, "0x1a0505")) == "26.05.5"
    assert series("26.05.5") == "26.05"
    assert "26.05" in RECIPES
    assert RECIPES["26.05"].skip_version_check
    assert not RECIPES["25.11"].skip_version_check


def test_no_recipe_is_skipped_with_the_release(tmp_path: Path) -> None:
    build = ensure_pyslurm(fake_chroot(tmp_path, "0x180b05"))
    assert build.status == "skipped"
    assert build.reason is not None
    assert "24.11.5" in build.reason
    assert build.venv_python is None


def test_matching_marker_is_cached_and_fast(tmp_path: Path) -> None:
    chroot = fake_chroot(tmp_path, "0x1a0505")
    venv = chroot / pyslurm_build.VENV.lstrip("/")
    (venv / "bin").mkdir(parents=True)
    (venv / "bin/python").touch()
    package = venv / "lib/python3.14/site-packages/pyslurm"
    package.mkdir(parents=True)
    (package / "__init__.py").touch()
    wanted = pyslurm_build._wanted("26.05.5", "3.14", RECIPES["26.05"])
    (chroot / pyslurm_build.MARKER.lstrip("/")).write_text(json.dumps({"wanted": wanted}))
    started = time.monotonic()
    build = ensure_pyslurm(chroot)
    assert time.monotonic() - started < 1
    assert (build.status, build.slurm_release, build.venv_python) == (
        "cached",
        "26.05.5",
        "/opt/conveyor-venv/bin/python",
    )


def test_patch_keeps_detection_and_skips_refusal(tmp_path: Path) -> None:
    setup_py = tmp_path / "setup.py"
    setup_py.write_text("import os\n" + pyslurm_build._CHECK_LINE + "            raise RuntimeError('mismatch')\n")
    pyslurm_build._patch_version_check(setup_py)
    text = setup_py.read_text()
    assert "PYSLURM_SKIP_VERSION_CHECK" in text
    assert pyslurm_build._CHECK_LINE not in text
