"""The lab's Factory agents: how a lab cluster is reached through ``conveyor-agent``, and the quickstart's two.

:class:`AgentSite` says where one agent runs and with what: the host's interpreter for slurmrestd or the CLI
inside; for pyslurm, the lab's venv in the root where the lab built pyslurm (delta's sid tree), entered with
pivot_root (:mod:`dev.lab.pivot_root`), its files inside that root. The tests' agents (tests/agentlink/harness.py)
and the quickstart's are made the same way.

``.venv/bin/python -m dev.lab.agents factories|confined|start|stop`` is what ``dev/run.sh`` calls: the broker's
Factory file with :data:`QUICKSTART_AGENTS` reached through agents (their entries hold no Slurm URL, key or
path); the broker run unable to open anything under those clusters' directories (:mod:`dev.lab.confine`); then
one agent per such Factory, its key kept across runs and registered through the broker's API with the admin
token, started detached with its PID recorded, and stopped by that PID.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from agent.keys import generate_jwk, load_signing_key, write_private_jwk
from dev.lab import procs
from dev.lab.confine import confined_argv, private_dirs
from dev.lab.pivot_root import INSIDE_LAB_JSON, INSIDE_REPO, REPO, enter_root_argv, inside_path
from dev.lab.view import Cluster, adapter_config, clusters_of, lab_json_path, read_lab
from slurm_adapters.factory import config_to_dict

QUICKSTART_AGENTS = {"charlie": "rest", "delta": "pyslurm"}  # cluster -> the adapter inside its agent
AUDIENCE = "conveyor"  # the broker's default audience for agent (and Antenna) assertions
SITE_USERS = ("alice", "bob")
ROOT_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8",
            "PYTHONPATH": INSIDE_REPO, "PYTHONDONTWRITEBYTECODE": "1"}  # fmt: skip


@dataclass(frozen=True)
class AgentSite:
    """One lab cluster as an agent with adapter ``inside`` reaches it: the tree it runs in (None: the host) and
    its interpreter. Files the agent reads must lie under ``root``; :meth:`seen` says where it sees them."""

    cluster: Cluster
    inside: str
    root: Path | None = None
    python: str = sys.executable

    @classmethod
    def of(cls, cluster: Cluster, inside: str) -> AgentSite:
        """pyslurm runs only where the lab built it: the root of its venv (the cluster must live there)."""
        if inside != "pyslurm":
            return cls(cluster, inside)
        status = read_lab().get("pyslurm", {})
        if status.get("status") not in {"built", "cached"}:
            raise SystemExit(f"pyslurm is not available in this lab: {status.get('reason') or status}")
        root = Path(status["chroot"])
        if cluster.raw.get("chroot") != str(root):
            raise SystemExit(f"{cluster.name} does not live in {root}, where the lab built pyslurm")
        return cls(cluster, inside, root, status["venv_python"])

    def seen(self, path: Path) -> str:
        """``path`` (on the host) as the agent sees it."""
        return str(path) if self.root is None else inside_path(self.root, path)

    def site_cluster(self) -> Cluster:
        """The cluster as the agent sees it: the lab's host view, or the root's own lab.json."""
        if self.root is None:
            return self.cluster
        inside = clusters_of(read_lab(self.root / INSIDE_LAB_JSON.lstrip("/")))
        [cluster] = [c for c in inside if c.name == self.cluster.name]
        return cluster

    def config(self, broker_url: str, factory_id: str, workdir: Path, **settings: Any) -> dict[str, Any]:
        """agent.yaml for this site, its key, policy and pause files in ``workdir``."""
        return {
            "broker_url": broker_url,
            "factory": factory_id,
            "audience": AUDIENCE,
            "key_file": self.seen(workdir / "agent.jwk"),
            "policy_file": self.seen(workdir / "policy.yaml"),
            "pause_file": self.seen(workdir / "paused"),
            **settings,
            "adapter": config_to_dict(adapter_config(self.inside, self.site_cluster())),
        }

    def argv(self, config_file: Path) -> list[str]:
        run = [self.python, "-m", "agent", "run", "--config", self.seen(config_file)]
        return run if self.root is None else enter_root_argv(Path(read_lab()["lab_root"]), self.root, run)

    def environment(self, inherited: Mapping[str, str]) -> dict[str, str]:
        """The host's environment without ``CONVEYOR_*``, the repository first on the path; in a root a clean one
        (host paths mean nothing there)."""
        if self.root is not None:
            return dict(ROOT_ENV)
        kept = {name: value for name, value in inherited.items() if not name.startswith("CONVEYOR_")}
        return {**kept, "PYTHONPATH": str(REPO)}


def policy(site_users: Sequence[str] = SITE_USERS) -> dict[str, Any]:
    """The lab site's policy: ``site_users`` (its two people) may run, as themselves."""
    return {"site_users": list(site_users), "rules": [{"users": ["*"]}]}


