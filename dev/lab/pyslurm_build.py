"""LAB-ONLY build of pyslurm inside a chroot, for the pyslurm adapter's conformance run.

pyslurm is released for exactly one Slurm major.minor (25.11.x for 25.11) and no Debian suite ships Slurm
25.11: bookworm has 22.05, trixie 24.11, sid 26.05. Against sid's 26.05 this module builds pyslurm 25.11.2
with setup.py's version check bypassed and compatibility defines in CFLAGS (measured in
shared/docs/SLURM-LAB.md section 4). **That is pyslurm built against a Slurm it was not released for**: it
is good enough to exercise the adapter against a real slurmctld in the lab, and is not a supported build.
Nothing outside dev/lab and the lab's conformance run may rely on it.

``ensure_pyslurm(chroot)`` is called by ``python3 -m dev.lab start`` as root with /usr/bin/python3, so this
module uses the standard library only. It is idempotent: a marker file in the venv records what was built
from what, and a re-run that matches it returns "cached" without starting a process. The venv
(/opt/conveyor-venv inside the chroot) also holds pytest and friends, so the conformance tests can run in
the chroot against the repository bind-mounted at /src, and the agent's dependencies (read from
agent/pyproject.toml), so that ``python -m agent`` runs there with the pyslurm adapter inside; the project itself
is not installed there. A change of those packages alone is installed into the existing venv (no rebuild).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

VENV = "/opt/conveyor-venv"  # inside the chroot
CACHE = "/var/cache/conveyor-pyslurm"  # inside the chroot: sdist, extracted tree, build log, lock
MARKER = f"{VENV}/conveyor-pyslurm.json"
# Test runner and the project's one runtime dependency (pins as in pyproject.toml), so that the
# conformance module can import slurm_adapters from /src and run under pytest inside the chroot.
TEST_PACKAGES = ("pytest>=8,<10", "pytest-asyncio>=0.24,<2", "pytest-timeout>=2.3,<3", "httpx>=0.27,<1")
AGENT_PYPROJECT = Path(__file__).resolve().parents[2] / "agent" / "pyproject.toml"


def agent_packages() -> tuple[str, ...]:
    """The conveyor-agent distribution's runtime dependencies, as its pyproject.toml pins them."""
    with AGENT_PYPROJECT.open("rb") as handle:
        return tuple(tomllib.load(handle)["project"]["dependencies"])


EXTRA_PACKAGES = (*TEST_PACKAGES, *agent_packages())
# What pyslurm's setup.py needs when built without build isolation (pyproject's build-system.requires).
BUILD_PACKAGES = ("Cython>=0.29.37", "setuptools>=59.2.0", "wheel>=0.37.0", "packaging>=21.3")
# Variables passed from the host into chroot commands; everything else is dropped (the host's pip
# config points at host-only wheel directories).
_PASS_ENV = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")
_HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

# setup.py's check is `if Version(self.version) != Version(SLURM_VERSION):`; the bypass keeps the
# detection (and its "Detected Slurm version" line in the log) and only skips the refusal.
_CHECK_LINE = "        if Version(self.version) != Version(SLURM_VERSION):\n"
_CHECK_PATCHED = (
    "        if (Version(self.version) != Version(SLURM_VERSION)\n"
    '                and not os.environ.get("PYSLURM_SKIP_VERSION_CHECK")):  # conveyor lab-only\n'
)

Status = Literal["built", "cached", "skipped", "failed"]


@dataclass(frozen=True, slots=True)
class Recipe:
    """How to build pyslurm against one Slurm series."""

    pyslurm: str
    skip_version_check: bool
    cflags: str
    why: str


# Slurm major.minor -> recipe. Only 26.05 was measured; 25.11 is the release pyslurm 25.11 is made for.
RECIPES: Mapping[str, Recipe] = {
    "26.05": Recipe(
        pyslurm="25.11.2",
        skip_version_check=True,
        cflags=(
            "-DSLURM_BACKWARD_COMPAT -Dslurm_free_ctl_conf=slurm_free_conf -DESLURM_ERROR_ON_DESC_TO_RECORD_COPY=-1"
        ),
        why="LAB-ONLY: pyslurm 25.11.2 against Slurm 26.05, version check bypassed, compat CFLAGS",
    ),
    "25.11": Recipe(pyslurm="25.11.2", skip_version_check=False, cflags="", why="unmodified pyslurm 25.11.2"),
}


@dataclass(frozen=True, slots=True)
class PyslurmBuild:
    """What :func:`ensure_pyslurm` did. ``venv_python`` is a path inside the chroot (None unless usable).

    ``status`` is "failed" when a recipe applied but the build broke; ``reason`` then names the log.
    """

    status: Status
    reason: str | None
    slurm_release: str | None
    venv_python: str | None


