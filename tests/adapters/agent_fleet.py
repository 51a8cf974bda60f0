"""The conformance suite's agent kind: one real broker process and one real ``conveyor-agent`` per lab cluster.

The broker (``python -m app``, loops off) runs as an unprivileged user (:data:`UNPRIVILEGED`): it serves the
agents' routes and holds no Slurm key, and it could not read one if it tried (tests/adapters/test_agent_keys.py
proves it). Each agent runs as root with its cluster's slurmrestd adapter and JWT key (the lab's REST config),
its own key pair registered through the broker's API. The test process opens the same SQLite file (WAL works
across processes) and builds the broker's own :class:`~broker.agents.adapter.AgentAdapter` through an
:class:`~broker.agents.link.AgentLink`: its calls become orders in the database, which the broker hands to the
agent and whose reports come back the same way; the bell of each process polls for the other's writes.

Everything is started once per test session, lazily, and stopped by PID at the end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from broker.agents.link import AgentLink
from broker.agents.timings import AgentTimings
from broker.db.engine import create_database
from broker.db.migrate import upgrade
from dev.lab.agents import AgentSite
from dev.lab.view import Cluster, lab_json_path
from slurm_adapters.factory import AgentConfig
from tests.agentlink.harness import AgentProcess, agent_factories_file, register_agent_keys
from tests.faults.harness import TOKEN, BrokerProcess, poll_until

# The broker's identity in these tests: no Slurm key is readable by it (all are root- or munge-owned, 0600).
UNPRIVILEGED_USER = "nobody"
UNPRIVILEGED = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")

# Fast agent timings, the same in the broker process and in the test's AgentLink: a reconnecting agent holds
# the lease again within seconds, each process sees the other's writes within 50 ms, and the agents push their
# listings and site states every second (the broker's reconciler and health intervals set the plan).
TIMINGS = AgentTimings(heartbeat_s=1, lease_s=3, session_ttl_s=6, poll_wait_s=5, bell_interval_s=0.05,
                       listing_interval_s=1, site_interval_s=1)  # fmt: skip
TIMINGS_ENV = {
    "CONVEYOR_AGENT_HEARTBEAT_S": str(TIMINGS.heartbeat_s),
    "CONVEYOR_AGENT_LEASE_S": str(TIMINGS.lease_s),
    "CONVEYOR_AGENT_SESSION_TTL_S": str(TIMINGS.session_ttl_s),
    "CONVEYOR_AGENT_POLL_WAIT_S": str(TIMINGS.poll_wait_s),
    "CONVEYOR_AGENT_BELL_INTERVAL_S": str(TIMINGS.bell_interval_s),
    "CONVEYOR_RECONCILER_INTERVAL_S": str(TIMINGS.listing_interval_s),
    "CONVEYOR_HEALTH_INTERVAL_S": str(TIMINGS.site_interval_s),
}


def nobody_ids() -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam(UNPRIVILEGED_USER)
    return entry.pw_uid, entry.pw_gid


def agent_connected(broker: BrokerProcess, factory_id: str) -> bool:
    """Whether the Factory's agent holds the lease, as GET /v1/factories/{id} says."""
    try:
        answer = httpx.get(
            f"{broker.base_url}/v1/factories/{factory_id}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5
        )
    except httpx.TransportError:
        return False
    agent = answer.json().get("agent") or {}
    return bool(agent.get("connected"))


@dataclass
class AgentFleet:
    """The running broker, its database and one agent per Factory (Factory id = cluster name)."""

    directory: Path
    database_url: str
    broker: BrokerProcess
    agents: dict[str, AgentProcess]

    def factory_id(self, cluster: Cluster, inside: str = "rest") -> str:
        """The Factory whose agent runs adapter ``inside`` on ``cluster``."""
        return factory_of(cluster, inside)

    def wait_connected(self, factory_id: str, timeout_s: float = 30.0) -> None:
        """Until the Factory's agent holds the lease again (after a reconnect, say)."""
        agent = self.agents[factory_id]
        poll_until(
            lambda: agent_connected(self.broker, factory_id),
            timeout_s,
            f"{factory_id}'s agent to hold the lease",
            context=lambda: agent.log_tail() + "\n" + self.broker.log_tail(),
        )

    @contextlib.asynccontextmanager
    async def link(self) -> AsyncIterator[AgentLink]:
        """An AgentLink of the test process's own on the fleet's database (one per event loop: its bell is a
        task of the loop that uses it)."""
        database = create_database(self.database_url)
        link = AgentLink(database, TIMINGS)
        try:
            yield link
        finally:
            await link.aclose()
            await database.dispose()

    def adapter_config(self, cluster: Cluster) -> AgentConfig:
        return AgentConfig(cluster=cluster.name)

    def stop(self) -> None:
        """Every agent and the broker, by PID; the directory goes only if all of them ended."""
        for agent in self.agents.values():
            if agent.running():
                agent.stop()
        self.broker.stop()


