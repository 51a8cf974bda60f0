"""The quickstart's ``dev/run.sh``, as written: the broker with charlie and delta reached through their agents.

It runs with a data directory and a port of its own. A job placed on charlie (slurmrestd inside its agent) and
one on delta (pyslurm inside its agent, in the sid root) complete, and their output comes back through the
agents. The broker's Factory file holds no Slurm URL, key or path for them, and the broker's process cannot open
their files (its mount namespace, seen with nsenter), while it still reads a direct cluster's key. SIGTERM to
run.sh stops the agents and the broker.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conveyor import Client
from dev.lab.agents import QUICKSTART_AGENTS, AgentSite, agent_workdir, quickstart_private_dirs
from dev.lab.procs import recorded_pid, wait_for
from tests.faults.harness import free_port
from tests.lab import clusters

pytestmark = [pytest.mark.lab, pytest.mark.timeout(420)]

REPO = Path(__file__).resolve().parents[2]
READY_LINE = "Conveyor on http://"


@dataclass
class Quickstart:
    process: subprocess.Popen[bytes]
    data_dir: Path
    url: str
    log: Path

    @property
    def token(self) -> str:
        return (self.data_dir / "dev-token").read_text().strip()

    def broker_pid(self) -> int:
        """run.sh's one child that is the broker (the agents are detached, in sessions of their own)."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        brokers = [int(pid) for pid in children if b"app" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")]
        assert len(brokers) == 1, (children, self.log.read_text()[-3000:])
        return brokers[0]

    def agent_pid_files(self) -> list[Path]:
        return [self.data_dir / "agents" / f"agent-{name}.pid" for name in QUICKSTART_AGENTS]


@pytest.fixture
def quickstart(tmp_path: Path) -> Iterator[Quickstart]:
    data_dir, log = tmp_path / "data", tmp_path / "run.log"
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")},
           "CONVEYOR_DATA_DIR": str(data_dir), "CONVEYOR_PORT": str(port)}  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(["dev/run.sh"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    started = Quickstart(process, data_dir, f"http://127.0.0.1:{port}", log)
    try:
        ready = wait_for(lambda: READY_LINE in log.read_text(errors="replace") or process.poll() is not None, 300)
        assert ready, f"run.sh not ready after 300 s:\n{log.read_text()[-4000:]}"
        assert process.poll() is None, f"run.sh exited {process.returncode}:\n{log.read_text()[-4000:]}"
        yield started
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
        process.wait(timeout=120)
        _remove_agent_dirs(data_dir)


def _remove_agent_dirs(data_dir: Path) -> None:
    """The delta agent's files live inside the sid root, under the same path as the data dir."""
    by_name = {cluster.name: cluster for cluster in clusters()}
    for name, inside in QUICKSTART_AGENTS.items():
        workdir = agent_workdir(AgentSite.of(by_name[name], inside), data_dir / "agents", name)
        shutil.rmtree(workdir, ignore_errors=True)


def test_the_quickstart_runs_charlie_and_delta_through_agents_and_the_broker_cannot_open_their_files(
    quickstart: Quickstart,
) -> None:
    factories = json.loads((quickstart.data_dir / "factories.yaml").read_text())["factories"]
    for entry in factories:
        if entry["id"] in QUICKSTART_AGENTS:
            assert entry["adapter"] == {"kind": "agent", "cluster": entry["id"]}  # no URL, key, fs_root or conf
        else:
            assert entry["adapter"]["kind"] == "rest"

    with Client(quickstart.url, token=quickstart.token) as conveyor:
        jobs = {
            name: conveyor.submit({
                "name": f"quickstart-{name}", "project": "EHPC-DEV", "placement": {"factory": name},
                "script": f"#!/bin/bash\necho through the agent of {name}\nseq 1 20000\n",
                "resources": {"time_limit_min": 2},
            })
            for name in QUICKSTART_AGENTS
        }  # fmt: skip
        expected = "".join(f"{n}\n" for n in range(1, 20001))
        for name, job in jobs.items():
            done = job.wait(timeout=180)
            assert (done.state, done.factory, done.exit_code) == ("completed", name, 0), done
            output = job.output(max_bytes=1 << 20)
            assert output.content == f"through the agent of {name}\n{expected}", output.content[-200:]

    broker = quickstart.broker_pid()
    for directory in quickstart_private_dirs():
        assert any(directory.iterdir()), f"{directory} is empty on the host"
        seen = subprocess.run(["nsenter", "-t", str(broker), "-m", "ls", "-A", str(directory)],
                              capture_output=True, text=True, check=False)  # fmt: skip
        assert seen.returncode == 0, seen.stderr
        assert seen.stdout == "", f"the broker sees {directory}: {seen.stdout[:200]}"
    direct = next(c for c in clusters() if c.name not in QUICKSTART_AGENTS and not c.raw.get("chroot"))
    key = subprocess.run(["nsenter", "-t", str(broker), "-m", "test", "-r", direct.raw["jwt_key_file"]], check=False)
    assert key.returncode == 0, f"the broker cannot read the direct cluster {direct.name}'s key"
    status = Path(f"/proc/{broker}/status").read_text()
    bounding = int(next(line for line in status.splitlines() if line.startswith("CapBnd:")).split()[1], 16)
    assert not bounding & (1 << 21), "the broker keeps CAP_SYS_ADMIN: it could unmount what hides the sites"

    agents = [recorded_pid(pid_file) for pid_file in quickstart.agent_pid_files()]
    assert all(agents), agents
    os.kill(quickstart.process.pid, signal.SIGTERM)
    quickstart.process.wait(timeout=120)  # its trap stops the agents, then the broker, and waits for both
    assert not Path(f"/proc/{broker}").exists(), "the broker outlived run.sh"
    assert all(recorded_pid(pid_file) is None for pid_file in quickstart.agent_pid_files()), "an agent outlived run.sh"