class BuildFailed(Exception):
    """One build step failed; the message carries the tail of its output."""


# ---------------------------------------------------------------------------------------------------
# What the chroot has
# ---------------------------------------------------------------------------------------------------


def header_release(chroot: Path) -> str | None:
    """``26.05.5`` from the chroot's slurm_version.h (libslurm-dev), the release pyslurm compiles against."""
    header = chroot / "usr/include/slurm/slurm_version.h"
    try:
        text = header.read_text(encoding="latin-1")
    except FileNotFoundError:
        return None
    match = re.search(r"^#define\s+SLURM_VERSION_NUMBER\s+0x([0-9a-fA-F]+)", text, re.MULTILINE)
    if not match:
        return None
    number = int(match.group(1), 16)
    return f"{number >> 16 & 0xFF}.{number >> 8 & 0xFF:02d}.{number & 0xFF}"


def package_release(chroot: Path) -> str | None:
    """The installed slurmctld (or libslurm-dev) package version, e.g. ``26.05.5`` from ``26.05.5-1``."""
    for package in ("slurmctld", "libslurm-dev", "slurm-client"):
        result = subprocess.run(
            ["chroot", str(chroot), "dpkg-query", "-W", "-f=${Version}", package],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode == 0 and result.stdout.strip():
            version = result.stdout.strip().split(":")[-1]
            return version.split("-")[0]
    return None


def series(release: str) -> str:
    """``26.05`` from ``26.05.5``."""
    return ".".join(release.split(".")[:2])


_PRINT_PYTHON_VERSION = "import sys; print('%d.%d' % sys.version_info[:2])"


def chroot_python(chroot: Path) -> str | None:
    """The chroot's python3 as ``3.14``, read from the /usr/bin/python3 symlink (no process needed)."""
    link = chroot / "usr/bin/python3"
    try:
        target = os.readlink(link)
    except OSError:
        target = ""
    match = re.search(r"python(\d+\.\d+)$", target)
    if match:
        return match.group(1)
    if not link.exists():
        return None
    result = subprocess.run(
        ["chroot", str(chroot), "/usr/bin/python3", "-c", _PRINT_PYTHON_VERSION],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() or None


def slurm_lib_dir(chroot: Path) -> str | None:
    """The directory to give setup.py as SLURM_LIB_DIR (it looks in DIR, DIR/slurm and DIR/slurm-wlm)."""
    for pattern in (
        "usr/lib/*/slurm-wlm/libslurmfull.so",
        "usr/lib/*/slurm/libslurmfull.so",
        "usr/lib*/libslurmfull.so",
    ):
        for found in sorted(chroot.glob(pattern)):
            lib_dir = found.parent
            if lib_dir.name in {"slurm-wlm", "slurm"}:
                lib_dir = lib_dir.parent
            return "/" + str(lib_dir.relative_to(chroot))
    return None


# ---------------------------------------------------------------------------------------------------
# Running things inside the chroot
# ---------------------------------------------------------------------------------------------------


def _inside(chroot: Path, path: str) -> Path:
    return chroot / path.lstrip("/")


class _Runner:
    """Runs argv inside the chroot with a clean environment, appending everything to the build log."""

    def __init__(self, chroot: Path, log: Path) -> None:
        self.chroot = chroot
        self.log = log

    def __call__(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        base = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root",
            "LANG": "C.UTF-8",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "PIP_DEFAULT_TIMEOUT": os.environ.get("PIP_DEFAULT_TIMEOUT", "60"),
            "PIP_NO_INPUT": "1",
        }
        base.update({k: v for k, v in os.environ.items() if k in _PASS_ENV})
        base.update(env or {})
        full = ["chroot", str(self.chroot), "env", "-i", *(f"{k}={v}" for k, v in base.items()), *argv]
        started = time.monotonic()
        with self.log.open("a", encoding="utf-8") as handle:
            handle.write(f"\n$ {' '.join(argv)}\n")
            handle.flush()
            result = subprocess.run(full, stdout=handle, stderr=subprocess.STDOUT, check=False)
            handle.write(f"# rc={result.returncode} in {time.monotonic() - started:.1f} s\n")
        if result.returncode != 0:
            tail = self.log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
            raise BuildFailed(f"{' '.join(argv[:4])} ... exited {result.returncode}:\n" + "\n".join(tail))


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One build per chroot at a time (the lab's start and a developer's run may race)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------------
# The build
# ---------------------------------------------------------------------------------------------------


def _wanted(release: str, python: str, recipe: Recipe) -> dict[str, object]:
    return {
        "slurm_release": release,
        "python": python,
        "pyslurm": recipe.pyslurm,
        "skip_version_check": recipe.skip_version_check,
        "cflags": recipe.cflags,
        "extra_packages": list(EXTRA_PACKAGES),
    }


def _recorded(chroot: Path) -> dict[str, object] | None:
    """What the marker says was built, if the venv still holds pyslurm."""
    try:
        recorded = json.loads(_inside(chroot, MARKER).read_text())
    except (FileNotFoundError, ValueError):
        return None
    built = _inside(chroot, f"{VENV}/bin/python").exists() and any(
        _inside(chroot, f"{VENV}/lib").glob("python*/site-packages/pyslurm/__init__.py")
    )
    return recorded if built and isinstance(recorded.get("wanted"), dict) else None


def _cached(chroot: Path, wanted: Mapping[str, object]) -> bool:
    recorded = _recorded(chroot)
    return recorded is not None and recorded["wanted"] == dict(wanted)


def _only_extras_differ(chroot: Path, wanted: Mapping[str, object]) -> bool:
    """The venv holds the wanted pyslurm build, and only its extra packages changed."""
    recorded = _recorded(chroot)
    if recorded is None:
        return False
    old = dict(recorded["wanted"])  # type: ignore[call-overload]
    return {**old, "extra_packages": wanted["extra_packages"]} == dict(wanted)


def _add_extras(chroot: Path, wanted: Mapping[str, object], log: Path) -> None:
    """Install the extra packages into the existing venv and record them in the marker."""
    _Runner(chroot, log)([f"{VENV}/bin/python", "-m", "pip", "install", "--no-cache-dir", *EXTRA_PACKAGES])
    marker = _inside(chroot, MARKER)
    recorded = json.loads(marker.read_text())
    marker.write_text(json.dumps({**recorded, "wanted": dict(wanted)}, indent=2) + "\n")


def _copy_ca_bundle(chroot: Path) -> None:
    """The network intercepts TLS: the chroot's own bundle (re-made by ca-certificates) lacks its CA."""
    target = chroot / "etc/ssl/certs/ca-certificates.crt"
    if not _HOST_CA_BUNDLE.exists():
        return
    if target.exists() and target.read_bytes() == _HOST_CA_BUNDLE.read_bytes():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink():
        target.unlink()
    shutil.copyfile(_HOST_CA_BUNDLE, target)


def _patch_version_check(setup_py: Path) -> None:
    text = setup_py.read_text()
    if text.count(_CHECK_LINE) != 1:
        raise BuildFailed(f"{setup_py}: the Slurm version check line was not found once; recipe out of date")
    setup_py.write_text(text.replace(_CHECK_LINE, _CHECK_PATCHED))


def _build(chroot: Path, recipe: Recipe, wanted: Mapping[str, object], log: Path) -> None:
    run = _Runner(chroot, log)
    lib_dir = slurm_lib_dir(chroot)
    if lib_dir is None:
        raise BuildFailed("libslurmfull.so not found in the chroot (is libslurm-dev installed?)")
    _copy_ca_bundle(chroot)

    # A venv without a marker is a half-done build: start it over.
    _inside(chroot, MARKER).unlink(missing_ok=True)
    shutil.rmtree(_inside(chroot, VENV), ignore_errors=True)
    run(["/usr/bin/python3", "-m", "venv", VENV])
    pip = [f"{VENV}/bin/python", "-m", "pip"]
    run([*pip, "install", "--no-cache-dir", *BUILD_PACKAGES, *EXTRA_PACKAGES])

    # The sdist only: with the build tools already in the venv, --no-build-isolation makes pip's metadata
    # step local (no second download of Cython and setuptools into an isolated env).
    sdist_dir = f"{CACHE}/sdist"
    sdist = f"{sdist_dir}/pyslurm-{recipe.pyslurm}.tar.gz"
    if not _inside(chroot, sdist).exists():
        run(
            [
                *pip, "download", "--no-deps", "--no-binary", "pyslurm", "--no-build-isolation",
                "--no-cache-dir", "-d", sdist_dir, f"pyslurm=={recipe.pyslurm}",
            ]
        )  # fmt: skip

    build_root = f"{CACHE}/build"
    shutil.rmtree(_inside(chroot, build_root), ignore_errors=True)
    _inside(chroot, build_root).mkdir(parents=True)
    run(["tar", "-xzf", sdist, "-C", build_root, "--no-same-owner"])
    source = f"{build_root}/pyslurm-{recipe.pyslurm}"
    env = {
        "SLURM_INCLUDE_DIR": "/usr/include",
        "SLURM_LIB_DIR": lib_dir,
        "PYSLURM_BUILD_JOBS": str(os.cpu_count() or 1),
    }
    if recipe.skip_version_check:
        _patch_version_check(_inside(chroot, f"{source}/setup.py"))
        env["PYSLURM_SKIP_VERSION_CHECK"] = "1"
    if recipe.cflags:
        env["CFLAGS"] = recipe.cflags
    run([*pip, "install", "-v", "--no-deps", "--no-build-isolation", "--no-cache-dir", source], env=env)

    # Import without slurm_init (which needs a slurm.conf): proves the extensions load against libslurm.
    run(
        [f"{VENV}/bin/python", "-c", "import pyslurm; print('pyslurm', pyslurm.__version__, 'imports')"],
        env={"PYSLURM_DISABLE_AUTO_INIT": "1"},
    )
    shutil.rmtree(_inside(chroot, build_root), ignore_errors=True)
    marker = {"wanted": dict(wanted), "why": recipe.why, "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    _inside(chroot, MARKER).write_text(json.dumps(marker, indent=2) + "\n")


def _plan(chroot: Path) -> tuple[str, Recipe, str] | PyslurmBuild:
    """(release, recipe, python) when a recipe fits this chroot, else the "skipped" answer saying why."""
    release = header_release(chroot)
    if release is None:
        found = package_release(chroot)
        where = f"Slurm {found} is installed" if found else "no Slurm packages found"
        reason = f"no slurm_version.h in {chroot} (libslurm-dev missing; {where})"
        return PyslurmBuild("skipped", reason, found, None)
    recipe = RECIPES.get(series(release))
    if recipe is None:
        releases = sorted({release, package_release(chroot) or release})
        reason = (
            f"no pyslurm recipe for Slurm {', '.join(releases)} in {chroot}; "
            f"recipes exist for {', '.join(sorted(RECIPES))}"
        )
        return PyslurmBuild("skipped", reason, release, None)
    python = chroot_python(chroot)
    if python is None:
        return PyslurmBuild("skipped", f"no /usr/bin/python3 in {chroot}", release, None)
    return release, recipe, python


def ensure_pyslurm(chroot: Path) -> PyslurmBuild:
    """Build pyslurm plus the test tools into the chroot's /opt/conveyor-venv, unless already there."""
    plan = _plan(chroot)
    if isinstance(plan, PyslurmBuild):
        return plan
    release, recipe, python = plan
    wanted = _wanted(release, python, recipe)
    if _cached(chroot, wanted):
        return PyslurmBuild("cached", recipe.why, release, f"{VENV}/bin/python")
    with _locked(_inside(chroot, f"{CACHE}/lock")):
        return _build_or_extend(chroot, release, recipe, python, wanted)


def _build_or_extend(
    chroot: Path, release: str, recipe: Recipe, python: str, wanted: Mapping[str, object]
) -> PyslurmBuild:
    """Under the build lock: nothing to do, only the extra packages to add, or the whole build."""
    venv_python = f"{VENV}/bin/python"
    log = _inside(chroot, f"{CACHE}/build.log")
    if _cached(chroot, wanted):  # another process built it while this one waited
        return PyslurmBuild("cached", recipe.why, release, venv_python)
    started = time.monotonic()
    try:
        if _only_extras_differ(chroot, wanted):
            _add_extras(chroot, wanted, log)
            return PyslurmBuild("built", f"{recipe.why}; extra packages added (log: {log})", release, venv_python)
        log.write_text(f"# pyslurm {recipe.pyslurm} for Slurm {release}, Python {python}: {recipe.why}\n")
        _build(chroot, recipe, wanted, log)
    except BuildFailed as error:
        return PyslurmBuild("failed", f"{error}\n(full log: {log})", release, None)
    seconds = time.monotonic() - started
    return PyslurmBuild("built", f"{recipe.why}; built in {seconds:.0f} s (log: {log})", release, venv_python)


def main() -> None:
    """``python3 -m dev.lab.pyslurm_build [CHROOT]``: build (or confirm) and print the result."""
    chroot = Path(sys.argv[1] if len(sys.argv) > 1 else "/var/lib/conveyor-lab/chroots/sid")
    started = time.monotonic()
    build = ensure_pyslurm(chroot)
    print(json.dumps(dataclasses.asdict(build), indent=2))
    print(f"# {time.monotonic() - started:.2f} s")
    raise SystemExit(0 if build.status in {"built", "cached", "skipped"} else 1)


if __name__ == "__main__":
    main()