def agent_factory_entries(lab_factories: Path, factories: Mapping[str, str], **adapter: Any) -> list[dict[str, Any]]:
    """The lab's Factory of each cluster in ``factories`` (Factory id -> cluster) under that id, reached through
    its agent: the adapter block names the cluster alone (plus ``adapter`` settings), no URL, key or path."""
    lab = {entry["id"]: entry for entry in json.loads(lab_factories.read_text())["factories"]}
    missing = set(factories.values()) - set(lab)
    if missing:
        raise SystemExit(f"the lab's Factory file {lab_factories} lacks {sorted(missing)}")
    return [
        {**lab[cluster], "id": factory_id, "adapter": {"kind": "agent", "cluster": cluster, **adapter}}
        for factory_id, cluster in factories.items()
    ]


# ---------------------------------------------------------------------------------------------------
# The quickstart's agents
# ---------------------------------------------------------------------------------------------------


def quickstart_private_dirs() -> list[Path]:
    """The directories of the clusters the quickstart reaches through agents: its broker may open none of them."""
    clusters = {cluster.name: cluster for cluster in clusters_of(read_lab())}
    return [directory for name in QUICKSTART_AGENTS for directory in private_dirs(clusters[name])]


def lab_factories_file() -> Path:
    return lab_json_path().with_name("factories.yaml")


def write_quickstart_factories(out: Path) -> Path:
    """The lab's Factory file with :data:`QUICKSTART_AGENTS` reached through their agents, the rest direct."""
    lab_file = lab_factories_file()
    direct = [e for e in json.loads(lab_file.read_text())["factories"] if e["id"] not in QUICKSTART_AGENTS]
    agents = agent_factory_entries(lab_file, {name: name for name in QUICKSTART_AGENTS})
    out.write_text(json.dumps({"factories": direct + agents}, indent=2) + "\n")
    return out


def agent_workdir(site: AgentSite, state_dir: Path, factory_id: str) -> Path:
    """Where a quickstart agent's files live: the state dir, or the same path inside the agent's root."""
    base = state_dir if site.root is None else site.root / str(state_dir).lstrip("/")
    return base / factory_id


def _key(workdir: Path, factory_id: str) -> dict[str, Any]:
    """The agent's public JWKS; its private key is made once and kept across runs."""
    key_file = workdir / "agent.jwk"
    if not key_file.exists():
        write_private_jwk(key_file, generate_jwk(f"lab-{factory_id}"))
    return load_signing_key(key_file).public_jwks


def _admin(broker_url: str, token: str, method: str, path: str, body: Any = None) -> httpx.Response:
    return httpx.request(method, f"{broker_url}{path}", json=body, timeout=10,
                         headers={"Authorization": f"Bearer {token}"})  # fmt: skip


