"""The lab's local container image: an Apptainer sandbox directory in the sid root, for jobs on its cluster.

No image registry is reachable here, so the image is made on the spot: Debian's static busybox (installed in the
sid root by :mod:`dev.lab.install`) with a link per applet, and an ``/etc/os-release`` of its own
(``ID=conveyor-test``), so a job can tell the image's files from the root's. It is a directory, not a SIF:
what Apptainer does with a SIF here is in docs/containers-lab.md.

:func:`ensure_test_image` is idempotent and costs one file read when the image is already there (a stamp
records what built it); ``dev.lab install`` and ``dev.lab start`` call it after installing the sid root. This
module uses the standard library only: ``python3 -m dev.lab`` runs it with the system Python.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# The Debian suite whose root has Apptainer (only sid packages it): its cluster's Factory runs containers.
APPTAINER_SUITE = "sid"
# The image as jobs on the sid root's cluster see it (inside the root), readable by every user.
TEST_IMAGE = "/opt/conveyor-images/test-sandbox"
TEST_IMAGE_ID = "conveyor-test"  # the image's os-release ID (sid's is "debian")
OS_RELEASE = f"""NAME="Conveyor test image"
ID={TEST_IMAGE_ID}
VERSION_ID="1"
PRETTY_NAME="Conveyor test image (busybox)"
"""
APPLETS = ["sh", "cat", "env", "ls", "echo", "id", "test", "[", "true", "false", "sleep", "pwd", "printenv"]
# What Apptainer mounts over or binds into; present so that it need not make them (a read-only image stays so).
MOUNT_POINTS = ["proc", "sys", "dev", "tmp", "home", "root", "etc", "var/tmp", "mnt", "srv", "opt"]
STAMP = ".conveyor-image"  # inside the image: what built it; a different text rebuilds it
BUSYBOX = "bin/busybox"  # in the sid root, from busybox-static
VERSION = "1"  # bump when the image's layout changes


def host_path(root: Path) -> Path:
    """Where the test image is on the host, for the root (host path) it lives in."""
    return root / TEST_IMAGE.lstrip("/")


def _stamp_text(busybox: Path) -> str:
    info = busybox.stat()
    return f"version={VERSION} busybox_size={info.st_size} busybox_mtime={int(info.st_mtime)}\n"


def _build(target: Path, busybox: Path) -> None:
    """Write the image's tree at ``target`` (which must not exist)."""
    (target / "bin").mkdir(parents=True)
    shutil.copy2(busybox, target / "bin/busybox")
    for applet in APPLETS:
        (target / "bin" / applet).symlink_to("busybox")
    (target / "usr").mkdir()
    (target / "usr/bin").symlink_to("../bin")
    for sub in MOUNT_POINTS:
        (target / sub).mkdir(parents=True, exist_ok=True)
    (target / "tmp").chmod(0o1777)
    (target / "var/tmp").chmod(0o1777)
    (target / "etc/os-release").write_text(OS_RELEASE)
    (target / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (target / "etc/group").write_text("root:x:0:\n")
    for path in [target, *target.rglob("*")]:  # readable by every user, whatever the umask
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | (0o555 if path.is_dir() else 0o444))


def ensure_test_image(root: Path) -> Path:
    """The test image in ``root`` (a host path), built unless its stamp says this checkout built it; returns
    its host path."""
    image = host_path(root)
    busybox = root / BUSYBOX
    stamp = _stamp_text(busybox)
    try:
        if (image / STAMP).read_text() == stamp:
            return image
    except OSError:
        pass
    partial = image.with_name(image.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    _build(partial, busybox)
    (partial / STAMP).write_text(stamp)
    (partial / STAMP).chmod(0o644)
    image.parent.mkdir(parents=True, exist_ok=True)
    image.parent.chmod(0o755)
    old = image.with_name(image.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if image.exists():
        os.rename(image, old)
    os.rename(partial, image)
    shutil.rmtree(old, ignore_errors=True)
    return image
