"""The agent's failpoints (tests only): named by ``CONVEYOR_AGENT_FAILPOINTS``; a name the agent lacks is an
error, at once, both when parsed and when ``conveyor-agent run`` starts (one message, exit 2)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.failpoints import FAILPOINTS_ENV, UnknownFailpoint, active_failpoints

REPO = Path(__file__).resolve().parents[2]


def test_known_failpoints_are_enabled_by_name() -> None:
    assert active_failpoints({}) == frozenset()
    assert active_failpoints({FAILPOINTS_ENV: " before_submit, after_submit ,"}) == {"before_submit", "after_submit"}


def test_an_unknown_failpoint_is_an_error() -> None:
    with pytest.raises(UnknownFailpoint, match=r"unknown failpoints \['before_sumbit'\]"):
        active_failpoints({FAILPOINTS_ENV: "after_submit,before_sumbit"})


def test_the_agent_refuses_to_run_with_an_unknown_failpoint(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'sdk'}", FAILPOINTS_ENV: "after_sumbit"}
    config = tmp_path / "agent.yaml"
    config.write_text("{}")
    done = subprocess.run([sys.executable, "-m", "agent", "run", "--config", str(config)], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "unknown failpoints ['after_sumbit']" in done.stderr, done.stderr
