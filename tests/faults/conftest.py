"""Fixtures of the fault tests: the lab's expendable cluster, a workspace on it, broker processes per test.

The broker only ever sees the expendable cluster ``echo`` (a Factory file of its own): its slurmctld is the one
tests may SIGKILL, and every job these tests submit goes there. The agent fault tests' broker reaches echo only
through ``conveyor-agent`` processes (:func:`agent_broker`, :func:`new_agent`). Databases are fresh per broker:
a copy of a migrated SQLite file, or a new database on the project's PostgreSQL (tests/db's fixtures and
backends). Every fault test that can runs on both (``database``); ``-m "not postgresql"`` deselects the PostgreSQL
half.

echo's slurmctld is shared with every other lab test run on this machine. A test whose slurmctld was restarted
by someone else while it ran says so when it fails: Slurm forgetting or rerunning jobs is then no evidence
against the broker (see :class:`CtldWatch`).
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dev.lab import procs
from dev.lab.factories_config import CLOCK_SKEW_S
from dev.lab.view import lab_json_path
from slurm_adapters.cli.cluster import sdiag_facts
from tests.agentlink.harness import AgentProcess, agent_factories_file, register_agent_keys
from tests.db import conftest as database_fixtures
from tests.faults.harness import BrokerProcess, Workspace, factories_file_with
from tests.lab import Cluster, clusters

postgres_databases = database_fixtures.postgres_databases
migrated_sqlite_template = database_fixtures.migrated_sqlite_template

EXPENDABLE = "echo"


@pytest.fixture(scope="session")
def echo() -> Cluster:
    """The expendable lab cluster (fails loudly without a lab, or if it is not marked expendable)."""
    found = [cluster for cluster in clusters() if cluster.name == EXPENDABLE]
    assert found, f"the lab has no cluster {EXPENDABLE!r}"
    assert found[0].raw["expendable"], f"{EXPENDABLE} is not expendable: fault tests must not kill its slurmctld"
    return found[0]


@pytest.fixture
def run_id() -> str:
    return secrets.token_hex(4)


CALL_PASSED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[CALL_PASSED] = report.passed
    return report


@dataclass
class CtldWatch:
    """Which slurmctld process serves the cluster, to tell a restart by this test from one by anybody else."""

    cluster: Cluster
    expected: int | None

    def current(self) -> int | None:
        return procs.recorded_pid(self.cluster.host_path_of_pid_file())

    def restarted_here(self) -> None:
        """The test itself has just restarted slurmctld: the new process is the expected one."""
        self.expected = self.current()

    def foreign_restart(self) -> str | None:
        now = self.current()
        if now == self.expected:
            return None
        return (
            f"{self.cluster.name}'s slurmctld is not the process this test saw (PID {self.expected} -> {now}): "
            "another lab user killed or restarted it meanwhile, so Slurm may have forgotten or rerun jobs; "
            "the failure above may be that, not the broker. Rerun when no other lab test runs."
        )


def statistics_since(cluster: Cluster) -> datetime | None:
    """When slurmctld's statistics began (sdiag "Data since"): at its start, or at a later reset."""
    since, _ = sdiag_facts(cluster.slurm("sdiag"))
    return since


def statistics_age_s(cluster: Cluster) -> float:
    """How long ago slurmctld's statistics began: at least since its last start."""
    since = statistics_since(cluster)
    return float("inf") if since is None else (datetime.now(UTC) - since).total_seconds()


# The longest a fault test keeps attempts in doubt: a test starting closer than this to midnight UTC waits
# for the midnight first (see wait_out_the_daily_statistics_reset).
MIDNIGHT_HORIZON_S = 300.0


def wait_out_the_daily_statistics_reset(cluster: Cluster, *, now: datetime | None = None) -> None:
    """Slurm resets slurmctld's statistics at midnight UTC, and slurmrestd (the fault tests' adapter) tells
    since when slurmctld has run only by that start: a doubt that straddles the reset is rightly called lost
    (broker/loops/doubt.py), as after a restart. A test that could straddle it waits until the reset is seen."""
    now = now or datetime.now(UTC)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    left_s = (midnight - now).total_seconds()
    if left_s > MIDNIGHT_HORIZON_S:
        return

    def reset_seen() -> bool:
        since = statistics_since(cluster)
        return since is not None and since >= midnight

    assert procs.wait_for(reset_seen, left_s + 60), f"{cluster.name}'s statistics were not reset at {midnight}"


