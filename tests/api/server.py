"""The broker over a real socket for tests: ``python -m app`` as a subprocess on 127.0.0.1, exactly as dev/run.sh
runs it, on a SQLite file; stopped by its PID. Waits are deadlines on polled conditions, never fixed sleeps.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path

import httpx
import pytest

from dev.lab import procs
from tests.api.conftest import TOKEN

REPO = Path(__file__).resolve().parents[2]
LAB_FACTORIES = Path(os.environ.get("CONVEYOR_LAB_DIR", "/var/lib/conveyor-lab")) / "factories.yaml"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    def __init__(self, process: subprocess.Popen[bytes], base_url: str, log: Path) -> None:
        self.process = process
        self.base_url = base_url
        self.log = log

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)

    def wait_ready(self, timeout_s: float, path: str = "/readyz") -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the server exited with {self.process.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.base_url}{path}", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)  # a poll interval, not a wait for something to happen
        pytest.fail(f"{path} not ready within {timeout_s} s:\n{self.log.read_text()}")

    def stop(self) -> None:
        procs.terminate(self.process)


def start_server(
    tmp_path: Path, database: Path, factories: Path, *, run_loops: bool, env: Mapping[str, str] | None = None,
    dev: bool = True,
) -> Server:  # fmt: skip
    """Start the broker; ``env`` adds or overrides CONVEYOR_* settings (e.g. the loops' intervals). Without
    ``dev``, no static token exists: callers need real identities (e.g. a first admin made in the database)."""
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")},
        "CONVEYOR_DATA_DIR": str(tmp_path),
        "CONVEYOR_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
        "CONVEYOR_FACTORIES_FILE": str(factories),
        **({"CONVEYOR_DEV_MODE": "true", "CONVEYOR_DEV_TOKEN": TOKEN} if dev else {}),
        "CONVEYOR_HOST": "127.0.0.1",
        "CONVEYOR_PORT": str(port),
        "CONVEYOR_RUN_LOOPS": "true" if run_loops else "false",
        "CONVEYOR_DISPATCHER_INTERVAL_S": "0.2",
        "CONVEYOR_RECONCILER_INTERVAL_S": "0.5",
        **(env or {}),
    }
    log = tmp_path / f"server-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "app"], cwd=REPO, env=env, stdout=out, stderr=out)
    return Server(process, f"http://127.0.0.1:{port}", log)


@contextlib.contextmanager
def serving(
    tmp_path: Path, database: Path, factories: Path, *, run_loops: bool, env: Mapping[str, str] | None = None,
    dev: bool = True, ready_timeout_s: float = 60,
) -> Iterator[Server]:  # fmt: skip
    """:func:`start_server`, ready (its /readyz answers 200) when the block starts, stopped when it ends."""
    server = start_server(tmp_path, database, factories, run_loops=run_loops, env=env, dev=dev)
    try:
        server.wait_ready(timeout_s=ready_timeout_s)
        yield server
    finally:
        server.stop()


def lab_factories(directory: Path, only: Collection[str] | None = None) -> Path:
    """The lab's Factory file (all Factories, or ``only`` these, in the lab's order); fails loudly without a lab."""
    if not LAB_FACTORIES.exists():
        pytest.fail(f"no Slurm lab: {LAB_FACTORIES} is missing. Start it with `python3 -m dev.lab start` (as root).")
    if only is None:
        return LAB_FACTORIES
    document = json.loads(LAB_FACTORIES.read_text())
    document["factories"] = [entry for entry in document["factories"] if entry["id"] in only]
    missing = set(only) - {entry["id"] for entry in document["factories"]}
    assert not missing, f"the lab has no Factory {sorted(missing)}"
    path = directory / "factories.yaml"
    path.write_text(json.dumps(document))
    return path