def _connected(broker_url: str, token: str, factory_id: str) -> bool:
    try:
        answer = _admin(broker_url, token, "GET", f"/v1/factories/{factory_id}")
    except httpx.TransportError:
        return False
    return answer.status_code == 200 and bool((answer.json().get("agent") or {}).get("connected"))


def _connection_of(broker_url: str, token: str, factory_id: str) -> Callable[[], bool]:
    return lambda: _connected(broker_url, token, factory_id)


def _ready(broker_url: str) -> bool:
    try:
        return httpx.get(f"{broker_url}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def start_agents(broker_url: str, token: str, state_dir: Path, timeout_s: float = 60.0) -> None:
    """Once the broker is ready, each quickstart agent: files, key registered, started detached (PID recorded),
    holding its lease."""
    if not procs.wait_for(lambda: _ready(broker_url), timeout_s):
        raise SystemExit(f"the broker at {broker_url} was not ready within {timeout_s:.0f} s")
    clusters = {cluster.name: cluster for cluster in clusters_of(read_lab())}
    for factory_id, inside in QUICKSTART_AGENTS.items():
        site = AgentSite.of(clusters[factory_id], inside)
        workdir = agent_workdir(site, state_dir, factory_id)
        workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        answer = _admin(broker_url, token, "PUT", f"/v1/factories/{factory_id}/agent-keys", _key(workdir, factory_id))
        if answer.status_code != 200:
            raise SystemExit(f"registering {factory_id}'s agent key: {answer.status_code} {answer.text}")
        (workdir / "policy.yaml").write_text(yaml.safe_dump(policy()))
        config_file = workdir / "agent.yaml"
        config_file.write_text(yaml.safe_dump(site.config(broker_url, factory_id, workdir)))
        pid_file = state_dir / f"agent-{factory_id}.pid"
        procs.stop(pid_file)  # one agent per Factory: a previous run's is ended first
        log = state_dir / f"agent-{factory_id}.log"
        procs.spawn(pid_file, site.argv(config_file), log, env=site.environment(os.environ))
        if not procs.wait_ready(pid_file, _connection_of(broker_url, token, factory_id), timeout_s):
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
            raise SystemExit(f"{factory_id}'s agent did not connect within {timeout_s:.0f} s; {log}:\n{tail}")
        print(f"agent for {factory_id} ({inside} inside{' the ' + str(site.root) + ' root' if site.root else ''}) "
              f"connected; log: {log}")  # fmt: skip


def stop_agents(state_dir: Path) -> None:
    for factory_id in QUICKSTART_AGENTS:
        if procs.stop(state_dir / f"agent-{factory_id}.pid", grace_s=35):
            print(f"agent for {factory_id} stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dev.lab.agents", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    factories = commands.add_parser("factories", help="write the broker's Factory file with the agents' Factories")
    factories.add_argument("--out", type=Path, required=True)
    start = commands.add_parser("start", help="register and start the quickstart's agents; wait until connected")
    start.add_argument("--broker", required=True, help="the broker's base URL (loopback)")
    start.add_argument("--token-file", type=Path, required=True, help="the broker's admin (dev) token")
    start.add_argument("--state-dir", type=Path, required=True)
    confined = commands.add_parser("confined", help="exec a command unable to open the agents' clusters' files")
    confined.add_argument("argv", nargs=argparse.REMAINDER, help="-- the command and its arguments")
    stop = commands.add_parser("stop", help="stop the quickstart's agents by their recorded PIDs")
    stop.add_argument("--state-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "factories":
        print(f"Factory file: {write_quickstart_factories(args.out)} (agents: {', '.join(QUICKSTART_AGENTS)})")
    elif args.command == "confined":
        command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        if not command:
            parser.error("confined: give the command after --")
        argv = confined_argv(quickstart_private_dirs(), command)
        os.execvp(argv[0], argv)
    elif args.command == "start":
        start_agents(args.broker.rstrip("/"), args.token_file.read_text().strip(), args.state_dir)
    else:
        stop_agents(args.state_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
