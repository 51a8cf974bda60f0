"""The lab's process handling, on real processes: stop by recorded PID, escalate, never hit a stranger."""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path

import pytest

from dev.lab import procs

IGNORES_SIGTERM = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
)


def _spawn(tmp_path: Path, code: str) -> tuple[Path, int]:
    pid_file = tmp_path / "daemon.pid"
    log = tmp_path / "daemon.log"
    pid = procs.spawn(pid_file, [sys.executable, "-c", code], log)
    assert procs.wait_for(lambda: "up" in log.read_text(), 10)
    return pid_file, pid


def test_stop_escalates_to_sigkill_for_a_process_that_ignores_sigterm(tmp_path: Path) -> None:
    pid_file, pid = _spawn(tmp_path, IGNORES_SIGTERM)
    assert procs.recorded_pid(pid_file) == pid
    assert procs.stop(pid_file, grace_s=0.5)
    assert procs.recorded_pid(pid_file) is None
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3]
    assert not pid_file.exists()


def test_a_recycled_pid_is_never_signalled(tmp_path: Path) -> None:
    pid_file, pid = _spawn(tmp_path, IGNORES_SIGTERM)
    record = json.loads(pid_file.read_text())
    record["start"] = record["start"] - 1  # as if the PID now belonged to another process
    pid_file.write_text(json.dumps(record))
    try:
        assert procs.recorded_pid(pid_file) is None
        assert procs.stop(pid_file) is False
        assert Path(f"/proc/{pid}").exists()
    finally:
        record["start"] += 1
        pid_file.write_text(json.dumps(record))
        procs.stop(pid_file, grace_s=0.1)


def test_wait_ready_gives_up_as_soon_as_the_daemon_dies(tmp_path: Path) -> None:
    pid_file = tmp_path / "short.pid"
    procs.spawn(pid_file, [sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "short.log")
    started = time.monotonic()
    assert procs.wait_ready(pid_file, lambda: False, timeout_s=30) is False
    assert time.monotonic() - started < 10


def test_a_daemon_runs_in_its_own_directory_not_the_callers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test run's directory may be deleted while the lab's daemons live on (slurmrestd died of exactly that)."""
    caller = tmp_path / "caller"
    caller.mkdir()
    monkeypatch.chdir(caller)
    home = tmp_path / "daemon"
    pid_file, log = home / "daemon.pid", home / "daemon.log"
    code = "import os, time; print('cwd', os.getcwd(), flush=True); time.sleep(60)"
    procs.spawn(pid_file, [sys.executable, "-c", code], log)
    try:
        assert procs.wait_for(lambda: "cwd" in log.read_text(), 10)
        assert log.read_text().split()[-1] == str(home)
    finally:
        procs.stop(pid_file, grace_s=0.5)


BUSY_LISTENER = """
import socket, threading, time
def spin():
    while True:
        pass
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(64)
threads = [threading.Thread(target=spin, daemon=True) for _ in range(8)]
for thread in threads:
    thread.start()
print("up", listener.getsockname()[1], flush=True)
time.sleep(60)
"""


def test_a_killed_multithreaded_daemon_takes_no_connection_once_kill_returns(tmp_path: Path) -> None:
    """A SIGKILLed process's leader is a zombie while its other threads still exit, and until the last has gone its
    listening socket accepts connections (then resets them): a client would see a fast failure, not a dead
    server. Seen as a 22.05 slurmrestd answering "Unspecified error" at once for a slurmctld just killed."""
    for trial in range(10):
        directory = tmp_path / str(trial)
        directory.mkdir()
        pid_file, log = directory / "daemon.pid", directory / "daemon.log"
        try:
            procs.spawn(pid_file, [sys.executable, "-c", BUSY_LISTENER], log)
            assert procs.wait_for(lambda: log.read_text().endswith("\n"), 10), log.read_text()  # noqa: B023
            port = int(log.read_text().split()[1])
            assert procs.kill(pid_file) is not None
            with socket.socket() as client, pytest.raises(ConnectionRefusedError):
                client.connect(("127.0.0.1", port))
        finally:
            procs.kill(pid_file)  # whatever failed: no spinning process outlives the test
