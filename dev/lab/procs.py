"""Start daemons in the foreground as our own children's children, record their PIDs, stop them by PID.

A PID file holds the PID and the process's start time (from /proc), so a recycled PID is never signalled.
Stopping escalates from SIGTERM to SIGKILL: slurmds whose controller died ignore SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


def _start_ticks(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime) follows the parenthesised command name, which may itself contain spaces.
    return int(stat.rsplit(")", 1)[1].split()[19])


def spawn(pid_file: Path, argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None) -> int:
    """Start ``argv`` detached in its own session, output to ``log``; record its PID. It runs in the directory of
    ``pid_file``, never in the caller's: a daemon must outlive a test run's directory (slurmrestd dies when its
    working directory is deleted under it)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            start_new_session=True,
            cwd=pid_file.parent,
        )
    pid_file.write_text(json.dumps({"pid": proc.pid, "start": _start_ticks(proc.pid), "argv": list(argv)}))
    return proc.pid


def recorded_pid(pid_file: Path) -> int | None:
    """The recorded PID if that very process is still alive (not a zombie, not a recycled PID)."""
    try:
        record = json.loads(pid_file.read_text())
    except (OSError, ValueError):
        return None
    pid = int(record["pid"])
    if _start_ticks(pid) != record.get("start"):
        return None
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None
    return None if state == "Z" else pid


def _threads_left(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


def _ended(pid_file: Path, pid: int) -> bool:
    """The recorded process has ended, every thread of it: a multithreaded daemon's leader shows as a zombie while
    its other threads are still exiting, and they hold its files until the last one has gone (slurmctld's
    listening socket still takes connections then, which it resets a moment later)."""
    return recorded_pid(pid_file) is None and _threads_left(pid) <= 1


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def stop(pid_file: Path, grace_s: float = 5.0) -> bool:
    """SIGTERM the recorded process, SIGKILL after ``grace_s``; True if something was stopped."""
    pid = recorded_pid(pid_file)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    if not wait_for(lambda: _ended(pid_file, pid), grace_s, on_tick=lambda: _reap(pid)):
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: _ended(pid_file, pid), 5.0, on_tick=lambda: _reap(pid))
    pid_file.unlink(missing_ok=True)
    return True


def terminate(process: subprocess.Popen[bytes], grace_s: float = 30.0) -> None:
    """End a child this process started (a broker or gateway under test or benchmark): SIGTERM, then SIGKILL
    if it has not ended after ``grace_s``; nothing if it has already ended."""
    if process.poll() is not None:
        return
    os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def kill(pid_file: Path) -> int | None:
    """SIGKILL the recorded process at once (fault tests); returns the PID killed."""
    pid = recorded_pid(pid_file)
    if pid is not None:
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: _ended(pid_file, pid), 5.0, on_tick=lambda: _reap(pid))
    return pid


def wait_for(
    condition: Callable[[], bool],
    timeout_s: float,
    interval_s: float = 0.05,
    on_tick: Callable[[], None] | None = None,
) -> bool:
    """Poll ``condition`` until it holds or ``timeout_s`` passes; the interval grows to at most 0.5 s."""
    deadline = time.monotonic() + timeout_s
    while True:
        if on_tick is not None:
            on_tick()
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)
        interval_s = min(interval_s * 1.5, 0.5)


def wait_ready(pid_file: Path, condition: Callable[[], bool], timeout_s: float) -> bool:
    """Like :func:`wait_for`, but gives up at once when the recorded daemon has died."""
    died = False

    def ready_or_dead() -> bool:
        nonlocal died
        if condition():
            return True
        died = recorded_pid(pid_file) is None
        return died

    return wait_for(ready_or_dead, timeout_s) and not died
