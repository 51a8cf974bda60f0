"""Everything the lab needs installed: Debian packages, users, and a chroot per other Slurm release.

Idempotent: each step checks before it acts, so a warm re-run costs well under a second.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from dev.lab import images
from dev.lab.layout import chroot_dir
from dev.lab.topology import REST_USER, SUBMIT_USERS

MIRROR = "http://deb.debian.org/debian"
SLURM_PACKAGES = ["munge", "slurmctld", "slurmd", "slurm-client", "slurmrestd", "slurm-wlm-jwt-plugin"]
HOST_PACKAGES = [*SLURM_PACKAGES, "slurmdbd", "mariadb-server", "debootstrap", "ca-certificates", "util-linux"]
CHROOT_PACKAGES = [
    *SLURM_PACKAGES,
    "ca-certificates",
    # for building pyslurm (lab-only) and running the conformance suite inside the chroot
    "libslurm-dev", "python3-dev", "python3-venv", "build-essential",
]  # fmt: skip
# Only sid packages Apptainer: jobs on the sid root's cluster run containers with it (docs/containers-lab.md);
# busybox-static is what the lab's test image is made of (dev/lab/images.py).
SID_PACKAGES = ["apptainer", "busybox-static"]
APT_ENV = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}


def _run(argv: list[str], timeout_s: float = 1800) -> None:
    subprocess.run(argv, check=True, env=APT_ENV, timeout=timeout_s)


def _missing_packages(packages: list[str], prefix: list[str]) -> list[str]:
    result = subprocess.run(
        [*prefix, "dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\n", *packages],
        capture_output=True,
        text=True,
        check=False,
    )
    installed = {line.split()[0] for line in result.stdout.splitlines() if line.endswith(" installed")}
    return [p for p in packages if p not in installed]


def _apt_install(packages: list[str], prefix: list[str], *, sid: bool = False) -> None:
    missing = _missing_packages(packages, prefix)
    if not missing:
        return
    # sid's Release files are often past their Valid-Until on the mirror: accept them.
    options = ["-o", "Acquire::Check-Valid-Until=false"] if sid else []
    _run([*prefix, "apt-get", *options, "update", "-qq"])
    _run([*prefix, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing])


def _ensure_users(prefix: list[str], passwd: Path) -> None:
    existing = {line.split(":", 1)[0] for line in passwd.read_text().splitlines()}
    for user, uid in SUBMIT_USERS.items():
        if user not in existing:
            _run([*prefix, "useradd", "-u", str(uid), "-m", "-s", "/bin/bash", user])
    if REST_USER not in existing:
        _run([*prefix, "useradd", "--system", "-M", "-s", "/usr/sbin/nologin", REST_USER])


def host() -> None:
    """Host packages and users (policy-rc.d already keeps package installs from starting services)."""
    _apt_install(HOST_PACKAGES, [])
    _ensure_users([], Path("/etc/passwd"))


def _mount(kind: list[str], target: Path) -> None:
    if not os.path.ismount(target):
        _run(["mount", *kind, str(target)])


def chroot(suite: str) -> Path:
    """A minimal Debian root for ``suite`` with Slurm, users, CA bundle, /proc, /dev and /dev/pts; sid's also has
    Apptainer and the lab's test image (:mod:`dev.lab.images`)."""
    root = chroot_dir(suite)
    if not (root / "etc/debian_version").exists():
        partial = root.with_name(root.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.parent.mkdir(parents=True, exist_ok=True)
        _run(["debootstrap", "--variant=minbase", suite, str(partial), MIRROR])
        partial.rename(root)
    policy = root / "usr/sbin/policy-rc.d"
    if not policy.exists():
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    _mount(["-t", "proc", "proc"], root / "proc")
    _mount(["--bind", "/dev"], root / "dev")
    # The bind above leaves out the mounts under /dev: without /dev/pts/ptmx Apptainer cannot mount a devpts of
    # its own (--contain, --containall, and the unpacking of a SIF fail) (docs/containers-lab.md).
    _mount(["--bind", "/dev/pts"], root / "dev/pts")
    for name in ("etc/hosts", "etc/resolv.conf"):
        shutil.copyfile(Path("/") / name, root / name)
    prefix = ["chroot", str(root)]
    sid = suite == "sid"
    apptainer = suite == images.APPTAINER_SUITE
    _apt_install([*CHROOT_PACKAGES, *(SID_PACKAGES if apptainer else [])], prefix, sid=sid)
    # This network re-signs TLS: pip inside the chroot needs the host's CA bundle (after apt, which rewrites it).
    shutil.copyfile("/etc/ssl/certs/ca-certificates.crt", root / "etc/ssl/certs/ca-certificates.crt")
    _ensure_users(prefix, root / "etc/passwd")
    if apptainer:
        images.ensure_test_image(root)
    return root


def unmount_chroot(suite: str) -> None:
    root = chroot_dir(suite)
    for sub in ("src", "dev/pts", "dev", "proc"):
        target = root / sub
        if os.path.ismount(target):
            subprocess.run(["umount", "--lazy", str(target)], check=False)
