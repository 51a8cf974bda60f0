"""A process run with dev/lab/confine.py, as root, cannot open anything under the hidden directories: not by
path, not by unmounting what hides them, not through another process's root in /proc; it still reads the rest."""

from __future__ import annotations

import subprocess
from pathlib import Path

from dev.lab.confine import confined_argv


def _confined(hidden: Path, script: str) -> subprocess.CompletedProcess[str]:
    argv = confined_argv([hidden], ["sh", "-c", script, "probe", str(hidden)])
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def _host_mounts() -> str:
    return Path("/proc/self/mounts").read_text()


def test_the_hidden_directory_is_empty_and_stays_so(tmp_path: Path) -> None:
    hidden, beside = tmp_path / "site", tmp_path / "beside"
    (hidden / "keys").mkdir(parents=True)
    (hidden / "keys" / "slurm.key").write_text("secret")
    beside.write_text("readable")
    before = _host_mounts()
    probes = {
        "by path": 'cat "$1/keys/slurm.key"',
        "unmounted": 'umount "$1" && cat "$1/keys/slurm.key"',
        "mounted over again": 'mount --bind / /mnt && cat "/mnt$1/keys/slurm.key"',
        "through init's root": 'cat "/proc/1/root$1/keys/slurm.key"',
    }
    for how, script in probes.items():
        result = _confined(hidden, script)
        assert result.returncode != 0, (how, result)
        assert "secret" not in result.stdout, (how, result)
    listed = _confined(hidden, 'ls -A "$1"')
    assert (listed.returncode, listed.stdout) == (0, ""), listed
    read = _confined(hidden, f"cat {beside}")
    assert (read.returncode, read.stdout) == (0, "readable"), read
    assert _host_mounts() == before, "the confinement left mounts on the host"