@pytest.fixture
def echo_ctld(request: pytest.FixtureRequest, echo: Cluster) -> Iterator[CtldWatch]:
    watch = CtldWatch(echo, procs.recorded_pid(echo.host_path_of_pid_file()))
    assert watch.expected is not None, f"{echo.name}'s slurmctld is not running"
    # A slurmctld started moments ago (the lab tests rebuild echo just before) cannot vouch for attempts made
    # in its first second: the dispatcher would rightly call such a job lost (broker/loops/doubt.py). Wait until
    # it has run for longer than the lab Factory's clock skew.
    wait_out_the_daily_statistics_reset(echo)
    assert procs.wait_for(lambda: statistics_age_s(echo) > CLOCK_SKEW_S + 1, 30), "echo's slurmctld never settled"
    yield watch
    if not request.node.stash.get(CALL_PASSED, True):
        problem = watch.foreign_restart()
        assert problem is None, problem


NewWorkspace = Callable[[str], Workspace]


@pytest.fixture
def new_workspace(request: pytest.FixtureRequest, echo: Cluster, echo_ctld: CtldWatch) -> Iterator[NewWorkspace]:
    """Makes directories on echo for the jobs and their ledger: removed after a pass, kept after a failure (the
    ledgers are evidence)."""
    made: list[Workspace] = []

    def make(label: str) -> Workspace:
        workspace = Workspace.create(echo, label)
        made.append(workspace)
        return workspace

    yield make
    if request.node.stash.get(CALL_PASSED, False):
        for workspace in made:
            shutil.rmtree(echo.host_path(workspace.inside), ignore_errors=True)


@pytest.fixture
def workspace(new_workspace: NewWorkspace, run_id: str) -> Workspace:
    """The test's directory on echo (see :func:`new_workspace`)."""
    return new_workspace(run_id)


@pytest.fixture
def echo_factories(tmp_path: Path, echo: Cluster) -> Path:
    return factories_file_with(lab_json_path().with_name("factories.yaml"), [echo.name], tmp_path)


@pytest.fixture(params=database_fixtures.BACKENDS)
def database(request: pytest.FixtureRequest) -> str:
    """The kind of database of the test's brokers: ``sqlite`` or ``postgresql`` (marked ``postgresql``)."""
    kind: str = request.param
    return kind


NewDatabase = Callable[[str, Path], str]


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


@pytest.fixture
def new_database_url(request: pytest.FixtureRequest) -> NewDatabase:
    """``new_database_url(kind, directory)``: a fresh migrated database of ``kind`` (a SQLite file goes in
    ``directory``); PostgreSQL's fixtures are reached only when needed.

    Call it from (sync) fixtures: creating and migrating a database runs an event loop of its own."""

    def make(kind: str, directory: Path) -> str:
        assert not _in_event_loop(), "make the databases in a fixture, not inside the test's event loop"
        if kind == "sqlite":
            path = directory / "conveyor.db"
            shutil.copyfile(request.getfixturevalue("migrated_sqlite_template"), path)
            return f"sqlite+aiosqlite:///{path}"
        assert kind == "postgresql", kind
        from broker.db.migrate import upgrade

        databases: database_fixtures.PostgresDatabases = request.getfixturevalue("postgres_databases")
        url = databases.create()
        upgrade(url)
        return url

    return make


NewBroker = Callable[[str, str], BrokerProcess]


@pytest.fixture
def new_broker(tmp_path: Path, new_database_url: NewDatabase, echo_factories: Path) -> Iterator[NewBroker]:
    """``new_broker(kind, name)``: a broker (not started) on a fresh database of ``kind``, working in
    ``tmp_path/name``, serving echo only. Every broker made is stopped by its PID at the end."""
    made: list[BrokerProcess] = []

    def make(kind: str, name: str) -> BrokerProcess:
        workdir = tmp_path / name
        workdir.mkdir()
        broker = BrokerProcess(
            workdir=workdir, database_url=new_database_url(kind, workdir), factories_file=echo_factories
        )
        made.append(broker)
        return broker

    try:
        yield make
    finally:
        for broker in made:
            broker.stop()


