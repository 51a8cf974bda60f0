"""The agent link end to end: a real broker process and real ``conveyor-agent`` processes on the lab.

The broker's Factory file names the chosen lab clusters with ``adapter: {kind: agent}`` (it holds no Slurm key and
reaches no cluster); each agent runs ``python -m agent run`` with the cluster's own adapter block (slurmrestd
with its JWT key, as the lab's direct Factory file has it), a key pair of its own registered through the broker's
API, and a policy that lets the lab's submit users run. Processes are started, SIGKILLed and stopped by their
PIDs; waits are deadlines on polled conditions.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from agent.keys import generate_jwk, public_jwk, write_private_jwk
from dev.lab.agents import AgentSite, agent_factory_entries, policy
from dev.lab.view import Cluster
from tests.faults.harness import REPO, TOKEN, BrokerProcess


def agent_factories_file(
    lab_factories: Path, clusters: dict[str, str], directory: Path, *, order_timeout_s: float | None = None
) -> Path:
    """A Factory file of the Factories in ``clusters`` (Factory id -> cluster name), each the lab's Factory of
    that cluster under the given id, reached through its agent: no URL, no key, nothing the broker could reach
    Slurm with. ``order_timeout_s`` (the agent adapter's ``timeout_s``) sets the Factory's submit window: it +
    SUBMIT_SLACK_S."""
    extra = {} if order_timeout_s is None else {"timeout_s": order_timeout_s}
    path = directory / "factories.json"
    path.write_text(json.dumps({"factories": agent_factory_entries(lab_factories, clusters, **extra)}, indent=2))
    return path


def register_agent_keys(broker: BrokerProcess, factory_id: str, jwks: dict[str, Any]) -> None:
    """As the broker's admin (the dev token): the Factory's agent keys, replacing any before."""
    answer = httpx.put(
        f"{broker.base_url}/v1/factories/{factory_id}/agent-keys",
        json=jwks,
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text


@dataclass
class AgentProcess:
    """``python -m agent run`` for one Factory, with a key of its own, across kills and restarts."""

    workdir: Path
    cluster: Cluster
    factory_id: str
    broker_url: str
    kid: str = "lab-agent-1"
    site_users: tuple[str, ...] = ("alice", "bob")
    inside: str = "rest"  # the adapter the agent runs at the site: rest, cli or pyslurm (the lab's config of that kind)
    # The tree the agent runs in (pivot_root, dev/lab/pivot_root.py) with ``python``, or None for the host's own
    # interpreter: pyslurm runs only in the sid root, where the lab built it. ``workdir`` must then lie under it.
    root: Path | None = None
    python: str = sys.executable
    process: subprocess.Popen[bytes] | None = None
    incarnation: int = 0
    logs: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        key = generate_jwk(self.kid)
        write_private_jwk(self.key_file, key)
        self.public_jwks = {"keys": [public_jwk(key)]}
        self.policy_file.write_text(yaml.safe_dump(self.policy()))
        self.config_file.write_text(yaml.safe_dump(self.config()))

    @property
    def key_file(self) -> Path:
        return self.workdir / "agent.jwk"

    @property
    def policy_file(self) -> Path:
        return self.workdir / "policy.yaml"

    @property
    def config_file(self) -> Path:
        return self.workdir / "agent.yaml"

    @property
    def pause_file(self) -> Path:
        return self.workdir / "paused"

    @property
    def site(self) -> AgentSite:
        return AgentSite(self.cluster, self.inside, self.root, self.python)

    def policy(self) -> dict[str, Any]:
        return policy(self.site_users)

    def config(self) -> dict[str, Any]:
        return self.site.config(self.broker_url, self.factory_id, self.workdir, concurrency=16, shutdown_grace_s=20)

    @property
    def pid(self) -> int:
        assert self.process is not None, "the agent was never started"
        return self.process.pid

    def start(self, env: dict[str, str] | None = None) -> None:
        """A new incarnation (the previous one must have ended): nothing carries over but the key file. ``env``
        adds variables (e.g. ``CONVEYOR_AGENT_FAILPOINTS``) to the inherited ones, which lose every
        ``CONVEYOR_*``."""
        assert self.process is None or self.process.poll() is not None, "the previous agent still runs"
        self.incarnation += 1
        log = self.workdir / f"agent-{self.incarnation}.log"
        self.logs.append(log)
        site = self.site
        with log.open("wb") as out:
            self.process = subprocess.Popen(site.argv(self.config_file), cwd=REPO if site.root is None else "/",
                                            env={**site.environment(os.environ), **(env or {})},
                                            stdout=out, stderr=out)  # fmt: skip

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> int:
        """SIGKILL, by PID; the return code."""
        assert self.process is not None
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        return self.process.wait(timeout=30)

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, by PID, and wait for the clean exit."""
        assert self.process is not None
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)

    def log_text(self) -> str:
        """Every incarnation's log, oldest first."""
        return "".join(log.read_text(errors="replace") for log in self.logs if log.exists())

    def log_tail(self, lines: int = 40) -> str:
        if not self.logs:
            return "(no agent log)"
        text = self.logs[-1].read_text(errors="replace").splitlines()
        return f"--- {self.logs[-1]} ---\n" + "\n".join(text[-lines:])
