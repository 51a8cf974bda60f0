"""The sid root entered with pivot_root in a private mount namespace (dev/lab/pivot_root.py), against chroot.

What the next issues need from it: a user may create a user namespace there (unprivileged Apptainer), which the
kernel refuses under chroot; the host's files are out of reach; the repository is there read-only; and nothing
it mounted is left on the host afterwards.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from dev.lab.pivot_root import REPO, enter_root_argv
from tests.lab import SUBMIT_USER, clusters, load_lab, new_tag

pytestmark = pytest.mark.lab

ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
USERNS_AS_USER = ["su", SUBMIT_USER, "-s", "/bin/sh", "-c", "unshare --user --map-root-user id -u"]


@pytest.fixture(scope="module")
def sid_root() -> Path:
    status = load_lab().get("pyslurm", {})
    root = Path(status.get("chroot") or "")
    if not (root / "etc/debian_version").exists():
        pytest.skip(f"the lab has no sid root: {status}")
    return root


def enter(root: Path, argv: Sequence[str]) -> list[str]:
    return enter_root_argv(Path(load_lab()["lab_root"]), root, argv)


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, env=ENV, timeout=60, check=False)


def _host_mounts() -> list[str]:
    return Path("/proc/self/mounts").read_text().splitlines()


def test_a_user_may_create_a_user_namespace_after_pivot_root_but_not_under_chroot(sid_root: Path) -> None:
    entered = _run(enter(sid_root, USERNS_AS_USER))
    assert entered.returncode == 0, entered
    assert entered.stdout.strip() == "0", entered
    chrooted = _run(["chroot", str(sid_root), *USERNS_AS_USER])
    assert chrooted.returncode != 0, chrooted
    assert "Operation not permitted" in chrooted.stderr, chrooted


def test_the_host_is_out_of_reach_and_the_repository_read_only(sid_root: Path) -> None:
    before = _host_mounts()
    script = (
        f"set -e; cat /etc/debian_version; test ! -e {REPO}/pyproject.toml; test -f /src/pyproject.toml; touch /src/x"
    )
    entered = _run(enter(sid_root, ["sh", "-c", script]))
    assert entered.stdout.strip().endswith("sid"), entered  # the sid tree's own file
    assert "Read-only file system" in entered.stderr, entered  # the checks before touch passed (set -e)
    assert entered.returncode != 0, entered
    assert _host_mounts() == before, "entering the root left mounts on the host"


def test_a_job_on_a_chroot_cluster_may_create_a_user_namespace() -> None:
    """The clusters in other Debian roots run their daemons in those roots entered with pivot_root (the lab's
    exec prefix), so a user's job there may create user namespaces, as unprivileged Apptainer will."""
    rooted = [cluster for cluster in clusters() if cluster.raw.get("chroot")]
    assert rooted, "the lab has no cluster in another root"
    for cluster in rooted:
        directory = f"{cluster.raw['scratch_dir']}/{new_tag('userns')}"
        cluster.host_path(directory).mkdir(mode=0o777)
        cluster.host_path(directory).chmod(0o777)
        cluster.slurm(
            "sbatch", "--wait", f"--uid={SUBMIT_USER}", f"--chdir={directory}", "--time=1", "--mem=50",
            "--output=userns.out", "--wrap=unshare --user --map-root-user id -u", timeout_s=120,
        )  # fmt: skip
        assert cluster.host_path(f"{directory}/userns.out").read_text() == "0\n", cluster.name