@pytest.fixture
def broker(database: str, new_broker: NewBroker) -> BrokerProcess:
    """A broker (not started) on a fresh database of each kind, serving echo only; stopped by PID at the end."""
    return new_broker(database, "broker")


@pytest.fixture
def postgres_broker(new_broker: NewBroker) -> BrokerProcess:
    """A broker (not started) on a fresh PostgreSQL database, for the tests that only PostgreSQL can have."""
    return new_broker("postgresql", "broker")


# --- the agent fault tests ------------------------------------------------------------------------------

# Fast agent timings: a lapsed session or lease is noticed within seconds.
AGENT_TIMINGS = {
    "CONVEYOR_AGENT_HEARTBEAT_S": "1",
    "CONVEYOR_AGENT_LEASE_S": "3",
    "CONVEYOR_AGENT_SESSION_TTL_S": "6",
    "CONVEYOR_AGENT_POLL_WAIT_S": "5",
}
# The agent Factory's order timeout: its submit window is this + SUBMIT_SLACK_S (15 s), so an attempt in doubt is
# settled 15 s + echo's MessageTimeout (5 s, dev/lab/topology.py) + its clock skew after it began, instead of 41 s
# with the default.
AGENT_ORDER_TIMEOUT_S = 10.0


@pytest.fixture
def agent_broker(
    database: str, tmp_path: Path, new_database_url: NewDatabase, echo: Cluster
) -> Iterator[BrokerProcess]:
    """A broker (started) that reaches echo only through an agent; SIGKILLed by its PID at the end.

    Not stopped gracefully: by then the test is over, its database is thrown away and its agents are already
    killed (:func:`new_agent` ends first), so a SIGTERM would only wait out the loops' stop grace (STOP_GRACE_S,
    15 s) for cycles whose orders no agent will answer."""
    workdir = tmp_path / "broker"
    workdir.mkdir()
    factories = agent_factories_file(lab_json_path().with_name("factories.yaml"), {echo.name: echo.name}, tmp_path,
                                     order_timeout_s=AGENT_ORDER_TIMEOUT_S)  # fmt: skip
    broker = BrokerProcess(
        workdir=workdir, database_url=new_database_url(database, workdir), factories_file=factories,
        extra_env=dict(AGENT_TIMINGS),
    )  # fmt: skip
    broker.start()
    try:
        yield broker
    finally:
        if broker.process is not None:
            broker.kill()


NewAgent = Callable[..., AgentProcess]


@pytest.fixture
def new_agent(tmp_path: Path, echo: Cluster, agent_broker: BrokerProcess) -> Iterator[NewAgent]:
    """``new_agent(name, kid=..., broker_url=...)``: an agent of echo (not started, key not registered) working in
    ``tmp_path/name``, dialling ``broker_url`` (default: the broker itself). Every agent made is SIGKILLed by its
    PID at the end."""
    made: list[AgentProcess] = []

    def make(name: str, *, kid: str = "lab-agent-1", broker_url: str | None = None) -> AgentProcess:
        agent = AgentProcess(tmp_path / name, echo, echo.name, broker_url or agent_broker.base_url, kid=kid)
        made.append(agent)
        return agent

    try:
        yield make
    finally:
        for agent in made:
            if agent.running():
                agent.kill()


def register_agents(broker: BrokerProcess, *agents: AgentProcess) -> None:
    """Register exactly these agents' keys as echo's (replacing any before)."""
    register_agent_keys(broker, EXPENDABLE, {"keys": [key for agent in agents for key in agent.public_jwks["keys"]]})


@pytest.fixture
def echo_agent(agent_broker: BrokerProcess, new_agent: NewAgent) -> AgentProcess:
    """echo's agent (started, its key registered); SIGKILLed by its PID at the end."""
    agent = new_agent("agent")
    register_agents(agent_broker, agent)
    agent.start()
    return agent
