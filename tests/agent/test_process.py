"""``conveyor-agent run`` as a real process: with the broker unreachable it keeps trying (never exits on a broken
link), and SIGTERM ends it cleanly with exit status 0."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from agent.keys import generate_jwk, write_private_jwk
from tests.agent.conftest import POLICY

REPO = Path(__file__).resolve().parents[2]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_sigterm_stops_an_agent_that_cannot_reach_its_broker(tmp_path: Path) -> None:
    write_private_jwk(tmp_path / "agent.jwk", generate_jwk("k"))
    (tmp_path / "jwt.key").write_bytes(b"x" * 32)
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(POLICY))
    config = {
        "broker_url": f"http://127.0.0.1:{closed_port()}",
        "factory": "f",
        "audience": "a",
        "key_file": "agent.jwk",
        "policy_file": "policy.yaml",
        "pause_file": "paused",
        "adapter": {
            "kind": "rest",
            "cluster": "nowhere",
            "url": f"http://127.0.0.1:{closed_port()}",
            "jwt_key_file": str(tmp_path / "jwt.key"),
            "operator_user": "ops",
            "allowed_users": "[a-z]+",
            "timeout_s": 1,
            "connect_timeout_s": 0.5,
        },
    }
    (tmp_path / "agent.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'sdk'}"}
    log = tmp_path / "agent.log"
    with log.open("w") as sink:
        process = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(tmp_path / "agent.yaml")],
                                   stderr=sink, stdout=sink, env=env, cwd=tmp_path)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while log.read_text().count("hello failed") < 2:  # it keeps trying, with back-off
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = log.read_text()
    assert "local Slurm health check failed at start" in text
    assert "stopped" in text
    assert "Traceback" not in text