def factory_of(cluster: Cluster, inside: str) -> str:
    """The fleet's Factory id for the agent running adapter ``inside`` on ``cluster``: the cluster's name for
    slurmrestd, ``<cluster>-<kind>`` for another."""
    return cluster.name if inside == "rest" else f"{cluster.name}-{inside}"


def start_fleet(clusters: list[Cluster], cli_clusters: list[Cluster], pyslurm_clusters: list[Cluster]) -> AgentFleet:
    """Start the broker (as nobody), one agent with slurmrestd inside per cluster, one with the CLI inside per
    cluster of ``cli_clusters`` and one with pyslurm inside per cluster of ``pyslurm_clusters`` (in the cluster's
    root, entered with pivot_root); return once every agent holds its lease. A start that fails stops what it
    started and removes its directories."""
    directory = Path(tempfile.mkdtemp(prefix="conveyor-agent-conformance-"))
    wanted = [(c, "rest") for c in clusters] + [(c, "cli") for c in cli_clusters]
    wanted += [(c, "pyslurm") for c in pyslurm_clusters]
    fleet: AgentFleet | None = None
    try:
        fleet = _prepare(directory, {factory_of(c, inside): c.name for c, inside in wanted})
        fleet.broker.start()
        for cluster, inside in wanted:
            factory_id = factory_of(cluster, inside)
            agent = _agent(directory, cluster, factory_id, fleet.broker.base_url, inside)
            agent.workdir.chmod(0o700)  # the agent's private key: root's alone
            register_agent_keys(fleet.broker, factory_id, agent.public_jwks)
            agent.start()
            fleet.agents[factory_id] = agent
        for factory_id in fleet.agents:
            fleet.wait_connected(factory_id, timeout_s=60)
    except BaseException:
        if fleet is not None:
            fleet.stop()
            remove_fleet(fleet)
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return fleet


def _agent(directory: Path, cluster: Cluster, factory_id: str, broker_url: str, inside: str) -> AgentProcess:
    """An agent's process and files: in the fleet's directory, or for pyslurm in the cluster's root (the lab's
    pyslurm venv there, the root entered with pivot_root), where the agent's files must be for it to see them."""
    site = AgentSite.of(cluster, inside)
    if site.root is None:
        return AgentProcess(directory / f"agent-{factory_id}", cluster, factory_id, broker_url, inside=inside)
    workdir = Path(tempfile.mkdtemp(prefix=f"conveyor-agent-{factory_id}-", dir=site.root / "tmp"))
    return AgentProcess(workdir, cluster, factory_id, broker_url, inside=inside, root=site.root,
                        python=site.python)  # fmt: skip


def _prepare(directory: Path, factories: dict[str, str]) -> AgentFleet:
    """The broker's files, owned by nobody: its workdir and a migrated SQLite file; the agents' Factory file."""
    directory.chmod(0o755)  # nobody must reach its own workdir below; the agents' dirs stay root's (0700)
    uid, gid = nobody_ids()
    broker_dir = directory / "broker"
    broker_dir.mkdir(mode=0o700)
    os.chown(broker_dir, uid, gid)
    database = broker_dir / "conveyor.db"
    database_url = f"sqlite+aiosqlite:///{database}"
    with ThreadPoolExecutor(1) as migrate:  # upgrade runs a loop of its own; the fixture may be inside another
        migrate.submit(upgrade, database_url).result()
    for path in broker_dir.iterdir():  # the file and any -wal/-shm: the broker writes them (root's SQLite chowns
        os.chown(path, uid, gid)  # later -wal/-shm to the file's owner)
    factories_file = agent_factories_file(lab_json_path().with_name("factories.yaml"), factories, directory)
    factories_file.chmod(0o644)
    broker = BrokerProcess(
        workdir=broker_dir,
        database_url=database_url,
        factories_file=factories_file,
        run_loops=False,
        extra_env=dict(TIMINGS_ENV),
        run_as=UNPRIVILEGED,
    )
    return AgentFleet(directory, database_url, broker, {})


def remove_fleet(fleet: AgentFleet) -> None:
    """The fleet's directory and every agent's (those in a cluster's root lie outside it)."""
    for agent in fleet.agents.values():
        shutil.rmtree(agent.workdir, ignore_errors=True)
    shutil.rmtree(fleet.directory, ignore_errors=True)
